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

-- Tokens are stored only as SHA-256 hashes of the secret.
CREATE TABLE tokens (
    id             bigserial PRIMARY KEY,
    label          text NOT NULL DEFAULT '',
    secret_hash    bytea NOT NULL UNIQUE,
    write_prefixes text[] NOT NULL DEFAULT '{}',
    created_at     timestamptz NOT NULL DEFAULT now(),
    revoked_at     timestamptz
);
