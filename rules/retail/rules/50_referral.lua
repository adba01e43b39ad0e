-- Referral: when a referred member makes a first purchase, both the friend and the referrer
-- get points.
return {
  ["deal.won"] = function(ev, member, settings)
    if member.referrer == nil or member.purchases.total > 0 then
      return nil
    end
    local ttl = settings.points_ttl_days > 0 and settings.points_ttl_days or nil
    local ref = "referral:" .. ev.deal.id
    local effects = {}
    if settings.referral_friend_points > 0 then
      effects[#effects + 1] = award{ points = settings.referral_friend_points, ref = ref,
                                     reason = "referral: first purchase",
                                     expires_in_days = ttl }
    end
    if settings.referral_referrer_points > 0 then
      effects[#effects + 1] = award{ points = settings.referral_referrer_points, ref = ref,
                                     member = member.referrer,
                                     reason = "referral: friend " .. member.id .. " bought",
                                     expires_in_days = ttl }
    end
    return effects
  end,
}
