-- commit_epoch: store a drawn epoch once; the first committer of epoch e wins.
--
-- KEYS[1]                 the run's meta hash       {run:<id>}:meta
-- KEYS[2]                 the drawn epochs hash     {run:<id>}:epochs (e -> epoch JSON)
-- KEYS[3 .. 2+E]          the epoch's index chunks  {run:<id>}:epoch:<e>:<k>
-- KEYS[3+E .. 2+E+D]      selection-count chunks    {run:<id>}:drawn:<k>
-- KEYS[3+E+D .. 2+E+D+I]  inclusion chunks          {run:<id>}:incl:<k>   (I = 0 unless Exp3)
-- KEYS[3+E+D+I ..]        index chunks of an old epoch to drop (keep only the latest few)
-- ARGV[1]  uid of the run as the caller knows it
-- ARGV[2]  e, the epoch number
-- ARGV[3]  the epoch's JSON (seed, size, ...)
-- ARGV[4]  E   ARGV[5] D   ARGV[6] I
-- ARGV[7 ..]  E + D + I values, one per chunk key, in KEYS order
--
-- Returns -1: run gone or re-created; -2: e is not last_epoch + 1 (out of order);
--          0: epoch e was already drawn (nothing written); 1: committed.
if redis.call('HGET', KEYS[1], 'uid') ~= ARGV[1] then
  return -1
end
local e = tonumber(ARGV[2])
if redis.call('HEXISTS', KEYS[2], ARGV[2]) == 1 then
  return 0
end
local last = tonumber(redis.call('HGET', KEYS[1], 'last_epoch'))
if e ~= last + 1 then
  return -2
end
local E = tonumber(ARGV[4])
local D = tonumber(ARGV[5])
local I = tonumber(ARGV[6])
for j = 1, E + D + I do
  redis.call('SET', KEYS[2 + j], ARGV[6 + j])
end
for j = 3 + E + D + I, #KEYS do
  redis.call('DEL', KEYS[j])
end
redis.call('HSET', KEYS[2], ARGV[2], ARGV[3])
redis.call('HSET', KEYS[1], 'last_epoch', ARGV[2])
return 1
