"""Prometheus metrics.

``casd serve`` runs prometheus_client in multiprocess mode: every process writes its counters,
histograms and gauges to files of its own in the server's metrics directory (cleaned at each
start), and ``/metrics`` adds up the files of all of them, including workers that died (their
counters stay; their live gauges are removed), so a counter never goes back whichever worker
answers the scrape. Other commands count in memory. Gauges about what is stored come from the
database and the blob store at scrape time: every process and node sees the same numbers.
"""

from __future__ import annotations

import asyncio
import contextlib
import math
import os
from collections.abc import Iterable, Mapping
from pathlib import Path

from prometheus_client import (
    CollectorRegistry,
    Counter,
    Gauge,
    Histogram,
    generate_latest,
    multiprocess,
)
from prometheus_client.core import GaugeMetricFamily, Metric

from casd.database import Database

REGISTRY = CollectorRegistry(auto_describe=True)

# From a millisecond to an hour (a multi-gigabyte transfer on a slow link).
SECONDS_BUCKETS = (0.001, 0.005, 0.025, 0.1, 0.25, 1, 2.5, 10, 30, 60, 300, 900, 3600, math.inf)
# From 1 KiB to 64 GiB, by fours.
BYTES_BUCKETS = (*(1024 * 4**power for power in range(14)), math.inf)

REQUESTS = Counter(
    "casd_http_requests",
    "HTTP requests answered; 499: the client closed the connection first",
    ["method", "route", "status"],
    registry=REGISTRY,
)
REQUEST_SECONDS = Histogram(
    "casd_http_request_seconds",
    "Time to answer HTTP requests",
    ["method", "route"],
    buckets=SECONDS_BUCKETS,
    registry=REGISTRY,
)
REQUEST_RECEIVED_BYTES = Histogram(
    "casd_http_request_received_bytes",
    "Body bytes received per HTTP request",
    ["method", "route"],
    buckets=BYTES_BUCKETS,
    registry=REGISTRY,
)
REQUEST_SENT_BYTES = Histogram(
    "casd_http_request_sent_bytes",
    "Bytes sent per HTTP request (headers and body)",
    ["method", "route"],
    buckets=BYTES_BUCKETS,
    registry=REGISTRY,
)
UPLOADS_IN_FLIGHT = Gauge(
    "casd_uploads_in_flight",
    "Upload requests (blob PUT and POST, upload POST and PATCH) receiving their body now",
    multiprocess_mode="livesum",
    registry=REGISTRY,
)
WORKER_EXITS = Counter(
    "casd_worker_exits",
    "Worker processes that ended; casd serve restarts them unless it is stopping",
    registry=REGISTRY,
)
BYTES_RECEIVED = Counter(
    "casd_blob_bytes_received", "Blob bytes stored by uploads (new or again)", registry=REGISTRY
)
BYTES_SENT = Counter("casd_blob_bytes_sent", "Blob bytes sent", registry=REGISTRY)
BLOBS_CREATED = Counter("casd_blobs_created", "Blobs newly stored", registry=REGISTRY)
BLOBS_QUARANTINED = Counter(
    "casd_blobs_quarantined", "Blobs found corrupt and quarantined", registry=REGISTRY
)
SCRUBBED_BLOBS = Counter("casd_scrubbed_blobs", "Blobs re-hashed by scrubs", registry=REGISTRY)
SCRUBBED_BYTES = Counter("casd_scrubbed_bytes", "Bytes re-hashed by scrubs", registry=REGISTRY)
SCRUB_FINDINGS = Counter(
    "casd_scrub_findings",
    "What scrubs found and reconciled: corrupt, missing, restored, adopted, orphan_quarantined",
    ["finding"],
    registry=REGISTRY,
)
COLLECTED_BLOBS = Counter(
    "casd_collected_blobs", "Blobs deleted by garbage collection", registry=REGISTRY
)
COLLECTED_BYTES = Counter(
    "casd_collected_bytes", "Bytes deleted by garbage collection", registry=REGISTRY
)
RETENTION_DELETED = Counter(
    "casd_retention_deleted_names", "Names deleted by retention policies", registry=REGISTRY
)


async def render(db: Database, staging_dirs: Mapping[str, Path]) -> bytes:
    """The text exposition: the counters of every process, and the shared gauges."""
    shared = [*await _stored_blobs(db), *await _last_runs(db), *await _usage(db)]
    return await asyncio.to_thread(_exposition, shared, staging_dirs)


def _exposition(shared: list[Metric], staging_dirs: Mapping[str, Path]) -> bytes:
    """Blocking: reads the metric files of all processes and the staging directories."""
    registry = REGISTRY
    if os.environ.get("PROMETHEUS_MULTIPROC_DIR"):
        registry = CollectorRegistry()
        multiprocess.MultiProcessCollector(registry)  # type: ignore[no-untyped-call]
    gauges = CollectorRegistry(auto_describe=False)
    gauges.register(_Fixed([*shared, *_staged(staging_dirs)]))
    return generate_latest(registry) + generate_latest(gauges)


class _Fixed:
    """A collector of metrics computed beforehand."""

    def __init__(self, families: list[Metric]) -> None:
        self.families = families

    def collect(self) -> Iterable[Metric]:
        return self.families


async def _stored_blobs(db: Database) -> list[Metric]:
    blobs = GaugeMetricFamily(
        "casd_stored_blobs", "Blobs in the store by status", labels=["status"]
    )
    size = GaugeMetricFamily("casd_stored_bytes", "Bytes in the store by status", labels=["status"])
    totals = {status: (0, 0) for status in ("ok", "quarantined", "missing")}
    for row in await db.fetch("blob_totals"):
        totals[row["status"]] = (row["blobs"], row["bytes"])
    for status, (count, total) in totals.items():
        blobs.add_metric([status], count)
        size.add_metric([status], total)
    return [blobs, size]


async def _last_runs(db: Database) -> list[Metric]:
    """The last scrub and gc of any process (CLI or server), from the database."""
    when = GaugeMetricFamily(
        "casd_last_run_timestamp_seconds", "When the last scrub or gc finished", labels=["kind"]
    )
    stats = GaugeMetricFamily(
        "casd_last_run", "Counts and bytes of the last scrub or gc", labels=["kind", "stat"]
    )
    for row in await db.fetch("last_maintenance_runs"):
        when.add_metric([row["kind"]], row["finished_at"].timestamp())
        for stat, value in row["stats"].items():
            if isinstance(value, int | float) and not isinstance(value, bool):
                stats.add_metric([row["kind"], stat], value)
    return [when, stats]


async def _usage(db: Database) -> list[Metric]:
    """Budgets and usage of the tokens in use and of the prefixes with quotas."""
    token_used = GaugeMetricFamily(
        "casd_token_used_bytes", "Bytes of new blobs stored by a token's uploads", labels=["token"]
    )
    token_quota = GaugeMetricFamily(
        "casd_token_quota_bytes", "A token's byte budget", labels=["token"]
    )
    prefix_used = GaugeMetricFamily(
        "casd_prefix_used_bytes",
        "Bytes referenced by the names under a prefix with a quota",
        labels=["prefix"],
    )
    prefix_quota = GaugeMetricFamily(
        "casd_prefix_quota_bytes", "A prefix's quota", labels=["prefix"]
    )
    for row in await db.fetch("token_usage"):
        token_used.add_metric([str(row["id"])], row["used_bytes"])
        if row["quota_bytes"] is not None:
            token_quota.add_metric([str(row["id"])], row["quota_bytes"])
    for row in await db.fetch("prefix_usage"):
        prefix_used.add_metric([row["prefix"]], row["used_bytes"])
        prefix_quota.add_metric([row["prefix"]], row["quota_bytes"])
    return [token_used, token_quota, prefix_used, prefix_quota]


def _files_in(directory: Path) -> list[os.DirEntry[str]]:
    """The files in ``directory`` and in its directories (a resumable upload's segments)."""
    files: list[os.DirEntry[str]] = []
    with os.scandir(directory) as entries:
        for entry in entries:
            if entry.is_dir(follow_symlinks=False):
                with contextlib.suppress(FileNotFoundError), os.scandir(entry.path) as inner:
                    files.extend(inner)
            else:
                files.append(entry)
    return files


def _staged(staging_dirs: Mapping[str, Path]) -> list[Metric]:
    """Bytes and files staged on disk: uploads in progress and resumable uploads."""
    size = GaugeMetricFamily(
        "casd_staged_bytes", "Bytes of unfinished uploads on disk", labels=["area"]
    )
    files = GaugeMetricFamily(
        "casd_staged_files", "Files of unfinished uploads on disk", labels=["area"]
    )
    for area, directory in staging_dirs.items():
        count, total = 0, 0
        try:
            for entry in _files_in(directory):
                try:
                    total += entry.stat(follow_symlinks=False).st_size
                    count += 1
                except FileNotFoundError:  # published or removed meanwhile
                    pass
        except FileNotFoundError:
            pass
        size.add_metric([area], total)
        files.add_metric([area], count)
    return [size, files]
