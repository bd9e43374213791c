-- claim: take the run's write lease (see scatter.lua) for the caller's record cache.
--
-- KEYS[1]  the run's meta hash {run:<id>}:meta
-- ARGV[1]  uid of the run as the caller knows it
-- ARGV[2]  the caller's token: unique to one process and one generation of its cache
--
-- The caller claims with an EMPTY cache generation and fills it only with what it reads
-- or writes after this call returned, so while meta.writer holds the token, the copy
-- and Redis agree.
--
-- A partitioned run (docs/architecture.md "Partitioned runs"): run per partition, with the
-- partition's keys ({run:<id>:<j>.<salt>}:...); each partition has its own meta (uid,
-- writer, log_base).
--
-- Returns a ClaimStatus (services/storage.py): 1 CLAIMED, or -1 GONE when the run does not
-- exist or was re-created.
if redis.call('HGET', KEYS[1], 'uid') ~= ARGV[1] then
  return -1
end
redis.call('HSET', KEYS[1], 'writer', ARGV[2])
return 1
