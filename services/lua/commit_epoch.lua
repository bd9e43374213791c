-- commit_epoch: store a drawn epoch once; the first committer of epoch e wins.
--
-- The big values were written beforehand, with plain SETs, to temporary keys that
-- expire; this script only decides and renames (O(1) per key).
--
-- KEYS[1]                 the run's meta hash       {run:<id>}:meta
-- KEYS[2]                 the drawn epochs hash     {run:<id>}:epochs (e -> epoch JSON)
-- KEYS[3 .. 2+F]          the F final keys: the epoch's index chunks {run:<id>}:epoch:<e>:<k>,
--                         the selection-count chunks {run:<id>}:drawn:<k> and (Exp3) the
--                         inclusion chunks {run:<id>}:incl:<k>
-- KEYS[3+F .. 2+2F]       the temporary keys holding their new values, in the same order
-- KEYS[3+2F ..]           index chunks of an old epoch to drop (only the latest few are kept)
-- ARGV[1]  uid of the run as the caller knows it
-- ARGV[2]  e, the epoch number
-- ARGV[3]  the epoch's JSON (seed, size, ...)
-- ARGV[4]  F
-- ARGV[5]  number of keys to drop
--
-- Returns a CommitStatus (services/storage.py):
--   -1 GONE          the run does not exist or was re-created
--   -2 OUT_OF_ORDER  e is not last_epoch + 1
--   -3 EXPIRED       a temporary key expired before this call (the caller stalled)
--    0 EXISTS        epoch e was already drawn
--    1 COMMITTED
-- The temporary keys are deleted in every case but COMMITTED, where they became the final keys.
local F = tonumber(ARGV[4])
local function discard()
  for j = 3 + F, 2 + 2 * F do
    redis.call('DEL', KEYS[j])
  end
end
if redis.call('HGET', KEYS[1], 'uid') ~= ARGV[1] then
  discard()
  return -1
end
if redis.call('HEXISTS', KEYS[2], ARGV[2]) == 1 then
  discard()
  return 0
end
local last = tonumber(redis.call('HGET', KEYS[1], 'last_epoch'))
if tonumber(ARGV[2]) ~= last + 1 then
  discard()
  return -2
end
for j = 1, F do
  if redis.call('EXISTS', KEYS[2 + F + j]) == 0 then
    -- a temporary key expired (the caller stalled for minutes): refuse, nothing changes
    discard()
    return -3
  end
end
for j = 1, F do
  redis.call('RENAME', KEYS[2 + F + j], KEYS[2 + j])
  redis.call('PERSIST', KEYS[2 + j])
end
for j = 3 + 2 * F, #KEYS do
  redis.call('DEL', KEYS[j])
end
redis.call('HSET', KEYS[2], ARGV[2], ARGV[3])
redis.call('HSET', KEYS[1], 'last_epoch', ARGV[2])
return 1
