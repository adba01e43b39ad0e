-- Ordinary pattern matching, run twice by tests/unit/check_sandbox.c: in the sandbox (the
-- metered matcher of core/lua_pattern.c) and in a stock Lua state (lstrlib.c).  run() returns
-- one line per case; both runs must give the same lines.
local M = {}

local function show(v)
  if type(v) == "string" then return string.format("%q", v) end
  return tostring(v)
end

-- "n:v1,v2,..." for the values a call returned, or "error: message".
local function results(ok, ...)
  if not ok then return "error: " .. tostring((...)) end
  local out = {}
  for i = 1, select("#", ...) do out[i] = show((select(i, ...))) end
  return select("#", ...) .. ":" .. table.concat(out, ",")
end

-- Every value an iterator gives, one "{...}" per step.
local function collect(...)
  local out = {}
  for a, b, c in ... do out[#out + 1] = "{" .. show(a) .. "," .. show(b) .. "," .. show(c) .. "}" end
  return table.concat(out)
end

local cases = {
  -- find: plain and not, init forms, captures after the positions
  { string.find, "hello world", "o w" },
  { string.find, "hello world", "o", 6 },
  { string.find, "hello world", "o", -3 },
  { string.find, "hello world", "o", -100 },
  { string.find, "hello world", "o", 100 },
  { string.find, "hello", "", 6 },
  { string.find, "hello", "", 7 },
  { string.find, "a.b", ".", 1, true },
  { string.find, "a+b", "+", 1, true },
  { string.find, "a.b", "%." },
  { string.find, "key = value", "(%w+)%s*=%s*(%w+)" },
  { string.find, "a\0b", "\0" },
  { string.find, "a\0b\0c", "b\0c" },
  -- match: captures, position captures, classes, sets
  { string.match, "hello world", "(%w+) (%w+)" },
  { string.match, "hello", "()ll()" },
  { string.match, "2024-02-29", "^(%d%d%d%d)-(%d%d)-(%d%d)$" },
  { string.match, "  trim me  ", "^%s*(.-)%s*$" },
  { string.match, "x = 0x1F;", "0x(%x+)" },
  { string.match, "Hello, World!", "%u%l+%p" },
  { string.match, "tab\there", "%c" },
  { string.match, "abc]def", "[%]]" },
  { string.match, "price: 12.50 RUB", "[%d%.]+" },
  { string.match, "abcXYZ", "[^a-z]+" },
  { string.match, "a-b", "[a%-]+" },
  { string.match, "caf\xc3\xa9!", "[\128-\255]+" },
  { string.match, "a\0b", "a%zb" },
  { string.match, "aaab", "a-b" },
  { string.match, "aaab", "a*" },
  { string.match, "aaab", "a+b" },
  { string.match, "ab", "a?b" },
  { string.match, "b", "a?b" },
  { string.match, "xyz", "q*" },
  { string.match, "hello", ".-(l+)(.*)" },
  { string.match, "hello", "(h)(e)(l)(l)(o)" },
  { string.match, "f(ab)", "(%((%w)(%w)%))" },
  { string.gsub, "a1 b2", "%D", "" },
  { string.match, " x y ", "%S+" },
  { string.match, "\1ab\127", "%g+" },
  -- %b, %f, back-references, anchors
  { string.match, "x(a(b)c)y", "%b()" },
  { string.match, "f(a, (b)) + g(c)", "%w%b()" },
  { string.match, "[[x]] [y]", "%b[]" },
  { string.match, "((", "%b()" },
  { string.match, "THE (quick) fox", "%f[%a]%a+" },
  { string.match, "the quick", "%f[%w]%w+$" },
  { string.match, 'say "hi" now', "([\"'])(.-)%1" },
  { string.match, "abab", "^(ab)%1$" },
  { string.find, "aaa", "^a" },
  { string.find, "baaa", "^a" },
  { string.find, "baaa", "^a", 2 },
  { string.find, "abc", "c$" },
  { string.find, "a$b", "$b" },
  { string.find, "a^b", "a^b" },
  -- gsub: string replacement with %0 %1 %%, tables, functions, counts, anchors, empty matches
  { string.gsub, "hello world", "o", "0" },
  { string.gsub, "hello world", "(%w+)", "<%1>" },
  { string.gsub, "hello world", "%w+", "%0 %0", 1 },
  { string.gsub, "hello", "", "-" },
  { string.gsub, "abc", "x*", "-" },
  { string.gsub, "50%", "%%", "%%%%" },
  { string.gsub, "abc", "b", 5 },
  { string.gsub, "  x  ", "^%s+", "" },
  { string.gsub, "aaa", "^a", "b" },
  { string.gsub, "hello world", "()o", "%1" },
  { string.gsub, "$name is $age", "%$(%w+)", { name = "Ann", age = 42 } },
  { string.gsub, "$name and $none", "%$(%w+)", { name = "Ann" } },
  { string.gsub, "$x $y", "%$(%w+)", { x = false } },
  { string.gsub, "a b c", "%w", function(c) return c:upper() .. c end },
  { string.gsub, "a b c", "%w", function(c) if c == "b" then return nil end return "!" end },
  { string.gsub, "k1=v1, k2=v2", "(%w+)=(%w+)", function(k, v) return v .. "=" .. k end },
  { string.gsub, "abc", "%w", "%0", 0 },
  { string.gsub, "abc", "%w", "x", -1 },
  { string.gsub, "abc", "", "", 2 },
  -- errors: the messages must be Lua's
  { string.find, "x", "%" },
  { string.find, "x", "[a" },
  { string.find, "x", "[a%" },
  { string.find, "x", "(" },
  { string.match, "x", ")" },
  { string.find, "x", ")" },
  { string.find, "x", "%b" },
  { string.find, "x", "%f" },
  { string.find, "x", "%fa" },
  { string.find, "x", "(x)%2" },
  { string.find, "x", "%1" },
  { string.match, ("a"):rep(300), ("a?"):rep(250) },
  { string.match, ("a"):rep(40), ("(a)"):rep(33) },
  { string.gsub, "x", "x", "%2" },
  { string.gsub, "x", "x", "%z" },
  { string.gsub, "x", "x", true },
  { string.gsub, "x", "(x)", { x = {} } },
  { string.gsub, "x", "x", function() return {} end },
  { string.find, {}, "x" },
  { string.match, "x" },
  { string.gsub, "x", "x", "y", "n" },
}

function M.run()
  local out = {}
  for i, c in ipairs(cases) do
    out[i] = results(pcall(table.unpack(c)))
  end
  -- gmatch: plain iteration, captures, position captures, empty matches, init (new in 5.4),
  -- and '^', which gmatch takes as a literal character
  local g = {
    collect(("one two three"):gmatch("%a+")),
    collect(("k1=v1, k2=v2"):gmatch("(%w+)=(%w+)")),
    collect(("hello"):gmatch("()l")),
    collect(("abc"):gmatch("x*")),
    collect(("abc"):gmatch("")),
    collect(("one two three"):gmatch("%a+", 5)),
    collect(("one two three"):gmatch("%a+", -5)),
    collect(("one two"):gmatch("%a+", 100)),
    collect(("aaa"):gmatch("^a")),
    collect(("a^a"):gmatch("^a")),
    collect(string.gmatch("a,b,,c", "([^,]*)")),
  }
  for _, v in ipairs(g) do out[#out + 1] = v end
  out[#out + 1] = results(pcall(function() return collect(("x"):gmatch("%")) end))
  out[#out + 1] = results(pcall(string.gmatch, nil, "x"))
  -- Method calls go through the string metatable.
  out[#out + 1] = results(true, ("hello"):find("l+"))
  out[#out + 1] = results(true, ("hello"):gsub("l", "L"))
  out[#out + 1] = results(true, ("hello"):match("(h)(.)"))
  return out
end

return M
