-- Welcome bonus at contact.created.
return {
  { name = "a new contact gets the welcome bonus, expiring after points_ttl_days",
    now = "2026-03-01",
    events = { { type = "contact.created", contact = { id = "1" } } },
    expect = {
      effects = { { kind = "award", points = 500, reason = "welcome bonus",
                    expires_on = "2027-03-01" } },
      outbox = { { op = "contact.fields", fields = { balance = 500 } } },
      balance = 500,
    } },
  { name = "the welcome bonus follows the setting",
    now = "2026-03-01", settings = { welcome_points = 1000 },
    events = { { type = "contact.created" } },
    expect = { effects = { { kind = "award", points = 1000 } }, balance = 1000 } },
  { name = "welcome_points = 0 turns it off",
    now = "2026-03-01", settings = { welcome_points = 0 },
    events = { { type = "contact.created" } },
    expect = { effects = {}, balance = 0 } },
}
