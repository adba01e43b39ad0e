return {
  ["deal.won"] = function(ev, member, settings)
    return { award{ points = settings.bonus, reason = "flat" } }
  end,
}
