-- Take messages of a shard into its in-flight list, only while the caller owns the shard lease.
-- The lease check and the move are one atomic step, so a consumer that was paused after any
-- check of its own cannot take a message once a standby owns the shard (the take window).
--
-- KEYS[1] shard queue (head = right end)   KEYS[2] its in-flight list   KEYS[3] shard lease
-- ARGV[1] owner token   ARGV[2] room (messages that may be taken)   ARGV[3] window (how far past
-- the head to look)   ARGV[4..] users with a message in flight (their later messages must wait)
--
-- Returns {1, queue length before the take, taken...} (taken oldest first), or {-1} when the
-- lease is not the caller's. A message whose user is busy is looked past, and so is every later
-- message of that user; a message without a readable shardline_user header (sent by name, or
-- poison) is taken only alone: at the head, with nothing in flight.
if redis.call('HGET', KEYS[3], 'owner') ~= ARGV[1] then return {-1} end
local room = tonumber(ARGV[2])
local length = redis.call('LLEN', KEYS[1])
local taken = {1, length}
if room <= 0 or length == 0 then return taken end

local function take(item)
  redis.call('LREM', KEYS[1], -1, item)
  redis.call('LPUSH', KEYS[2], item)
  taken[#taken + 1] = item
end

local busy, anything_busy = {}, false
for i = 4, #ARGV do busy[ARGV[i]] = true; anything_busy = true end
if room == 1 and not anything_busy then  -- one at a time (K = 1): the head, no decoding
  taken[3] = redis.call('LMOVE', KEYS[1], KEYS[2], 'RIGHT', 'LEFT')
  return taken
end

local function user_of(item)
  local ok, message = pcall(cjson.decode, item)
  if not ok or type(message) ~= 'table' or type(message['headers']) ~= 'table' then return nil end
  local user = message['headers']['shardline_user']
  if type(user) ~= 'string' or user == '' then return nil end
  return user
end

local window = redis.call('LRANGE', KEYS[1], -tonumber(ARGV[3]), -1)
for i = #window, 1, -1 do
  local item = window[i]
  local user = user_of(item)
  if user == nil then
    if i == #window and not anything_busy then take(item) end
    break  -- nothing behind an unknown user's message may go ahead of it
  end
  if not busy[user] then
    take(item)
    if #taken - 2 >= room then break end
  end
  busy[user] = true  -- taken now, or waiting behind its user's running message
  anything_busy = true
end
return taken
