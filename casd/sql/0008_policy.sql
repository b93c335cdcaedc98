-- Namespaces as policy: token rights, expiry, read scopes and byte budgets; rules per name
-- prefix (protection, immutability, quota, retention); where a promoted name came from.

-- Does a prefix cover a name: equal, or continued at a segment boundary; '' covers every name.
-- (starts_with, not LIKE: '_' is a name character and a LIKE wildcard.)
CREATE FUNCTION prefix_covers(prefix text, name text) RETURNS boolean
LANGUAGE sql IMMUTABLE PARALLEL SAFE AS $$
    SELECT prefix = '' OR name = prefix OR starts_with(name, prefix || '/')
$$;

-- A token with the empty write prefix is an admin token: it may do everything, mint any
-- token, set policies and delete protected names.
ALTER TABLE tokens
    -- mint: may create tokens within its own prefixes, expiry and budget.
    ADD COLUMN mint boolean NOT NULL DEFAULT false,
    -- NULL: reads every name (on --private servers); else these prefixes and the write prefixes.
    ADD COLUMN read_prefixes text[],
    ADD COLUMN expires_at timestamptz,
    -- Bytes of new blobs its uploads may store (NULL: no limit), and what they stored so far.
    ADD COLUMN quota_bytes bigint CHECK (quota_bytes >= 0),
    ADD COLUMN used_bytes bigint NOT NULL DEFAULT 0 CHECK (used_bytes >= 0),
    -- The token that minted it: revoking a token revokes what it minted, transitively.
    ADD COLUMN minted_by bigint REFERENCES tokens (id);
CREATE INDEX tokens_minted_by ON tokens (minted_by) WHERE minted_by IS NOT NULL;

-- Rules for the names under a prefix (the prefix itself and what continues it after a '/').
CREATE TABLE policies (
    prefix        text COLLATE "C" PRIMARY KEY CHECK (prefix <> ''),
    -- Names under it may be deleted only by an admin token.
    protected     boolean NOT NULL DEFAULT false,
    -- Names under it may be created once and never changed or deleted.
    immutable     boolean NOT NULL DEFAULT false,
    -- Bytes of the distinct blobs the names under it may reference.
    quota_bytes   bigint CHECK (quota_bytes >= 0),
    -- Retention: delete names this many seconds after their last change ...
    delete_after  float8 CHECK (delete_after > 0),
    -- ... and let gc keep only this many digests of each name's history (CASD_KEEP_VERSIONS).
    keep_versions integer CHECK (keep_versions >= 0),
    updated_at    timestamptz NOT NULL DEFAULT now(),
    updated_by    text NOT NULL
);

-- A promotion records the name and version it copied.
ALTER TABLE name_history
    ADD COLUMN source_name text,
    ADD COLUMN source_version bigint;

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

-- As in 0004, with the number of versions kept per name taken from the policies.
CREATE OR REPLACE FUNCTION blob_collectable(
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
