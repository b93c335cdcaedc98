-- Resumable uploads as segments (issue 11): the writer of epoch E stores its bytes in segments
-- "<E>.<n>" of the blob store, and each checkpoint records them here ([name, size] in order)
-- with the new offset, in one statement guarded by writer_epoch: a stale writer's bytes are
-- never recorded, and any casd node continues an upload from what is recorded here.
--
-- An upload staged before this migration kept its bytes in one file: its first upload_offset
-- bytes become segment "0.0" (no writer has epoch 0), which the file store moves into place.
ALTER TABLE uploads
    ADD COLUMN segments jsonb NOT NULL DEFAULT '[]'::jsonb
        CHECK (jsonb_typeof(segments) = 'array');

UPDATE uploads SET segments = jsonb_build_array(jsonb_build_array('0.0', upload_offset))
WHERE upload_offset > 0 AND completed_digest IS NULL;
