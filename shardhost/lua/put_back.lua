-- Put messages of a shard's in-flight list back at the head of its queue, only while the caller
-- owns the shard lease: those a take moved whose reply never reached the caller (the connection
-- broke after Redis ran it), so nobody runs them.
--
-- KEYS[1] shard queue   KEYS[2] its in-flight list   KEYS[3] shard lease
-- ARGV[1] owner token   ARGV[2..] the raw messages, newest take first (the oldest ends nearest
-- the head, next to be taken)
-- Returns the number put back, or -1 when the lease is not the caller's.
if redis.call('HGET', KEYS[3], 'owner') ~= ARGV[1] then return -1 end
local moved = 0
for i = 2, #ARGV do
  if redis.call('LREM', KEYS[2], 1, ARGV[i]) == 1 then
    redis.call('RPUSH', KEYS[1], ARGV[i])
    moved = moved + 1
  end
end
return moved
