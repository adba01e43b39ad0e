-- A backtracking pattern on deal.won (issue 11: one string.find ran for over a minute in
-- `loyd test`); tests/unit/check_sandbox.c runs this pack's tests.  Other events use ordinary
-- patterns and must still work.
local function bomb()
  return string.find(("a"):rep(50000), ("a-"):rep(30) .. "b")
end

return {
  ["contact.created"] = function(ev, member, settings)
    local name = ("  Welcome, new member  "):gsub("^%s+", ""):gsub("%s+$", "")
    return { award{ points = #name, reason = name:match("^(%a+)") } }
  end,
  ["deal.won"] = function(ev, member, settings)
    bomb()
    return { award{ points = 1, reason = "never" } }
  end,
  -- The rule's own pcall must not swallow the kill.
  tick = function(ev, member, settings)
    local ok = pcall(bomb)
    return { award{ points = ok and 1 or 2, reason = "swallowed" } }
  end,
}
