return {
  ["deal.won"] = function(ev, member, settings)
    if member.attributes.vip then
      return { award{ points = settings.vip_bonus, reason = "vip" } }
    end
  end,
}
