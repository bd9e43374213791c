-- create: create a run once; a second create with the same config is a no-op.
--
-- KEYS[1]    the run's meta hash         {run:<id>}:meta
-- KEYS[2..]  the score and loss column chunks to initialise (NaN = unset)
-- ARGV[1]    the run's canonical config (JSON)
-- ARGV[2]    uid: a fresh random id, identifies this incarnation of the run
-- ARGV[3]    created_at (unix seconds)
-- ARGV[4]    layout (JSON: record size, chunk sizes, ...)
-- ARGV[5]    the 4-byte little-endian float32 NaN pattern
-- ARGV[6..]  the number of values in each chunk of KEYS[2..], in the same order
--
-- Returns {status, ...} with status a CreateStatus (services/storage.py): {0 CREATED, uid};
-- {1 EXISTS, uid} with the same config; {2 CONFLICT, uid, config} with a different
-- config (nothing written).
local meta = KEYS[1]
local existing = redis.call('HGET', meta, 'config')
if existing then
  local uid = redis.call('HGET', meta, 'uid')
  if existing == ARGV[1] then
    return {1, uid}
  end
  return {2, uid, existing}
end
redis.call('HSET', meta, 'config', ARGV[1], 'uid', ARGV[2], 'created_at', ARGV[3],
           'layout', ARGV[4], 'last_epoch', '-1')
-- NaN-fill the columns read by draws, so "never scored" needs no second array.
for j = 2, #KEYS do
  redis.call('SET', KEYS[j], string.rep(ARGV[5], tonumber(ARGV[4 + j])))
end
return {0, ARGV[2]}
