/* SPDX-License-Identifier: MIT */
/*
 * `loyd member` and `loyd ledger`: look a member and the points ledger up without SQL, in the
 * units people count (the tenant pack's points unit, money as "15,000.00 RUB", dates in the
 * tenant's time zone), as text or as JSON.  They read the daemon's config, the tenant file,
 * its pack (for the unit) and the store, opened read-only: safe while `loyd serve` runs.
 *
 * Exit codes: 0 found / listed; 1 nothing found, several contacts match, or the config, the
 * pack or the store cannot be used (the message says which); 2 usage error.
 */
#ifndef LOYD_CLI_MEMBER_H
#define LOYD_CLI_MEMBER_H

/** `loyd member [-c FILE] [--all] [--json] TENANT ID|PHONE|EMAIL`; argv[0] is "member". */
int loyd_cmd_member(int argc, char **argv);

/** `loyd ledger [-c FILE] [--since DATE] [--member WHO] [--limit N] [--json] TENANT`. */
int loyd_cmd_ledger(int argc, char **argv);

#endif
