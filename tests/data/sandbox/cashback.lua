-- A realistic rule file: cashback on a won deal, in integer minor units.
local function tier_pct(settings, tier)
  return settings.cashback[tier] or settings.cashback.default or 0
end

return {
  ["deal.won"] = function(ev, member, settings)
    local pct = tier_pct(settings, member.tier)
    local points = ev.deal.amount * pct // 10000
    loyd.log("deal", ev.deal.id, "tier", member.tier, "points", points)
    local effects = loyd.array({})
    if points > 0 then
      effects[#effects + 1] = {
        type = "award",
        points = points,
        reason = "purchase " .. ev.deal.id,
        expires_on = loyd.date_add_days(loyd.today(), settings.points_ttl_days),
        tags = loyd.array({}),
        note = loyd.null,
      }
    end
    return effects
  end,

  ["member.birthday"] = function(ev, member, settings)
    return { { type = "offer", code = "BDAY-" .. member.id, valid_days = 7 } }
  end,

  -- Not a handler: tables and strings in the module are ignored by loyd_sandbox_handlers.
  meta = { version = 3 },
  description = "cashback",
}
