-- Keeps a secret in an upvalue and in a module-level table; another tenant must never see it.
local secret = "initial"
local store = { items = {} }

return {
  set = function(v)
    secret = v
    store.items[#store.items + 1] = v
    return #store.items
  end,
  get = function()
    return { secret = secret, count = #store.items }
  end,
}
