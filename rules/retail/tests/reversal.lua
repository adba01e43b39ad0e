-- A reopened deal reverses its award and gives back points that paid for it.
return {
  { name = "a reopened deal takes back its cashback",
    now = "2026-03-01", member = { tier = "bronze" },
    events = { { type = "deal.won", deal = { id = "759", amount = 100000 } },
               { type = "deal.reopened", deal = { id = "759" } } },
    expect = {
      effects = { { kind = "award", points = 3000 },
                  { kind = "reverse", ref = "759", reversed = 3000, shortfall = 0 },
                  { kind = "note", text = "Deal 759 was reopened: the loyalty points it earned "
                                          .. "were taken back and any points that paid for it "
                                          .. "were returned." } },
      balance = 0,
    } },
  { name = "a lost deal is called lost, a deleted one deleted, not reopened",
    now = "2026-03-01", member = { tier = "bronze" },
    events = { { type = "deal.won", deal = { id = "759", amount = 100000 } },
               { type = "deal.reopened", reason = "lost", deal = { id = "759" } },
               { type = "deal.won", deal = { id = "760", amount = 100000 } },
               { type = "deal.reopened", reason = "deleted", deal = { id = "760" } } },
    expect = {
      effects = { { kind = "award" },
                  { kind = "reverse", reason = "deal 759 lost", reversed = 3000 },
                  { kind = "note", text = "Deal 759 was lost: the loyalty points it earned "
                                          .. "were taken back and any points that paid for it "
                                          .. "were returned." },
                  { kind = "award" },
                  { kind = "reverse", reason = "deal 760 deleted", reversed = 3000 },
                  { kind = "note", text = "Deal 760 was deleted: the loyalty points it earned "
                                          .. "were taken back and any points that paid for it "
                                          .. "were returned." } },
      balance = 0,
    } },
  { name = "spent points are not taken below zero by default",
    now = "2026-03-01", member = { tier = "bronze" },
    events = { { type = "deal.won", deal = { id = "759", amount = 100000 } },
               { type = "deal.won", deal = { id = "760", amount = 10000, redeem_points = 2000 } },
               { type = "deal.reopened", deal = { id = "759" } } },
    expect = {
      effects = { { kind = "award", points = 3000 },
                  { kind = "redeem", points = 2000 }, { kind = "award", points = 240 },
                  { kind = "reverse", reversed = 1000, shortfall = 2000 }, { kind = "note" } },
      balance = 240,
    } },
  { name = "with allow_negative_balance the whole award is reversed",
    now = "2026-03-01", settings = { allow_negative_balance = true }, member = { tier = "bronze" },
    events = { { type = "deal.won", deal = { id = "759", amount = 100000 } },
               { type = "deal.won", deal = { id = "760", amount = 10000, redeem_points = 2000 } },
               { type = "deal.reopened", deal = { id = "759" } } },
    expect = {
      effects = { { kind = "award" }, { kind = "redeem" }, { kind = "award" },
                  { kind = "reverse", reversed = 3000, shortfall = 0 }, { kind = "note" } },
      balance = -1760,
    } },
  { name = "reopening a deal paid with points gives them back",
    now = "2026-03-01",
    member = { tier = "bronze", lots = { { points = 5000, expires = "2026-12-31" } } },
    events = { { type = "deal.won", deal = { id = "761", amount = 10000, redeem_points = 3000 } },
               { type = "deal.reopened", deal = { id = "761" } } },
    expect = {
      effects = { { kind = "redeem", points = 3000 }, { kind = "award", points = 210 },
                  { kind = "reverse", returned = 3000, reversed = 210 }, { kind = "note" } },
      balance = 5000,
    } },
  { name = "a won-again deal earns again after a reopen",
    now = "2026-03-01", member = { tier = "bronze" },
    events = { { type = "deal.won", deal = { id = "759", amount = 100000 } },
               { type = "deal.reopened", deal = { id = "759" } },
               { type = "deal.won", deal = { id = "759", amount = 100000 } } },
    expect = { balance = 3000 } },
}
