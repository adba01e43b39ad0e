/* SPDX-License-Identifier: MIT */
/*
 * The rule engine.  A struct loyd_rules owns one sandbox (one lua_State) with a pack's rule
 * files loaded, the effect constructors (award{...}, redeem{...}, ...) installed as trusted
 * prelude, and the table of which file handles which event.  It evaluates one canonical event
 * for one member: it runs every handler for the event type (file order), validates the
 * effects they propose against the ledger math (ledger.c) and the pack's caps and budgets, and
 * returns what should be written: ledger rows, member updates, CRM write-backs, rejections and
 * a trace.  It never writes anything itself, so a dry run, a replay, `loyd test` and the daemon
 * all use the same path; the daemon applies the result in one store transaction.
 *
 * Events: contact.created, contact.updated, deal.won, deal.reopened, deal.updated, birthday,
 * tick, offer.redeemed.  Handler: function(ev, member, settings) -> list of effects | nil.
 * Effects: award, redeem, reverse, set_tier, offer, note, task, set_field, count
 * (docs/RULES.md).
 *
 * Settings the host itself reads (all optional):
 *   allow_negative_balance (bool)      a reversal or redemption may take the balance below 0
 *   caps = { award_per_event=, award_per_day=, award_per_month= }  points per member, 0 = none
 *   budgets = { <campaign> = points }  tenant-wide cap on awards carrying campaign=<name>
 *   any setting of type "campaigns"    each entry's `budget` caps its awards the same way (the
 *                                      smaller of the two binds; campaign.h); rules read it
 *                                      with loyd.campaign_remaining(name)
 *   tiers = { "bronze", "silver", ... } valid tier names, lowest first
 *
 * Threading: a struct loyd_rules belongs to one thread at a time (its sandbox does).
 */
#ifndef LOYD_RULES_H
#define LOYD_RULES_H

#include <jansson.h>
#include <stdbool.h>
#include <stdint.h>
#include <stdio.h>

#include "loyd/error.h"
#include "pack.h"
#include "sandbox.h"
#include "util.h"

/** The canonical event names, NULL-terminated. */
extern const char *const loyd_rules_events[];
/** @return true when @p type is a canonical event name. */
bool loyd_rules_event_known(const char *type);

struct loyd_rules;

/**
 * Creates a sandbox for @p pack (borrowed; must outlive the engine), installs the prelude and
 * loads every rule file.  Handler keys that are not canonical event names are ignored here
 * (loyd_rules_lint reports them).
 * @p err gets "file:line: message" lines for files that fail to compile or load.
 * @return 0; LOYD_EPARSE / LOYD_ERULE / LOYD_EBUDGET / LOYD_ERULEMEM from a failing file;
 *         -ENOMEM.
 */
LOYD_MUST_CHECK int loyd_rules_create(const struct loyd_pack *pack,
                                      const struct loyd_sandbox_limits *lim,
                                      struct loyd_rules **out, struct loyd_buf *err);
/** Accepts NULL. */
void loyd_rules_destroy(struct loyd_rules *r);

/*
 * The rows of the other members a reverse{ref} reaches: *out gets a new object {member_id:
 * [every ledger row of that member]} for each member other than the evaluated one that has
 * rows with @p ref (empty when none).  @return 0 or an error (the reverse is then rejected and
 * nothing of it written).
 */
typedef int (*loyd_rules_ref_ledgers_fn)(void *arg, const char *ref, json_t **out);

struct loyd_rules_input {
    const json_t *event;     /* canonical event: {type, key, at, deal?, contact?} (borrowed) */
    const json_t *member;    /* member row: {id, tier, birthday, referrer, attributes,
                                last_birthday_offer_year, offers, counters,
                                counter_log} (borrowed) */
    const json_t *ledger;    /* this member's ledger rows (borrowed; NULL = none) */
    const json_t *purchases; /* [{deal_id, amount, at}] (borrowed; NULL = none) */
    const json_t *settings;  /* effective settings from loyd_pack_settings (borrowed) */
    const json_t *campaign_totals; /* {campaign: points so far, tenant-wide}; NULL = none */
    int tz_offset_min;             /* the tenant's offset from UTC, for dates and calendar caps */
    uint64_t seed;                 /* math.random seed for this evaluation */
    bool dry_run;                  /* only marks the result: evaluation never writes */
    bool settings_stable;          /* settings live, unchanged, as long as these rules: their
                                      Lua table is built once and kept */
    /* reverse{ref} reaches awards of other members under the ref (a referrer's bonus) through
     * this; NULL: this member's rows only. */
    loyd_rules_ref_ledgers_fn ref_ledgers;
    void *ref_arg;
};

/**
 * Evaluates one event.  @p result always gets a new object (also on failure):
 *   {"ok", "dry_run", "event":{type,key,at}, "member_id",
 *    "accepted":[effect...], "rejected":[{"effect","reason","file"}],
 *    "ledger":[row...],                 rows to insert (provisional ids, see ledger.h)
 *    "outbox":[{"op":"contact.fields","fields":{balance,tier,...}} | {"op":"note",...} |
 *              {"op":"task",...} | {"op":"offer",...} | {"op":"member.refresh",...}],
 *    "member":{tier?, attributes?, last_birthday_offer_year?, counters?, counter_log?},
 *                                       updates to the member row (counters: the whole record)
 *    "purchase":{"op":"add"|"remove", deal_id, amount, currency, at}?,
 *    "balance_before", "balance", "tier",
 *    "trace":{"handlers":[{"file","event","effects","log"}], "notes":[...]},
 *    "error": "message + traceback" (only when ok is false)}
 * A rule that raises, runs out of budget or returns something that is not a list of effects
 * fails the whole event closed: no effects, no rows, ok=false.
 * @return 0; -EINVAL (bad input; message in result.error); LOYD_ERULE, LOYD_EBUDGET,
 *         LOYD_ERULEMEM, LOYD_EEFFECT (rule failed; traceback in result.error).
 */
LOYD_MUST_CHECK int loyd_rules_eval(struct loyd_rules *r, const struct loyd_rules_input *in,
                                    json_t **result);

/**
 * The read-only member view handlers receive, built from the member row, the ledger (after
 * expiring lots due at @p now_ms) and the purchase history.  @return 0 and a new object;
 * -EINVAL (message in @p err).
 */
LOYD_MUST_CHECK int loyd_rules_member_view(const json_t *member, const json_t *ledger,
                                           const json_t *purchases, int64_t now_ms,
                                           int tz_offset_min, json_t **out, struct loyd_buf *err);
/**
 * The same view as the pack's handlers see it: also the pack's purchase windows (pack.conf
 * `windows`: member.spend.d90, member.purchases["since:2026-01-01"], ...) and every counter
 * pack.conf declares in member.counters (0 until it counts).  @p pack may be NULL (then it is
 * loyd_rules_member_view).
 */
LOYD_MUST_CHECK int loyd_rules_pack_member_view(const struct loyd_pack *pack, const json_t *member,
                                                const json_t *ledger, const json_t *purchases,
                                                int64_t now_ms, int tz_offset_min, json_t **out,
                                                struct loyd_buf *err);

/**
 * Checks one effect's shape (kind, required fields, types, unknown fields with the nearest
 * valid name) without any ledger context.  @return 0; -EINVAL with one message in @p err.
 */
LOYD_MUST_CHECK int loyd_rules_check_effect(const json_t *effect, struct loyd_buf *err);

/**
 * `loyd check` linting of a loaded pack: handler keys that are not event names (with the
 * nearest valid one), values that are not functions, and one dry call per handler with
 * synthetic inputs whose result must be nil or a list of well-formed effects.
 * Writes "file:line: message" lines to @p out.  @return the number of problems found.
 */
size_t loyd_rules_lint(struct loyd_rules *r, const json_t *settings, struct loyd_buf *out);

/** @return borrowed: the sandbox (e.g. to load test files as data). */
struct loyd_sandbox *loyd_rules_sandbox(struct loyd_rules *r);

/** Number of (file, event) handler pairs loaded. */
size_t loyd_rules_handler_count(const struct loyd_rules *r);
/** Whether any rule file handles events of @p type. */
bool loyd_rules_handles(const struct loyd_rules *r, const char *type);

/*
 * The pack commands (pack_test.c, cli_rules.c).  Output goes to @p out (stdout for the CLI).
 * Extends search path: @p search_path, else $LOYD_RULES_PATH.
 */
struct loyd_pack_test_opts {
    const char *search_path; /* colon-separated directories for `extends = "name"` */
    const char *filter;      /* run only tests whose name ("name [entry]") contains this */
    const char *tenant;      /* tenant file whose `settings` apply under each test's (or NULL) */
    bool verbose;            /* print each test's evaluation trace, a line per step */
};

/**
 * `loyd test`: runs PACK_DIR/tests/NAME.lua offline with a frozen clock; prints one line per
 * test, a diff (- expected, + actual) for each failure and "N passed, N failed".
 * @return 0 when every test passed; 1 when a test failed; 2 when the pack could not be loaded.
 */
int loyd_pack_test_run(const char *dir, const struct loyd_pack_test_opts *o, FILE *out);

/**
 * `loyd check`: loads and compiles the pack, validates the settings schema and defaults, lints
 * the handlers and compiles the test files.  Prints "file:line: message" lines, or a summary.
 * @return 0 clean; 1 problems found; 2 the pack could not be loaded at all.
 */
int loyd_pack_check_run(const char *dir, const char *search_path, FILE *out);

/**
 * The CLI entry points main() dispatches to.  argv[0] is the command name ("check"/"test"),
 * the rest its arguments:  check PACK_DIR   |   test [-v] [-k TEXT] [--tenant FILE] PACK_DIR
 * (--help explains either, exit 0).  @return the process exit status (0, 1, or 2 for usage
 * errors).
 */
int loyd_cmd_check(int argc, char **argv);
int loyd_cmd_test(int argc, char **argv);

#endif
