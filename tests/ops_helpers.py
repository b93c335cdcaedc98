"""Helpers of the operations tests: worker processes, log lines, metric scrapes."""

from __future__ import annotations

import asyncio
import json
import time
from typing import Any

import aiohttp
import psutil
from prometheus_client.parser import text_string_to_metric_families

from tests.conftest import CasdServer

# (metric sample name, sorted labels) -> value
Samples = dict[tuple[str, tuple[tuple[str, str], ...]], float]


def process_title(process: psutil.Process) -> str:
    """What ps shows (setproctitle may leave empty arguments behind)."""
    return " ".join(part for part in process.cmdline() if part)


def workers_of(server: CasdServer) -> dict[int, psutil.Process]:
    """The server's worker processes by worker number, from their process titles."""
    assert server.process is not None
    found = {}
    for child in psutil.Process(server.process.pid).children():
        try:
            title = process_title(child)
        except psutil.NoSuchProcess:
            continue
        if title.startswith("casd serve: ") and " worker " in title:
            found[int(title.rsplit(" ", 1)[1])] = child
    return found


def wait_for_workers(
    server: CasdServer, count: int, timeout: float = 30
) -> dict[int, psutil.Process]:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        workers = workers_of(server)
        if len(workers) == count:
            return workers
        time.sleep(0.05)
    raise AssertionError(f"expected {count} workers, found {workers_of(server)}\n{server.log()}")


def log_entries(server: CasdServer) -> list[dict[str, Any]]:
    """Every line of the server's log, each parsed as one JSON object."""
    entries = []
    for number, line in enumerate(server.log().splitlines(), 1):
        try:
            entry = json.loads(line)
        except json.JSONDecodeError as error:
            raise AssertionError(f"log line {number} is not JSON: {line!r}") from error
        assert isinstance(entry, dict), line
        entries.append(entry)
    return entries


async def wait_for_log(
    server: CasdServer, predicate: Any, wait: float = 30
) -> list[dict[str, Any]]:
    """The log entries that match once at least one does (a writer thread writes the log)."""
    deadline = time.monotonic() + wait
    while time.monotonic() < deadline:
        found = [entry for entry in log_entries(server) if predicate(entry)]
        if found:
            return found
        await asyncio.sleep(0.05)
    raise AssertionError(f"no such log line:\n{server.log()}")


async def scrape(session: aiohttp.ClientSession, server: CasdServer) -> Samples:
    async with session.get(f"{server.url}/metrics") as response:
        assert response.status == 200
        text = await response.text()
    samples: Samples = {}
    for family in text_string_to_metric_families(text):
        for sample in family.samples:
            samples[(sample.name, tuple(sorted(sample.labels.items())))] = sample.value
    return samples


def total(samples: Samples, name: str, **labels: str) -> float:
    """The sum of the samples called ``name`` that carry ``labels``."""
    return sum(
        value
        for (sample, sample_labels), value in samples.items()
        if sample == name and set(labels.items()) <= set(sample_labels)
    )


def is_cumulative(name: str) -> bool:
    """Counters and histogram parts only ever grow."""
    return name.endswith(("_total", "_count", "_sum", "_bucket"))
