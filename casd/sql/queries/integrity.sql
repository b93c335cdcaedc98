-- Scrub, reconciliation and garbage collection. Every change here runs under the blob's
-- exclusive advisory lock (lock_blob_exclusive) and re-checks what it decided on.

-- name: use_healthy_blob
-- A re-upload of stored bytes that need not be sent again (Expect: 100-continue): it refreshes
-- last_used_at like a re-upload does; the caller holds the shared lock.
UPDATE blobs SET last_used_at = now() WHERE digest = $1 AND status = 'ok'
RETURNING digest, size, status, created_at, last_used_at;

-- name: mark_blob_missing
UPDATE blobs SET status = 'missing' WHERE digest = $1 AND status = 'ok' RETURNING digest;

-- name: scrub_batch
-- $1 after this digest, $2 limit, $3 seconds: "due" when not verified for that long (NULL: all).
-- Quarantined rows have no bytes at their path; missing rows are looked at in case they came back.
SELECT digest, size, status,
    ($3::float8 IS NULL OR verified_at IS NULL
        OR verified_at < clock_timestamp() - make_interval(secs => $3::float8)) AS due
FROM blobs
WHERE digest > $1 AND status IN ('ok', 'missing')
ORDER BY digest
LIMIT $2;

-- name: set_blob_verified
UPDATE blobs SET verified_at = clock_timestamp() WHERE digest = $1 AND status = 'ok';

-- name: restore_missing_blob
-- The bytes of a missing blob are back and verified.
UPDATE blobs SET status = 'ok', verified_at = clock_timestamp()
WHERE digest = $1 AND status = 'missing' RETURNING digest;

-- name: digests_with_rows
SELECT digest FROM blobs WHERE digest = ANY($1::text[]);

-- name: adopt_blob
-- A verified file that had no row. It counts as just uploaded, so the grace period protects it.
INSERT INTO blobs (digest, size, verified_at) VALUES ($1, $2, clock_timestamp())
ON CONFLICT (digest) DO NOTHING
RETURNING digest;

-- name: gc_candidates
-- $1 after this digest, $2 keep_versions, $3 grace in seconds, $4 limit (blob_collectable:
-- sql/0004_integrity.sql).
SELECT b.digest, b.size FROM blobs b
WHERE b.digest > $1 AND blob_collectable(b.digest, b.last_used_at, $2, $3)
ORDER BY b.digest
LIMIT $4;

-- name: gc_delete_blob
-- $1 digest, $2 keep_versions, $3 grace in seconds. The same conditions as gc_candidates,
-- evaluated afresh under the blob's exclusive lock; returns the size when the row is gone.
DELETE FROM blobs b
WHERE b.digest = $1 AND blob_collectable(b.digest, b.last_used_at, $2, $3)
RETURNING b.size;

-- name: record_maintenance_run
-- $1 kind, $2 seconds it took, $3 stats: both times on the database's clock.
INSERT INTO maintenance_runs (kind, started_at, stats)
VALUES ($1, clock_timestamp() - make_interval(secs => $2::float8), $3);

-- name: last_maintenance_runs
-- The latest run of each kind, for /metrics.
SELECT DISTINCT ON (kind) kind, finished_at, stats
FROM maintenance_runs
ORDER BY kind, finished_at DESC;

-- name: maintenance_due
-- $1 kind, $2 interval in seconds: true unless a run of that kind finished within the interval
-- (the database's clock, the same for every node).
SELECT coalesce(
    max(finished_at) < clock_timestamp() - make_interval(secs => $2::float8), true)
FROM maintenance_runs WHERE kind = $1;

-- name: try_lock_maintenance
-- A session lock on a dedicated connection: one periodic scrub at a time across all processes.
SELECT pg_try_advisory_lock(1935897186, $1);

-- name: unlock_maintenance
SELECT pg_advisory_unlock(1935897186, $1);
