-- The operations page (casd/web). Counting every blob by status and by when it was stored is a
-- pass over the whole table: its result is kept in web_figures and recomputed in the
-- background when older than a few seconds, so no page waits for it. Quarantined and missing
-- blobs are few and always counted live, from their partial index.
CREATE INDEX blobs_created_at ON blobs (created_at);
CREATE INDEX blobs_unhealthy ON blobs (status) INCLUDE (size) WHERE status <> 'ok';

CREATE TABLE web_figures (
    only_row    boolean PRIMARY KEY DEFAULT true CHECK (only_row),
    computed_at timestamptz NOT NULL,
    figures     jsonb NOT NULL CHECK (jsonb_typeof(figures) = 'object')
);
