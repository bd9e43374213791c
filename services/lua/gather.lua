-- gather: read the stored state of one report's samples. Read-only.
--
-- KEYS[1]              the run's meta hash        {run:<id>}:meta
-- KEYS[2]              the applied-report set     {run:<id>}:reports (zset report_id -> time)
-- KEYS[3 .. 2+R]       record chunks              {run:<id>}:rec:<k>
-- KEYS[3+R .. 2+R+I]   inclusion chunks           {run:<id>}:incl:<k> (I = 0 unless Exp3)
-- ARGV[1]  uid of the run as the caller knows it
-- ARGV[2]  report_id
-- ARGV[3]  the samples' indices, float64 little-endian (exact below 2^53)
-- ARGV[4]  record size in bytes
-- ARGV[5]  records per chunk
-- ARGV[6]  R
-- ARGV[7]  I
-- ARGV[8]  inclusion values per chunk
--
-- Returns {status, last_epoch, records, inclusion}:
--   status -1: the run does not exist, or was re-created (uid differs); nothing else returned
--   status  0: report_id was already applied (a duplicate)
--   status  1: records = B records of ARGV[4] bytes in report order (a record never
--              written reads as zeros: visits = 0 = never seen); inclusion = B float32
--              ("" when I = 0; 0 = never drawn with Exp3)
local uid = redis.call('HGET', KEYS[1], 'uid')
if uid ~= ARGV[1] then
  return {-1}
end
local last = tonumber(redis.call('HGET', KEYS[1], 'last_epoch'))
if redis.call('ZSCORE', KEYS[2], ARGV[2]) then
  return {0, last}
end
local idx = ARGV[3]
local rs = tonumber(ARGV[4])
local per = tonumber(ARGV[5])
local R = tonumber(ARGV[6])
local I = tonumber(ARGV[7])
local iper = tonumber(ARGV[8])
local n = #idx / 8
local zero = string.rep('\0', rs)
local recs = {}
local incl = {}
for j = 1, n do
  local i = struct.unpack('<d', idx, 8 * j - 7)
  local ch = math.floor(i / per)
  local off = (i - ch * per) * rs
  local r = redis.call('GETRANGE', KEYS[3 + ch], off, off + rs - 1)
  if #r < rs then
    r = r .. string.sub(zero, 1, rs - #r)
  end
  recs[j] = r
  if I > 0 then
    local ich = math.floor(i / iper)
    local ioff = (i - ich * iper) * 4
    local p = redis.call('GETRANGE', KEYS[3 + R + ich], ioff, ioff + 3)
    if #p < 4 then
      p = '\0\0\0\0'
    end
    incl[j] = p
  end
end
return {1, last, table.concat(recs), table.concat(incl)}
