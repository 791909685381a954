-- Presence of one channel: remove expired entries, then set this node's counts.
-- KEYS[1] zset  "node|user" -> lease expiry (ms)
-- KEYS[2] hash  "node|user" -> connections of that user on that node
-- KEYS[3] hash  user -> connections over every live node (absent when 0)
-- ARGV[1] now ms, ARGV[2] expiry ms for the entries written, ARGV[3] key ttl ms, ARGV[4] node,
-- ARGV[5] "1" to list users, then pairs: user, count (0 removes the entry)
-- Returns {count, #joined, joined..., #left, left..., [user, connections, ...]}
-- User ids never contain "|" (they are [A-Za-z0-9_-]), so the user is what follows the last one.
local joined, left = {}, {}

local function add(user, delta)
  local total = redis.call('HINCRBY', KEYS[3], user, delta)
  local before = total - delta
  if total <= 0 then
    redis.call('HDEL', KEYS[3], user)
    if before > 0 then table.insert(left, user) end
  elseif before <= 0 then
    table.insert(joined, user)
  end
end

local expired = redis.call('ZRANGEBYSCORE', KEYS[1], '-inf', ARGV[1])
for _, entry in ipairs(expired) do
  local had = tonumber(redis.call('HGET', KEYS[2], entry) or '0')
  redis.call('ZREM', KEYS[1], entry)
  redis.call('HDEL', KEYS[2], entry)
  if had > 0 then add(string.match(entry, '([^|]*)$'), -had) end
end

for i = 6, #ARGV, 2 do
  local user, want = ARGV[i], tonumber(ARGV[i + 1])
  local entry = ARGV[4] .. '|' .. user
  local had = tonumber(redis.call('HGET', KEYS[2], entry) or '0')
  if want > 0 then
    redis.call('HSET', KEYS[2], entry, want)
    redis.call('ZADD', KEYS[1], ARGV[2], entry)
  else
    redis.call('HDEL', KEYS[2], entry)
    redis.call('ZREM', KEYS[1], entry)
  end
  if want ~= had then add(user, want - had) end
end

for i = 1, 3 do redis.call('PEXPIRE', KEYS[i], ARGV[3]) end
local out = {redis.call('HLEN', KEYS[3]), #joined}
for _, u in ipairs(joined) do table.insert(out, u) end
table.insert(out, #left)
for _, u in ipairs(left) do table.insert(out, u) end
if ARGV[5] == '1' then
  local all = redis.call('HGETALL', KEYS[3])
  for _, v in ipairs(all) do table.insert(out, v) end
end
return out
