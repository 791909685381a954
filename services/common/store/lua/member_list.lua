-- Live members with their addresses.
-- KEYS[1] zset node -> lease expiry (ms), KEYS[2] hash node -> address; ARGV[1] now ms
-- Returns a flat list: node, address, node, address, ...
local live = redis.call('ZRANGEBYSCORE', KEYS[1], '(' .. ARGV[1], '+inf')
local out = {}
for _, node in ipairs(live) do
  table.insert(out, node)
  table.insert(out, redis.call('HGET', KEYS[2], node) or false)
end
return out
