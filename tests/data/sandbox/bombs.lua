-- Hostile handlers: each tries to escape one limit of the sandbox.
local M = {}

-- Table growth until the memory cap.
M.memory_bomb = function()
  local t = {}
  local i = 0
  while true do
    i = i + 1
    t[i] = { i, tostring(i) .. "padding-padding-padding" }
  end
end

M.infinite_loop = function()
  while true do end
end

-- The kill must not be swallowed by the rule's own pcall.
M.loop_in_pcall = function()
  local ok, err = pcall(function() while true do end end)
  return { ok = ok, err = tostring(err) }
end

-- Retrying forever: every retry would get a fresh budget if the kill were not sticky.
M.pcall_retry = function()
  local n = 0
  while true do
    pcall(function() while true do n = n + 1 end end)
  end
end

-- A tail call: pcall returns straight to the host, the call "succeeds" after the kill.
M.tail_pcall = function()
  return pcall(function() while true do end end)
end

-- xpcall whose handler loops too.
M.xpcall_loop = function()
  return xpcall(function() while true do end end, function() while true do end end)
end

-- string.rep runs in C without hooks.
M.rep_bomb = function()
  local s = string.rep("x", 1024 * 1024 * 1024)
  return #s
end

M.rep_doubling = function()
  local s = "x"
  for _ = 1, 64 do s = s .. s end
  return #s
end

M.rep_empty = function()
  return #string.rep("", 1 << 50) + #("").rep("", 1 << 50, "")
end

M.move_spin = function()
  return table.move({}, 1, 1 << 50, 1)
end

-- Expensive C calls with very few VM instructions between them: only the wall clock stops it.
M.wall_clock = function()
  local s = string.rep("a", 2000)
  local n = 0
  while true do
    if string.find(s, ".-b") then n = n + 1 end
  end
end

-- Pattern matching runs in C without hooks: one backtracking call took minutes (issue 11).
local function subject() return ("a"):rep(50000) end
local function backtracker() return ("a-"):rep(30) .. "b" end

M.pattern_find = function()
  return string.find(subject(), backtracker())
end

-- Through the string metatable (s:match), not the library table.
M.pattern_method = function()
  local s = subject()
  return s:match(backtracker())
end

M.pattern_gsub = function()
  return (string.gsub(subject(), backtracker(), "x"))
end

M.pattern_gmatch = function()
  local n = 0
  for _ in subject():gmatch(backtracker()) do n = n + 1 end
  return n
end

M.pattern_in_pcall = function()
  local ok, err = pcall(string.find, subject(), backtracker())
  return { ok = ok, err = tostring(err) }
end

-- pcall hands (false, msg) straight back to the host: no instruction runs after the kill.
M.pattern_tail_pcall = function()
  return pcall(string.match, subject(), backtracker())
end

-- Retrying forever, each time inside a fresh pcall.
M.pattern_retry = function()
  while true do pcall(string.gsub, subject(), backtracker(), "") end
end

-- A kill inside a replacement function unwinds the gsub that called it.
M.pattern_gsub_function = function()
  return (subject():gsub("a", function(c) return subject():find(backtracker()) end))
end

-- Linear-looking patterns that are quadratic: %b rescans from every start, a plain find of a
-- long needle compares it at every candidate, a long replacement with empty matches.
M.pattern_balance = function()
  return string.find(("("):rep(1000000), "%b()")
end

M.pattern_plain = function()
  return string.find(("a"):rep(1000000), ("a"):rep(500000) .. "b", 1, true)
end

M.pattern_replacement = function()
  return #string.gsub(("a"):rep(100000), "", ("%0"):rep(500000))
end

-- Deep recursion.
M.recurse = function()
  local function f(n) return 1 + f(n + 1) end
  return f(1)
end

M.ok = function(x)
  return { fine = true, x = x }
end

return M
