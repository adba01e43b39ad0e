-- Reversal: a reopened (un-won or refunded) deal takes back the points it earned and gives
-- back the points that paid for it.  Spent points make the balance negative only when
-- allow_negative_balance is on.
return {
  ["deal.reopened"] = function(ev, member, settings)
    local id = ev.deal.id
    return {
      reverse{ ref = id, reason = "deal " .. id .. " reopened" },
      note{ text = "Deal " .. id .. " was reopened: its loyalty points were reversed." },
    }
  end,
}
