-- Remove one finished message from a shard's in-flight list, only while the caller owns the
-- shard lease (acks may come out of order, so by value, never a pop). A run whose lease passed
-- to another owner must not touch that owner's in-flight list: its message was restored there.
--
-- KEYS[1] in-flight list   KEYS[2] shard lease   ARGV[1] owner token   ARGV[2] the raw message
-- Returns the number removed (0 or 1), or -1 when the lease is not the caller's.
if redis.call('HGET', KEYS[2], 'owner') ~= ARGV[1] then return -1 end
return redis.call('LREM', KEYS[1], 1, ARGV[2])
