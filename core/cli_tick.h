/* SPDX-License-Identifier: MIT */
/*
 * `loyd tick [-c FILE] [--date YYYY-MM-DD] TENANT`: runs a tenant's daily jobs now, as the
 * daemon does once a day (a birthday event for every member born that day, a tick event for
 * every member), through the tenant's pack into the store, and prints what the rules did in
 * the pack's points unit.  The event keys are the daemon's own (birthday:<id>:<year>,
 * tick:<id>:<date>), so a day is applied once whoever runs it first; write-backs are queued in
 * the store's outbox, where the daemon's write lane finds them.  `--date` runs another day (its
 * events dated that day at noon in the tenant's zone); a future day, and any day with
 * `--dry-run`, is applied to a copy of the store only: future-dated write-backs would wait in
 * the outbox for their day and hold back the member's later ones.
 *
 * Exit codes: 0 done; 1 the config, pack or store cannot be used, or an event failed in the
 * rules (a dead letter, named on stderr); 2 usage error.
 */
#ifndef LOYD_CLI_TICK_H
#define LOYD_CLI_TICK_H

/** argv[0] is "tick". */
int loyd_cmd_tick(int argc, char **argv);

#endif
