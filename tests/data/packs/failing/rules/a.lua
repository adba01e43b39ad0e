return {
  ["deal.won"] = function(ev, member, settings)
    return { award{ points = 10, reason = "flat" } }
  end,
  tick = function(ev, member, settings)
    error("boom")
  end,
}
