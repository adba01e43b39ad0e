-- Points expiry.  The host writes expire rows for lots past their date by itself; this rule
-- warns the manager (a CRM note) when points will expire within expiry_warning_days.  The
-- attribute expiry_warned_lot remembers the newest lot already warned about; it is loyd's own
-- bookkeeping, so it stays off the CRM card (crm = false).
return {
  tick = function(ev, member, settings)
    local days = settings.expiry_warning_days
    if days <= 0 then
      return nil
    end
    local horizon = loyd.date_add_days(loyd.today(), days)
    local warned = member.attributes.expiry_warned_lot or 0
    local points, first, newest = 0, nil, warned
    for _, lot in ipairs(member.lots) do
      if lot.expires_on ~= nil and lot.id > warned and lot.expires_on <= horizon then
        points = points + lot.points
        if first == nil or lot.expires_on < first then
          first = lot.expires_on
        end
        if lot.id > newest then
          newest = lot.id
        end
      end
    end
    if points == 0 then
      return nil
    end
    return {
      note{ text = string.format("%s expire on %s. Remind the customer to use them.",
                                 loyd.format_points(points), first) },
      set_field{ name = "expiry_warned_lot", value = newest, crm = false },
    }
  end,
}
