-- name: lock_name_lifecycle
-- Creating and deleting a name take this lock. Versions continue across delete and re-create,
-- so a creator reads its version from the history, which no delete may change under it.
-- (Two-key advisory locks live apart from the one-key blob locks.)
SELECT pg_advisory_xact_lock(1851878757, $1);

-- name: blob_for_name
-- The blob a name is about to reference, held (as the foreign key would hold it) until commit.
SELECT size, status FROM blobs WHERE digest = $1 FOR KEY SHARE;

-- name: get_name
SELECT n.name, n.digest, b.size, n.version, n.metadata, b.status = 'ok' AS healthy,
    n.updated_at, n.updated_by
FROM names n JOIN blobs b ON b.digest = n.digest
WHERE n.name = $1;

-- name: lock_name
-- The current record, locked against every other writer of this name until commit. No join:
-- after waiting for another writer, a join would be re-checked against the blob row of the
-- old digest and lose the row; subqueries are evaluated on the row as it is now.
SELECT n.name, n.digest, n.version, n.metadata, n.updated_at, n.updated_by,
    (SELECT b.size FROM blobs b WHERE b.digest = n.digest) AS size,
    (SELECT b.status = 'ok' FROM blobs b WHERE b.digest = n.digest) AS healthy
FROM names n
WHERE n.name = $1
FOR NO KEY UPDATE;

-- name: create_name
-- $1 name, $2 digest, $3 metadata, $4 actor, $5 and $6 the name and version it was promoted
-- from (or NULL). The name and its history row in one statement; the version follows the
-- name's last one, if it ever existed.
WITH created AS (
    INSERT INTO names (name, digest, version, metadata, updated_at, updated_by)
    SELECT $1::text, $2::text, coalesce(max(version), 0) + 1, $3::jsonb, clock_timestamp(), $4::text
    FROM name_history WHERE name = $1
    RETURNING name, digest, version, metadata, updated_at, updated_by
), logged AS (
    INSERT INTO name_history (name, version, action, digest, previous_digest, metadata, actor, at,
        source_name, source_version)
    SELECT name, version, 'create', digest, NULL, metadata, updated_by, updated_at,
        $5::text, $6::bigint
    FROM created
)
SELECT name, digest, version, metadata, updated_at, updated_by FROM created;

-- name: update_name
-- $1 name, $2 digest, $3 metadata or NULL to keep it, $4 actor, $5 the digest it replaces,
-- $6 and $7 the name and version it was promoted from (or NULL).
-- The caller holds the row (lock_name) and has checked its version.
WITH updated AS (
    UPDATE names
    SET digest = $2, version = version + 1, metadata = coalesce($3, metadata),
        updated_at = clock_timestamp(), updated_by = $4
    WHERE name = $1
    RETURNING name, digest, version, metadata, updated_at, updated_by
), logged AS (
    INSERT INTO name_history (name, version, action, digest, previous_digest, metadata, actor, at,
        source_name, source_version)
    SELECT name, version, 'update', digest, $5, metadata, updated_by, updated_at,
        $6::text, $7::bigint
    FROM updated
)
SELECT name, digest, version, metadata, updated_at, updated_by FROM updated;

-- name: delete_name
-- $1 name, $2 actor. The caller holds the row (lock_name) and has checked its version.
WITH deleted AS (
    DELETE FROM names WHERE name = $1 RETURNING name, digest, version
), logged AS (
    INSERT INTO name_history (name, version, action, digest, previous_digest, metadata, actor, at)
    SELECT name, version + 1, 'delete', NULL, digest, NULL, $2, clock_timestamp() FROM deleted
    RETURNING version
)
SELECT version FROM logged;

-- name: list_names
-- $1 prefix, $2 after ('' for the first page), $3 limit, $4 the prefixes the caller may read
-- (NULL: all). Names are ASCII in C collation and '~' sorts after every character a name may
-- hold, so the range is exactly the names with the prefix.
SELECT n.name, n.digest, b.size, n.version, n.metadata, b.status = 'ok' AS healthy,
    n.updated_at, n.updated_by
FROM names n JOIN blobs b ON b.digest = n.digest
WHERE n.name >= $1 AND n.name < ($1 || '~') AND n.name > $2
    AND ($4::text[] IS NULL
         OR EXISTS (SELECT 1 FROM unnest($4::text[]) AS readable (prefix)
                    WHERE prefix_covers(readable.prefix, n.name)))
ORDER BY n.name
LIMIT $3;

-- name: name_history
-- $1 name, $2 only versions below this, $3 limit; newest first.
SELECT version, action, digest, previous_digest, metadata, actor, at, source_name, source_version
FROM name_history
WHERE name = $1 AND version < $2
ORDER BY version DESC
LIMIT $3;

-- name: name_ever_existed
SELECT EXISTS (SELECT 1 FROM name_history WHERE name = $1);

-- name: readable_name_for_digest
-- Whether a name the caller may read ($2 prefixes) points at the digest $1.
SELECT EXISTS (
    SELECT 1 FROM names n, unnest($2::text[]) AS readable (prefix)
    WHERE n.digest = $1 AND prefix_covers(readable.prefix, n.name));

-- name: lock_source_name
-- The name a promotion copies, held against changes until the promotion commits.
SELECT name, digest, version, metadata FROM names WHERE name = $1 FOR SHARE;
