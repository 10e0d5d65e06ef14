-- Renew every lease a shard host holds in one round trip.
-- KEYS lease hashes   ARGV[1] ttl in ms   ARGV[2..] owner tokens, one per key
-- Returns one 1 (renewed) or 0 (not ours any more) per key.
local t = redis.call('TIME')
local now = t[1] .. '.' .. string.format('%06d', tonumber(t[2]))
local renewed = {}
for i, key in ipairs(KEYS) do
  if redis.call('HGET', key, 'owner') == ARGV[i + 1] then
    redis.call('HSET', key, 'renewed_at', now)
    redis.call('PEXPIRE', key, ARGV[1])
    renewed[i] = 1
  else
    renewed[i] = 0
  end
end
return renewed
