return {
  ["deal.won"] = function(ev, member, settings)
    loyd.log("cashback for deal " .. ev.deal.id)
    local out = { award{ points = ev.deal.amount * settings.cashback_bp[member.tier or "base"]
                                  // 10000, reason = "cashback", ref = ev.deal.id } }
    if member.referrer ~= nil and member.purchases.total == 0 then
      out[#out + 1] = award{ points = settings.referrer_points, member = member.referrer,
                             reason = "referral", ref = ev.deal.id }
    end
    out[#out + 1] = redeem{ points = 1000000, reason = "too much" }
    return out
  end,
}
