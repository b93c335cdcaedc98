-- A finished resumable upload keeps its row for a while (until CASD_UPLOAD_TTL of idleness):
-- the digest it was published as, recorded in the transaction that recorded the blob, so a
-- client whose final PATCH got no answer (a lost connection, a crash of the server just after
-- the commit) learns from HEAD or PATCH that the upload is complete and where its blob is.
ALTER TABLE uploads
    ADD COLUMN completed_digest text CHECK (completed_digest ~ '^blake3:[0-9a-f]{64}$'),
    ADD CHECK (completed_digest IS NULL OR writer_epoch IS NULL);
