-- Policies per name prefix (sql/0008_policy.sql): protection, immutability, quotas, retention.

-- name: list_policies
-- Every policy with the bytes its names reference now (distinct blobs).
SELECT p.prefix, p.protected, p.immutable, p.quota_bytes, p.delete_after, p.keep_versions,
    p.updated_at, p.updated_by,
    (SELECT coalesce(sum(b.size), 0) FROM blobs b WHERE b.digest IN (
        SELECT n.digest FROM names n
        WHERE n.name >= p.prefix AND n.name < (p.prefix || '~')
            AND prefix_covers(p.prefix, n.name)))::bigint AS used_bytes
FROM policies p
WHERE $1::text IS NULL OR p.prefix = $1
ORDER BY p.prefix;

-- name: upsert_policy
-- $1 prefix, $2 protected, $3 immutable, $4 quota_bytes, $5 delete_after, $6 keep_versions,
-- $7 actor. Returns whether it is new.
INSERT INTO policies AS p (prefix, protected, immutable, quota_bytes, delete_after, keep_versions,
    updated_by)
VALUES ($1, $2, $3, $4, $5, $6, $7)
ON CONFLICT (prefix) DO UPDATE
    SET protected = $2, immutable = $3, quota_bytes = $4, delete_after = $5, keep_versions = $6,
        updated_at = now(), updated_by = $7
RETURNING (xmax = 0) AS created;

-- name: delete_policy
DELETE FROM policies WHERE prefix = $1 RETURNING prefix;

-- name: policies_for_name
-- The policies that cover the name $1.
SELECT prefix, protected, immutable, quota_bytes, delete_after, keep_versions,
    updated_at, updated_by, 0::bigint AS used_bytes
FROM policies
WHERE prefix_covers(prefix, $1)
ORDER BY prefix;

-- name: lock_quotas_for_name
-- The quotas covering the name $1, locked (in prefix order, so writers never deadlock) until
-- the write commits: writers under one quota take turns.
SELECT prefix FROM policies
WHERE prefix_covers(prefix, $1) AND quota_bytes IS NOT NULL
ORDER BY prefix
FOR NO KEY UPDATE;

-- name: prefix_usage_change
-- $1 prefix, $2 a name under it, $3 the digest that name is about to point at: the bytes the
-- names under the prefix reference now, and after the change (distinct blobs count once).
WITH under AS (
    SELECT n.name, n.digest FROM names n
    WHERE n.name >= $1 AND n.name < ($1 || '~') AND prefix_covers($1, n.name)
)
SELECT
    (SELECT coalesce(sum(b.size), 0) FROM blobs b
     WHERE b.digest IN (SELECT digest FROM under))::bigint AS before,
    (SELECT coalesce(sum(b.size), 0) FROM blobs b
     WHERE b.digest IN (SELECT digest FROM under WHERE name <> $2 UNION SELECT $3))::bigint
        AS after;

-- name: retention_policies
SELECT prefix, delete_after FROM policies WHERE delete_after IS NOT NULL ORDER BY prefix;

-- name: retention_candidates
-- $1 prefix, $2 delete_after in seconds, $3 after this name, $4 limit: names this rule (the
-- most specific one covering them) lets go, unless protection or immutability guards them.
SELECT n.name, n.version FROM names n
WHERE n.name >= $1 AND n.name < ($1 || '~') AND prefix_covers($1, n.name) AND n.name > $3
    AND n.updated_at < clock_timestamp() - make_interval(secs => $2::float8)
    AND retention_prefix(n.name) = $1
    AND NOT name_guarded(n.name)
ORDER BY n.name
LIMIT $4;

-- name: prefix_usage
-- For /metrics: the bytes referenced under every prefix that has a quota.
SELECT p.prefix, p.quota_bytes,
    (SELECT coalesce(sum(b.size), 0) FROM blobs b WHERE b.digest IN (
        SELECT n.digest FROM names n
        WHERE n.name >= p.prefix AND n.name < (p.prefix || '~')
            AND prefix_covers(p.prefix, n.name)))::bigint AS used_bytes
FROM policies p WHERE p.quota_bytes IS NOT NULL ORDER BY p.prefix;
