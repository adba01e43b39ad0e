return {
  matrx = { a = {} },
  { name = "never runs", now = "2026-03-01" },
}
