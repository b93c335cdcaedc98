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
BYTES_RECEIVED = Counter("casd_blob_bytes_received", "Blob bytes received", registry=REGISTRY)
BYTES_SENT = Counter("casd_blob_bytes_sent", "Blob bytes sent", registry=REGISTRY)
BLOBS_CREATED = Counter("casd_blobs_created", "Blobs newly stored", registry=REGISTRY)
BLOBS_QUARANTINED = Counter(
    "casd_blobs_quarantined", "Blobs found corrupt and quarantined", registry=REGISTRY
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
    return generate_latest(REGISTRY)
