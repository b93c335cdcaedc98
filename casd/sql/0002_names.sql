-- Names map to blob digests. The foreign key makes "a name points at a blob row that is gone"
-- impossible: the collector can only delete blob rows that no name references. Names are ASCII
-- and ordered bytewise (C collation) whatever the database's locale, so listings and prefix
-- ranges are the same everywhere and use the primary key.
CREATE TABLE names (
    name       text COLLATE "C" PRIMARY KEY,
    digest     text NOT NULL REFERENCES blobs (digest) ON DELETE RESTRICT,
    version    bigint NOT NULL CHECK (version >= 1),
    metadata   jsonb NOT NULL DEFAULT '{}'::jsonb CHECK (jsonb_typeof(metadata) = 'object'),
    updated_at timestamptz NOT NULL DEFAULT now(),
    updated_by text NOT NULL
);
CREATE INDEX names_digest ON names (digest);

-- Every change of a name, kept for good. Versions continue across delete and re-create, so
-- (name, version) identifies one change. Digests here are not foreign keys: history outlives
-- collected blobs.
CREATE TABLE name_history (
    name            text NOT NULL,
    version         bigint NOT NULL,
    action          text NOT NULL CHECK (action IN ('create', 'update', 'delete')),
    digest          text,
    previous_digest text,
    metadata        jsonb,
    actor           text NOT NULL,
    at              timestamptz NOT NULL DEFAULT now(),
    PRIMARY KEY (name, version)
);
CREATE INDEX name_history_digest ON name_history (digest);
