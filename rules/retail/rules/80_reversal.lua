-- Reversal: a deal that stops being won (reopened, lost or deleted) takes back the points it
-- earned and gives back the points that paid for it.  Spent points make the balance negative
-- only when allow_negative_balance is on.
local said = {
  reopened = "was reopened",
  lost = "was lost",
  deleted = "was deleted",
}

-- A referred member's first purchase also paid the referral bonus, under its own ref
-- ("referral:<deal>", 50_referral.lua): reverse reaches it on both cards, the friend's and the
-- referrer's.  Only the first purchase carries one, so for a later deal that reverse finds
-- nothing and is reported as rejected in the trace, which is harmless.
return {
  ["deal.reopened"] = function(ev, member, settings)
    local id = ev.deal.id
    local what = said[ev.reason or "reopened"] or said.reopened
    local why = "deal " .. id .. " " .. (ev.reason or "reopened")
    local effects = { reverse{ ref = id, reason = why } }
    if member.referrer ~= nil then
      effects[#effects + 1] = reverse{ ref = "referral:" .. id, reason = "referral bonus: " .. why }
    end
    effects[#effects + 1] = note{ text = "Deal " .. id .. " " .. what .. ": the loyalty points it "
                                  .. "earned were taken back and any points that paid for it "
                                  .. "were returned." }
    return effects
  end,
}
