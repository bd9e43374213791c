-- gather: read the stored state of one request's samples. Read-only.
--
-- KEYS[1]              the run's meta hash        {run:<id>}:meta
-- KEYS[2]              the applied-report set     {run:<id>}:reports (zset report_id -> time)
-- KEYS[3 .. 2+R]       record chunks              {run:<id>}:rec:<k>
-- KEYS[3+R .. 2+R+I]   inclusion chunks           {run:<id>}:incl:<k> (I = 0 unless Exp3)
-- ARGV[1]  uid of the run as the caller knows it
-- ARGV[2]  the samples' indices, float64 little-endian (exact below 2^53)
-- ARGV[3]  record size in bytes
-- ARGV[4]  records per chunk
-- ARGV[5]  R
-- ARGV[6]  I
-- ARGV[7]  inclusion values per chunk
-- ARGV[8 .. 7+F]  the report_ids of the request (F >= 0)
--
-- A partitioned run (docs/architecture.md "Partitioned runs"): the caller runs this script
-- once per partition part, with that partition's keys ({run:<id>:<j>.<salt>}:...),
-- partition-local indices, and the ids of the reports with samples on that partition: the
-- SAME report ids on every partition, so each partition dedups its own part and a report is
-- applied once on each partition it touches. The caller counts a report as a duplicate only
-- when every partition it touches has its marker. A partition's meta has no epochs
-- (last_epoch -1): the caller reads the run's last_epoch from the run's meta.
--
-- Returns {status, last_epoch, records, inclusion}, status a GatherStatus (services/storage.py):
--   -1 GONE       the run does not exist, or was re-created (uid differs); nothing else returned
--    0 DUPLICATE  {0, last_epoch, j1, ...}: the report_ids at 1-based positions j1, ... were
--                 already applied (duplicates); nothing read
--    1 OK         records = B records of ARGV[3] bytes in the order of ARGV[2] (a record never
--                 written reads as zeros: visits = 0 = never seen); inclusion = B float32
--                 ("" when I = 0; 0 = never drawn with Exp3)
local meta = redis.call('HMGET', KEYS[1], 'uid', 'last_epoch')
if meta[1] ~= ARGV[1] then
  return {-1}
end
local last = tonumber(meta[2])
local F = #ARGV - 7
if F > 0 then
  local seen = redis.call('ZMSCORE', KEYS[2], unpack(ARGV, 8, 7 + F))
  local dups = {0, last}
  for j = 1, F do
    if seen[j] then
      dups[#dups + 1] = j
    end
  end
  if #dups > 2 then
    return dups
  end
end
local idx = ARGV[2]
local rs = tonumber(ARGV[3])
local per = tonumber(ARGV[4])
local R = tonumber(ARGV[5])
local I = tonumber(ARGV[6])
local iper = tonumber(ARGV[7])
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
