"""Configuration: every setting documented, every bad value a one-line error and exit 2."""

from __future__ import annotations

import dataclasses
import os
import subprocess
import sys
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

import pytest

from casd.config import SETTINGS, S3Location, SettingError, Settings, load_settings

ROOT = Path(__file__).resolve().parent.parent

# (command line flags, environment, the names the error must give)
BAD_SETTINGS = [
    (["--listen", "nope"], {}, "--listen"),
    (["--listen", "127.0.0.1:99999"], {}, "--listen"),
    ([], {"CASD_LISTEN": "[::1:80"}, "CASD_LISTEN"),
    (["--workers", "two"], {}, "--workers"),
    ([], {"CASD_WORKERS": "2.5"}, "CASD_WORKERS"),
    (["--workers", "0"], {}, "--workers"),
    (["--upload-ttl", "90"], {}, "--upload-ttl"),
    ([], {"CASD_GC_GRACE": "3"}, "CASD_GC_GRACE"),
    (["--max-blob-size", "10XB"], {}, "--max-blob-size"),
    ([], {"CASD_MAX_BLOB_SIZE": "5 parsecs"}, "CASD_MAX_BLOB_SIZE"),
    (["--log-format", "xml"], {}, "--log-format"),
    ([], {"CASD_PRIVATE": "maybe"}, "CASD_PRIVATE"),
    (["--blob-store", "/var/lib/blobs"], {}, "--blob-store"),
    ([], {"CASD_BLOB_STORE": "s3://Not_A_Bucket/x"}, "CASD_BLOB_STORE"),
    ([], {"CASD_BLOB_STORE": "s3://casd/a/../b"}, "CASD_BLOB_STORE"),
    (["--s3-buffer", "1M"], {}, "--s3-buffer"),
]


def run_serve(
    data_dir: Path, args: list[str], env: dict[str, str]
) -> subprocess.CompletedProcess[str]:
    environment = {key: value for key, value in os.environ.items() if not key.startswith("CASD_")}
    return subprocess.run(
        [sys.executable, "-m", "casd", "serve", "--data-dir", str(data_dir), *args],
        capture_output=True,
        text=True,
        timeout=60,
        env={**environment, **env},
        check=False,
    )


@pytest.mark.e2e
def test_each_bad_setting_is_one_line_naming_it_and_exit_2(tmp_path: Path) -> None:
    def attempt(case: int) -> tuple[int, subprocess.CompletedProcess[str]]:
        args, env, _ = BAD_SETTINGS[case]
        return case, run_serve(tmp_path / f"data{case}", args, env)

    with ThreadPoolExecutor(4) as pool:
        results = list(pool.map(attempt, range(len(BAD_SETTINGS))))
    for case, result in results:
        args, env, name = BAD_SETTINGS[case]
        setting = next(s for s in SETTINGS if name in (s.flag, s.env))
        assert result.returncode == 2, (args, env, result.stderr)
        assert result.stdout == ""
        lines = result.stderr.splitlines()
        assert len(lines) == 1, (args, env, result.stderr)
        assert lines[0].startswith("casd: bad "), lines
        assert setting.flag in lines[0] and setting.env in lines[0], lines
        assert not (tmp_path / f"data{case}").exists(), "nothing was started"


def test_setting_errors_name_the_value_and_the_setting() -> None:
    with pytest.raises(SettingError, match=r"--workers \(CASD_WORKERS\): not a whole number"):
        load_settings({"workers": "two"}, {})
    with pytest.raises(SettingError, match=r"CASD_UPLOAD_TTL.*a number with a unit"):
        load_settings({}, {"CASD_UPLOAD_TTL": "90"})
    settings = load_settings({"max_blob_size": "10GB"}, {"CASD_GC_GRACE": "1h30m"})
    assert settings.max_blob_size == 10**10 and settings.gc_grace == 5400
    assert load_settings({}, {"CASD_MAX_BLOB_SIZE": "10GiB"}).max_blob_size == 10 * 2**30


def test_blob_store_is_file_or_an_s3_bucket_with_a_prefix() -> None:
    assert load_settings({}, {}).blob_store == "file" and load_settings({}, {}).s3_location is None
    settings = load_settings({"blob_store": "s3://casd-blobs/farm/eu/"}, {})
    assert settings.blob_store == "s3://casd-blobs/farm/eu"
    assert settings.s3_location == S3Location("casd-blobs", "farm/eu/")
    assert load_settings({}, {"CASD_BLOB_STORE": "s3://casd"}).s3_location == S3Location("casd")
    for bad in ("s3://", "s3://ab", "s3://UPPER", "s3://casd/a//b", "s3://casd/a b", "ftp://x"):
        with pytest.raises(SettingError, match=r"--blob-store \(CASD_BLOB_STORE\)"):
            load_settings({"blob_store": bad}, {})
    assert load_settings({}, {"CASD_S3_BUFFER": "1GiB"}).s3_buffer == 2**30


@pytest.mark.e2e
def test_every_setting_is_in_serve_help_and_in_the_readme() -> None:
    fields = {field.name for field in dataclasses.fields(Settings)}
    assert fields == {setting.field for setting in SETTINGS}, "every field has a SETTINGS entry"
    result = subprocess.run(
        [sys.executable, "-m", "casd", "serve", "--help"],
        capture_output=True,
        text=True,
        timeout=60,
        check=True,
    )
    help_text = " ".join(result.stdout.split())  # as one line: click wraps the help
    readme = (ROOT / "README.md").read_text()
    table = [line for line in readme.splitlines() if line.startswith("| `CASD_")]
    for setting in SETTINGS:
        assert setting.flag in help_text, setting.flag
        assert f"Env {setting.env}." in help_text, setting.env
        rows = [row for row in table if row.startswith(f"| `{setting.env}` / `{setting.flag}")]
        assert len(rows) == 1, f"README configuration table: {setting.env} / {setting.flag}"
