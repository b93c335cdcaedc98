-- Queries of the web pages (casd/web). Names are ASCII in C collation and '~' sorts after every
-- character a name may hold, so "$1 <= name < $1 || '~'" is exactly the names under prefix $1.

-- name: web_folder_entries
-- $1 folder ('' or ending in '/'), $2 continue after this key ('' for the first page), $3 how
-- many entries at most, $4 the prefixes the caller may read (NULL: all). One entry per name directly in the folder and one per sub-folder: a
-- loose index scan that jumps over each sub-folder's names ('<folder>/~' sorts after them), so a
-- page costs one index probe per entry however many names the folder holds.
WITH RECURSIVE walk (n, name) AS (
    SELECT 1, (SELECT x.name FROM names x
               WHERE x.name >= $1 AND x.name < $1 || '~' AND x.name > $2
                   AND ($4::text[] IS NULL
                        OR EXISTS (SELECT 1 FROM unnest($4::text[]) AS readable (prefix)
                                   WHERE prefix_covers(readable.prefix, x.name)))
               ORDER BY x.name LIMIT 1)
    UNION ALL
    SELECT w.n + 1, (SELECT x.name FROM names x
                     WHERE x.name > (CASE WHEN strpos(substr(w.name, length($1) + 1), '/') > 0
                                     THEN $1 || split_part(substr(w.name, length($1) + 1), '/', 1)
                                          || '/~'
                                     ELSE w.name END)
                         AND x.name < $1 || '~'
                         AND ($4::text[] IS NULL
                              OR EXISTS (SELECT 1 FROM unnest($4::text[]) AS readable (prefix)
                                         WHERE prefix_covers(readable.prefix, x.name)))
                     ORDER BY x.name LIMIT 1)
    FROM walk w
    WHERE w.name IS NOT NULL AND w.n < $3
), entries AS (
    SELECT w.n, w.name,
        strpos(substr(w.name, length($1) + 1), '/') > 0 AS is_folder,
        $1 || split_part(substr(w.name, length($1) + 1), '/', 1) AS head
    FROM walk w WHERE w.name IS NOT NULL
)
SELECT e.is_folder,
    CASE WHEN e.is_folder THEN e.head || '/' ELSE e.name END AS entry,
    CASE WHEN e.is_folder THEN e.head || '/~' ELSE e.name END AS resume_after,
    n.digest, b.size, n.version, b.status = 'ok' AS healthy, n.updated_at, n.updated_by
FROM entries e
LEFT JOIN names n ON NOT e.is_folder AND n.name = e.name
LEFT JOIN blobs b ON b.digest = n.digest
ORDER BY e.n;

-- name: web_count_names
SELECT count(*) FROM names;

-- name: web_names_of_blob
-- $1 digest, $2 limit: the names that point at the blob now.
SELECT name, version, updated_at, updated_by FROM names WHERE digest = $1 ORDER BY name LIMIT $2;

-- name: web_history_of_blob
-- $1 digest, $2 limit: the changes that pointed a name at the blob, newest first.
SELECT name, version, action, actor, at FROM name_history
WHERE digest = $1
ORDER BY at DESC, name
LIMIT $2;

-- name: web_uploads
-- $1 limit: resumable uploads in flight, most recently active first, with their owner's label.
SELECT u.id, u.token_id, t.label, u.upload_length, u.upload_offset,
    u.writer_epoch IS NOT NULL AS writing, u.created_at, u.updated_at
FROM uploads u JOIN tokens t ON t.id = u.token_id
ORDER BY u.updated_at DESC
LIMIT $1;

-- name: web_count_uploads
SELECT count(*) FROM uploads;

-- name: web_blobs_by_status_and_time
-- $1 number of buckets: blobs and bytes by status and by when each was first stored, in $1
-- equal spans of time from the first blob (blobs_created_at finds it) to now; bucket 1 is the
-- oldest. One pass over the table, grouped by hashing; no rows when there is no blob. (Blobs
-- collected since are gone from the table: this is how the store grew to what it holds today.)
WITH span AS (
    SELECT date_part('epoch', min(created_at)) AS lo,
        greatest(date_part('epoch', clock_timestamp()),
                 date_part('epoch', max(created_at)) + 1,
                 date_part('epoch', min(created_at)) + 60) AS hi
    FROM blobs
)
SELECT s.lo, s.hi, g.status, g.bucket, g.blobs, g.bytes
FROM span s CROSS JOIN LATERAL (
    SELECT b.status,
        least(width_bucket(date_part('epoch', b.created_at), s.lo, s.hi, $1), $1) AS bucket,
        count(*) AS blobs, sum(b.size)::bigint AS bytes
    FROM blobs b
    GROUP BY 1, 2
) AS g
WHERE s.lo IS NOT NULL;

-- name: web_unhealthy_totals
-- Quarantined and missing blobs, live (blobs_unhealthy is a partial index of them).
SELECT status, count(*) AS blobs, coalesce(sum(size), 0)::bigint AS bytes
FROM blobs WHERE status <> 'ok'
GROUP BY status;

-- name: web_figures
-- $1 seconds: the kept figures, and whether they are older than that.
SELECT computed_at, figures,
    computed_at < clock_timestamp() - make_interval(secs => $1::float8) AS stale
FROM web_figures;

-- name: web_try_lock_figures
-- One process at a time recomputes the figures; the others keep showing the last ones.
SELECT pg_try_advisory_xact_lock(2003133010, 1);

-- name: web_store_figures
INSERT INTO web_figures (computed_at, figures) VALUES (clock_timestamp(), $1)
ON CONFLICT (only_row) DO UPDATE SET computed_at = excluded.computed_at, figures = excluded.figures
RETURNING computed_at;
