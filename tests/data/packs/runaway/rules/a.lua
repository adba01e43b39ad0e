-- A rule that never returns on deal.won (tests/unit/check_engine.c); other events work.
return {
  ["contact.created"] = function(ev, member, settings)
    return { award{ points = 7, reason = "hello" } }
  end,
  ["deal.won"] = function(ev, member, settings)
    while true do end
  end,
}
