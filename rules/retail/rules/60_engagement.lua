-- Engagement: one-time points when the contact leaves a review (a CRM field the manager
-- ticks).  The member attribute review_bonus_paid makes it once only.
return {
  ["contact.updated"] = function(ev, member, settings)
    local attrs = ev.contact and ev.contact.attributes
    if settings.review_points <= 0 or attrs == nil or attrs.review_left ~= true then
      return nil
    end
    if member.attributes.review_bonus_paid == true then
      return nil
    end
    local ttl = settings.points_ttl_days > 0 and settings.points_ttl_days or nil
    return {
      award{ points = settings.review_points, reason = "thank you for the review",
             ref = "review", expires_in_days = ttl },
      set_field{ name = "review_bonus_paid", value = true },
    }
  end,
}
