-- name: insert_upload
-- A new upload, written to at once by the request that creates it (epoch 1).
INSERT INTO uploads (id, token_id, upload_length, expected_digest, writer_epoch, writer_process)
VALUES ($1, $2, $3, $4, 1, $5);

-- name: bump_upload_epoch
-- A request arrives: it becomes the newest. Every casd process hears of it, and the one whose
-- writer holds an older epoch ends that writer.
WITH bumped AS (
    UPDATE uploads SET epoch = epoch + 1, updated_at = now()
    WHERE id = $1 AND token_id = $2
    RETURNING id, epoch, writer_epoch, writer_process, upload_offset, upload_length,
              expected_digest, completed_digest, segments
)
SELECT epoch, writer_epoch, writer_process, upload_offset, upload_length, expected_digest,
       completed_digest, segments, pg_notify('casd_uploads', id || ' ' || epoch) AS notified
FROM bumped;

-- name: get_upload_lease
SELECT epoch, writer_epoch, writer_process, upload_offset, upload_length, expected_digest,
       completed_digest, segments
FROM uploads WHERE id = $1;

-- name: claim_upload
-- Become the writer: only while still the newest request and nobody else writes.
UPDATE uploads SET writer_epoch = epoch, writer_process = $3, updated_at = now()
WHERE id = $1 AND epoch = $2 AND writer_epoch IS NULL AND completed_digest IS NULL
RETURNING upload_offset, upload_length, expected_digest, completed_digest, segments;

-- name: clear_dead_writer
-- The writer's process is gone (its session lock with it): its recorded offset stands.
UPDATE uploads SET writer_epoch = NULL, writer_process = NULL
WHERE id = $1 AND writer_epoch = $2;

-- name: upload_process_alive
-- A casd process holds the session lock (casd, its number) for as long as it lives.
SELECT NOT pg_try_advisory_xact_lock($1, $2);

-- name: lock_upload_process
SELECT pg_try_advisory_lock($1, $2);

-- name: set_upload_length
UPDATE uploads SET upload_length = $3
WHERE id = $1 AND writer_epoch = $2 AND upload_length IS NULL;

-- name: checkpoint_upload
-- Durable progress of the writer: the new offset and the segments that hold the bytes up to
-- it ($4, all of them in order: a jsonb array of [name, size]), recorded together and only
-- while this writer holds the upload, so a stale writer's segments are never recorded.
-- Returns the newest epoch (newer than the writer's: stop).
UPDATE uploads SET upload_offset = $3, segments = $4::jsonb, updated_at = now()
WHERE id = $1 AND writer_epoch = $2
RETURNING epoch;

-- name: release_upload
-- The writer is done: record its durable offset with its segments ($4, as in
-- checkpoint_upload) and wake whoever waits for the upload.
WITH released AS (
    UPDATE uploads SET upload_offset = $3, segments = $4::jsonb,
                       writer_epoch = NULL, writer_process = NULL, updated_at = now()
    WHERE id = $1 AND writer_epoch = $2
    RETURNING id, epoch
)
SELECT epoch, pg_notify('casd_uploads', id || ' ' || epoch) AS notified FROM released;

-- name: delete_upload
-- The writer removes its upload (finished, discarded or deleted by its owner).
DELETE FROM uploads WHERE id = $1 AND writer_epoch = $2 RETURNING id;

-- name: expire_uploads
-- Idle uploads; several processes may sweep at once, each row goes to one of them. A request
-- still stuck writing to one (a client silent for that long) hears of it and ends.
WITH expired AS (
    DELETE FROM uploads WHERE updated_at < now() - make_interval(secs => $1::float8)
    RETURNING id
)
SELECT id, pg_notify('casd_uploads', id || ' 9223372036854775807') AS notified FROM expired;

-- name: uploads_needing_segments
-- Uploads that still need their staged bytes (a completed one's were published): which
-- segments are recorded, and which writer may still record more.
SELECT id, writer_epoch, segments
FROM uploads WHERE id = ANY($1::text[]) AND completed_digest IS NULL;

-- name: complete_upload
-- The writer published the upload's blob: recorded in the transaction that records the blob,
-- so the upload is complete exactly when the blob is stored.
WITH completed AS (
    UPDATE uploads SET completed_digest = $3, upload_offset = $4, upload_length = $4,
                       segments = '[]'::jsonb, writer_epoch = NULL, writer_process = NULL,
                       updated_at = now()
    WHERE id = $1 AND writer_epoch = $2
    RETURNING id, epoch
)
SELECT epoch, pg_notify('casd_uploads', id || ' ' || epoch) AS notified FROM completed;

-- name: delete_completed_upload
DELETE FROM uploads WHERE id = $1 AND token_id = $2 AND completed_digest IS NOT NULL;

-- name: forget_upload
-- The request that created the upload failed before the client learnt its id: remove it.
DELETE FROM uploads WHERE id = $1 AND writer_epoch IS NULL;

-- name: list_uploads
-- The uploads of one token in progress, oldest first: their durable offsets and how long they
-- have lived (completed ones are not listed).
SELECT id, upload_offset, upload_length, expected_digest, created_at,
       extract(epoch FROM now() - created_at)::float8 AS age,
       extract(epoch FROM now() - updated_at)::float8 AS idle
FROM uploads WHERE token_id = $1 AND completed_digest IS NULL
ORDER BY created_at, id
LIMIT $2;
