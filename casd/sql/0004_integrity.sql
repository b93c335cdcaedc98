-- Scrub and garbage-collection runs, whoever ran them (the CLI or the periodic scrub of any
-- node): what each found, for /metrics, and when the last one finished, which decides when the
-- periodic scrub is due again across restarts and nodes.
CREATE TABLE maintenance_runs (
    id          bigserial PRIMARY KEY,
    kind        text NOT NULL CHECK (kind IN ('scrub', 'gc')),
    started_at  timestamptz NOT NULL,
    finished_at timestamptz NOT NULL DEFAULT clock_timestamp(),
    stats       jsonb NOT NULL DEFAULT '{}'::jsonb CHECK (jsonb_typeof(stats) = 'object')
);
CREATE INDEX maintenance_runs_latest ON maintenance_runs (kind, finished_at DESC);

-- Whether the collector may delete a blob: no name references it, it is not among the last
-- keep_versions distinct digests of any name's history (a digest is kept while fewer than
-- keep_versions other digests followed its last use by that name), and it was not uploaded or
-- re-uploaded within the grace period. One definition for listing and for deleting.
CREATE FUNCTION blob_collectable(
    blob_digest text, last_used timestamptz, keep_versions integer, grace_seconds float8
) RETURNS boolean LANGUAGE sql STABLE AS $$
    SELECT last_used < clock_timestamp() - make_interval(secs => grace_seconds)
        AND NOT EXISTS (SELECT 1 FROM names n WHERE n.digest = blob_digest)
        AND NOT EXISTS (
            SELECT 1 FROM name_history h
            WHERE h.digest = blob_digest
                AND (SELECT count(DISTINCT later.digest) FROM name_history later
                     WHERE later.name = h.name AND later.version > h.version
                         AND later.digest <> blob_digest) < keep_versions)
$$;
