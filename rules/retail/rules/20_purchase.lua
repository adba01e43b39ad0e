-- Purchases: part of a won deal may be paid with points (capped at a share of the amount),
-- then cashback by tier on what was paid in money, plus the bonus of every campaign running
-- today (settings.campaigns; the host holds each to its budget).

return {
  ["deal.won"] = function(ev, member, settings)
    local deal = ev.deal
    local amount = deal.amount or 0
    local ttl = settings.points_ttl_days > 0 and settings.points_ttl_days or nil
    local effects = {}

    -- Redemption requested by the manager on the deal (e.g. a "pay with points" field).
    local paid_with_points = 0
    local wanted = deal.redeem_points or 0
    if wanted > 0 then
      local cap = loyd.percent(amount, settings.max_redeem_share_bp) // settings.point_value
      effects[#effects + 1] = redeem{ points = wanted, cap = cap, partial = true,
                                      reason = "paid with points, deal " .. deal.id,
                                      ref = deal.id }
      paid_with_points = math.min(wanted, cap, math.max(member.balance, 0))
    end

    -- Cashback at the member's tier (the lowest tier for a new member).
    local tier = member.tier or settings.tiers[1]
    local bp = settings.cashback_bp[tier] or 0
    local paid_money = amount - paid_with_points * settings.point_value
    local points = loyd.percent(paid_money, bp) // settings.point_value
    if points > 0 then
      effects[#effects + 1] = award{ points = points, reason = "cashback, deal " .. deal.id,
                                     ref = deal.id, expires_in_days = ttl }
      local bonus = loyd.campaign_awards(settings.campaigns, points,
                                         { reason = "deal " .. deal.id, ref = deal.id,
                                           expires_in_days = ttl })
      for _, e in ipairs(bonus) do effects[#effects + 1] = e end
    end
    return effects
  end,
}
