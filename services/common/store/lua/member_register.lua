-- Claim or refresh a membership lease and drop expired ones.
-- KEYS[1] zset node -> lease expiry (ms), KEYS[2] hash node -> address
-- ARGV[1] node id, ARGV[2] address, ARGV[3] expiry ms, ARGV[4] now ms
local expired = redis.call('ZRANGEBYSCORE', KEYS[1], '-inf', ARGV[4])
for _, node in ipairs(expired) do
  redis.call('ZREM', KEYS[1], node)
  redis.call('HDEL', KEYS[2], node)
end
redis.call('ZADD', KEYS[1], ARGV[3], ARGV[1])
redis.call('HSET', KEYS[2], ARGV[1], ARGV[2])
return #expired
