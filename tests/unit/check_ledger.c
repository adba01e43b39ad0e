/* SPDX-License-Identifier: MIT */
/* Ledger math: lots spent oldest-expiring first, reversal with partial spend under both
 * negative-balance policies, debt, expiry, windows for caps, campaign totals, row validation,
 * and that every row the math writes is one the store takes (loyd_ledger_entry_check). */
#include <check.h>
#include <errno.h>
#include <string.h>

#include "ledger.h"

#define DAY LOYD_DAY_MS
#define T0 (1772366400000LL) /* 2026-03-01 12:00 UTC */

static struct loyd_ledger lg;
static struct loyd_buf err;

static void setup(void)
{
    memset(&err, 0, sizeof(err));
    ck_assert_int_eq(loyd_ledger_init(&lg, "m1", NULL, &err), 0);
}

static void teardown(void)
{
    loyd_ledger_deinit(&lg);
    loyd_buf_free(&err);
}

static int64_t remaining(int64_t id)
{
    const struct loyd_lot *l = loyd_ledger_lot(&lg, id);
    ck_assert_ptr_nonnull(l);
    return l->remaining;
}

START_TEST(test_redeem_fifo_by_expiry)
{
    json_t *out = json_array();
    /* Lot 1 expires later than lot 2; lot 3 never expires. */
    ck_assert_int_eq(loyd_ledger_award(&lg, 500, "a", "d1", NULL, T0 + 100 * DAY, T0, out, &err),
                     0);
    ck_assert_int_eq(loyd_ledger_award(&lg, 500, "b", "d2", NULL, T0 + 50 * DAY, T0, out, &err), 0);
    ck_assert_int_eq(loyd_ledger_award(&lg, 500, "c", "d3", NULL, 0, T0, out, &err), 0);
    json_array_clear(out);
    ck_assert_int_eq(loyd_ledger_redeem(&lg, 700, "pay", "d9", false, T0, out, &err), 0);
    ck_assert_int_eq(json_array_size(out), 2);
    ck_assert_int_eq(json_integer_value(json_object_get(json_array_get(out, 0), "lot_id")), 2);
    ck_assert_int_eq(json_integer_value(json_object_get(json_array_get(out, 0), "points")), -500);
    ck_assert_int_eq(json_integer_value(json_object_get(json_array_get(out, 1), "lot_id")), 1);
    ck_assert_int_eq(json_integer_value(json_object_get(json_array_get(out, 1), "points")), -200);
    ck_assert_str_eq(json_string_value(json_object_get(json_array_get(out, 1), "kind")), "redeem");
    ck_assert_int_eq(remaining(1), 300);
    ck_assert_int_eq(remaining(2), 0);
    ck_assert_int_eq(remaining(3), 500);
    ck_assert_int_eq(lg.balance, 800);
    /* Equal expiry: lowest id first. */
    ck_assert_int_eq(loyd_ledger_award(&lg, 10, "e", NULL, NULL, T0 + 100 * DAY, T0, NULL, &err),
                     0);
    json_array_clear(out);
    ck_assert_int_eq(loyd_ledger_redeem(&lg, 305, "pay", NULL, false, T0, out, &err), 0);
    ck_assert_int_eq(json_integer_value(json_object_get(json_array_get(out, 0), "lot_id")), 1);
    ck_assert_int_eq(json_integer_value(json_object_get(json_array_get(out, 1), "lot_id")), 6);
    json_decref(out);
}
END_TEST

START_TEST(test_redeem_insufficient_and_negative)
{
    ck_assert_int_eq(loyd_ledger_award(&lg, 100, "a", NULL, NULL, 0, T0, NULL, &err), 0);
    ck_assert_int_eq(loyd_ledger_redeem(&lg, 150, "pay", NULL, false, T0, NULL, &err), -ENOSPC);
    ck_assert_ptr_nonnull(strstr(err.data, "insufficient balance"));
    ck_assert_int_eq(lg.balance, 100); /* nothing written */
    ck_assert_int_eq(json_array_size(lg.rows), 1);
    ck_assert_int_eq(loyd_ledger_redeem(&lg, 150, "pay", NULL, true, T0, NULL, &err), 0);
    ck_assert_int_eq(lg.balance, -50);
    ck_assert_int_eq(lg.debt, 50);
    /* A new lot first pays the debt. */
    ck_assert_int_eq(loyd_ledger_award(&lg, 80, "b", NULL, NULL, 0, T0, NULL, &err), 0);
    ck_assert_int_eq(lg.debt, 0);
    ck_assert_int_eq(lg.balance, 30);
    ck_assert_int_eq(remaining(json_integer_value(json_object_get(
                         json_array_get(lg.rows, json_array_size(lg.rows) - 1), "id"))),
                     30);
    /* Expired lots are not spendable. */
    ck_assert_int_eq(loyd_ledger_award(&lg, 1000, "c", NULL, NULL, T0 + DAY, T0, NULL, &err), 0);
    ck_assert_int_eq(loyd_ledger_redeem(&lg, 500, "pay", NULL, false, T0 + 2 * DAY, NULL, &err),
                     -ENOSPC);
}
END_TEST

START_TEST(test_reverse_partial_spend)
{
    struct loyd_reversal rv;
    json_t *out = json_array();

    ck_assert_int_eq(loyd_ledger_award(&lg, 3000, "cashback", "759", NULL, 0, T0, NULL, &err), 0);
    ck_assert_int_eq(loyd_ledger_redeem(&lg, 2000, "pay", "760", false, T0, NULL, &err), 0);
    /* Not allowed to go negative: only what remains comes back, the rest is shortfall. */
    ck_assert_int_eq(loyd_ledger_reverse(&lg, "759", "reopened", false, T0, out, &rv, &err), 0);
    ck_assert_int_eq(rv.reversed, 1000);
    ck_assert_int_eq(rv.shortfall, 2000);
    ck_assert_int_eq(rv.lots, 1);
    ck_assert_int_eq(lg.balance, 0);
    ck_assert_int_eq(json_array_size(out), 1);
    ck_assert_str_eq(json_string_value(json_object_get(json_array_get(out, 0), "kind")), "reverse");
    /* A second reversal finds nothing left to reverse. */
    ck_assert_int_eq(loyd_ledger_reverse(&lg, "759", "again", false, T0, NULL, &rv, &err), 0);
    ck_assert_int_eq(rv.lots, 0);
    json_decref(out);
}
END_TEST

START_TEST(test_reverse_negative_allowed)
{
    struct loyd_reversal rv;

    ck_assert_int_eq(loyd_ledger_award(&lg, 3000, "cashback", "759", NULL, 0, T0, NULL, &err), 0);
    ck_assert_int_eq(loyd_ledger_award(&lg, 500, "other", "x", NULL, 0, T0, NULL, &err), 0);
    ck_assert_int_eq(loyd_ledger_redeem(&lg, 3200, "pay", "760", false, T0, NULL, &err), 0);
    ck_assert_int_eq(lg.balance, 300);
    ck_assert_int_eq(loyd_ledger_reverse(&lg, "759", "reopened", true, T0, NULL, &rv, &err), 0);
    ck_assert_int_eq(rv.reversed, 3000);
    ck_assert_int_eq(rv.shortfall, 0);
    ck_assert_int_eq(lg.balance, -2700);
    /* Replaying the rows from scratch gives the same state (balance derived from rows). */
    struct loyd_ledger again;
    ck_assert_int_eq(loyd_ledger_init(&again, "m1", lg.rows, &err), 0);
    ck_assert_int_eq(again.balance, -2700);
    ck_assert_int_eq(again.debt, lg.debt);
    loyd_ledger_deinit(&again);
}
END_TEST

START_TEST(test_reverse_returns_redemption)
{
    struct loyd_reversal rv;

    ck_assert_int_eq(loyd_ledger_award(&lg, 5000, "old", NULL, NULL, T0 + 30 * DAY, T0, NULL, &err),
                     0);
    ck_assert_int_eq(loyd_ledger_redeem(&lg, 3000, "pay", "761", false, T0, NULL, &err), 0);
    ck_assert_int_eq(loyd_ledger_award(&lg, 210, "cashback", "761", NULL, 0, T0, NULL, &err), 0);
    ck_assert_int_eq(loyd_ledger_reverse(&lg, "761", "reopened", false, T0, NULL, &rv, &err), 0);
    ck_assert_int_eq(rv.returned, 3000);
    ck_assert_int_eq(rv.reversed, 210);
    ck_assert_int_eq(lg.balance, 5000);
    ck_assert_int_eq(remaining(1), 5000); /* back to the lot it came from, with its expiry */
    ck_assert_int_eq(loyd_ledger_reverse(&lg, "nope", "x", false, T0, NULL, &rv, &err), -ENOENT);
}
END_TEST

/* Every row in @p rows is one the store takes (the same check its apply runs). */
static void assert_storable(const json_t *rows)
{
    size_t i;
    json_t *r;
    json_array_foreach(rows, i, r)
    {
        const char *kind = json_string_value(json_object_get(r, "kind"));
        int64_t points = json_integer_value(json_object_get(r, "points"));
        int64_t lot = json_integer_value(json_object_get(r, "lot_id"));
        const char *why = loyd_ledger_entry_check(kind, points, lot);
        ck_assert_msg(why == NULL, "row %zu (%s, %lld points, lot %lld): %s", i, kind,
                      (long long)points, (long long)lot, why);
    }
}

/* The refund of a purchase paid partly with points: the points come back, in rows the store
 * takes, into the lots they came from, and only once. */
START_TEST(test_reverse_redemption_storable)
{
    struct loyd_reversal rv;
    json_t *out = json_array();

    ck_assert_int_eq(loyd_ledger_award(&lg, 500000, "cashback", "1", NULL, T0 + 300 * DAY, T0,
                                       NULL, &err), 0);
    ck_assert_int_eq(loyd_ledger_award(&lg, 500, "welcome", NULL, NULL, T0 + 10 * DAY, T0, NULL,
                                       &err), 0);
    /* Deal 3: 300,000 paid with points (the welcome lot first: it expires first), then 6000
     * cashback on the rest. */
    ck_assert_int_eq(loyd_ledger_redeem(&lg, 300000, "paid with points", "3", false, T0, NULL,
                                        &err), 0);
    ck_assert_int_eq(remaining(1), 200500);
    ck_assert_int_eq(remaining(2), 0);
    ck_assert_int_eq(loyd_ledger_award(&lg, 6000, "cashback", "3", NULL, 0, T0, NULL, &err), 0);
    ck_assert_int_eq(lg.balance, 206500);

    ck_assert_int_eq(loyd_ledger_reverse(&lg, "3", "deal 3 lost", false, T0 + DAY, out, &rv,
                                         &err), 0);
    ck_assert_int_eq(rv.returned, 300000);
    ck_assert_int_eq(rv.reversed, 6000);
    ck_assert_int_eq(rv.shortfall, 0);
    ck_assert_int_eq(lg.balance, 500500); /* as before deal 3 */
    ck_assert_int_eq(remaining(1), 500000);
    ck_assert_int_eq(remaining(2), 500); /* back in its lot, which keeps its expiry */
    ck_assert_int_eq(loyd_ledger_lot(&lg, 2)->expires_ms, T0 + 10 * DAY);
    ck_assert_int_eq(json_array_size(out), 3);
    assert_storable(out);
    /* Points given back are adjust rows naming their lot. */
    ck_assert_str_eq(json_string_value(json_object_get(json_array_get(out, 0), "kind")),
                     "adjust");
    ck_assert_int_gt(json_integer_value(json_object_get(json_array_get(out, 0), "lot_id")), 0);

    /* Replaying the rows gives the same state; a second reversal gives nothing back again. */
    struct loyd_ledger again;
    ck_assert_int_eq(loyd_ledger_init(&again, "m1", lg.rows, &err), 0);
    ck_assert_int_eq(again.balance, 500500);
    json_array_clear(out);
    ck_assert_int_eq(loyd_ledger_reverse(&again, "3", "again", false, T0 + DAY, out, &rv, &err),
                     0);
    ck_assert_int_eq(rv.returned, 0);
    ck_assert_int_eq(json_array_size(out), 0);
    ck_assert_int_eq(again.balance, 500500);
    loyd_ledger_deinit(&again);
    json_decref(out);
}
END_TEST

/* Beyond the balance (negative allowed) and an award already spent: still only storable rows. */
START_TEST(test_unbacked_and_spent_storable)
{
    struct loyd_reversal rv;
    json_t *out = json_array();

    ck_assert_int_eq(loyd_ledger_award(&lg, 100, "a", NULL, NULL, 0, T0, out, &err), 0);
    ck_assert_int_eq(loyd_ledger_redeem(&lg, 150, "pay", "9", true, T0, out, &err), 0);
    ck_assert_int_eq(lg.balance, -50);
    assert_storable(out);
    json_array_clear(out);
    ck_assert_int_eq(loyd_ledger_reverse(&lg, "9", "refund", true, T0, out, &rv, &err), 0);
    ck_assert_int_eq(rv.returned, 150);
    ck_assert_int_eq(lg.balance, 100);
    ck_assert_int_eq(lg.debt, 0);
    assert_storable(out);
    /* Once only, the unbacked part too. */
    ck_assert_int_eq(loyd_ledger_reverse(&lg, "9", "again", true, T0, NULL, &rv, &err), 0);
    ck_assert_int_eq(rv.returned, 0);
    ck_assert_int_eq(lg.balance, 100);

    /* An award spent in full, negative balance not allowed: nothing to take, and no 0 row. */
    ck_assert_int_eq(loyd_ledger_award(&lg, 300, "cashback", "d", NULL, 0, T0, NULL, &err), 0);
    ck_assert_int_eq(loyd_ledger_redeem(&lg, 400, "pay", "e", false, T0, NULL, &err), 0);
    json_array_clear(out);
    ck_assert_int_eq(loyd_ledger_reverse(&lg, "d", "reopened", false, T0, out, &rv, &err), 0);
    ck_assert_int_eq(rv.reversed, 0);
    ck_assert_int_eq(rv.shortfall, 300);
    ck_assert_int_eq(json_array_size(out), 0);
    json_decref(out);
}
END_TEST

/* One definition of what a row may be; the ledger refuses to write anything else. */
START_TEST(test_entry_check)
{
    static const struct {
        const char *kind;
        int64_t points, lot;
        const char *why; /* NULL: valid */
    } cases[] = {
        {"award", 5, 0, NULL},
        {"award", 5, 1, "open its own lot"},
        {"award", -5, 0, "must be positive"},
        {"redeem", -5, 1, NULL},
        {"redeem", -5, 0, "name the lot"},
        {"expire", -5, 0, "name the lot"},
        {"reverse", -5, 1, NULL},
        {"reverse", 5, 1, "must be negative"},
        {"reverse", 0, 1, "must not be 0"},
        {"adjust", 5, 1, NULL},
        {"adjust", 5, 0, NULL},
        {"adjust", -5, 0, NULL},
        {"adjust", 5, -1, "lot_id"},
        {"gift", 5, 0, "kind"},
        {NULL, 5, 0, "kind"},
        {"adjust", LOYD_LEDGER_MAX_POINTS + 1, 0, "10^12"},
    };
    for (size_t i = 0; i < LOYD_ARRAY_SIZE(cases); i++) {
        const char *why = loyd_ledger_entry_check(cases[i].kind, cases[i].points, cases[i].lot);
        if (cases[i].why == NULL)
            ck_assert_msg(why == NULL, "case %zu: %s", i, why);
        else
            ck_assert_msg(why != NULL && strstr(why, cases[i].why) != NULL, "case %zu: %s", i,
                          why ? why : "accepted");
    }
    ck_assert_int_eq(loyd_ledger_award(&lg, 100, "a", NULL, NULL, 0, T0, NULL, &err), 0);
    json_t *row = json_pack("{s:s, s:i, s:i}", "kind", "reverse", "points", 10, "lot_id", 1);
    ck_assert_int_eq(loyd_ledger_append_take(&lg, row, &err), -EINVAL);
    ck_assert_ptr_nonnull(strstr(err.data, "must be negative"));
    ck_assert_int_eq(lg.balance, 100);
}
END_TEST

START_TEST(test_expire)
{
    json_t *out = json_array();
    int64_t n = 0;

    ck_assert_int_eq(loyd_ledger_award(&lg, 100, "a", NULL, NULL, T0 + DAY, T0, NULL, &err), 0);
    ck_assert_int_eq(loyd_ledger_award(&lg, 200, "b", NULL, NULL, T0 + 5 * DAY, T0, NULL, &err), 0);
    ck_assert_int_eq(loyd_ledger_redeem(&lg, 40, "pay", NULL, false, T0, NULL, &err), 0);
    ck_assert_int_eq(loyd_ledger_expire(&lg, T0 + DAY - 1, out, &n, &err), 0);
    ck_assert_int_eq(n, 0);
    ck_assert_int_eq(loyd_ledger_expire(&lg, T0 + DAY, out, &n, &err), 0);
    ck_assert_int_eq(n, 60); /* 100 minus the 40 spent from it */
    ck_assert_int_eq(json_array_size(out), 1);
    ck_assert_str_eq(json_string_value(json_object_get(json_array_get(out, 0), "kind")), "expire");
    ck_assert_int_eq(json_integer_value(json_object_get(json_array_get(out, 0), "lot_id")), 1);
    ck_assert_int_eq(lg.balance, 200);
    ck_assert_int_eq(loyd_ledger_expire(&lg, T0 + DAY, out, &n, &err), 0);
    ck_assert_int_eq(n, 0); /* idempotent */
    json_t *lots = loyd_ledger_lots_json(&lg, T0 + DAY, 0);
    ck_assert_int_eq(json_array_size(lots), 1);
    ck_assert_str_eq(json_string_value(json_object_get(json_array_get(lots, 0), "expires_on")),
                     "2026-03-06");
    json_decref(lots);
    json_decref(out);
}
END_TEST

START_TEST(test_windows_and_campaigns)
{
    ck_assert_int_eq(loyd_ledger_award(&lg, 100, "a", NULL, "bf", 0, T0 - 40 * DAY, NULL, &err), 0);
    ck_assert_int_eq(loyd_ledger_award(&lg, 200, "b", "d", "bf", 0, T0, NULL, &err), 0);
    ck_assert_int_eq(loyd_ledger_award(&lg, 300, "c", NULL, NULL, 0, T0 + 1000, NULL, &err), 0);
    int64_t from, to;
    loyd_date_day_bounds(T0, 0, &from, &to);
    ck_assert_int_eq(loyd_ledger_awarded_between(&lg, from, to), 500);
    loyd_date_month_bounds(T0, 0, &from, &to);
    ck_assert_int_eq(to - from, 31 * DAY);
    ck_assert_int_eq(loyd_ledger_awarded_between(&lg, from, to), 500);
    struct loyd_reversal rv;
    ck_assert_int_eq(loyd_ledger_reverse(&lg, "d", "x", false, T0, NULL, &rv, &err), 0);
    json_t *tot = loyd_ledger_campaign_totals(lg.rows);
    ck_assert_int_eq(json_integer_value(json_object_get(tot, "bf")),
                     100); /* reversal returns budget */
    json_decref(tot);

    json_t *pur =
        json_pack("[{s:s,s:I,s:I},{s:s,s:I,s:I},{s:s,s:I,s:I}]", "deal_id", "1", "amount",
                  (json_int_t)1000, "at", (json_int_t)(T0 - 10 * DAY), "deal_id", "2", "amount",
                  (json_int_t)2000, "at", (json_int_t)(T0 - 100 * DAY), "deal_id", "3", "amount",
                  (json_int_t)4000, "at", (json_int_t)(T0 - 400 * DAY));
    struct loyd_spend sp;
    ck_assert_int_eq(loyd_ledger_spend(pur, T0, &sp, &err), 0);
    ck_assert_int_eq(sp.d30, 1000);
    ck_assert_int_eq(sp.d365, 3000);
    ck_assert_int_eq(sp.total, 7000);
    ck_assert_int_eq(sp.n365, 2);
    ck_assert_int_eq(sp.first_ms, T0 - 400 * DAY);
    json_decref(pur);
    pur = json_pack("[{s:s,s:f,s:I}]", "deal_id", "1", "amount", 1.5, "at", (json_int_t)T0);
    ck_assert_int_eq(loyd_ledger_spend(pur, T0, &sp, &err), -EINVAL);
    ck_assert_ptr_nonnull(strstr(err.data, "purchase 0: field 'amount'"));
    json_decref(pur);
}
END_TEST

/* The windows a pack declares: dN as (now - N days, now], since:D from 00:00 of D (tenant tz). */
START_TEST(test_declared_windows)
{
    struct loyd_buf err = {0};
    struct loyd_window w;
    int64_t amount, n, jan1;

    /* 2026-01-01 00:00 at UTC+3 is 2025-12-31 21:00 UTC. */
    ck_assert_int_eq(loyd_date_parse("2026-01-01", 180, &jan1), 0);
    json_t *pur = json_pack(
        "[{s:s,s:I,s:I},{s:s,s:I,s:I},{s:s,s:I,s:I},{s:s,s:I,s:I},"
        "{s:s,s:I,s:I},{s:s,s:I,s:I}]",
        "deal_id", "1", "amount", (json_int_t)100, "at", (json_int_t)(T0 - 10 * DAY), "deal_id",
        "2", "amount", (json_int_t)200, "at",
        (json_int_t)(T0 - 90 * DAY), /* exactly 90 days: outside d90 */
        "deal_id", "3", "amount", (json_int_t)400, "at", (json_int_t)jan1, "deal_id", "4", "amount",
        (json_int_t)800, "at", (json_int_t)(jan1 - 1), /* the last ms of 2025 in the tenant's tz */
        "deal_id", "5", "amount", (json_int_t)1600, "at", (json_int_t)(T0 - 700 * DAY), "deal_id",
        "6", "amount", (json_int_t)3200, "at", (json_int_t)(T0 + DAY)); /* the future */
    ck_assert_int_eq(loyd_ledger_window_parse("d90", &w, &err), 0);
    ck_assert_int_eq(w.days, 90);
    ck_assert_int_eq(loyd_ledger_spend_window(pur, &w, T0, 180, &amount, &n, &err), 0);
    /* 1, 3 and 4 (2026-01-01 and 2025-12-31 are 59 and 60 days before 2026-03-01). */
    ck_assert_int_eq(amount, 100 + 400 + 800);
    ck_assert_int_eq(n, 3);
    ck_assert_int_eq(loyd_ledger_window_parse("d730", &w, &err), 0);
    ck_assert_int_eq(loyd_ledger_spend_window(pur, &w, T0, 180, &amount, &n, &err), 0);
    ck_assert_int_eq(amount, 100 + 200 + 400 + 800 + 1600);
    ck_assert_int_eq(n, 5);
    ck_assert_int_eq(loyd_ledger_window_parse("since:2026-01-01", &w, &err), 0);
    ck_assert_str_eq(w.since, "2026-01-01");
    ck_assert_int_eq(loyd_ledger_spend_window(pur, &w, T0, 180, &amount, &n, &err), 0);
    ck_assert_int_eq(amount, 100 + 400); /* from the first ms of the year, tenant's calendar */
    ck_assert_int_eq(n, 2);
    /* At UTC, deal 3 (21:00 UTC on 31 December) is last year's. */
    ck_assert_int_eq(loyd_ledger_spend_window(pur, &w, T0, 0, &amount, &n, &err), 0);
    ck_assert_int_eq(amount, 100);
    ck_assert_int_eq(n, 1);
    json_decref(pur);

    static const char *const bad[] = {
        "d0", "d", "D90", "d90x", "d36501", "d09", "total", "since:2026-02-30", "since:", "m3"};
    for (size_t i = 0; i < sizeof(bad) / sizeof(bad[0]); i++) {
        loyd_buf_reset(&err);
        ck_assert_msg(loyd_ledger_window_parse(bad[i], &w, &err) == -EINVAL, "%s", bad[i]);
        ck_assert_ptr_nonnull(strstr(err.data, bad[i]));
    }
    ck_assert_ptr_nonnull(strstr(err.data, "\"dN\" (the last N days"));
    loyd_buf_reset(&err);
    ck_assert_int_eq(loyd_ledger_window_parse("since:2026-02-30", &w, &err), -EINVAL);
    ck_assert_ptr_nonnull(strstr(err.data, "'2026-02-30' is not a valid date"));
    ck_assert_int_eq(loyd_ledger_window_parse("d36500", &w, &err), 0);
    loyd_buf_free(&err);
}
END_TEST

START_TEST(test_rows_validated)
{
    struct loyd_ledger bad;
    static const char *const cases[][2] = {
        {"[{\"id\":1,\"kind\":\"gift\",\"points\":5}]", "field 'kind'"},
        {"[{\"id\":1,\"kind\":\"award\",\"points\":1.5}]", "field 'points'"},
        {"[{\"id\":1,\"kind\":\"award\",\"points\":-5}]", "an award must be positive"},
        {"[{\"id\":1,\"kind\":\"redeem\",\"points\":-5,\"lot_id\":9}]", "names no earlier lot"},
        {"[{\"id\":1,\"kind\":\"award\",\"points\":5},{\"id\":1,\"kind\":\"award\",\"points\":5}]",
         "duplicates"},
        {"[{\"id\":1,\"kind\":\"award\",\"points\":5,\"member_id\":\"m2\"}]", "another member"},
        {"[{\"kind\":\"award\",\"points\":5}]", "field 'id'"},
    };
    for (size_t i = 0; i < LOYD_ARRAY_SIZE(cases); i++) {
        json_t *rows = json_loads(cases[i][0], 0, NULL);
        loyd_buf_reset(&err);
        ck_assert_int_eq(loyd_ledger_init(&bad, "m1", rows, &err), -EINVAL);
        ck_assert_msg(strstr(err.data, cases[i][1]) != NULL, "case %zu: %s", i, err.data);
        loyd_ledger_deinit(&bad);
        json_decref(rows);
    }
    /* Rows in any order are replayed by id. */
    json_t *rows = json_loads("[{\"id\":2,\"kind\":\"redeem\",\"points\":-5,\"lot_id\":1},"
                              "{\"id\":1,\"kind\":\"award\",\"points\":8}]",
                              0, NULL);
    ck_assert_int_eq(loyd_ledger_init(&bad, "m1", rows, &err), 0);
    ck_assert_int_eq(bad.balance, 3);
    loyd_ledger_deinit(&bad);
    json_decref(rows);
}
END_TEST

START_TEST(test_dates)
{
    char d[11];
    int64_t ms;
    ck_assert_int_eq(loyd_date_parse("2026-03-01", 0, &ms), 0);
    ck_assert_int_eq(ms, T0 - 12 * 3600 * 1000LL);
    loyd_date_format(T0, 0, d);
    ck_assert_str_eq(d, "2026-03-01");
    loyd_date_format(T0, 13 * 60, d); /* UTC+13: already the next day */
    ck_assert_str_eq(d, "2026-03-02");
    ck_assert_int_eq(loyd_date_parse("2027-02-29", 0, &ms), -EINVAL);
    ck_assert_int_eq(loyd_date_parse("2028-02-29", 0, &ms), 0);
    ck_assert_int_eq(loyd_date_parse("2026-13-01", 0, &ms), -EINVAL);
}
END_TEST

Suite *ledger_suite(void)
{
    Suite *s = suite_create("ledger");
    TCase *tc = tcase_create("math");
    tcase_add_checked_fixture(tc, setup, teardown);
    tcase_set_timeout(tc, 10);
    tcase_add_test(tc, test_redeem_fifo_by_expiry);
    tcase_add_test(tc, test_redeem_insufficient_and_negative);
    tcase_add_test(tc, test_reverse_partial_spend);
    tcase_add_test(tc, test_reverse_negative_allowed);
    tcase_add_test(tc, test_reverse_returns_redemption);
    tcase_add_test(tc, test_reverse_redemption_storable);
    tcase_add_test(tc, test_unbacked_and_spent_storable);
    tcase_add_test(tc, test_entry_check);
    tcase_add_test(tc, test_expire);
    tcase_add_test(tc, test_windows_and_campaigns);
    tcase_add_test(tc, test_declared_windows);
    tcase_add_test(tc, test_rows_validated);
    tcase_add_test(tc, test_dates);
    suite_add_tcase(s, tc);
    return s;
}
