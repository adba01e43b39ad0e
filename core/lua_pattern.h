/* SPDX-License-Identifier: MIT */
/*
 * Lua 5.4's pattern matching (string.find, string.match, string.gmatch, string.gsub) with a
 * step meter.  The stock functions run in C, where the instruction count hook never fires, so
 * one call with a backtracking pattern (string.find(("a"):rep(50000), ("a-"):rep(30) .. "b"))
 * can run for minutes.  These copies behave the same for every pattern but count their work in
 * steps (one step is about one VM instruction's worth: a match attempt, a subject byte scanned,
 * 16 bytes compared) and hand the count to a meter, which raises to stop the match.
 *
 * The code is Lua 5.4.4's lstrlib.c (Copyright (C) 1994-2022 Lua.org, PUC-Rio, MIT licence;
 * the full notice is in lua_pattern.c), re-indented, with the meter added.
 */
#ifndef LOYD_LUA_PATTERN_H
#define LOYD_LUA_PATTERN_H

#include <lua.h>
#include <stdint.h>

/* The matcher calls the meter once it has done at least this many steps since the last call,
 * and once more with the rest when a library call ends. */
#define LOYD_PATTERN_CHUNK 1000u

struct loyd_pattern_meter {
    /* Adds @p steps to the budget of the running code.  Raises a Lua error (does not return)
     * to stop the match; the matcher holds no resources then, so unwinding is safe. */
    void (*charge)(lua_State *L, uint64_t steps);
};

/**
 * Replaces find, match, gmatch and gsub in the table at @p idx (the string library table; the
 * string metatable's __index is that same table, so ("x"):find is covered) with the metered
 * versions.  @p meter (borrowed) must outlive the state.  May raise (memory).
 */
void loyd_pattern_install(lua_State *L, int idx, const struct loyd_pattern_meter *meter);

#endif
