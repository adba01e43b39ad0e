-- One pack, three clients: each test runs once per entry.
return {
  matrix = {
    acme = "../tenants.d/acme.conf",     -- the deployed settings themselves
    beta = "../tenants.d/beta.conf",
    plain = {},
  },
  { name = "referrer bonus per client", now = "2026-03-01",
    member = { id = "43", tier = "base", referrer = "7" },
    events = { { type = "deal.won", deal = { id = "10", amount = 100000 } } },
    expect = { members = { ["7"] = { balance = 700 } } } },
  { name = "a test's own matrix", now = "2026-03-01",
    matrix = { low = { referrer_points = 1 }, high = { referrer_points = 2 } },
    settings = { cashback_bp = { base = 0 } },
    member = { id = "43", referrer = "7" },
    events = { { type = "deal.won", deal = { id = "10", amount = 100000 } } },
    expect = { members = { ["7"] = { balance = 2 } } } },
}
