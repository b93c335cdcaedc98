-- Data for bench/pages.py: N names in a folder tree (10 farms x 100 jobs x N/1000 images), each
-- on a blob of its own with a create and an update in its history, one name with 200 versions,
-- a few uploads in flight, a scrub and a gc. Digests are made up (no files): pages read only rows.

-- name: bench_blobs
-- $1 number of names. One blob in a thousand is quarantined; stored over the last $1 minutes.
INSERT INTO blobs (digest, size, created_at, last_used_at, status, verified_at)
SELECT 'blake3:' || encode(sha256(('blob' || i)::bytea), 'hex'),
    1024 + (i::bigint * 7919) % 1000000000,
    now() - make_interval(secs => ($1 - i) * 60.0),
    now(),
    CASE WHEN i % 1000 = 0 THEN 'quarantined' ELSE 'ok' END,
    now() - interval '1 day'
FROM generate_series(1, $1) AS i;

-- name: bench_names
INSERT INTO names (name, digest, version, metadata, updated_at, updated_by)
SELECT format('farm%s/job%s/image-%s.qcow2', i % 10, (i / 10) % 100, i / 1000),
    'blake3:' || encode(sha256(('blob' || i)::bytea), 'hex'),
    2,
    jsonb_build_object('build', i, 'branch', 'main'),
    now() - make_interval(secs => ($1 - i) * 30.0),
    'token:1 (admin)'
FROM generate_series(1, $1) AS i;

-- name: bench_history
INSERT INTO name_history (name, version, action, digest, previous_digest, metadata, actor, at)
SELECT n.name, v, CASE v WHEN 1 THEN 'create' ELSE 'update' END, n.digest,
    CASE v WHEN 1 THEN NULL ELSE n.digest END,
    CASE v WHEN 1 THEN jsonb_build_object('build', 0) ELSE n.metadata END,
    n.updated_by, n.updated_at - make_interval(secs => (2 - v) * 10.0)
FROM names n CROSS JOIN generate_series(1, 2) AS v;

-- name: bench_hot_history
-- 'hot/disk.qcow2': 200 versions over the first 200 blobs.
INSERT INTO name_history (name, version, action, digest, previous_digest, metadata, actor, at)
SELECT 'hot/disk.qcow2', i, CASE WHEN i = 1 THEN 'create' ELSE 'update' END,
    'blake3:' || encode(sha256(('blob' || i)::bytea), 'hex'),
    CASE WHEN i > 1 THEN 'blake3:' || encode(sha256(('blob' || (i - 1))::bytea), 'hex') END,
    jsonb_build_object('build', i, 'branch', CASE WHEN i % 2 = 0 THEN 'main' ELSE 'next' END),
    'token:1 (admin)', now() - make_interval(secs => (200 - i) * 60.0)
FROM generate_series(1, 200) AS i;

-- name: bench_hot_name
INSERT INTO names (name, digest, version, metadata, updated_at, updated_by)
VALUES ('hot/disk.qcow2', 'blake3:' || encode(sha256('blob200'::bytea), 'hex'), 200,
    '{"build": 200, "branch": "main"}', now(), 'token:1 (admin)');

-- name: bench_uploads
INSERT INTO uploads (id, token_id, upload_length, upload_offset)
SELECT 'bench' || i, 1, 1000000, i * 40000 FROM generate_series(1, 20) AS i;

-- name: bench_runs
INSERT INTO maintenance_runs (kind, started_at, stats) VALUES
    ('scrub', now() - interval '1 hour', '{"checked": 100000, "corrupt": 100, "checked_bytes": 52000000000}'),
    ('gc', now() - interval '2 hours', '{"collected": 5, "collected_bytes": 1000000}');

-- name: bench_analyze
ANALYZE;

-- name: bench_named_digest
-- The blob of the name whose page is timed (not loaded: read after loading).
SELECT digest FROM names WHERE name = 'farm3/job42/image-1.qcow2';
