-- name: insert_token
INSERT INTO tokens (label, secret_hash, write_prefixes) VALUES ($1, $2, $3)
RETURNING id, label, write_prefixes, created_at, revoked_at;

-- name: token_by_hash
SELECT id, label, secret_hash, write_prefixes, created_at, revoked_at
FROM tokens WHERE secret_hash = $1 AND revoked_at IS NULL;

-- name: list_tokens
SELECT id, label, write_prefixes, created_at, revoked_at FROM tokens ORDER BY id;

-- name: revoke_token
-- Also tells every casd server (LISTEN casd_token_revoked) to forget the tokens it trusts.
WITH revoked AS (
    UPDATE tokens SET revoked_at = now() WHERE id = $1 AND revoked_at IS NULL RETURNING id
)
SELECT id, pg_notify('casd_token_revoked', id::text) FROM revoked;

-- name: lock_admin_bootstrap
SELECT pg_advisory_xact_lock(7236832147483647);

-- name: count_tokens
SELECT count(*) FROM tokens;
