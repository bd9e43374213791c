-- scatter: apply F >= 1 reports atomically: dedup markers, compare-and-set (unless the
-- caller holds the run's write lease), writes, score log, counters.
--
-- KEYS[1]          the run's meta hash        {run:<id>}:meta (fields uid, writer)
-- KEYS[2]          the applied-report set     {run:<id>}:reports (zset report_id -> time)
-- KEYS[3]          the run's counters hash    {run:<id>}:counters
-- KEYS[4]          the run's score log        {run:<id>}:scorelog (list of packed entries)
-- KEYS[5 .. 4+R]   record chunks              {run:<id>}:rec:<k>
-- ARGV[1]   uid of the run as the caller knows it
-- ARGV[2]   the caller's write-lease token ("" = none)
-- ARGV[3]   now (unix seconds): the markers' time
-- ARGV[4]   markers older than this are forgotten (now - dedup TTL)
-- ARGV[5]   indices of the S samples of all F reports, float64 little-endian, report
--           after report (no index appears twice: the caller splits requests that repeat one)
-- ARGV[6]   record size in bytes (rs)
-- ARGV[7]   records per chunk
-- ARGV[8]   expected record heads, S x H bytes: the state the caller computed from
-- ARGV[9]   H, bytes of a head to compare (lr_sum + visits)
-- ARGV[10]  write mask, S bytes: "1" = write this sample, "0" = leave it (stale)
-- ARGV[11]  new records of the samples to write, W x rs bytes, in order
-- ARGV[12]  score-log entry: the W samples' (index, score[, loss]), appended as one item
-- ARGV[13]  counter increments "reports,samples_reported,samples_scored,samples_skipped,visited"
--           and optionally ",d": what each duplicate report adds to the duplicates counter
--           (default 1; a partition part of a partitioned run sends 0: its caller counts a
--           report as a duplicate only when it was applied on every partition it touches;
--           the counter is still written, by 0, so that a WAIT after the call covers the
--           earlier apply)
-- ARGV[14 .. 13+F]  the F report_ids
--
-- A partitioned run (docs/architecture.md "Partitioned runs"): the caller runs this script
-- once per partition part, with that partition's keys ({run:<id>:<j>.<salt>}:...),
-- partition-local indices, and the ids of the reports with samples on that partition: the
-- SAME report ids on every partition, so each partition dedups its own part and a report is
-- applied once on each partition it touches. The caller counts a report as a duplicate only
-- when every partition it touches has its marker.
--
-- The write lease. A server process that keeps a copy of the run's records (its record
-- cache) may claim the run by writing a token unique to it into meta.writer (see
-- store.claim). While meta.writer still holds the caller's token, nobody else has written
-- a record since the claim, so the caller's copy IS the stored state and the per-sample
-- compare is skipped: one redis.call per sample instead of two. Every write made without
-- the lease deletes meta.writer, which revokes whoever held it.
--
-- Returns a ScatterStatus (services/storage.py), alone or first in a table:
--   -1 GONE         the run does not exist or was re-created: nothing written
--   {0 DUPLICATE, j1, ...}
--                   the reports at 1-based positions j1, ... were already applied: NOTHING
--                   is written but the duplicates counter (+1 each); the caller drops them
--                   and sends the others again
--    1 LEASED       applied under the caller's lease (no compare)
--    3 COMPARED     applied after comparing every sample (the caller holds no lease)
--   {2 CONFLICT, records, p1, ...}
--                   conflict: the samples at 1-based positions p1, ... (over all S) are not
--                   in the state the caller computed from (another report changed them, or
--                   the caller's copy was stale). NOTHING is written. `records` holds their
--                   current records (rs bytes each, in the order of p), so the caller can
--                   recompute without another round trip.
local meta = redis.call('HMGET', KEYS[1], 'uid', 'writer')
if meta[1] ~= ARGV[1] then
  return -1
end
local F = #ARGV - 13
local seen = redis.call('ZMSCORE', KEYS[2], unpack(ARGV, 14, 13 + F))
local dups = {0}
for j = 1, F do
  if seen[j] then
    dups[#dups + 1] = j
  end
end
if #dups > 1 then
  local per = tonumber(string.match(ARGV[13], '^[^,]*,[^,]*,[^,]*,[^,]*,[^,]*,(%d+)$') or '1')
  -- by 0 too: still a write, so a WAIT after this call covers the earlier apply it found
  redis.call('HINCRBY', KEYS[3], 'duplicates', per * (#dups - 1))
  return dups
end
local idx = ARGV[5]
local rs = tonumber(ARGV[6])
local per = tonumber(ARGV[7])
local mask = ARGV[10]
local WRITE = string.byte('1') -- the mask's "write this sample" (codec.write_mask)
local recs = ARGV[11]
local n = #idx / 8
local leased = ARGV[2] ~= '' and meta[2] == ARGV[2]
local keys = {}
local offs = {}
for j = 1, n do
  local i = struct.unpack('<d', idx, 8 * j - 7)
  local ch = math.floor(i / per)
  keys[j] = KEYS[5 + ch]
  offs[j] = (i - ch * per) * rs
end
if not leased then
  -- pass 1: compare-and-set check of every sample (stale ones too), nothing written yet
  local heads = ARGV[8]
  local H = tonumber(ARGV[9])
  local zero = string.rep('\0', rs)
  local bad = {2, ''}
  local current = {}
  for j = 1, n do
    local key, off = keys[j], offs[j]
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
  if meta[2] then
    redis.call('HDEL', KEYS[1], 'writer') -- a write without the lease revokes it
  end
end
-- pass 2: write the non-stale samples' records
local w = 0
for j = 1, n do
  if string.byte(mask, j) == WRITE then
    w = w + 1
    redis.call('SETRANGE', keys[j], offs[j], string.sub(recs, rs * w - rs + 1, rs * w))
  end
end
if #ARGV[12] > 0 then
  redis.call('RPUSH', KEYS[4], ARGV[12])
end
local marks = {}
for j = 1, F do
  marks[2 * j - 1] = ARGV[3]
  marks[2 * j] = ARGV[13 + j]
end
redis.call('ZADD', KEYS[2], unpack(marks))
redis.call('ZREMRANGEBYSCORE', KEYS[2], '-inf', '(' .. ARGV[4])
local names = {'reports', 'samples_reported', 'samples_scored', 'samples_skipped', 'visited'}
local k = 1
for v in string.gmatch(ARGV[13], '[^,]+') do
  if v ~= '0' and names[k] then
    redis.call('HINCRBY', KEYS[3], names[k], v)
  end
  k = k + 1
end
if leased then
  return 1
end
return 3
