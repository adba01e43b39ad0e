-- Reversal: a deal that stops being won (reopened, lost or deleted) takes back the points it
-- earned and gives back the points that paid for it.  Spent points make the balance negative
-- only when allow_negative_balance is on.
local said = {
  reopened = "was reopened",
  lost = "was lost",
  deleted = "was deleted",
}

return {
  ["deal.reopened"] = function(ev, member, settings)
    local id = ev.deal.id
    local what = said[ev.reason or "reopened"] or said.reopened
    return {
      reverse{ ref = id, reason = "deal " .. id .. " " .. (ev.reason or "reopened") },
      note{ text = "Deal " .. id .. " " .. what .. ": the loyalty points it earned were taken "
                .. "back and any points that paid for it were returned." },
    }
  end,
}
