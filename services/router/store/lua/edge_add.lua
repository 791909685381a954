-- An edge has subscribers of one channel: add it to the channel's set and renew the set's ttl.
-- KEYS[1] set of edge ids, ARGV[1] edge id, ARGV[2] ttl ms
redis.call('SADD', KEYS[1], ARGV[1])
redis.call('PEXPIRE', KEYS[1], ARGV[2])
return 1
