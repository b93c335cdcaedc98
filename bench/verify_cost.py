"""What verify-on-read costs: full GETs from a casd that hashes what it sends (the default)
against one with ``CASD_VERIFY_READS=0``, in one run, on one machine, from the same files.

    python -m bench.verify_cost [--size-mib 256] [--rounds 5] [--concurrency 1,4] [--small 64]

Both servers share one data directory and its embedded PostgreSQL, so they read the very same
(page-cached) files; their rounds alternate so drift on a shared machine hits both alike. It
prints the median throughput of each side with the cost in percent, and the server's CPU time
per GB sent (robust against other load on a shared machine: what a CPU-bound server pays).
"""

from __future__ import annotations

import argparse
import asyncio
import os
import signal
import socket
import statistics
import subprocess
import sys
import tempfile
import time
import urllib.request
from dataclasses import dataclass, field
from pathlib import Path
from typing import IO

import aiohttp
import blake3

MiB = 1024 * 1024


def free_port() -> int:
    with socket.socket() as probe:
        probe.bind(("127.0.0.1", 0))
        port: int = probe.getsockname()[1]
        return port


def start_casd(data_dir: Path, verify: bool, log: IO[bytes]) -> tuple[subprocess.Popen[bytes], str]:
    """A ``casd serve`` on a free loopback port, once it is ready."""
    port = free_port()
    url = f"http://127.0.0.1:{port}"
    command = [sys.executable, "-m", "casd", "serve", "--data-dir", str(data_dir)]
    env = {"CASD_LISTEN": f"127.0.0.1:{port}", "CASD_VERIFY_READS": "1" if verify else "0"}
    env["CASD_LOG_LEVEL"] = "WARNING"
    process = subprocess.Popen(command, stdout=log, stderr=log, env={**os.environ, **env})
    deadline = time.monotonic() + 120
    while time.monotonic() < deadline and process.poll() is None:
        try:
            with urllib.request.urlopen(f"{url}/readyz", timeout=2) as answer:
                if answer.status == 200:
                    return process, url
        except OSError:
            time.sleep(0.2)
    process.terminate()
    raise RuntimeError(f"casd did not become ready (see {log.name})")


def stop(process: subprocess.Popen[bytes]) -> None:
    process.send_signal(signal.SIGTERM)
    try:
        process.wait(30)
    except subprocess.TimeoutExpired:
        process.kill()
        process.wait()


def upload(url: str, token: str, data: bytes) -> str:
    digest = "blake3:" + blake3.blake3(data).hexdigest()
    request = urllib.request.Request(
        f"{url}/v1/blobs/{digest}",
        data=data,
        method="PUT",
        headers={"Authorization": f"Bearer {token}"},
    )
    with urllib.request.urlopen(request, timeout=600) as answer:
        assert answer.status in (200, 201)
    return digest


async def get_all(session: aiohttp.ClientSession, url: str) -> int:
    received = 0
    async with session.get(url) as response:
        assert response.status == 200, response.status
        async for chunk in response.content.iter_chunked(1024 * 1024):
            received += len(chunk)
    return received


async def throughput(base: str, digests: list[str], concurrency: int, total: int) -> float:
    """MB/s (10**6 bytes) of ``total`` full GETs, ``concurrency`` at a time."""
    pending = [digests[n % len(digests)] for n in range(total)]
    connector = aiohttp.TCPConnector(limit=concurrency)
    async with aiohttp.ClientSession(connector=connector) as session:

        async def worker() -> int:
            received = 0
            while pending:
                received += await get_all(session, f"{base}/v1/blobs/{pending.pop()}")
            return received

        started = time.perf_counter()
        received = sum(await asyncio.gather(*(worker() for _ in range(concurrency))))
        return received / (time.perf_counter() - started) / 1e6


def cpu_seconds(pid: int) -> float:
    """User and system CPU time of a process so far."""
    fields = Path(f"/proc/{pid}/stat").read_text().rpartition(")")[2].split()
    return (int(fields[11]) + int(fields[12])) / os.sysconf("SC_CLK_TCK")


@dataclass
class Side:
    url: str
    pid: int
    rates: list[float] = field(default_factory=list)  # MB/s of each round
    cpu: float = 0.0  # server CPU seconds over all rounds
    megabytes: float = 0.0

    def run(self, digests: list[str], concurrency: int, gets: int) -> None:
        cpu_before, started = cpu_seconds(self.pid), time.perf_counter()
        rate = asyncio.run(throughput(self.url, digests, concurrency, gets))
        self.megabytes += rate * (time.perf_counter() - started)
        self.cpu += cpu_seconds(self.pid) - cpu_before
        self.rates.append(rate)

    @property
    def cpu_per_gb(self) -> float:
        return self.cpu / self.megabytes * 1000


def measure(
    servers: dict[str, tuple[str, int]],
    digests: list[str],
    concurrency: int,
    gets: int,
    rounds: int,
) -> dict[str, Side]:
    sides = {name: Side(url, pid) for name, (url, pid) in servers.items()}
    for round_number in range(rounds):
        order = list(sides) if round_number % 2 == 0 else list(reversed(sides))
        for name in order:
            sides[name].run(digests, concurrency, gets)
    return sides


def report(label: str, sides: dict[str, Side]) -> None:
    verified, unverified = sides["verified"], sides["unverified"]
    rate_v, rate_u = statistics.median(verified.rates), statistics.median(unverified.rates)
    rate_cost = (rate_u - rate_v) / rate_u * 100
    cpu_cost = (verified.cpu_per_gb - unverified.cpu_per_gb) / verified.cpu_per_gb * 100
    print(
        f"{label:<32} MB/s {rate_v:6.0f} vs {rate_u:6.0f} ({rate_cost:5.1f}%)"
        f"   server CPU s/GB {verified.cpu_per_gb:5.3f} vs {unverified.cpu_per_gb:5.3f}"
        f" ({cpu_cost:5.1f}%)"
    )


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--size-mib", type=int, default=256, help="size of the large blob")
    parser.add_argument("--small", type=int, default=64, help="number of 1 MiB blobs")
    parser.add_argument("--rounds", type=int, default=5, help="alternating rounds per workload")
    parser.add_argument("--concurrency", default="1,4", help="comma-separated client counts")
    options = parser.parse_args()

    with tempfile.TemporaryDirectory(prefix="casd-verify-cost-") as tmp:
        data_dir = Path(tmp) / "data"
        log = (Path(tmp) / "casd.log").open("ab")
        services: list[subprocess.Popen[bytes]] = []
        try:
            verified, verified_url = start_casd(data_dir, True, log)
            services.append(verified)
            token = (data_dir / "admin.token").read_text().strip()
            large = [upload(verified_url, token, os.urandom(options.size_mib * MiB))]
            small = [upload(verified_url, token, os.urandom(MiB)) for _ in range(options.small)]
            unverified, unverified_url = start_casd(data_dir, False, log)
            services.append(unverified)
            servers = {
                "verified": (verified_url, verified.pid),
                "unverified": (unverified_url, unverified.pid),
            }
            print(
                f"casd full GETs, verified vs unverified, {os.cpu_count()} CPUs, {options.rounds}"
                " rounds: median throughput, and server CPU per GB sent; (cost in %)"
            )
            for concurrency in (int(n) for n in options.concurrency.split(",")):
                gets = max(4, 2 * concurrency)
                label = f"{options.size_mib} MiB blob x{gets}, {concurrency} clients"
                report(label, measure(servers, large, concurrency, gets, options.rounds))
                label = f"1 MiB blobs x{8 * options.small}, {concurrency * 4} clients"
                report(
                    label,
                    measure(servers, small, concurrency * 4, 8 * options.small, options.rounds),
                )
        finally:
            for service in reversed(services):
                stop(service)
            log.close()


if __name__ == "__main__":
    main()
