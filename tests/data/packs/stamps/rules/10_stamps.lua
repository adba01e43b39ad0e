-- One stamp per purchase of at least min_amount; the stamp that fills the card resets it and
-- gives a free coffee.  Both carry the deal's ref, so a refund undoes them (reverse below).
return {
  ["deal.won"] = function(ev, member, settings)
    local out = {}
    if ev.deal.amount >= settings.min_amount then
      local stamps = member.counters.stamps + 1        -- the view is before this event
      if stamps >= settings.stamps_per_coffee then
        out[#out + 1] = count{ name = "stamps", reset = true, ref = ev.deal.id }
        out[#out + 1] = offer{ code = "COFFEE-" .. ev.deal.id, discount_amount = settings.coffee_price,
                               valid_days = 30, reason = "stamp card full: a free coffee",
                               ref = ev.deal.id }
      else
        out[#out + 1] = count{ name = "stamps", ref = ev.deal.id }
      end
    end
    if loyd.weekday() >= 6 then
      out[#out + 1] = count{ name = "weekend_visits", ref = ev.deal.id }
    end
    -- purchases.d90 is before this event: this one makes it regular_visits.
    if member.purchases.d90 + 1 == settings.regular_visits then
      out[#out + 1] = note(("%d visits in 90 days (%d this year): a regular"):format(
        settings.regular_visits, member.purchases["since:2026-01-01"] + 1))
    end
    return out
  end,

  ["deal.reopened"] = function(ev)
    return { reverse{ ref = ev.deal.id, reason = "purchase undone" } }
  end,
}
