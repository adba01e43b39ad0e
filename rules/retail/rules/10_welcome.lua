-- Welcome bonus: points when a contact is created in the CRM.
return {
  ["contact.created"] = function(ev, member, settings)
    if settings.welcome_points <= 0 then
      return nil
    end
    local ttl = settings.points_ttl_days > 0 and settings.points_ttl_days or nil
    return {
      award{ points = settings.welcome_points, reason = "welcome bonus", ref = "welcome",
             expires_in_days = ttl },
    }
  end,
}
