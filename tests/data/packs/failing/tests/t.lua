return {
  { name = "expects too much", now = "2026-03-01",
    events = { { type = "deal.won", deal = { id = "1", amount = 100 } } },
    expect = { effects = { { kind = "award", points = 99 } } } },
  { name = "passes", now = "2026-03-01",
    events = { { type = "deal.won", deal = { id = "1", amount = 100 } } },
    expect = { effects = { { kind = "award", points = 10 } }, balance = 10 } },
  { name = "a failing rule is an error", now = "2026-03-01",
    events = { { type = "tick" } },
    expect = { error = "boom" } },
}
