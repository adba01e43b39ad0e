local function won(id, amount, date)
  return { type = "deal.won", date = date, deal = { id = id, amount = amount or 30000 } }
end

return {
  { name = "a purchase stamps the card, and the card shows it",
    now = "2026-03-04",                                        -- a Wednesday
    events = { won("759") },
    expect = { effects = { { kind = "count", name = "stamps", from = 0, value = 1, ref = "759" } },
               outbox = { { op = "contact.fields", fields = { stamps = 1 } } },
               counters = { stamps = 1, weekend_visits = 0 } } },

  { name = "a small purchase earns no stamp",
    now = "2026-03-04",
    member = { counters = { stamps = 4 } },
    events = { won("760", 9900) },
    expect = { effects = {}, counters = { stamps = 4 } } },

  { name = "the 10th stamp gives a free coffee and starts a new card",
    now = "2026-03-04",
    member = { counters = { stamps = 9 } },
    events = { won("770") },
    expect = { effects = { { kind = "count", name = "stamps", reset = true, from = 9, value = 0 },
                           { kind = "offer", code = "COFFEE-770", discount_amount = 25000,
                             ref = "770" } },
               outbox = { { op = "contact.fields", fields = { stamps = 0 } },
                          { op = "offer", code = "COFFEE-770" } },
               counters = { stamps = 0 } } },

  { name = "ten purchases in a row fill the card once",
    now = "2026-03-04",
    events = { won("1"), won("2"), won("3"), won("4"), won("5"),
               won("6"), won("7"), won("8"), won("9"), won("10"), won("11") },
    expect = { effects = { { kind = "count", value = 1 }, { kind = "count", value = 2 },
                           { kind = "count", value = 3 }, { kind = "count", value = 4 },
                           { kind = "count", value = 5 }, { kind = "count", value = 6 },
                           { kind = "count", value = 7 }, { kind = "count", value = 8 },
                           { kind = "count", value = 9 },
                           { kind = "count", reset = true, value = 0 },
                           { kind = "offer", code = "COFFEE-10" },
                           { kind = "count", value = 1 } },
               counters = { stamps = 1 } } },

  { name = "a refunded purchase takes its stamp back",
    now = "2026-03-04",
    member = { counters = { stamps = 3 } },
    events = { won("780"), { type = "deal.reopened", reason = "lost", deal = { id = "780" } } },
    expect = { effects = { { kind = "count", value = 4 },
                           { kind = "reverse", ref = "780", counters = { stamps = 3 } } },
               counters = { stamps = 3 } } },

  { name = "refunding the purchase that filled the card gives the stamps back, withdraws the coffee",
    now = "2026-03-04",
    member = { counters = { stamps = 9 } },
    events = { won("790"), { type = "deal.reopened", reason = "lost", deal = { id = "790" } } },
    expect = { effects = { { kind = "count", reset = true, value = 0 },
                           { kind = "offer", code = "COFFEE-790" },
                           { kind = "reverse", ref = "790", counters = { stamps = 9 },
                             revoked = { "COFFEE-790" } } },
               counters = { stamps = 9 } } },

  { name = "weekend visits are counted too",
    now = "2026-03-07",                                        -- a Saturday
    events = { won("800"), won("801", 100, "2026-03-08"), won("802", 30000, "2026-03-09") },
    expect = { effects = { { kind = "count", name = "stamps", value = 1 },
                           { kind = "count", name = "weekend_visits", value = 1 },
                           { kind = "count", name = "weekend_visits", value = 2 },
                           { kind = "count", name = "stamps", value = 2 } },
               counters = { stamps = 2, weekend_visits = 2 } } },

  { name = "the 12th visit in 90 days makes a regular",
    now = "2026-03-04",
    member = { history = {
      { amount = 30000, date = "2025-12-20" }, { amount = 30000, date = "2026-01-05" },
      { amount = 30000, date = "2026-01-12" }, { amount = 30000, date = "2026-01-19" },
      { amount = 30000, date = "2026-01-26" }, { amount = 30000, date = "2026-02-02" },
      { amount = 30000, date = "2026-02-09" }, { amount = 30000, date = "2026-02-16" },
      { amount = 30000, date = "2026-02-23" }, { amount = 30000, date = "2026-03-02" },
      { amount = 30000, date = "2026-03-03" },
      { amount = 30000, date = "2025-11-01" } } },               -- 123 days ago: not in d90
    events = { won("810") },
    expect = { outbox = { { op = "note", text = "12 visits in 90 days (11 this year): a regular" } } } },
}
