-- signal: register a per-sample signal column of a run and/or write a slice of it.
--
-- KEYS[1]    the meta hash of the layout written: the run's ({run:<id>}:meta) or, for a
--            partitioned run's slice, a partition's (its uid is the run's)
-- KEYS[2..]  the signal's chunks this call writes ({...}:sig:<uid>:<name>:<k>), in ARGV order
-- ARGV[1]    uid: the incarnation the caller read (checked against the meta's)
-- ARGV[2]    the signal's name
-- ARGV[3]    register: > 0, the most signals a run may keep: the field 'signal:<name>' is
--            added to KEYS[1] unless it is there (a run's meta); 0: do not register (a
--            partition's slice: the name was registered on the run's meta before)
-- ARGV[4]    the 4-byte little-endian float32 NaN pattern: a chunk created here is
--            NaN-filled first, so values no upload wrote read as NaN (unknown)
-- ARGV[5]    now (unix seconds), the value of the registration field
-- ARGV[6..]  per chunk KEYS[1 + j] (j = 1, 2, ...), three values: the chunk's full length
--            (float32 values), the byte offset of the write in it, the bytes written
--
-- Returns {status, count} with status a SignalStatus (services/storage.py) and count
-- the signals the run keeps (0 when not registering): {-1 GONE, 0} the run is gone or was
-- re-created (nothing written); {-2 TOO_MANY, count} a new name over the limit (nothing
-- written); {1 WRITTEN, count}.
if redis.call('HGET', KEYS[1], 'uid') ~= ARGV[1] then
  return {-1, 0}
end
local count = 0
local most = tonumber(ARGV[3])
if most > 0 then
  local field = 'signal:' .. ARGV[2]
  local have = false
  for _, f in ipairs(redis.call('HKEYS', KEYS[1])) do
    if string.sub(f, 1, 7) == 'signal:' then
      count = count + 1
      if f == field then
        have = true
      end
    end
  end
  if not have then
    if count >= most then
      return {-2, count}
    end
    redis.call('HSET', KEYS[1], field, ARGV[5])
    count = count + 1
  end
end
for j = 2, #KEYS do
  local a = 6 + 3 * (j - 2)
  if redis.call('EXISTS', KEYS[j]) == 0 then
    redis.call('SET', KEYS[j], string.rep(ARGV[4], tonumber(ARGV[a])))
  end
  redis.call('SETRANGE', KEYS[j], tonumber(ARGV[a + 1]), ARGV[a + 2])
end
return {1, count}
