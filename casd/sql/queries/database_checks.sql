-- name: database_role
-- Whether this server can take casd's writes: not a standby, not read-only by default.
SELECT pg_is_in_recovery() AS in_recovery,
       current_setting('transaction_read_only') = 'on' AS read_only;

-- name: backend_pid
-- The server process running this statement: one per session when nothing pools transactions.
SELECT pg_backend_pid();

-- name: notify_probe
-- $1 channel, $2 payload: heard by the listener once the transaction commits.
SELECT pg_notify($1, $2);
