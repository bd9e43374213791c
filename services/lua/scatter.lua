-- scatter: apply one report atomically: dedup marker, compare-and-set, writes, counters.
--
-- KEYS[1]                   the run's meta hash        {run:<id>}:meta
-- KEYS[2]                   the applied-report set     {run:<id>}:reports (zset report_id -> time)
-- KEYS[3]                   the run's counters hash    {run:<id>}:counters
-- KEYS[4 .. 3+R]            record chunks              {run:<id>}:rec:<k>
-- KEYS[4+R .. 3+R+S]        score column chunks        {run:<id>}:score:<k>
-- KEYS[4+R+S .. 3+R+S+L]    loss column chunks         {run:<id>}:loss:<k> (L = 0: no loss column)
-- ARGV[1]   uid of the run as the caller knows it
-- ARGV[2]   report_id
-- ARGV[3]   now (unix seconds): the marker's time
-- ARGV[4]   markers older than this are forgotten (now - dedup TTL)
-- ARGV[5]   indices of the report's B samples, float64 little-endian
-- ARGV[6]   record size in bytes (rs)
-- ARGV[7]   records per chunk
-- ARGV[8]   column values per chunk (score, loss)
-- ARGV[9]   R      ARGV[10] S      ARGV[11] L
-- ARGV[12]  expected record heads, B x H bytes: the state the caller computed from
-- ARGV[13]  H, bytes of a head to compare (lr_sum + visits)
-- ARGV[14]  write mask, B bytes: "1" = write this sample, "0" = leave it (stale)
-- ARGV[15]  new records of the samples to write, W x rs bytes, in report order
-- ARGV[16]  their new scores, W x float32
-- ARGV[17]  their new losses, W x float32
-- ARGV[18]  counter increments "reports,samples_reported,samples_scored,samples_skipped,visited"
--
-- Returns
--   -1                 the run does not exist or was re-created: nothing written
--    0                 report_id already applied: nothing written but the duplicates counter
--    1                 applied: every record, score, loss, the marker and the counters
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
local cper = tonumber(ARGV[8])
local R = tonumber(ARGV[9])
local S = tonumber(ARGV[10])
local L = tonumber(ARGV[11])
local heads = ARGV[12]
local H = tonumber(ARGV[13])
local mask = ARGV[14]
local recs = ARGV[15]
local scores = ARGV[16]
local losses = ARGV[17]
local n = #idx / 8
local zero = string.rep('\0', rs)
-- pass 1: compare-and-set check of every sample (stale ones too), nothing written yet
local bad = {2, ''}
local current = {}
for j = 1, n do
  local i = struct.unpack('<d', idx, 8 * j - 7)
  local ch = math.floor(i / per)
  local off = (i - ch * per) * rs
  local h = redis.call('GETRANGE', KEYS[4 + ch], off, off + H - 1)
  if #h < H then
    h = h .. string.sub(zero, 1, H - #h)
  end
  if h ~= string.sub(heads, H * j - H + 1, H * j) then
    bad[#bad + 1] = j
    local r = redis.call('GETRANGE', KEYS[4 + ch], off, off + rs - 1)
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
-- pass 2: write the non-stale samples
local w = 0
for j = 1, n do
  if string.byte(mask, j) == 49 then
    w = w + 1
    local i = struct.unpack('<d', idx, 8 * j - 7)
    local ch = math.floor(i / per)
    local off = (i - ch * per) * rs
    redis.call('SETRANGE', KEYS[4 + ch], off, string.sub(recs, rs * w - rs + 1, rs * w))
    local cch = math.floor(i / cper)
    local coff = (i - cch * cper) * 4
    redis.call('SETRANGE', KEYS[4 + R + cch], coff, string.sub(scores, 4 * w - 3, 4 * w))
    if L > 0 then
      redis.call('SETRANGE', KEYS[4 + R + S + cch], coff, string.sub(losses, 4 * w - 3, 4 * w))
    end
  end
end
redis.call('ZADD', KEYS[2], ARGV[3], ARGV[2])
redis.call('ZREMRANGEBYSCORE', KEYS[2], '-inf', '(' .. ARGV[4])
local names = {'reports', 'samples_reported', 'samples_scored', 'samples_skipped', 'visited'}
local k = 1
for v in string.gmatch(ARGV[18], '[^,]+') do
  if v ~= '0' then
    redis.call('HINCRBY', KEYS[3], names[k], v)
  end
  k = k + 1
end
return 1
