"""``python -m bench``: start the servers, run the selected sections, print and save results."""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import datetime
import os
import platform
import shutil
import subprocess
import sys
import tempfile
import time
from collections.abc import Iterator
from pathlib import Path

import asyncpg

from bench import sections
from bench.config import FULL, QUICK, SECTIONS, Sizes
from bench.results import Results, Target, render_table
from bench.sections import Run
from bench.targets import Casd, Nginx, Registry
from bench.targets import Target as Server

RESULTS_FILE = "bench-results.json"  # written into --results DIR, default the working directory
RUNNERS = {
    "limits": sections.section_limits,
    "upload": sections.section_upload,
    "small": sections.section_small,
    "download": sections.section_download,
    "names": sections.section_names,
    "memory": sections.section_memory,
}


def parse_args(argv: list[str] | None = None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(
        prog="python -m bench",
        description="casd against the machine's limits and against peers, side by side.",
    )
    parser.add_argument("--quick", action="store_true", help="smaller sizes, fewer rounds")
    parser.add_argument(
        "--s3",
        action="store_true",
        help="casd over SeaweedFS against aiobotocore on the same SeaweedFS (bench/s3.py), only",
    )
    parser.add_argument(
        "--only",
        default=",".join(SECTIONS),
        help=f"comma-separated sections to run (default all: {','.join(SECTIONS)})",
    )
    parser.add_argument("--rounds", type=int, help="rounds per section (default 3, quick 2)")
    parser.add_argument(
        "--workers", default="1,2", help="casd --workers values to run, comma-separated"
    )
    parser.add_argument(
        "--peers",
        default="nginx,registry",
        help="peers to compare with when installed ('none' for none); see bench/peers/setup.sh",
    )
    parser.add_argument(
        "--casd-env",
        action="append",
        default=[],
        metavar="NAME=VALUE",
        help="extra environment for the casd servers (e.g. CASD_LOG_LEVEL=WARNING)",
    )
    parser.add_argument(
        "--baseline",
        type=Path,
        metavar="TREE",
        help="also run casd from TREE (a directory holding casd/, e.g. from 'git archive OLD "
        "casd', plus sql/ for commits before the SQL moved into casd/): figures for base-wN "
        "beside casd-wN, and their ratios",
    )
    parser.add_argument("--profile", type=Path, help="record py-spy flame graphs of casd here")
    parser.add_argument(
        "--results",
        type=Path,
        default=Path(),
        metavar="DIR",
        help=f"directory to write {RESULTS_FILE} into (default: the working directory)",
    )
    parser.add_argument("--workdir", type=Path, help="scratch directory (default: a new temp dir)")
    parser.add_argument("--keep", action="store_true", help="keep the scratch directory")
    args = parser.parse_args(argv)
    chosen = [name.strip() for name in args.only.split(",") if name.strip()]
    unknown = set(chosen) - set(SECTIONS)
    if unknown:
        parser.error(f"unknown sections {sorted(unknown)}; choose from {', '.join(SECTIONS)}")
    if {"upload", "small"} & set(chosen) and "limits" not in chosen:
        chosen.insert(0, "limits")  # upload figures are also ratios to the limits
    args.sections = [name for name in SECTIONS if name in chosen]
    return args


def sizes_for(args: argparse.Namespace) -> Sizes:
    import dataclasses

    sizes = QUICK if args.quick else FULL
    if args.rounds:
        sizes = dataclasses.replace(sizes, rounds=args.rounds, limit_rounds=max(args.rounds, 3))
    return sizes


def log(message: str) -> None:
    stamp = time.strftime("%H:%M:%S")
    print(f"[{stamp}] {message}", file=sys.stderr, flush=True)


@contextlib.contextmanager
def scratch(args: argparse.Namespace) -> Iterator[Path]:
    if args.workdir:
        args.workdir.mkdir(parents=True, exist_ok=True)
        yield args.workdir.absolute()
        return
    directory = Path(tempfile.mkdtemp(prefix="casd-bench-", dir="/var/tmp"))
    try:
        yield directory
    finally:
        if args.keep:
            log(f"kept {directory}")
        else:
            shutil.rmtree(directory, ignore_errors=True)


@contextlib.contextmanager
def postgres(workdir: Path) -> Iterator[str]:
    """One embedded PostgreSQL for every casd of the run (each gets a database of its own)."""
    from casd.embedded import EmbeddedPostgres

    with EmbeddedPostgres(workdir / "pg" / "postgres") as embedded:
        yield embedded.url


def create_database(server_url: str, name: str) -> str:
    async def create() -> None:
        connection = await asyncpg.connect(server_url)
        try:
            await connection.execute(f'CREATE DATABASE "{name}"')
        finally:
            await connection.close()

    asyncio.run(create())
    return server_url.replace("/postgres?", f"/{name}?", 1)


def make_peers(args: argparse.Namespace, workdir: Path, results: Results) -> list[Server]:
    wanted = {name.strip() for name in args.peers.split(",")} - {"none", ""}
    peers: list[Server] = []
    for name, program, kind in (
        ("nginx", "nginx", Nginx),
        ("registry", "docker-registry", Registry),
    ):
        if name not in wanted:
            continue
        if shutil.which(program) is None:
            results.note(f"{name}: '{program}' not installed (bench/peers/setup.sh): skipped")
            continue
        peers.append(kind(workdir))
    if "download" in args.sections and shutil.which("wrk") is None:
        raise SystemExit("bench: wrk is needed for the GET figures: run bench/peers/setup.sh")
    if shutil.which("curl") is None:
        raise SystemExit("bench: curl is needed: run bench/peers/setup.sh")
    return peers


def casd_env(args: argparse.Namespace) -> dict[str, str]:
    env = {}
    for item in args.casd_env:
        name, _, value = item.partition("=")
        env[name] = value
    return env


def version_of(command: list[str]) -> str:
    try:
        output = subprocess.run(command, capture_output=True, text=True, timeout=10, check=False)
    except OSError:
        return "absent"
    text = (output.stdout or output.stderr).strip().splitlines()
    return text[0] if text else "?"


def describe(args: argparse.Namespace, sizes: Sizes) -> dict[str, object]:
    commit = version_of(["git", "-C", str(Path(__file__).parent), "rev-parse", "--short", "HEAD"])
    return {
        "started": datetime.datetime.now(datetime.UTC).isoformat(timespec="seconds"),
        "command": " ".join(["python -m bench", *sys.argv[1:]]),
        "commit": commit,
        "cpus": os.cpu_count(),
        "load_before": os.getloadavg(),
        "python": platform.python_version(),
        "kernel": platform.release(),
        "sections": args.sections,
        "sizes": sizes.__dict__,
        "casd_env": casd_env(args),
        "tools": {
            "curl": version_of(["curl", "--version"]),
            "wrk": version_of(["wrk", "--version"]),
            "nginx": version_of(["nginx", "-v"]),
            "docker-registry": version_of(["docker-registry", "--version"]),
        },
    }


def main(argv: list[str] | None = None) -> None:
    args = parse_args(argv)
    sizes = sizes_for(args)
    results = Results(meta=describe(args, sizes))
    started = time.monotonic()
    if args.s3:
        run_s3_only(args, results)
    else:
        run_sections(args, sizes, results)
    results.meta["seconds"] = round(time.monotonic() - started, 1)
    results.meta["load_after"] = os.getloadavg()
    results.note("the machine is shared and noisy: compare ratios taken in the same run")
    print(render_table(results))
    args.results.mkdir(parents=True, exist_ok=True)
    output = args.results / RESULTS_FILE
    results.write(output)
    log(f"wrote {output} ({results.meta['seconds']} s)")


def run_s3_only(args: argparse.Namespace, results: Results) -> None:
    from bench import s3

    results.meta["sections"] = ["s3"]
    with scratch(args) as workdir, postgres(workdir) as pg_url:
        database_url = create_database(pg_url, "casd_s3")
        s3.run_s3(s3.sizes_for(args.quick, args.rounds), workdir, results, database_url, log)


def run_sections(args: argparse.Namespace, sizes: Sizes, results: Results) -> None:
    with scratch(args) as workdir, postgres(workdir) as pg_url:
        workers = [int(item) for item in args.workers.split(",") if item.strip()]
        casds = [
            Casd(workdir, create_database(pg_url, f"casd_w{count}"), count, casd_env(args))
            for count in workers
        ]
        if args.baseline:
            # The same workloads on another tree (an older commit, say), side by side.
            env = {**casd_env(args), "PYTHONPATH": str(args.baseline.absolute())}
            casds += [
                Casd(workdir, create_database(pg_url, f"base_w{n}"), n, env, kind="base")
                for n in workers
            ]
        peers = make_peers(args, workdir, results)
        run = Run(sizes, results, workdir, casds, peers, args.profile)
        try:
            for server in run.targets:
                log(f"starting {server.name} on port {server.port}")
                server.start()
            probe(run)
            for name in args.sections:
                log(f"section {name}")
                RUNNERS[name](run)
        finally:
            for server in run.targets:
                server.stop()
    add_baseline_ratios(results)
    add_targets(results, run)


def probe(run: Run) -> None:
    """Which casd endpoints are in the tree: sections skip what is not there yet."""
    if not run.casds:
        return
    first = run.casds[0]
    run.has_uploads = first.has_uploads
    run.has_names = first.names_ready()
    if not run.has_uploads:
        run.results.note("casd has no /v1/uploads yet: resumable figures skipped")
    if not run.has_names:
        run.results.note("casd has no /v1/names yet: name figures skipped")


def add_baseline_ratios(results: Results) -> None:
    """casd-wN / base-wN for every headline figure measured on both."""
    for key in list(results.figures):
        section, _, name = key.rpartition(".")
        if not name.startswith("casd-w") or "/" in key:
            continue
        base = f"{section}.{name.replace('casd-', 'base-')}"
        if results.get(base) is not None:
            label = results.figures[key].label.replace(f"[{name}]", "").strip()
            results.ratio(f"baseline.{key}", f"{label}: {name} / before", key, base)


def add_targets(results: Results, run: Run) -> None:
    """The goals of the issue, for the casd configurations they are stated for."""
    w1 = next((casd.name for casd in run.casds if casd.workers == 1), None)
    w2 = next((casd.name for casd in run.casds if casd.workers == 2), w1)
    targets = [
        Target("single-stream PUT >= 1.0 x nginx raw PUT", f"upload.put.{w1}/nginx", 1.0),
        Target("single-stream PUT >= 0.6 x min(limits)", f"upload.put.{w1}/limits", 0.6),
        Target("64 KiB PUTs >= 1,500/s", f"small.put.{w2}", 1500),
        Target("64 KiB PUTs >= 5 x registry", f"small.put.{w2}/registry", 5),
        Target("resolves >= 5,000/s (--workers 2)", f"names.resolve.{w2}", 5000),
        Target("resolves >= 3 x registry tag GET", f"names.resolve.{w2}/registry", 3),
        Target("CAS flips on distinct names >= 1,500/s", f"names.flip_distinct.{w2}", 1500),
        Target("flips >= 2 x registry tag PUT", f"names.flip_distinct.{w2}/registry", 2),
    ]
    for casd in run.casds:
        targets.append(Target(f"no flip lost [{casd.name}]", f"names.lost.{casd.name}", 0, True))
        for kind in ("put", "get", "resumable"):
            targets.append(
                Target(
                    f"RSS < 150 MiB moving {run.sizes.big_label}, {kind} [{casd.name}]",
                    f"memory.{kind}.big.{casd.name}",
                    150,
                    True,
                )
            )
    results.targets = [target for target in targets if results.get(target.key) is not None]
