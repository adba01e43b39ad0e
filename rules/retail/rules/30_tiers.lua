-- Tiers by spend over the last 365 days: a won deal upgrades at once; only the daily tick
-- downgrades, so a member never drops a tier in the middle of a purchase.
local function rank(settings, tier)
  for i, name in ipairs(settings.tiers) do
    if name == tier then
      return i
    end
  end
  return 1
end

local function tier_for(settings, spend)
  local best = settings.tiers[1]
  for _, name in ipairs(settings.tiers) do
    local min = settings.tier_min_spend[name]
    if min ~= nil and spend >= min then
      best = name
    end
  end
  return best
end

return {
  ["deal.won"] = function(ev, member, settings)
    -- The member view is the state before this deal: add it.
    local target = tier_for(settings, member.spend.d365 + (ev.deal.amount or 0))
    if member.tier == nil or rank(settings, target) > rank(settings, member.tier) then
      return { set_tier{ tier = target, reason = "365-day spend reached " .. target } }
    end
    return nil
  end,

  tick = function(ev, member, settings)
    if member.tier == nil then
      return nil
    end
    local target = tier_for(settings, member.spend.d365)
    if rank(settings, target) < rank(settings, member.tier) then
      return { set_tier{ tier = target, reason = "365-day spend below " .. member.tier } }
    end
    return nil
  end,
}
