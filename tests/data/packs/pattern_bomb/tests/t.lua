return {
  { name = "ordinary patterns work", now = "2026-03-01",
    events = { { type = "contact.created" } },
    expect = { effects = { { kind = "award", points = 19, reason = "Welcome" } } } },
  { name = "a backtracking pattern fails on the CPU budget", now = "2026-03-01",
    events = { { type = "deal.won", deal = { id = "1", amount = 100 } } },
    expect = { error = "rule exceeded its CPU budget" } },
  { name = "pcall does not swallow the kill", now = "2026-03-01",
    events = { { type = "tick" } },
    expect = { error = "rule exceeded its CPU budget" } },
}
