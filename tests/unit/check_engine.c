/* SPDX-License-Identifier: MIT */
/* The host step (core/engine.h): exactly-once apply of canonical events against a temp store. */
#include <check.h>
#include <errno.h>
#include <limits.h>
#include <sqlite3.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <unistd.h>

#include <sys/stat.h>

#include "contact_match.h"
#include "engine.h"
#include "loyd/referral.h"
#include "store.h"
#include "util.h"

#define T0 1772366400000LL /* 2026-03-01 12:00 UTC */

static char dir[PATH_MAX - 64];
static char dbpath[PATH_MAX];
static uv_loop_t loop;
static struct loyd_store *st;

struct res {
    int done, err;
};

static void on_done(void *arg, int err)
{
    struct res *r = arg;
    r->done++;
    r->err = err;
}

static void wait_for(int *done, int n)
{
    while (*done < n) {
        int alive = uv_run(&loop, UV_RUN_ONCE);
        if (!alive && *done < n)
            ck_abort_msg("loop idle while waiting for a callback");
    }
}

static void on_closed(void *arg)
{
    (*(int *)arg)++;
}

static void setup(void)
{
    snprintf(dir, sizeof(dir), "%s/loyd-engine-XXXXXX",
             getenv("TMPDIR") ? getenv("TMPDIR") : "/tmp");
    ck_assert_ptr_nonnull(mkdtemp(dir));
    snprintf(dbpath, sizeof(dbpath), "%s/loyd.db", dir);
    ck_assert_int_eq(uv_loop_init(&loop), 0);
    ck_assert_int_eq(loyd_store_open(&loop, dbpath, &st), 0);
}

static void teardown(void)
{
    int closed = 0;
    loyd_store_close(st, on_closed, &closed);
    wait_for(&closed, 1);
    loyd_store_destroy(st);
    st = NULL;
    uv_run(&loop, UV_RUN_DEFAULT);
    ck_assert_int_eq(uv_loop_close(&loop), 0);
    char *cmd = loyd_xasprintf("rm -rf '%s'", dir);
    ck_assert_int_eq(system(cmd), 0);
    free(cmd);
}

static char *src_path(const char *rel)
{
    const char *src = getenv("LOYD_SRC");
    return loyd_xasprintf("%s/%s", src != NULL ? src : ".", rel);
}

static struct loyd_engine *engine(const char *tenant, const char *pack_rel)
{
    char *p = src_path(pack_rel);
    struct loyd_buf err = {0};
    struct loyd_engine *e = NULL;
    struct loyd_sandbox_limits lim = {.instructions = 1000000, .wall_ms = 2000};
    int rc = loyd_engine_create(tenant, p, NULL, NULL, 0, &lim, &e, &err);
    ck_assert_msg(rc == 0, "%s", err.data ? err.data : "?");
    loyd_buf_free(&err);
    free(p);
    return e;
}

/* Processes @text; returns the callback's code. */
static int process(struct loyd_engine *e, const char *text)
{
    json_error_t jerr;
    json_t *ev = json_loads(text, 0, &jerr);
    ck_assert_msg(ev != NULL, "%s", jerr.text);
    struct res r = {0};
    int rc = loyd_engine_process(e, st, ev, 0, on_done, &r);
    json_decref(ev);
    ck_assert_int_eq(rc, 0);
    wait_for(&r.done, 1);
    ck_assert_int_eq(r.done, 1);
    return r.err;
}

static int64_t balance(const char *tenant, const char *member)
{
    int64_t b = -1;
    ck_assert_int_eq(loyd_store_balance(st, tenant, member, &b), 0);
    return b;
}

static int64_t raw_int(const char *sql)
{
    sqlite3 *db;
    sqlite3_stmt *s;
    ck_assert_int_eq(sqlite3_open_v2(dbpath, &db, SQLITE_OPEN_READONLY, NULL), SQLITE_OK);
    ck_assert_int_eq(sqlite3_prepare_v2(db, sql, -1, &s, NULL), SQLITE_OK);
    ck_assert_int_eq(sqlite3_step(s), SQLITE_ROW);
    int64_t v = sqlite3_column_int64(s, 0);
    sqlite3_finalize(s);
    sqlite3_close(db);
    return v;
}

#define CREATED(id)                                                                                \
    "{\"type\":\"contact.created\",\"key\":\"contact:" id ":created\",\"at\":1772366400000,"       \
    "\"contact\":{\"id\":\"" id "\"}}"
#define WON(deal, amount, redeem)                                                                  \
    "{\"type\":\"deal.won\",\"key\":\"deal:" deal ":won\",\"at\":1772366500000,"                   \
    "\"deal\":{\"id\":\"" deal "\",\"amount\":" amount ",\"currency\":\"RUB\","                    \
    "\"contact_id\":\"43\",\"redeem_points\":" redeem "}}"

START_TEST(test_retail_flow)
{
    struct loyd_engine *e = engine("acme", "rules/retail");
    ck_assert_str_eq(loyd_engine_pack_version(e), "1.1.0");
    ck_assert_int_eq(process(e, CREATED("43")), 0);
    ck_assert_int_eq(balance("acme", "43"), 500);

    /* Cashback: 3% of 100000 at bronze. */
    ck_assert_int_eq(process(e, WON("7", "100000", "0")), 0);
    ck_assert_int_eq(balance("acme", "43"), 3500);
    /* The same event again: a no-op. */
    ck_assert_int_eq(process(e, WON("7", "100000", "0")), LOYD_EDUP);
    ck_assert_int_eq(balance("acme", "43"), 3500);
    ck_assert_int_eq(raw_int("SELECT COUNT(*) FROM ledger"), 2);

    /* The purchase is in the member's history. */
    json_t *m = NULL;
    ck_assert_int_eq(loyd_store_member_get(st, "acme", "43", &m), 0);
    json_t *pur = json_object_get(json_object_get(m, "profile"), "purchases");
    ck_assert_int_eq(json_array_size(pur), 1);
    json_decref(m);

    /* The trace is stored with the event. */
    json_t *ev = NULL;
    ck_assert_int_eq(loyd_store_event_get(st, "acme", "deal:7:won", &ev), 0);
    json_t *tr = json_object_get(ev, "trace");
    ck_assert_int_ge(json_array_size(json_object_get(tr, "handlers")), 1);
    ck_assert_int_ge(json_array_size(json_object_get(tr, "accepted")), 1);
    ck_assert(json_is_array(json_object_get(tr, "rejected")));
    ck_assert_str_eq(json_string_value(json_object_get(ev, "pack_version")), "1.1.0");
    json_decref(ev);

    /* A write-back was queued. */
    json_t *ob = NULL;
    ck_assert_int_eq(loyd_store_outbox_pending(st, "acme", UINT64_MAX / 2, 100, &ob), 0);
    ck_assert_int_ge(json_array_size(ob), 1);
    json_decref(ob);

    /* Reopened: the cashback is reversed. */
    ck_assert_int_eq(process(e,
                             "{\"type\":\"deal.reopened\",\"key\":\"deal:7:reopened\","
                             "\"at\":1772366600000,\"deal\":{\"id\":\"7\",\"contact_id\":\"43\"}}"),
                     0);
    ck_assert_int_eq(balance("acme", "43"), 500);
    ck_assert_int_eq(loyd_store_member_get(st, "acme", "43", &m), 0);
    pur = json_object_get(json_object_get(m, "profile"), "purchases");
    ck_assert_int_eq(json_array_size(pur), 0);
    json_decref(m);
    loyd_engine_destroy(e);
}
END_TEST

/* Ledger ids are global: a redeem in a later event names the real id of the lot. */
START_TEST(test_redeem_real_lot_id)
{
    struct loyd_engine *other = engine("other", "rules/retail");
    struct loyd_engine *e = engine("acme", "rules/retail");
    ck_assert_int_eq(process(other, CREATED("1")), 0);
    ck_assert_int_eq(process(other, CREATED("2")), 0);
    ck_assert_int_eq(process(e, CREATED("43")), 0);
    json_t *rows = NULL;
    ck_assert_int_eq(loyd_store_ledger_list(st, "acme", "43", &rows), 0);
    ck_assert_int_eq(json_array_size(rows), 1);
    int64_t lot = json_integer_value(json_object_get(json_array_get(rows, 0), "id"));
    ck_assert_int_eq(lot, 3); /* provisional id was 1 */
    json_decref(rows);

    /* Pay 100 points on a 10000 deal: a redeem from the welcome lot, then cashback. */
    ck_assert_int_eq(process(e, WON("9", "10000", "100")), 0);
    ck_assert_int_eq(loyd_store_ledger_list(st, "acme", "43", &rows), 0);
    int found = 0;
    size_t i;
    json_t *r;
    json_array_foreach(rows, i, r)
    {
        if (strcmp(json_string_value(json_object_get(r, "kind")), "redeem") == 0) {
            ck_assert_int_eq(json_integer_value(json_object_get(r, "lot_id")), lot);
            ck_assert_int_eq(json_integer_value(json_object_get(r, "points")), -100);
            found++;
        }
    }
    ck_assert_int_eq(found, 1);
    json_decref(rows);
    ck_assert_int_eq(balance("acme", "43"), 500 - 100 + 297);
    loyd_engine_destroy(e);
    loyd_engine_destroy(other);
}
END_TEST


#define WON_BY(deal, contact)                                                                      \
    "{\"type\":\"deal.won\",\"key\":\"deal:" deal ":won\",\"at\":1772366500000,"                   \
    "\"deal\":{\"id\":\"" deal "\",\"amount\":10000,\"currency\":\"RUB\","                         \
    "\"contact_id\":\"" contact "\"}}"

static int64_t campaign_points(const char *campaign)
{
    json_t *totals = NULL;
    ck_assert_int_eq(loyd_store_campaign_totals(st, "acme", &totals), 0);
    int64_t v = json_integer_value(json_object_get(totals, campaign));
    json_decref(totals);
    return v;
}

/* A campaign budget is tenant-wide and survives the engine: it is read back from the ledger. */
START_TEST(test_campaign_budget_across_events)
{
    json_t *over = json_pack("{s:[{s:s,s:s,s:s,s:i}],s:{s:i}}", "campaigns", "name", "spring",
                             "from", "2026-01-01", "to", "2026-12-31", "multiplier", 2,
                             "budgets", "spring", 500);
    char *p = src_path("rules/retail");
    struct loyd_sandbox_limits lim = {.instructions = 1000000, .wall_ms = 2000};
    struct loyd_buf err = {0};
    struct loyd_engine *e = NULL;

    ck_assert_msg(loyd_engine_create("acme", p, NULL, over, 0, &lim, &e, &err) == 0, "%s",
                  err.data);
    /* 3% of 10000 = 300 base; the campaign doubles it with 300 more, drawn from its budget. */
    ck_assert_int_eq(process(e, WON_BY("1", "a")), 0);
    ck_assert_int_eq(balance("acme", "a"), 600);
    ck_assert_int_eq(campaign_points("spring"), 300);
    ck_assert_int_eq(process(e, WON_BY("2", "b")), 0);
    ck_assert_int_eq(balance("acme", "b"), 500); /* 300 + the 200 left in the budget */
    ck_assert_int_eq(campaign_points("spring"), 500);
    loyd_engine_destroy(e);

    /* A new engine (a restart) knows the budget is spent. */
    ck_assert_int_eq(loyd_engine_create("acme", p, NULL, over, 0, &lim, &e, &err), 0);
    ck_assert_int_eq(process(e, WON_BY("3", "c")), 0);
    ck_assert_int_eq(balance("acme", "c"), 300);
    ck_assert_int_eq(campaign_points("spring"), 500);
    /* Reversing a campaign award gives its points back to the budget. */
    const char *reopen = "{\"type\":\"deal.reopened\",\"key\":\"deal:1:reopened\","
                         "\"at\":1772366600000,\"deal\":{\"id\":\"1\",\"amount\":10000,"
                         "\"currency\":\"RUB\",\"contact_id\":\"a\"}}";
    ck_assert_int_eq(process(e, reopen), 0);
    ck_assert_int_eq(balance("acme", "a"), 0);
    ck_assert_int_eq(campaign_points("spring"), 200);
    loyd_engine_destroy(e);
    json_decref(over);
    free(p);
    loyd_buf_free(&err);
}
END_TEST

/* The store remaps a lot_id naming a provisional id of an earlier entry of the same apply. */
START_TEST(test_store_remaps_provisional)
{
    struct res r = {0};
    struct loyd_ledger_entry pre = {.points = 5, .kind = "award"};
    struct loyd_apply a0 = {.tenant = "x",
                            .event_key = "e0",
                            .event_type = "tick",
                            .member_id = "m",
                            .ledger = &pre,
                            .n_ledger = 1};
    ck_assert_int_eq(loyd_store_apply(st, &a0, on_done, &r), 0);
    wait_for(&r.done, 1);
    ck_assert_int_eq(r.err, 0);
    struct loyd_ledger_entry rows[] = {
        {.points = 100, .kind = "award", .provisional_id = 1000},
        {.points = -40, .kind = "redeem", .lot_id = 1000, .provisional_id = 1001},
        {.points = -1, .kind = "redeem", .lot_id = 1},
    };
    struct loyd_apply a = {.tenant = "x",
                           .event_key = "e1",
                           .event_type = "tick",
                           .member_id = "m",
                           .ledger = rows,
                           .n_ledger = 3};
    ck_assert_int_eq(loyd_store_apply(st, &a, on_done, &r), 0);
    wait_for(&r.done, 2);
    ck_assert_int_eq(r.err, 0);
    ck_assert_int_eq(raw_int("SELECT lot_id FROM ledger WHERE points = -40"), 2);
    ck_assert_int_eq(raw_int("SELECT lot_id FROM ledger WHERE points = -1"), 1);
    ck_assert_int_eq(balance("x", "m"), 64);
}
END_TEST

START_TEST(test_runaway_rule_isolated)
{
    struct loyd_engine *bad = engine("bad", "tests/data/packs/runaway");
    struct loyd_engine *good = engine("good", "rules/retail");
    ck_assert_int_eq(process(bad, CREATED("43")), 0);
    ck_assert_int_eq(balance("bad", "43"), 7);

    ck_assert_int_eq(process(bad, WON("7", "100000", "0")), LOYD_EBUDGET);
    ck_assert_int_eq(balance("bad", "43"), 7);
    ck_assert_int_eq(raw_int("SELECT COUNT(*) FROM dead_letters WHERE tenant = 'bad' AND "
                             "kind = 'event' AND ref = 'deal:7:won'"),
                     1);
    ck_assert_int_eq(raw_int("SELECT COUNT(*) FROM events WHERE event_key = 'deal:7:won'"), 0);

    /* Another tenant on the same store is unaffected. */
    ck_assert_int_eq(process(good, CREATED("43")), 0);
    ck_assert_int_eq(process(good, WON("7", "100000", "0")), 0);
    ck_assert_int_eq(balance("good", "43"), 3500);

    /* The failing tenant still handles its other events. */
    ck_assert_int_eq(process(bad, CREATED("44")), 0);
    ck_assert_int_eq(balance("bad", "44"), 7);
    loyd_engine_destroy(good);
    loyd_engine_destroy(bad);
}
END_TEST

static void raw_exec(const char *sql)
{
    sqlite3 *db;
    char *msg = NULL;
    ck_assert_int_eq(sqlite3_open_v2(dbpath, &db, SQLITE_OPEN_READWRITE, NULL), SQLITE_OK);
    sqlite3_busy_timeout(db, 5000);
    int rc = sqlite3_exec(db, sql, NULL, NULL, &msg);
    ck_assert_msg(rc == SQLITE_OK, "%s: %s", sql, msg ? msg : "?");
    sqlite3_close(db);
}

/*
 * A purchase paid partly with points, then refunded (the deal lost): the store takes the rows
 * the reversal writes, the spent points are back in the lots they came from, the deal's rows
 * net to 0.  (The daemon logged "ledger entry 0 refused" here and gave nothing back.)
 */
START_TEST(test_refund_after_redemption)
{
    struct loyd_engine *e = engine("acme", "rules/retail");
    ck_assert_int_eq(process(e, CREATED("43")), 0);
    ck_assert_int_eq(process(e, WON("7", "100000", "0")), 0);
    ck_assert_int_eq(balance("acme", "43"), 3500);
    /* 1000 points pay for part of 10000; 3% cashback on the 9000 paid in money. */
    ck_assert_int_eq(process(e, WON("9", "10000", "1000")), 0);
    ck_assert_int_eq(balance("acme", "43"), 3500 - 1000 + 270);
    ck_assert_int_eq(raw_int("SELECT -SUM(points) FROM ledger WHERE kind = 'redeem' AND "
                             "ref = '9'"),
                     1000);
    ck_assert_int_eq(process(e, "{\"type\":\"deal.reopened\",\"key\":\"deal:9:reopened:1\","
                                "\"reason\":\"lost\",\"at\":1772366600000,"
                                "\"deal\":{\"id\":\"9\",\"contact_id\":\"43\"}}"),
                     0);
    ck_assert_int_eq(balance("acme", "43"), 3500);
    ck_assert_int_eq(raw_int("SELECT SUM(points) FROM ledger WHERE ref = '9'"), 0);
    ck_assert_int_eq(raw_int("SELECT COUNT(*) FROM dead_letters"), 0);
    /* The lots are as they were before deal 9: the welcome lot and deal 7's cashback. */
    json_t *lots = NULL;
    ck_assert_int_eq(loyd_store_lots_open(st, "acme", "43", &lots), 0);
    ck_assert_int_eq(json_array_size(lots), 2);
    int64_t want[2] = {500, 3000};
    for (size_t i = 0; i < 2; i++) {
        json_t *l = json_array_get(lots, i);
        ck_assert_str_eq(json_string_value(json_object_get(l, "kind")), "award");
        ck_assert_int_eq(json_integer_value(json_object_get(l, "remaining")), want[i]);
    }
    json_decref(lots);
    /* A second refund of the same deal gives nothing more. */
    ck_assert_int_eq(process(e, "{\"type\":\"deal.reopened\",\"key\":\"deal:9:reopened:2\","
                                "\"at\":1772366700000,"
                                "\"deal\":{\"id\":\"9\",\"contact_id\":\"43\"}}"),
                     0);
    ck_assert_int_eq(balance("acme", "43"), 3500);
    loyd_engine_destroy(e);
}
END_TEST

/* An event that cannot be applied as it is leaves a dead letter with the reason. */
START_TEST(test_refused_event_dead_letter)
{
    struct loyd_engine *e = engine("acme", "rules/retail");
    ck_assert_int_eq(process(e, CREATED("43")), 0);
    /* A row no writer of loyd's makes, as a hand edit of the database could. */
    raw_exec("INSERT INTO ledger (tenant, member_id, event_key, kind, points, reason, created_ms)"
             " SELECT tenant, member_id, event_key, 'adjust', 5, printf('%.300c', 'x'),"
             " created_ms FROM ledger WHERE member_id = '43'");
    ck_assert_int_eq(process(e, WON("7", "100000", "0")), -EINVAL);
    ck_assert_int_eq(raw_int("SELECT COUNT(*) FROM dead_letters WHERE tenant = 'acme' AND "
                             "kind = 'event' AND ref = 'deal:7:won' AND "
                             "error LIKE '%at most 256 bytes%' AND payload LIKE '%deal.won%'"),
                     1);
    ck_assert_int_eq(raw_int("SELECT COUNT(*) FROM events WHERE event_key = 'deal:7:won'"), 0);
    /* Other members go on. */
    ck_assert_int_eq(process(e, CREATED("44")), 0);
    ck_assert_int_eq(balance("acme", "44"), 500);
    loyd_engine_destroy(e);
}
END_TEST

START_TEST(test_bad_input)
{
    struct loyd_engine *e = engine("acme", "rules/retail");
    json_t *ev =
        json_loads("{\"type\":\"deal.won\",\"key\":\"k\",\"deal\":{\"id\":\"1\"}}", 0, NULL);
    struct res r = {0};
    ck_assert_int_eq(loyd_engine_process(e, st, ev, 0, on_done, &r), -EINVAL); /* no member */
    json_decref(ev);
    ev = json_loads("{\"type\":\"deal.lost\",\"key\":\"k\",\"member_id\":\"1\"}", 0, NULL);
    ck_assert_int_eq(loyd_engine_process(e, st, ev, 0, on_done, &r), -EINVAL);
    json_decref(ev);
    ck_assert_int_eq(r.done, 0);
    struct loyd_buf err = {0};
    struct loyd_engine *none = NULL;
    ck_assert_int_ne(loyd_engine_create("t", "/nonexistent/pack", NULL, NULL, 0, NULL, &none, &err),
                     0);
    ck_assert_ptr_null(none);
    loyd_buf_free(&err);
    loyd_engine_destroy(e);
}
END_TEST

/* The stamp card through the store: counters live in the member row, the mapped one reaches
 * the CRM write-back, a refund undoes what its deal counted. */
static int64_t profile_counter(const char *name)
{
    json_t *m = NULL;
    ck_assert_int_eq(loyd_store_member_get(st, "cafe", "43", &m), 0);
    int64_t v = json_integer_value(
        json_object_get(json_object_get(json_object_get(m, "profile"), "counters"), name));
    json_decref(m);
    return v;
}

START_TEST(test_stamp_card_counters)
{
    struct loyd_engine *e = engine("cafe", "tests/data/packs/stamps");
    char ev[512];
    for (int i = 1; i <= 12; i++) {
        snprintf(ev, sizeof(ev),
                 "{\"type\":\"deal.won\",\"key\":\"deal:%d:won\",\"at\":%lld,"
                 "\"deal\":{\"id\":\"%d\",\"amount\":30000,\"contact_id\":\"43\"}}",
                 i, (long long)(T0 + 3 * 86400000LL + i), i); /* 2026-03-04, a Wednesday */
        ck_assert_int_eq(process(e, ev), 0);
    }
    /* The 10th filled the card: 2 stamps on the new one, no points anywhere. */
    ck_assert_int_eq(profile_counter("stamps"), 2);
    ck_assert_int_eq(profile_counter("weekend_visits"), 0);
    ck_assert_int_eq(raw_int("SELECT COUNT(*) FROM ledger"), 0);
    ck_assert_int_eq(raw_int("SELECT COUNT(*) FROM outbox WHERE json_extract(payload, '$.op') = "
                             "'contact.fields' AND json_extract(payload, '$.fields.stamps') = 9"),
                     1);
    ck_assert_int_eq(raw_int("SELECT COUNT(*) FROM outbox WHERE json_extract(payload, '$.op') = "
                             "'offer' AND json_extract(payload, '$.code') = 'COFFEE-10'"),
                     1);
    /* A Sunday purchase: the weekend counter stays in loyd, nothing of it reaches the CRM. */
    ck_assert_int_eq(process(e, "{\"type\":\"deal.won\",\"key\":\"deal:13:won\","
                                "\"at\":1772971200000,\"deal\":{\"id\":\"13\",\"amount\":"
                                "30000,\"contact_id\":\"43\"}}"),
                     0);
    ck_assert_int_eq(profile_counter("weekend_visits"), 1);
    ck_assert_int_eq(raw_int("SELECT COUNT(*) FROM outbox WHERE json_extract(payload, "
                             "'$.fields.weekend_visits') IS NOT NULL"),
                     0);
    /* Refunding the deal that filled the card: its 9 stamps come back, on top of the 3 since. */
    ck_assert_int_eq(process(e, "{\"type\":\"deal.reopened\",\"key\":\"deal:10:reopened\","
                                "\"at\":1773000000000,\"reason\":\"lost\",\"deal\":{\"id\":"
                                "\"10\",\"contact_id\":\"43\"}}"),
                     0);
    ck_assert_int_eq(profile_counter("stamps"), 12);
    ck_assert_int_eq(raw_int("SELECT COUNT(*) FROM outbox WHERE json_extract(payload, "
                             "'$.fields.stamps') = 12"),
                     1);
    ck_assert_int_eq(raw_int("SELECT COUNT(*) FROM dead_letters"), 0);
    loyd_engine_destroy(e);
}
END_TEST

#define CREATED_BY(id, referrer)                                                                   \
    "{\"type\":\"contact.created\",\"key\":\"contact:" id ":created\",\"at\":1772366400000,"       \
    "\"contact\":{\"id\":\"" id "\",\"referrer\":\"" referrer "\"}}"

START_TEST(test_referral_reversed_on_both_cards)
{
    struct loyd_engine *e = engine("acme", "rules/retail");
    ck_assert_int_eq(process(e, CREATED("7")), 0);
    /* The worker resolved the friend's "referred by" field to member 7 (contact_match.h). */
    ck_assert_int_eq(process(e, CREATED_BY("43", "7")), 0);
    ck_assert_int_eq(process(e, WON("10", "100000", "0")), 0);
    ck_assert_int_eq(balance("acme", "43"), 500 + 3000 + 300);
    ck_assert_int_eq(balance("acme", "7"), 500 + 500);
    /* The first purchase is lost: its cashback and the referral bonus go, on both cards. */
    ck_assert_int_eq(process(e, "{\"type\":\"deal.reopened\",\"key\":\"deal:10:reopened\","
                                "\"at\":1772366600000,\"reason\":\"lost\","
                                "\"deal\":{\"id\":\"10\",\"contact_id\":\"43\"}}"),
                     0);
    ck_assert_int_eq(raw_int("SELECT COUNT(*) FROM dead_letters"), 0);
    ck_assert_int_eq(balance("acme", "43"), 500);
    ck_assert_int_eq(balance("acme", "7"), 500);
    ck_assert_int_eq(raw_int("SELECT SUM(points) FROM ledger WHERE ref = 'referral:10'"), 0);
    ck_assert_int_eq(raw_int("SELECT COUNT(*) FROM ledger WHERE member_id = '7' AND "
                             "kind = 'reverse' AND event_key = 'deal:10:reopened'"),
                     1);
    /* The referrer's card is refreshed by the reversal's event. */
    ck_assert_int_eq(raw_int("SELECT COUNT(*) FROM outbox WHERE event_key = 'deal:10:reopened' "
                             "AND member_id = '7' AND payload LIKE '%member.refresh%'"),
                     1);
    /* A referrer never moves: the profile keeps the first one. */
    json_t *m = NULL;
    ck_assert_int_eq(loyd_store_member_get(st, "acme", "43", &m), 0);
    ck_assert_str_eq(json_string_value(json_object_get(json_object_get(m, "profile"), "referrer")),
                     "7");
    json_decref(m);
    loyd_engine_destroy(e);
}
END_TEST

/* The offer a member holds with @p code, from the stored profile (new), or NULL. */
static json_t *stored_offer(const char *member, const char *code)
{
    json_t *m = NULL, *o, *found = NULL;
    size_t i;
    ck_assert_int_eq(loyd_store_member_get(st, "acme", member, &m), 0);
    json_array_foreach(json_object_get(json_object_get(m, "profile"), "offers"), i, o)
        if (strcmp(json_string_value(json_object_get(o, "code")), code) == 0)
            found = json_incref(o);
    json_decref(m);
    return found;
}

#define REDEEMED(code, deal)                                                                       \
    "{\"type\":\"offer.redeemed\",\"key\":\"offer:43:" code ":redeemed\",\"at\":1772366700000,"    \
    "\"offer\":{\"code\":\"" code "\"},\"deal\":{\"id\":\"" deal "\",\"contact_id\":\"43\"}}"

START_TEST(test_offer_tied_to_its_deal)
{
    char *pd = loyd_xasprintf("%s/offers", dir), *rd = loyd_xasprintf("%s/offers/rules", dir);
    ck_assert_int_eq(mkdir(pd, 0700), 0);
    ck_assert_int_eq(mkdir(rd, 0700), 0);
    char *f = loyd_xasprintf("%s/pack.conf", pd);
    FILE *fp = fopen(f, "w");
    fputs("return { name = \"offers\", version = \"1.0.0\", settings = {} }\n", fp);
    fclose(fp);
    free(f);
    f = loyd_xasprintf("%s/10_offers.lua", rd);
    fp = fopen(f, "w");
    fputs("return {\n"
          "  ['deal.won'] = function(ev) return { offer{ code = 'NEXT-' .. ev.deal.id,\n"
          "    discount_pct = 10, valid_days = 30, ref = ev.deal.id } } end,\n"
          "  ['deal.reopened'] = function(ev) return { reverse{ ref = ev.deal.id } } end,\n"
          "  ['offer.redeemed'] = function(ev, member)\n"
          "    return { note{ text = 'used ' .. ev.offer.code .. ' on deal ' .. ev.deal.id ..\n"
          "      ', ' .. #member.offers .. ' open' } } end,\n"
          "}\n",
          fp);
    fclose(fp);
    free(f);
    struct loyd_buf err = {0};
    struct loyd_engine *e = NULL;
    ck_assert_msg(loyd_engine_create("acme", pd, NULL, NULL, 0, NULL, &e, &err) == 0, "%s",
                  err.data);
    loyd_buf_free(&err);
    ck_assert_int_eq(process(e, WON("10", "100000", "0")), 0);
    ck_assert_int_eq(process(e, WON("11", "100000", "0")), 0);
    json_t *o = stored_offer("43", "NEXT-10");
    ck_assert_str_eq(json_string_value(json_object_get(o, "status")), "open");
    ck_assert_str_eq(json_string_value(json_object_get(o, "ref")), "10");
    json_decref(o);
    /* Deal 10 reversed: its offer is withdrawn (with a note), the other one stays. */
    ck_assert_int_eq(process(e, "{\"type\":\"deal.reopened\",\"key\":\"deal:10:reopened\","
                                "\"at\":1772366600000,\"deal\":{\"id\":\"10\","
                                "\"contact_id\":\"43\"}}"),
                     0);
    o = stored_offer("43", "NEXT-10");
    ck_assert_str_eq(json_string_value(json_object_get(o, "status")), "revoked");
    json_decref(o);
    o = stored_offer("43", "NEXT-11");
    ck_assert_str_eq(json_string_value(json_object_get(o, "status")), "open");
    json_decref(o);
    ck_assert_int_eq(raw_int("SELECT COUNT(*) FROM outbox WHERE event_key = 'deal:10:reopened' "
                             "AND payload LIKE '%NEXT-10 is withdrawn%'"),
                     1);
    /* The code of deal 11 is used: the pack hears it, the offer is used, once. */
    ck_assert_int_eq(process(e, REDEEMED("NEXT-11", "12")), 0);
    ck_assert_int_eq(raw_int("SELECT COUNT(*) FROM outbox WHERE payload LIKE "
                             "'%used NEXT-11 on deal 12, 1 open%'"),
                     1);
    o = stored_offer("43", "NEXT-11");
    ck_assert_str_eq(json_string_value(json_object_get(o, "status")), "used");
    ck_assert_str_eq(json_string_value(json_object_get(o, "deal_id")), "12");
    json_decref(o);
    ck_assert_int_eq(process(e, REDEEMED("NEXT-11", "12")), LOYD_EDUP);
    loyd_engine_destroy(e);
    free(pd);
    free(rd);
}
END_TEST

static void kv_put(const char *key, const char *value)
{
    struct res r = {0};
    ck_assert_int_eq(loyd_store_kv_put(st, "acme", key, value, on_done, &r), 0);
    wait_for(&r.done, 1);
    ck_assert_int_eq(r.err, 0);
}

/* Resolves @p rb_text for contact 43: the member id (new) or NULL, *why the reason. */
static char *resolve(const char *rb_text, struct loyd_buf *why)
{
    json_t *rb = json_loads(rb_text, 0, NULL);
    char *m = NULL;
    loyd_buf_free(why);
    int rc = loyd_referrer_resolve(st, "acme", "43", rb, &m, why);
    json_decref(rb);
    ck_assert(rc == 0 || rc == -ENOENT || rc == -EINVAL);
    ck_assert((rc == 0) == (m != NULL));
    return m;
}

START_TEST(test_referrer_resolution)
{
    struct loyd_buf why = {0};
    char *m;
    kv_put("crm:contact:7", "{\"name\":\"Olga\",\"phone\":\"+7 916 123-45-67\","
                            "\"email\":\"Olga@Example.com\"}");
    kv_put("crm:contact:43", "{\"name\":\"Anna\",\"phone\":\"8 (916) 555-00-00\"}");
    kv_put("crm:contact:9", "{\"deleted\":true}");
    /* A phone in another format, an email in another case: the same contact. */
    ck_assert_str_eq((m = resolve("{\"phone\":\"8 916 1234567\"}", &why)), "7");
    free(m);
    ck_assert_str_eq((m = resolve("{\"email\":\" olga@example.COM \"}", &why)), "7");
    free(m);
    ck_assert_str_eq((m = resolve("{\"contact_id\":\"7\"}", &why)), "7");
    free(m);
    /* Nobody refers themselves; a deleted or unknown contact refers nobody. */
    ck_assert_ptr_null(resolve("{\"phone\":\"+7 916 555 00 00\"}", &why));
    ck_assert_ptr_null(resolve("{\"contact_id\":\"43\"}", &why));
    ck_assert_ptr_null(resolve("{\"contact_id\":\"9\"}", &why));
    ck_assert_ptr_null(resolve("{\"contact_id\":\"1234\"}", &why));
    ck_assert_ptr_nonnull(strstr(why.data, "1234"));
    /* The reason never repeats a phone or an email (personal data). */
    ck_assert_ptr_null(resolve("{\"phone\":\"+7 999 000-11-22\"}", &why));
    ck_assert_ptr_nonnull(strstr(why.data, "phone"));
    ck_assert_ptr_null(strstr(why.data, "999"));
    ck_assert_ptr_null(resolve("{\"email\":\"nobody@example.com\"}", &why));
    ck_assert_ptr_null(strstr(why.data, "nobody"));
    /* Two contacts with that phone: which one is not guessed. */
    kv_put("crm:contact:8", "{\"phone\":\"79161234567\"}");
    ck_assert_ptr_null(resolve("{\"phone\":\"+79161234567\"}", &why));
    ck_assert_ptr_nonnull(strstr(why.data, "2 contacts"));
    ck_assert_ptr_null(resolve("{\"code\":\"R7-X\"}", &why));
    loyd_buf_free(&why);

    /* The referral code names its member and catches a typo (loyd/referral.h). */
    char code[LOYD_REFERRAL_CODE_MAX], id[65];
    ck_assert(loyd_referral_code("4317", code));
    ck_assert(loyd_referral_code_parse(code, id));
    ck_assert_str_eq(id, "4317");
    char typo[LOYD_REFERRAL_CODE_MAX];
    for (size_t i = 1; i + 2 < strlen(code); i++) { /* every digit mistyped */
        for (char d = '0'; d <= '9'; d++) {
            if (d == code[i])
                continue;
            snprintf(typo, sizeof(typo), "%s", code);
            typo[i] = d;
            ck_assert_msg(!loyd_referral_code_parse(typo, id), "%s taken", typo);
        }
    }
    snprintf(typo, sizeof(typo), "%s", code);
    typo[1] = code[2], typo[2] = code[1]; /* "4317" -> "3417" */
    ck_assert(!loyd_referral_code_parse(typo, id));
    for (char *c = code; *c; c++)
        *c = (char)(*c >= 'A' && *c <= 'Z' ? *c - 'A' + 'a' : *c);
    snprintf(typo, sizeof(typo), "  %s ", code);
    ck_assert(loyd_referral_code_parse(typo, id)); /* any case, spaces around */
    ck_assert(!loyd_referral_code("", code));
    ck_assert(!loyd_referral_code("7 8", code));
}
END_TEST

Suite *engine_suite(void)
{
    Suite *s = suite_create("engine");
    TCase *tc = tcase_create("core");
    tcase_add_checked_fixture(tc, setup, teardown);
    tcase_set_timeout(tc, 60);
    tcase_add_test(tc, test_retail_flow);
    tcase_add_test(tc, test_referral_reversed_on_both_cards);
    tcase_add_test(tc, test_offer_tied_to_its_deal);
    tcase_add_test(tc, test_referrer_resolution);
    tcase_add_test(tc, test_redeem_real_lot_id);
    tcase_add_test(tc, test_campaign_budget_across_events);
    tcase_add_test(tc, test_store_remaps_provisional);
    tcase_add_test(tc, test_runaway_rule_isolated);
    tcase_add_test(tc, test_refund_after_redemption);
    tcase_add_test(tc, test_refused_event_dead_letter);
    tcase_add_test(tc, test_bad_input);
    tcase_add_test(tc, test_stamp_card_counters);
    suite_add_tcase(s, tc);
    return s;
}
