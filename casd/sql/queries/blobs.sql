-- name: lock_blob_shared
-- Taken by everything that publishes or references a blob; the collector takes it exclusively.
SELECT pg_advisory_xact_lock_shared($1);

-- name: lock_blob_exclusive
SELECT pg_advisory_xact_lock($1);

-- name: get_blob
SELECT digest, size, status, created_at, last_used_at, verified_at FROM blobs WHERE digest = $1;

-- name: upsert_blob
-- Records a published blob. A re-upload refreshes last_used_at and heals a quarantined or
-- missing row (its file has just been replaced by verified bytes). Returns whether it is new.
INSERT INTO blobs AS b (digest, size, verified_at) VALUES ($1, $2, now())
ON CONFLICT (digest) DO UPDATE
    SET last_used_at = now(), status = 'ok', verified_at = now()
RETURNING (xmax = 0) AS created;

-- name: lock_and_upsert_blob
-- upsert_blob under lock_blob_shared, in one round trip: a publisher runs it before it moves
-- the bytes into place, holding both the lock and the (uncommitted) row until it commits.
INSERT INTO blobs AS b (digest, size, verified_at)
SELECT $1, $2, now() FROM (SELECT pg_advisory_xact_lock_shared($3)) AS locked
ON CONFLICT (digest) DO UPDATE
    SET last_used_at = now(), status = 'ok', verified_at = now()
RETURNING (xmax = 0) AS created;

-- name: touch_blob
UPDATE blobs SET last_used_at = now() WHERE digest = $1;

-- name: set_blob_status
UPDATE blobs SET status = $2 WHERE digest = $1;

-- name: delete_blob_row
DELETE FROM blobs WHERE digest = $1;

-- name: blob_totals
-- Per-status counts and bytes, for /metrics: every process sees the same numbers.
SELECT status, count(*) AS blobs, coalesce(sum(size), 0)::bigint AS bytes FROM blobs GROUP BY status;
