return {
  { name = "inherited welcome bonus with the child's default", now = "2026-03-01",
    events = { { type = "contact.created" } },
    expect = { balance = 1000 } },
  { name = "the child's own program runs after the base's", now = "2026-03-01",
    member = { tier = "bronze", attributes = { vip = true } },
    events = { { type = "deal.won", deal = { id = "1", amount = 100000 } } },
    expect = { effects = { { kind = "award", points = 3000 }, { kind = "award", points = 50, reason = "vip" } } } },
}
