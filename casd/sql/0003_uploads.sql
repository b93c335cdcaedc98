-- Resumable uploads (IETF draft "Resumable Uploads for HTTP"). The staged bytes live in the blob
-- store (<data-dir>/uploads/<id>); this row is the upload's shared state, the same for every
-- casd process: how many staged bytes are durable, and which request may write now.
CREATE TABLE uploads (
    id              text PRIMARY KEY,
    token_id        bigint NOT NULL REFERENCES tokens (id) ON DELETE CASCADE,
    upload_length   bigint CHECK (upload_length >= 0),
    expected_digest text CHECK (expected_digest ~ '^blake3:[0-9a-f]{64}$'),
    -- Staged bytes known durable (fsynced): never more than the staged file holds.
    upload_offset   bigint NOT NULL DEFAULT 0 CHECK (upload_offset >= 0),
    -- Bumped by every request that arrives for the upload: a writer with an older epoch stops.
    epoch           bigint NOT NULL DEFAULT 1,
    -- The epoch of the request writing now and the process it runs in; NULL: nobody writes.
    -- A process is alive while it holds the session advisory lock (casd, writer_process).
    writer_epoch    bigint,
    writer_process  integer,
    created_at      timestamptz NOT NULL DEFAULT now(),
    updated_at      timestamptz NOT NULL DEFAULT now(),
    CHECK (upload_length IS NULL OR upload_offset <= upload_length),
    CHECK ((writer_epoch IS NULL) = (writer_process IS NULL))
);
-- The expiry sweep looks for idle uploads.
CREATE INDEX uploads_updated_at ON uploads (updated_at);
