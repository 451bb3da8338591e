"""The job store's Lua scripts: every check-then-write on job state, each run as one atomic Redis step.

Two workers (a writer and its replacement, two exporters, two `run`s of one job) may touch the same stream
at once; a check in Python followed by a write would let them interleave in between. Redis runs a script
without interleaving, so the checks (status transitions, job creation, writer and exporter fencing, duplicate
parts) and their writes live here, together, where their atomicity can be read and reviewed in one place.
The store (`pipeline.jobs.state`, `pipeline.jobs.state_commits`) registers them and supplies KEYS and ARGV.
"""

from __future__ import annotations

# KEYS: the job's or stream's hash. ARGV: new status, now, time field to stamp ('' if none), then the statuses
# it may move from. Returns {0, ''} without such a hash, {1, previous} when the move is allowed (a move to the
# current status writes nothing), {2, current} when it is not.
SET_STATUS = """
local cur = redis.call('HGET', KEYS[1], 'status')
if not cur then return {0, ''} end
for i = 4, #ARGV do
  if ARGV[i] == cur then
    if cur ~= ARGV[1] then
      redis.call('HSET', KEYS[1], 'status', ARGV[1], 'updated', ARGV[2])
      if ARGV[3] ~= '' then redis.call('HSET', KEYS[1], ARGV[3], ARGV[2]) end
    end
    return {1, cur}
  end
end
return {2, cur}
"""

CREATE_JOB = """
if redis.call('EXISTS', KEYS[1]) == 1 then return 0 end
redis.call('HSET', KEYS[1], 'job_id', ARGV[1], 'status', 'queued', 'spec', ARGV[2], 'stream_ids', ARGV[3],
           'created', ARGV[4], 'updated', ARGV[4], 'error_count', 0)
redis.call('ZADD', KEYS[2], ARGV[4], ARGV[1])
for i = 3, #KEYS do
  redis.call('DEL', KEYS[i])
  redis.call('HSET', KEYS[i], 'status', 'pending', 'decoded', 0, 'analysed', 0, 'written', 0,
             'last_written_frame', -1, 'epoch', 0, 'error_count', 0, 'updated', ARGV[4])
end
return 1
"""

BUMP_EPOCH = """
if redis.call('HEXISTS', KEYS[1], 'status') == 0 then return -1 end
return redis.call('HINCRBY', KEYS[1], 'epoch', 1)
"""

# ARGV: epoch, table, part name, first, last, rows, frames, record JSON, primary table, now, last pts ('' if none),
# the stream's alert state committed with the part ('' if none; see pipeline.storage.stream_alerts)
RECORD_COMMIT = """
local status = redis.call('HGET', KEYS[1], 'status')
if not status then return {-1, 0} end
local current = tonumber(redis.call('HGET', KEYS[1], 'epoch') or '0')
if current < 1 or current ~= tonumber(ARGV[1]) then return {0, current} end
local field = ARGV[2] .. '/' .. ARGV[3]
if redis.call('HEXISTS', KEYS[2], field) == 1 then return {2, current} end
redis.call('HSET', KEYS[2], field, ARGV[8])
local prefix = 'committed:' .. ARGV[2] .. ':'
redis.call('HINCRBY', KEYS[1], prefix .. 'rows', ARGV[6])
redis.call('HINCRBY', KEYS[1], prefix .. 'parts', 1)
local last = tonumber(redis.call('HGET', KEYS[1], prefix .. 'last_frame') or '-1')
if tonumber(ARGV[5]) > last then
  redis.call('HSET', KEYS[1], prefix .. 'last_frame', ARGV[5])
  if ARGV[11] ~= '' then redis.call('HSET', KEYS[1], prefix .. 'last_pts', ARGV[11]) end
end
if ARGV[12] ~= '' then redis.call('HSET', KEYS[1], 'alerts', ARGV[12]) end
if ARGV[2] == ARGV[9] then
  redis.call('HINCRBY', KEYS[1], 'written', ARGV[7])
  local written = tonumber(redis.call('HGET', KEYS[1], 'last_written_frame') or '-1')
  if tonumber(ARGV[5]) > written then redis.call('HSET', KEYS[1], 'last_written_frame', ARGV[5]) end
end
redis.call('HSET', KEYS[1], 'updated', ARGV[10])
return {1, current}
"""


# Export of rows kept in the store (the `errors` table) as parts: the part covers the stream's records
# after ordinal ARGV[3] through ARGV[4], accepted only if nothing after ARGV[3] was exported yet, so two
# exports of the same records (a resumed driver, a retried call) never both succeed.
# Exporters are fenced like writers, by an export epoch per table: an exporter whose epoch was superseded
# is rejected (code 3), so the newest exporter may remove older exporters' unrecorded staged parts.
# KEYS: stream key, parts key. ARGV: table, part name, after, through, record JSON, now, export epoch
RECORD_EXPORT = """
if redis.call('HEXISTS', KEYS[1], 'status') == 0 then return {-1, 0} end
local field = ARGV[1] .. '/' .. ARGV[2]
if redis.call('HEXISTS', KEYS[2], field) == 1 then return {2, 0} end
local epoch = tonumber(redis.call('HGET', KEYS[1], 'export_epoch:' .. ARGV[1]) or '0')
if epoch ~= tonumber(ARGV[7]) then return {3, epoch} end
local current = tonumber(redis.call('HGET', KEYS[1], 'exported:' .. ARGV[1]) or '0')
if current ~= tonumber(ARGV[3]) then return {0, current} end
redis.call('HSET', KEYS[1], 'exported:' .. ARGV[1], ARGV[4], 'updated', ARGV[6])
redis.call('HSET', KEYS[2], field, ARGV[5])
return {1, current}
"""


SET_DELIVERED = """
if redis.call('HEXISTS', KEYS[1], 'status') == 0 then return 0 end
local current = tonumber(redis.call('HGET', KEYS[1], 'webhook_delivered') or '-1')
if tonumber(ARGV[1]) > current then redis.call('HSET', KEYS[1], 'webhook_delivered', ARGV[1]) end
return 1
"""
