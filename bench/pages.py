"""``python -m bench.pages``: how long each web page takes with 100,000 names in the database.

An embedded PostgreSQL in a temporary directory, one ``casd serve`` on a loopback port, the
rows of ``bench/pages_data.sql`` loaded straight into its database (no blob files: pages read
rows only), ANALYZE, then every page requested ``--rounds`` times one after the other. The
server's own time per request comes from its access log (``seconds``); the client's round trip
is printed beside it.
"""

from __future__ import annotations

import argparse
import asyncio
import json
import statistics
import sys
import tempfile
import time
import urllib.request
from pathlib import Path

import asyncpg

from bench.procs import LOOPBACK, Service, free_port
from casd.embedded import EmbeddedPostgres
from casd.sqlfiles import parse_queries

DATA = Path(__file__).with_name("pages_data.sql")
TARGET_MS = 100.0


def pages(digest: str) -> dict[str, str]:
    return {
        "front page (root folder)": "/",
        "folder farm3/ (100 sub-folders)": "/?prefix=farm3/",
        "folder farm3/job42/ (100 names)": "/?prefix=farm3/job42/",
        "next page of a folder": "/?prefix=farm3/&after=farm3/job49/~",
        "prefix search farm3/job4": "/?prefix=farm3/job4",
        "name (2 versions)": "/names/farm3/job42/image-1.qcow2",
        "name (200 versions, page of 50)": "/names/hot/disk.qcow2",
        "blob": f"/blobs/{digest}",
        "operations": "/ops",
        "API reference": "/api",
    }


async def load(database_url: str, names: int) -> str:
    """Load the rows; return the digest of one named blob."""
    queries = parse_queries(DATA.read_text())
    connection = await asyncpg.connect(database_url)
    try:
        for name, sql in queries.items():
            if name == "bench_named_digest":
                continue
            started = time.monotonic()
            if "$1" in sql:
                await connection.execute(sql, names)
            else:
                await connection.execute(sql)
            print(f"  {name}: {time.monotonic() - started:.1f} s", file=sys.stderr)
        digest: str = await connection.fetchval(queries["bench_named_digest"])
        return digest
    finally:
        await connection.close()


async def create_database(server_url: str) -> str:
    connection = await asyncpg.connect(server_url)
    try:
        await connection.execute("CREATE DATABASE casd_bench_pages")
    finally:
        await connection.close()
    return server_url.replace("/postgres?", "/casd_bench_pages?")


def fetch(url: str) -> float:
    started = time.perf_counter()
    with urllib.request.urlopen(url, timeout=30) as answer:
        answer.read()
        assert answer.status == 200, url
    return (time.perf_counter() - started) * 1000


def server_ms(log: Path, path: str) -> list[float]:
    times = []
    for line in log.read_text(errors="replace").splitlines():
        if "casd.access" not in line:
            continue
        entry = json.loads(line[line.index("{") :])
        if entry["path"] == path.split("?")[0] and entry["status"] == 200:
            times.append(entry["seconds"] * 1000)
    return times


def measure(base: str, log: Path, path: str, rounds: int) -> tuple[list[float], list[float]]:
    for _ in range(3):
        fetch(base + path)  # warm caches and prepared statements
    before = len(server_ms(log, path))
    client = [fetch(base + path) for _ in range(rounds)]
    time.sleep(0.5)  # the access log is written by a thread of its own
    return client, server_ms(log, path)[before:]


def p95(values: list[float]) -> float:
    ordered = sorted(values)
    return ordered[min(len(ordered) - 1, int(len(ordered) * 0.95))]


def summary(values: list[float]) -> str:
    return f"{statistics.median(values):6.1f} {p95(values):6.1f} {max(values):6.1f}"


def load_average() -> str:
    return Path("/proc/loadavg").read_text().split(" ", 1)[0]


def run(names: int, rounds: int, workdir: Path) -> bool:
    with EmbeddedPostgres(workdir / "pg") as postgres:
        database_url = asyncio.run(create_database(postgres.url))
        port = free_port()
        log = workdir / "casd.log"
        casd = Service(
            "casd",
            [sys.executable, "-m", "casd", "serve", "--data-dir", str(workdir / "data"),
             "--database-url", database_url, "--listen", f"{LOOPBACK}:{port}"],
            log,
            {"CASD_LOG_LEVEL": "INFO"},
        )  # fmt: skip
        casd.start()
        try:
            base = f"http://{LOOPBACK}:{port}"
            casd.wait_http(base + "/readyz")
            print(f"loading {names} names ...", file=sys.stderr)
            digest = asyncio.run(load(database_url, names))
            return report(base, log, digest, names, rounds)
        finally:
            casd.stop()


def report(base: str, log: Path, digest: str, names: int, rounds: int) -> bool:
    print(f"\n{names} names, {rounds} requests per page, ms (median p95 max)")
    print(f"load average before: {load_average()} (2 cores shared with other work)")
    print(f"{'page':36} {'server':>20}   {'client round trip':>20}")
    ok = True
    for label, path in pages(digest).items():
        client, server = measure(base, log, path, rounds)
        ok = ok and p95(server) < TARGET_MS
        print(f"{label:36} {summary(server):>20}   {summary(client):>20}")
    print(f"load average after: {load_average()}")
    print(f"every page under {TARGET_MS:.0f} ms of server time (p95): {'yes' if ok else 'NO'}")
    return ok


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0] if __doc__ else None)
    parser.add_argument("--names", type=int, default=100_000)
    parser.add_argument("--rounds", type=int, default=40)
    parser.add_argument("--workdir", type=Path, help="keep the database and log here")
    args = parser.parse_args()
    if args.workdir:
        sys.exit(0 if run(args.names, args.rounds, args.workdir) else 1)
    with tempfile.TemporaryDirectory(prefix="casd-bench-pages-", dir="/var/tmp") as workdir:
        sys.exit(0 if run(args.names, args.rounds, Path(workdir)) else 1)


if __name__ == "__main__":
    main()
