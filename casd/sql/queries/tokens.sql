-- name: insert_token
-- $1 label, $2 secret hash, $3 write prefixes, $4 read prefixes, $5 mint, $6 expires_at,
-- $7 quota_bytes, $8 minted_by
INSERT INTO tokens (label, secret_hash, write_prefixes, read_prefixes, mint, expires_at,
    quota_bytes, minted_by)
VALUES ($1, $2, $3, $4, $5, $6, $7, $8)
RETURNING id, label, write_prefixes, read_prefixes, mint, expires_at, quota_bytes, used_bytes,
    minted_by, created_at, revoked_at;

-- name: token_by_hash
SELECT secret_hash, id, label, write_prefixes, read_prefixes, mint, expires_at, quota_bytes, used_bytes,
    minted_by, created_at, revoked_at
FROM tokens WHERE secret_hash = $1 AND revoked_at IS NULL;

-- name: token_by_id
SELECT id, label, write_prefixes, read_prefixes, mint, expires_at, quota_bytes, used_bytes,
    minted_by, created_at, revoked_at FROM tokens WHERE id = $1;

-- name: list_tokens
SELECT id, label, write_prefixes, read_prefixes, mint, expires_at, quota_bytes, used_bytes,
    minted_by, created_at, revoked_at FROM tokens ORDER BY id;

-- name: token_descendants
-- The tokens minted by $1, and by those, and so on (not $1 itself).
WITH RECURSIVE minted AS (
    SELECT id FROM tokens WHERE minted_by = $1
    UNION SELECT t.id FROM tokens t JOIN minted m ON t.minted_by = m.id
)
SELECT id, label, write_prefixes, read_prefixes, mint, expires_at, quota_bytes, used_bytes,
    minted_by, created_at, revoked_at FROM tokens WHERE id IN (SELECT id FROM minted) ORDER BY id;

-- name: revoke_token
-- Revokes $1 and every token minted under it, and tells every casd server
-- (LISTEN casd_token_revoked) to forget the tokens it trusts. Returns the ids revoked.
WITH RECURSIVE doomed AS (
    SELECT id FROM tokens WHERE id = $1
    UNION SELECT t.id FROM tokens t JOIN doomed d ON t.minted_by = d.id
), revoked AS (
    UPDATE tokens SET revoked_at = now()
    WHERE id IN (SELECT id FROM doomed) AND revoked_at IS NULL RETURNING id
)
SELECT id, pg_notify('casd_token_revoked', id::text) FROM revoked;

-- name: token_used_bytes
SELECT used_bytes FROM tokens WHERE id = $1;

-- name: charge_token_within_quota
-- $1 token, $2 bytes newly stored. The row lock orders concurrent publishes of one token, so
-- together they never pass its quota; no row: the quota would be passed.
UPDATE tokens SET used_bytes = used_bytes + $2
WHERE id = $1 AND (quota_bytes IS NULL OR used_bytes + $2 <= quota_bytes)
RETURNING used_bytes;

-- name: charge_token
UPDATE tokens SET used_bytes = used_bytes + $2 WHERE id = $1;

-- name: token_usage
-- For /metrics: the tokens in use that have a budget or stored something.
SELECT id, label, quota_bytes, used_bytes FROM tokens
WHERE revoked_at IS NULL AND (expires_at IS NULL OR expires_at > now())
    AND (quota_bytes IS NOT NULL OR used_bytes > 0)
ORDER BY id;

-- name: lock_admin_bootstrap
SELECT pg_advisory_xact_lock(7236832147483647);

-- name: count_tokens
SELECT count(*) FROM tokens;
