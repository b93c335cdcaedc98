"""Prometheus metrics. Counters are per process; gauges come from the database, shared by all."""

from __future__ import annotations

from prometheus_client import CollectorRegistry, Counter, Gauge, Histogram, generate_latest

from casd.database import Database

REGISTRY = CollectorRegistry(auto_describe=True)

REQUESTS = Counter(
    "casd_http_requests", "HTTP requests answered", ["method", "route", "status"], registry=REGISTRY
)
REQUEST_SECONDS = Histogram(
    "casd_http_request_seconds",
    "Time to answer HTTP requests",
    ["method", "route"],
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
# The last scrub and gc of any process (CLI or server), from the database like the gauges below.
LAST_RUN_TIME = Gauge(
    "casd_last_run_timestamp_seconds",
    "When the last scrub or gc finished",
    ["kind"],
    registry=REGISTRY,
)
LAST_RUN = Gauge(
    "casd_last_run", "Counts and bytes of the last scrub or gc", ["kind", "stat"], registry=REGISTRY
)
STORED_BLOBS = Gauge(
    "casd_stored_blobs", "Blobs in the store by status", ["status"], registry=REGISTRY
)
STORED_BYTES = Gauge(
    "casd_stored_bytes", "Bytes in the store by status", ["status"], registry=REGISTRY
)


async def render(db: Database) -> bytes:
    """The text exposition, with the shared gauges refreshed from the database."""
    for status in ("ok", "quarantined", "missing"):
        STORED_BLOBS.labels(status).set(0)
        STORED_BYTES.labels(status).set(0)
    for row in await db.fetch("blob_totals"):
        STORED_BLOBS.labels(row["status"]).set(row["blobs"])
        STORED_BYTES.labels(row["status"]).set(row["bytes"])
    for row in await db.fetch("last_maintenance_runs"):
        LAST_RUN_TIME.labels(row["kind"]).set(row["finished_at"].timestamp())
        for stat, value in row["stats"].items():
            if isinstance(value, int | float) and not isinstance(value, bool):
                LAST_RUN.labels(row["kind"], stat).set(value)
    return generate_latest(REGISTRY)
