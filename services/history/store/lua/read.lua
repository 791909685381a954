-- Read a channel stream after an offset.
-- KEYS[1] meta hash, KEYS[2] stream; ARGV[1] since offset, ARGV[2] limit, ARGV[3] "1" for the newest
-- Returns {epoch or "", top, first, id1, body1, prio1, id2, ...}
local meta = redis.call('HMGET', KEYS[1], 'e', 't')
if not meta[1] then
  return {'', 0, 0}
end
local out = {meta[1], tonumber(meta[2]) or 0, 0}
local oldest = redis.call('XRANGE', KEYS[2], '-', '+', 'COUNT', 1)
if #oldest == 0 then
  return out
end
out[3] = tonumber(string.match(oldest[1][1], '^(%d+)'))
if tonumber(ARGV[2]) <= 0 then
  return out  -- XRANGE with COUNT 0 replies nil, not an empty list
end
local from = tostring(tonumber(ARGV[1]) + 1) .. '-0'
local entries
if ARGV[3] == '1' then
  entries = redis.call('XREVRANGE', KEYS[2], '+', from, 'COUNT', ARGV[2])
  local reversed = {}
  for i = #entries, 1, -1 do table.insert(reversed, entries[i]) end
  entries = reversed
else
  entries = redis.call('XRANGE', KEYS[2], from, '+', 'COUNT', ARGV[2])
end
for _, entry in ipairs(entries) do
  local fields = entry[2]
  local body, prio = '', '2'
  for j = 1, #fields, 2 do
    if fields[j] == 'd' then body = fields[j + 1] elseif fields[j] == 'p' then prio = fields[j + 1] end
  end
  table.insert(out, tonumber(string.match(entry[1], '^(%d+)')))
  table.insert(out, body)
  table.insert(out, tonumber(prio))
end
return out
