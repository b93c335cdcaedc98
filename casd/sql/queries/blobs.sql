-- name: lock_blob_shared
-- Taken by everything that publishes or references a blob; the collector takes it exclusively.
SELECT pg_advisory_xact_lock_shared($1);

-- name: lock_blob_exclusive
SELECT pg_advisory_xact_lock($1);

-- name: get_blob
SELECT digest, size, status, created_at, last_used_at, verified_at FROM blobs WHERE digest = $1;

-- name: lock_and_upsert_blob
-- Before a publisher publishes the bytes, in one round trip: the blob's shared lock (against
-- the collector), then its publish lock (one publisher of a digest at a time, so "exactly one
-- creation" never rests on the store's conditional writes; two-key space, ($4, $5), so
-- it never meets the one-key locks), then the row, held uncommitted until the bytes are in
-- place. A new row counts as verified (the publisher puts its verified bytes in); an existing
-- one is only used: its status says whether the bytes stored under it are suspect. Lock order
-- everywhere: shared(k), then publish(k).
INSERT INTO blobs AS b (digest, size, verified_at)
SELECT $1, $2, now()
FROM (SELECT pg_advisory_xact_lock($4, $5)
      FROM (SELECT pg_advisory_xact_lock_shared($3)) AS shared) AS published
ON CONFLICT (digest) DO UPDATE SET last_used_at = now()
RETURNING (xmax = 0) AS created, status;

-- name: heal_blob
-- The publisher's verified bytes replaced suspect or absent ones under an existing row.
UPDATE blobs SET status = 'ok', verified_at = now() WHERE digest = $1;

-- name: unverify_blob
-- A new row over bytes that the store kept instead of the publisher's: nobody verified them.
UPDATE blobs SET verified_at = NULL WHERE digest = $1;

-- name: touch_blob
UPDATE blobs SET last_used_at = now() WHERE digest = $1;

-- name: set_blob_status
UPDATE blobs SET status = $2 WHERE digest = $1;

-- name: delete_blob_row
DELETE FROM blobs WHERE digest = $1;

-- name: blob_totals
-- Per-status counts and bytes, for /metrics: every process sees the same numbers.
SELECT status, count(*) AS blobs, coalesce(sum(size), 0)::bigint AS bytes FROM blobs GROUP BY status;
