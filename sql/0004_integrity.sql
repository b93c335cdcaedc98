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
