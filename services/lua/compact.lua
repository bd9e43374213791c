-- compact: fold the score log into the score (and loss) columns.
--
-- The caller read, in one MULTI/EXEC snapshot, the columns and the first C entries
-- of the log (when log_base was B), applied the entries in order, and wrote the
-- resulting columns to expiring temporary keys. This script installs them and
-- drops exactly those C entries, unless another process compacted meanwhile.
--
-- KEYS[1]              the run's meta hash    {run:<id>}:meta (field log_base)
-- KEYS[2]              the score log          {run:<id>}:scorelog
-- KEYS[3 .. 2+F]       the F column chunks    {run:<id>}:score:<k> (then :loss:<k>)
-- KEYS[3+F .. 2+2F]    temporary keys with their new contents, same order
-- ARGV[1]  uid of the run as the caller knows it
-- ARGV[2]  B, log_base when the snapshot was taken
-- ARGV[3]  C, log entries folded into the new columns
-- ARGV[4]  F
--
-- A partitioned run (docs/architecture.md "Partitioned runs"): run per partition, with the
-- partition's keys ({run:<id>:<j>.<salt>}:...); each partition has its own meta (uid,
-- writer, log_base).
--
-- Returns a CompactStatus (services/storage.py):
--         1 INSTALLED: the C oldest entries dropped, log_base = B + C;
--         0 MOVED: log_base moved (someone else compacted) or the run changed: temporary
--            keys deleted, nothing else touched. Entries appended after the snapshot
--            stay in the log either way.
local F = tonumber(ARGV[4])
local base = tonumber(redis.call('HGET', KEYS[1], 'log_base') or '0')
if redis.call('HGET', KEYS[1], 'uid') ~= ARGV[1] or base ~= tonumber(ARGV[2])
   or redis.call('LLEN', KEYS[2]) < tonumber(ARGV[3]) then
  for j = 3 + F, 2 + 2 * F do
    redis.call('DEL', KEYS[j])
  end
  return 0
end
for j = 1, F do
  if redis.call('EXISTS', KEYS[2 + F + j]) == 0 then
    for k = 3 + F, 2 + 2 * F do
      redis.call('DEL', KEYS[k])
    end
    return 0
  end
end
for j = 1, F do
  redis.call('RENAME', KEYS[2 + F + j], KEYS[2 + j])
  redis.call('PERSIST', KEYS[2 + j])
end
redis.call('LTRIM', KEYS[2], tonumber(ARGV[3]), -1)
redis.call('HSET', KEYS[1], 'log_base', base + tonumber(ARGV[3]))
return 1
