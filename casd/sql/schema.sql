-- The whole schema that casd expects: what the migrations (casd/sql/NNNN_*.sql) produce when
-- applied in order, written as one file to read. tests/test_schema.py checks that a database
-- built from this file and one built from the migrations are the same, object for object.
-- A new migration changes this file in the same commit. casd itself never runs this file.

-- Which migrations a database has (the table that casd/sql/queries/migrations.sql creates).
CREATE TABLE schema_migrations (
    version integer PRIMARY KEY,
    name text NOT NULL,
    applied_at timestamptz NOT NULL DEFAULT now()
);

-- Blobs: one row per stored content, keyed by its digest. The file lives in the blob store at
-- blobs/blake3/<hex[0:2]>/<hex>; the row is written only after the file is durable.
CREATE TABLE blobs (
    digest       text PRIMARY KEY CHECK (digest ~ '^blake3:[0-9a-f]{64}$'),
    size         bigint NOT NULL CHECK (size >= 0),
    created_at   timestamptz NOT NULL DEFAULT now(),
    last_used_at timestamptz NOT NULL DEFAULT now(),
    -- ok: stored and believed intact; quarantined: found corrupt; missing: the file is gone
    status       text NOT NULL DEFAULT 'ok' CHECK (status IN ('ok', 'quarantined', 'missing')),
    verified_at  timestamptz
);

-- Tokens are stored only as SHA-256 hashes of the secret. A token with the empty write prefix
-- is an admin token: it may do everything, mint any token, set policies and delete protected
-- names.
CREATE TABLE tokens (
    id             bigserial PRIMARY KEY,
    label          text NOT NULL DEFAULT '',
    secret_hash    bytea NOT NULL UNIQUE,
    write_prefixes text[] NOT NULL DEFAULT '{}',
    created_at     timestamptz NOT NULL DEFAULT now(),
    revoked_at     timestamptz,
    -- mint: may create tokens within its own prefixes, expiry and budget.
    mint           boolean NOT NULL DEFAULT false,
    -- NULL: reads every name (on --private servers); else these prefixes and the write prefixes.
    read_prefixes  text[],
    expires_at     timestamptz,
    -- Bytes of new blobs its uploads may store (NULL: no limit), and what they stored so far.
    quota_bytes    bigint CHECK (quota_bytes >= 0),
    used_bytes     bigint NOT NULL DEFAULT 0 CHECK (used_bytes >= 0),
    -- The token that minted it: revoking a token revokes what it minted, transitively.
    minted_by      bigint REFERENCES tokens (id)
);
CREATE INDEX tokens_minted_by ON tokens (minted_by) WHERE minted_by IS NOT NULL;

-- Names map to blob digests; the foreign key keeps the collector from deleting a blob row that
-- a name references. Names are ordered bytewise (C collation) whatever the database's locale.
CREATE TABLE names (
    name       text COLLATE "C" PRIMARY KEY,
    digest     text NOT NULL REFERENCES blobs (digest) ON DELETE RESTRICT,
    version    bigint NOT NULL CHECK (version >= 1),
    metadata   jsonb NOT NULL DEFAULT '{}'::jsonb CHECK (jsonb_typeof(metadata) = 'object'),
    updated_at timestamptz NOT NULL DEFAULT now(),
    updated_by text NOT NULL
);
CREATE INDEX names_digest ON names (digest);

-- Every change of a name, kept for good; (name, version) identifies one change. Digests here
-- are not foreign keys: history outlives collected blobs. A promotion records its source.
CREATE TABLE name_history (
    name            text NOT NULL,
    version         bigint NOT NULL,
    action          text NOT NULL CHECK (action IN ('create', 'update', 'delete')),
    digest          text,
    previous_digest text,
    metadata        jsonb,
    actor           text NOT NULL,
    at              timestamptz NOT NULL DEFAULT now(),
    source_name     text,
    source_version  bigint,
    PRIMARY KEY (name, version)
);
CREATE INDEX name_history_digest ON name_history (digest);

-- Resumable uploads: the shared state of each (durable offset, which request may write now);
-- the staged bytes live in the blob store. A finished upload keeps its row for a while with
-- the digest it was published as.
CREATE TABLE uploads (
    id               text PRIMARY KEY,
    token_id         bigint NOT NULL REFERENCES tokens (id) ON DELETE CASCADE,
    upload_length    bigint CHECK (upload_length >= 0),
    expected_digest  text CHECK (expected_digest ~ '^blake3:[0-9a-f]{64}$'),
    upload_offset    bigint NOT NULL DEFAULT 0 CHECK (upload_offset >= 0),
    epoch            bigint NOT NULL DEFAULT 1,
    writer_epoch     bigint,
    writer_process   integer,
    created_at       timestamptz NOT NULL DEFAULT now(),
    updated_at       timestamptz NOT NULL DEFAULT now(),
    completed_digest text CHECK (completed_digest ~ '^blake3:[0-9a-f]{64}$'),
    -- The recorded segments of the bytes staged so far, in order: [["<epoch>.<n>", size], ...]
    segments         jsonb NOT NULL DEFAULT '[]'::jsonb CHECK (jsonb_typeof(segments) = 'array'),
    CHECK (upload_length IS NULL OR upload_offset <= upload_length),
    CHECK ((writer_epoch IS NULL) = (writer_process IS NULL)),
    CHECK (completed_digest IS NULL OR writer_epoch IS NULL)
);
CREATE INDEX uploads_updated_at ON uploads (updated_at);

-- Scrub and garbage-collection runs, whoever ran them.
CREATE TABLE maintenance_runs (
    id          bigserial PRIMARY KEY,
    kind        text NOT NULL CHECK (kind IN ('scrub', 'gc')),
    started_at  timestamptz NOT NULL,
    finished_at timestamptz NOT NULL DEFAULT clock_timestamp(),
    stats       jsonb NOT NULL DEFAULT '{}'::jsonb CHECK (jsonb_typeof(stats) = 'object')
);
CREATE INDEX maintenance_runs_latest ON maintenance_runs (kind, finished_at DESC);

-- Rules for the names under a prefix (the prefix itself and what continues it after a '/').
CREATE TABLE policies (
    prefix        text COLLATE "C" PRIMARY KEY CHECK (prefix <> ''),
    protected     boolean NOT NULL DEFAULT false,
    immutable     boolean NOT NULL DEFAULT false,
    quota_bytes   bigint CHECK (quota_bytes >= 0),
    delete_after  float8 CHECK (delete_after > 0),
    keep_versions integer CHECK (keep_versions >= 0),
    updated_at    timestamptz NOT NULL DEFAULT now(),
    updated_by    text NOT NULL
);

-- Does a prefix cover a name: equal, or continued at a segment boundary; '' covers every name.
CREATE FUNCTION prefix_covers(prefix text, name text) RETURNS boolean
LANGUAGE sql IMMUTABLE PARALLEL SAFE AS $$
    SELECT prefix = '' OR name = prefix OR starts_with(name, prefix || '/')
$$;

-- The most specific policy prefix covering a name that sets delete_after (NULL: none).
CREATE FUNCTION retention_prefix(name text) RETURNS text LANGUAGE sql STABLE AS $$
    SELECT p.prefix FROM policies p
    WHERE p.delete_after IS NOT NULL AND prefix_covers(p.prefix, name)
    ORDER BY length(p.prefix) DESC LIMIT 1
$$;

-- Whether a protected or immutable policy covers a name: retention never deletes it.
CREATE FUNCTION name_guarded(name text) RETURNS boolean LANGUAGE sql STABLE AS $$
    SELECT EXISTS (
        SELECT 1 FROM policies p WHERE (p.protected OR p.immutable) AND prefix_covers(p.prefix, name))
$$;

-- How many digests of a name's history gc keeps: the most specific policy that says, else the
-- server's setting.
CREATE FUNCTION keep_versions_for(name text, fallback integer) RETURNS integer
LANGUAGE sql STABLE AS $$
    SELECT coalesce((
        SELECT p.keep_versions FROM policies p
        WHERE p.keep_versions IS NOT NULL AND prefix_covers(p.prefix, name)
        ORDER BY length(p.prefix) DESC LIMIT 1), fallback)
$$;

-- Whether the collector may delete a blob (one definition for listing and for deleting).
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
                         AND later.digest <> blob_digest)
                    < keep_versions_for(h.name, keep_versions))
$$;

-- The operations page (casd/web): the first blob by time, the unhealthy blobs counted live, and
-- the whole store's figures kept between their recomputations in the background.
CREATE INDEX blobs_created_at ON blobs (created_at);
CREATE INDEX blobs_unhealthy ON blobs (status) INCLUDE (size) WHERE status <> 'ok';
CREATE TABLE web_figures (
    only_row    boolean PRIMARY KEY DEFAULT true CHECK (only_row),
    computed_at timestamptz NOT NULL,
    figures     jsonb NOT NULL CHECK (jsonb_typeof(figures) = 'object')
);
