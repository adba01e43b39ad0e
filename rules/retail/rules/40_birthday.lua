-- Birthday offer: a personal discount code valid N days, once a year, and a task for the
-- manager to congratulate.  Members born on 29 February get it on 28 February in years
-- without one.
local function birthday_today(birthday, today)
  if type(birthday) ~= "string" or #birthday ~= 10 then
    return false
  end
  local md, today_md = birthday:sub(6), today:sub(6)
  if md == today_md then
    return true
  end
  return md == "02-29" and today_md == "02-28"
         and not loyd.is_leap(tonumber(today:sub(1, 4)))
end

return {
  birthday = function(ev, member, settings)
    local today = loyd.today()
    if not birthday_today(member.birthday, today) then
      return nil
    end
    local year = tonumber(today:sub(1, 4))
    if member.last_birthday_offer_year == year then
      return nil
    end
    local code = "BDAY-" .. member.id:gsub("[^%w]", "") .. "-" .. year
    return {
      offer{ code = code, discount_pct = settings.birthday_discount_pct,
             valid_days = settings.birthday_valid_days, reason = "birthday", birthday = true },
      task{ title = "Congratulate on the birthday",
            text = string.format("Personal code %s: %d%% off, valid %d days.", code,
                                 settings.birthday_discount_pct, settings.birthday_valid_days),
            due_in_days = settings.birthday_task_due_days },
    }
  end,
}
