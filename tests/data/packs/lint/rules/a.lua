return {
  ["deal.wonn"] = function(ev, member, settings)
    return nil
  end,
  tick = 5,
  ["contact.created"] = function(ev, member, settings)
    return award{ points = settings.bonus, reason = "single effect, not a list" }
  end,
  birthday = function(ev, member, settings)
    return { award{ points = 1, reson = "typo" } }
  end,
}
