-- Shared by the ledger's scripts (prepended to each; see ledger.go).
-- parse reads the first n numbers of a ledger value ("calls prompt ..."),
-- missing ones 0; fmt writes them back; off tells a kill switch's value
-- that turns it off.
local function parse(v, n)
  local t = {}
  for i = 1, n do t[i] = 0 end
  if v then
    local i = 1
    for x in string.gmatch(v, '%-?%d+') do
      if i > n then break end
      t[i] = tonumber(x)
      i = i + 1
    end
  end
  return t
end
local function fmt(t)
  local s = {}
  for i = 1, #t do s[i] = string.format('%d', t[i]) end
  return table.concat(s, ' ')
end
local function off(v)
  v = string.lower((string.gsub(v, '^%s*(.-)%s*$', '%1')))
  return v == 'off' or v == 'false' or v == '0' or v == 'no' or v == 'disabled'
end
