-- scatter: apply one report atomically: dedup marker, compare-and-set, writes, counters.
--
-- KEYS[1]          the run's meta hash        {run:<id>}:meta
-- KEYS[2]          the applied-report set     {run:<id>}:reports (zset report_id -> time)
-- KEYS[3]          the run's counters hash    {run:<id>}:counters
-- KEYS[4]          the run's score log        {run:<id>}:scorelog (list of packed entries)
-- KEYS[5 .. 4+R]   record chunks              {run:<id>}:rec:<k>
-- ARGV[1]   uid of the run as the caller knows it
-- ARGV[2]   report_id
-- ARGV[3]   now (unix seconds): the marker's time
-- ARGV[4]   markers older than this are forgotten (now - dedup TTL)
-- ARGV[5]   indices of the report's B samples, float64 little-endian
-- ARGV[6]   record size in bytes (rs)
-- ARGV[7]   records per chunk
-- ARGV[8]   expected record heads, B x H bytes: the state the caller computed from
-- ARGV[9]   H, bytes of a head to compare (lr_sum + visits)
-- ARGV[10]  write mask, B bytes: "1" = write this sample, "0" = leave it (stale)
-- ARGV[11]  new records of the samples to write, W x rs bytes, in report order
-- ARGV[12]  score-log entry: the W samples' (index, score[, loss]), appended as one item
-- ARGV[13]  counter increments "reports,samples_reported,samples_scored,samples_skipped,visited"
--
-- Returns
--   -1                 the run does not exist or was re-created: nothing written
--    0                 report_id already applied: nothing written but the duplicates counter
--    1                 applied: every record, the score-log entry, the marker and the counters
--   {2, records, j1, ...}
--                      conflict: the samples at 1-based positions j1, ... are not in the
--                      state the caller computed from (another report changed them, or
--                      the caller's copy was stale). NOTHING is written. `records` holds
--                      their current records (rs bytes each, in the order of j), so the
--                      caller can recompute without another round trip. This
--                      compare-and-set makes the read-modify-write safe without locks.
local uid = redis.call('HGET', KEYS[1], 'uid')
if uid ~= ARGV[1] then
  return -1
end
if redis.call('ZSCORE', KEYS[2], ARGV[2]) then
  redis.call('HINCRBY', KEYS[3], 'duplicates', 1)
  return 0
end
local idx = ARGV[5]
local rs = tonumber(ARGV[6])
local per = tonumber(ARGV[7])
local heads = ARGV[8]
local H = tonumber(ARGV[9])
local mask = ARGV[10]
local recs = ARGV[11]
local n = #idx / 8
local zero = string.rep('\0', rs)
local keys = {}
local offs = {}
-- pass 1: compare-and-set check of every sample (stale ones too), nothing written yet
local bad = {2, ''}
local current = {}
for j = 1, n do
  local i = struct.unpack('<d', idx, 8 * j - 7)
  local ch = math.floor(i / per)
  local key = KEYS[5 + ch]
  local off = (i - ch * per) * rs
  keys[j] = key
  offs[j] = off
  local h = redis.call('GETRANGE', key, off, off + H - 1)
  if #h < H then
    h = h .. string.sub(zero, 1, H - #h)
  end
  if h ~= string.sub(heads, H * j - H + 1, H * j) then
    bad[#bad + 1] = j
    local r = redis.call('GETRANGE', key, off, off + rs - 1)
    if #r < rs then
      r = r .. string.sub(zero, 1, rs - #r)
    end
    current[#current + 1] = r
  end
end
if #bad > 2 then
  bad[2] = table.concat(current)
  return bad
end
-- pass 2: write the non-stale samples' records
local w = 0
for j = 1, n do
  if string.byte(mask, j) == 49 then
    w = w + 1
    redis.call('SETRANGE', keys[j], offs[j], string.sub(recs, rs * w - rs + 1, rs * w))
  end
end
if #ARGV[12] > 0 then
  redis.call('RPUSH', KEYS[4], ARGV[12])
end
redis.call('ZADD', KEYS[2], ARGV[3], ARGV[2])
redis.call('ZREMRANGEBYSCORE', KEYS[2], '-inf', '(' .. ARGV[4])
local names = {'reports', 'samples_reported', 'samples_scored', 'samples_skipped', 'visited'}
local k = 1
for v in string.gmatch(ARGV[13], '[^,]+') do
  if v ~= '0' then
    redis.call('HINCRBY', KEYS[3], names[k], v)
  end
  k = k + 1
end
return 1
