/* SPDX-License-Identifier: MIT */
/*
 * Pure in-memory ledger math for one member: no store, no Lua, no clock.  A struct loyd_ledger
 * owns the replayed state of a member's ledger rows (points lots, debt, balance) and the copies
 * of the rows it was built from; the rule engine asks it what a redemption, a reversal or an
 * expiry would write, and gets new rows back (never edits old ones: the ledger is append-only).
 *
 * A ledger row is JSON:
 *   {"id":12, "member_id":"43", "points":3750, "kind":"award", "at":ms, "reason":"...",
 *    "expires_ms":ms|0, "lot_id":0, "ref":"759", "campaign":"bf2026"}
 * kind is award | redeem | expire | reverse | adjust.  A row with positive points and lot_id 0
 * opens a lot (award or positive adjust).  A row with lot_id L draws from (negative) or returns
 * to (positive) lot L.  A negative row with lot_id 0 is a debit not backed by any lot.  Which
 * kind may do what is loyd_ledger_entry_check() (the store's schema says the same): redeem,
 * expire and reverse rows draw from a lot; what goes back into a lot or stands alone (points a
 * reversal returns, a debit beyond the balance) is an adjust row.
 *
 * Replay (rows in id order) defines the state; the balance is the sum of all points:
 *   - a linked row changes its lot's remaining points; if that would go below zero, the excess
 *     becomes debt (a reversal of an award that was partly spent);
 *   - an unbacked debit draws from open lots (earliest expiry, then lowest id) and the rest
 *     becomes debt;
 *   - a new lot first pays off debt.
 * So sum(remaining of lots) - debt == balance at every step, and redemptions and expiry always
 * work on the remaining (debt-adjusted) amounts.
 *
 * Row ids of new rows are provisional (max id + 1, ...), so that a row can name a lot created
 * in the same evaluation; the store keeps or remaps them in one transaction.
 * All functions: any thread, no shared state.
 */
#ifndef LOYD_LEDGER_H
#define LOYD_LEDGER_H

#include <jansson.h>
#include <stdbool.h>
#include <stdint.h>

#include "loyd/error.h"
#include "util.h"

/* Caps that keep a malformed or hostile ledger from making replay expensive. */
#define LOYD_LEDGER_MAX_ROWS 100000u
#define LOYD_LEDGER_MAX_POINTS 1000000000000LL /* 10^12 points in one row */
#define LOYD_LEDGER_MAX_STR 256u

#define LOYD_DAY_MS 86400000LL

struct loyd_lot {
    int64_t id;         /* the row that opened it */
    int64_t points;     /* as awarded */
    int64_t remaining;  /* after spends, expiry, reversal and debt */
    int64_t expires_ms; /* 0: never */
    int64_t at_ms;
    char *kind;     /* "award" or "adjust" (owned) */
    char *ref;      /* owned, may be NULL */
    char *campaign; /* owned, may be NULL */
    bool reversed;  /* a reverse row names it */
    bool expired;   /* an expire row names it */
};

struct loyd_ledger {
    char *member_id; /* owned */
    struct loyd_lot *lots;
    size_t nlots, cap;
    int64_t balance;
    int64_t debt; /* >= 0 */
    int64_t max_id;
    json_t *rows; /* owned: every row, replayed ones and appended ones, id order */
};

/**
 * The kind, sign and lot rules of one ledger row, the ONE definition that the ledger math, the
 * store's apply (and its schema's CHECKs) and `loyd test` all use, so that what the rules
 * compute is what the store takes:
 *   award                    points > 0, opens its own lot (lot_id 0);
 *   redeem, expire, reverse  points < 0, draw from a lot (lot_id > 0);
 *   adjust                   points != 0, any lot_id >= 0 (gives back to a lot, opens one,
 *                            or is a debit no lot backs).
 * Points are never 0 and within +-LOYD_LEDGER_MAX_POINTS.
 * @return NULL when valid, else a static message naming what is wrong.
 */
const char *loyd_ledger_entry_check(const char *kind, int64_t points, int64_t lot_id);

/**
 * Builds the state from @p rows (borrowed JSON array, any order; NULL = empty).  Every row is
 * validated (kind, integer points, known lot ids, string lengths, at most LOYD_LEDGER_MAX_ROWS).
 * @return 0; -EINVAL with a message naming the row index and field in @p err.
 */
LOYD_MUST_CHECK int loyd_ledger_init(struct loyd_ledger *lg, const char *member_id,
                                     const json_t *rows, struct loyd_buf *err);
void loyd_ledger_deinit(struct loyd_ledger *lg);

/**
 * Validates @p row (owned, taken even on failure), gives it the next id if it has none, fills
 * member_id when missing, appends it and replays it.
 * @return 0; -EINVAL (message in @p err).
 */
LOYD_MUST_CHECK int loyd_ledger_append_take(struct loyd_ledger *lg, json_t *row,
                                            struct loyd_buf *err);

/** @return a lot by id, or NULL (borrowed). */
const struct loyd_lot *loyd_ledger_lot(const struct loyd_ledger *lg, int64_t id);

/**
 * Open lots at @p now_ms (remaining > 0, not past expiry) sorted by expiry (never-expiring last)
 * then id: @return new array of {"id","points","expires_at","expires_on"} where points is the
 * remaining amount, expires_at ms (0 = never) and expires_on "YYYY-MM-DD" in the tz (or null).
 */
json_t *loyd_ledger_lots_json(const struct loyd_ledger *lg, int64_t now_ms, int tz_offset_min);

/** Sum of positive award rows (kind "award", any member lot) with at in [from_ms, to_ms). */
int64_t loyd_ledger_awarded_between(const struct loyd_ledger *lg, int64_t from_ms, int64_t to_ms);

/**
 * Campaign totals over any rows (e.g. the whole tenant's): {campaign: net points} where awards
 * count positive and their reversals negative.  @return new object; rows NULL = empty.
 */
json_t *loyd_ledger_campaign_totals(const json_t *rows);

/*
 * Operations.  Each appends the rows it writes to the ledger (so the state moves on) and, when
 * @p out is not NULL, a copy of each to @p out (a JSON array).  @p at_ms stamps the rows.
 */

/** Opens a lot: an award row.  expires_ms 0 = never.  campaign and ref may be NULL. */
LOYD_MUST_CHECK int loyd_ledger_award(struct loyd_ledger *lg, int64_t points, const char *reason,
                                      const char *ref, const char *campaign, int64_t expires_ms,
                                      int64_t at_ms, json_t *out, struct loyd_buf *err);

/**
 * Spends @p points from open lots, earliest expiry first, then lowest id (lots past expiry at
 * @p at_ms are not spent).  Without @p allow_negative it refuses (-ENOSPC, nothing written)
 * when the balance is short; with it, the shortfall is an unbacked debit (an adjust row with
 * lot_id 0 and the same ref, since a redeem row must name a lot).
 */
LOYD_MUST_CHECK int loyd_ledger_redeem(struct loyd_ledger *lg, int64_t points, const char *reason,
                                       const char *ref, bool allow_negative, int64_t at_ms,
                                       json_t *out, struct loyd_buf *err);

/** What a reversal did. */
struct loyd_reversal {
    int64_t awarded;   /* points of the award lots found for the ref */
    int64_t reversed;  /* taken back (written rows) */
    int64_t shortfall; /* already spent and not taken back (negative balance not allowed) */
    int64_t returned;  /* redeemed points given back for the same ref */
    size_t lots;       /* award lots reversed */
};

/**
 * Reverses every not-yet-reversed award lot with this @p ref: takes back what remains of each
 * lot; what was already spent becomes debt when @p allow_negative, else it is reported as
 * shortfall.  A lot with nothing to take back gets no row (rows are never 0 points).
 * Redemptions with the same ref, net of what earlier reversals returned, are given back: as a
 * positive adjust row into the lot each came from (the lot keeps its expiry), and an unbacked
 * debit as a new lot without expiry.  -ENOENT when nothing carries the ref.
 */
LOYD_MUST_CHECK int loyd_ledger_reverse(struct loyd_ledger *lg, const char *ref, const char *reason,
                                        bool allow_negative, int64_t at_ms, json_t *out,
                                        struct loyd_reversal *rv, struct loyd_buf *err);

/** Writes expire rows for every lot with remaining points whose expiry is <= @p at_ms. */
LOYD_MUST_CHECK int loyd_ledger_expire(struct loyd_ledger *lg, int64_t at_ms, json_t *out,
                                       int64_t *expired_points, struct loyd_buf *err);

/** Purchase statistics from a purchase history. */
struct loyd_spend {
    int64_t d30, d365, total;  /* amounts, minor units */
    int64_t n30, n365, ntotal; /* counts */
    int64_t first_ms, last_ms; /* 0 when no purchase */
};

/**
 * @p purchases: JSON array of {"deal_id","amount","at"} (borrowed; NULL = none).  Windows are
 * (now - N days, now].  Purchases after @p now_ms are ignored.
 * @return 0; -EINVAL (message names the index and field).
 */
LOYD_MUST_CHECK int loyd_ledger_spend(const json_t *purchases, int64_t now_ms,
                                      struct loyd_spend *out, struct loyd_buf *err);

/*
 * Purchase windows beyond d30/d365/total, as a pack declares them in pack.conf `windows`:
 *   "dN"               the last N days (1..36500): purchases with at in (now - N days, now],
 *                      like d30 and d365;
 *   "since:YYYY-MM-DD" from 00:00 of that day (tenant's calendar) up to now.
 * The name is also the key in the member view's spend and purchases tables.
 */
#define LOYD_LEDGER_MAX_WINDOWS 16u
#define LOYD_WINDOW_MAX_DAYS 36500

struct loyd_window {
    int64_t days;   /* "dN": N; 0 for a since window */
    char since[11]; /* "since:D": D ("YYYY-MM-DD"), else "" */
};

/**
 * Parses a window name.  @return 0; -EINVAL with one message in @p err that says what a
 * window name looks like.
 */
LOYD_MUST_CHECK int loyd_ledger_window_parse(const char *name, struct loyd_window *w,
                                             struct loyd_buf *err);

/**
 * Amount (minor units) and count of the purchases in window @p w at @p now_ms (tz: the
 * tenant's offset, for since dates).  Purchases after @p now_ms are ignored, as in
 * loyd_ledger_spend.  @return 0; -EINVAL (message names the index and field).
 */
LOYD_MUST_CHECK int loyd_ledger_spend_window(const json_t *purchases, const struct loyd_window *w,
                                             int64_t now_ms, int tz_offset_min, int64_t *amount,
                                             int64_t *count, struct loyd_buf *err);

/** Date helpers shared by the engine: ms <-> "YYYY-MM-DD" in a tz offset (minutes). */
void loyd_date_format(int64_t ms, int tz_offset_min, char out[11]);
/** @return 0 and the ms of 00:00 of that day in the tz; -EINVAL for a malformed/invalid date. */
LOYD_MUST_CHECK int loyd_date_parse(const char *s, int tz_offset_min, int64_t *ms);
/** Start (ms) of the calendar day / month containing @p ms in the tz, and of the next one. */
void loyd_date_day_bounds(int64_t ms, int tz_offset_min, int64_t *from, int64_t *to);
void loyd_date_month_bounds(int64_t ms, int tz_offset_min, int64_t *from, int64_t *to);

#endif
