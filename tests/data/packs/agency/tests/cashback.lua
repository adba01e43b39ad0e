-- The defaults and whatever --tenant adds: run with and without tenants.d/acme.conf.
return {
  { name = "vip cashback", now = "2026-03-01", member = { id = "43", tier = "vip" },
    events = { { type = "deal.won", deal = { id = "10", amount = 100000 } } },
    expect = { effects = { { kind = "award", points = 2000 } } } },
  { name = "the referrer's bonus lands on the referrer", now = "2026-03-01",
    member = { id = "43", tier = "base", referrer = "7" },
    events = { { type = "deal.won", deal = { id = "10", amount = 100000 } } },
    expect = { balance = 1000, members = { ["7"] = { balance = 500,
                 ledger = { { kind = "award", points = 500, reason = "referral" } } } } } },
  { name = "trace in display units", now = "2026-03-01",
    member = { id = "43", tier = "base", lots = { { points = 1250, expires = "2026-06-01" } } },
    events = { { type = "deal.won", deal = { id = "10", amount = 100000 } } },
    expect = { balance = 2250 } },
}
