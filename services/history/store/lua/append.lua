-- Append events to a channel stream, atomically, with idempotency.
-- KEYS[1] meta hash (e = epoch, t = top offset), KEYS[2] stream, KEYS[3..] one idempotency key per event
-- ARGV[1] epoch to create if none, ARGV[2] max length, ARGV[3] stream ttl ms, ARGV[4] meta ttl ms,
-- ARGV[5] idempotency ttl ms, then per event: ARGV[5+2i-1] body, ARGV[5+2i] priority
-- Returns {epoch, offset1, dup1, offset2, dup2, ..., trimmed} (trimmed: events MAXLEN dropped)
local epoch = redis.call('HGET', KEYS[1], 'e')
if not epoch then
  epoch = ARGV[1]
  redis.call('HSET', KEYS[1], 'e', epoch, 't', 0)
end
local out = {epoch}
local before = redis.call('XLEN', KEYS[2])
local added = 0
local n = (#ARGV - 5) / 2
for i = 1, n do
  local idem = KEYS[2 + i]
  local seen = redis.call('GET', idem)
  if seen then
    table.insert(out, tonumber(seen))
    table.insert(out, 1)
  else
    local offset = redis.call('HINCRBY', KEYS[1], 't', 1)
    redis.call('XADD', KEYS[2], 'MAXLEN', ARGV[2], offset .. '-0', 'd', ARGV[4 + 2 * i], 'p', ARGV[5 + 2 * i])
    redis.call('SET', idem, offset, 'PX', ARGV[5])
    table.insert(out, offset)
    table.insert(out, 0)
    added = added + 1
  end
end
table.insert(out, before + added - redis.call('XLEN', KEYS[2]))
redis.call('PEXPIRE', KEYS[2], ARGV[3])
redis.call('PEXPIRE', KEYS[1], ARGV[4])
return out
