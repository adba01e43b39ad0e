return {
  tick = function(ev)
    return {
  end,
}
