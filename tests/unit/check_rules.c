/* SPDX-License-Identifier: MIT */
/* The rule engine: effect validation and rejections, fail-closed evaluation, caps, budgets,
 * lint, the test runner's diff, and `loyd test` / `loyd check` on the stock pack. */
#include <check.h>
#include <errno.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/stat.h>
#include <unistd.h>

#include "campaign.h"
#include "ledger.h"
#include "rules.h"

#define T0 (1772366400000LL) /* 2026-03-01 12:00 UTC */

static char tmpdir[64];
static const char *conf_text; /* pack.conf of the next make_pack; NULL: conf below */
static struct loyd_pack *pack;
static struct loyd_rules *rules;

static void write_file(const char *rel, const char *text)
{
    char *p = loyd_xasprintf("%s/%s", tmpdir, rel);
    char *slash = strrchr(p, '/');
    *slash = '\0';
    mkdir(p, 0700);
    *slash = '/';
    FILE *f = fopen(p, "w");
    ck_assert_ptr_nonnull(f);
    fputs(text, f);
    fclose(f);
    free(p);
}

static const char *conf =
    "return { name = 't', version = '1', settings = {\n"
    "  tiers = { type = 'list', of = 'string', default = { 'bronze', 'gold' } },\n"
    "  caps = { type = 'map', of = 'int', default = {} },\n"
    "  budgets = { type = 'map', of = 'int', default = {} },\n"
    "  allow_negative_balance = { type = 'bool', default = false },\n"
    "} }\n";

/* A pack whose deal.won handler returns what `body` builds (Lua expression of effects). */
static void make_pack(const char *rules_a, const char *rules_b)
{
    struct loyd_buf err = {0};
    strcpy(tmpdir, "/tmp/loyd-rules-XXXXXX");
    ck_assert_ptr_nonnull(mkdtemp(tmpdir));
    write_file("pack.conf", conf_text != NULL ? conf_text : conf);
    write_file("rules/a.lua", rules_a);
    if (rules_b != NULL)
        write_file("rules/b.lua", rules_b);
    ck_assert_int_eq(loyd_pack_load(tmpdir, NULL, &pack, &err), 0);
    struct loyd_sandbox_limits lim = {.instructions = 200000, .wall_ms = 2000};
    int rc = loyd_rules_create(pack, &lim, &rules, &err);
    ck_assert_msg(rc == 0, "%s", err.data ? err.data : "");
    loyd_buf_free(&err);
}

static void teardown(void)
{
    loyd_rules_destroy(rules);
    loyd_pack_destroy(pack);
    rules = NULL;
    pack = NULL;
    conf_text = NULL;
    if (tmpdir[0] != '\0') {
        char *cmd = loyd_xasprintf("rm -rf %s", tmpdir);
        ck_assert_int_eq(system(cmd), 0);
        free(cmd);
    }
}

static json_t *eval_json(const char *event, const char *member, const char *ledger,
                         const char *settings, int *rc)
{
    json_t *ev = json_loads(event, 0, NULL), *m = json_loads(member, 0, NULL);
    json_t *lg = ledger ? json_loads(ledger, 0, NULL) : NULL;
    json_t *st = json_loads(settings ? settings : "{}", 0, NULL), *eff = NULL;
    struct loyd_buf err = {0};
    ck_assert_ptr_nonnull(ev);
    ck_assert_ptr_nonnull(m);
    ck_assert_int_eq(loyd_pack_settings(pack, st, NULL, &eff, &err), 0);
    struct loyd_rules_input in = {.event = ev, .member = m, .ledger = lg, .settings = eff};
    json_t *res = NULL;
    *rc = loyd_rules_eval(rules, &in, &res);
    ck_assert_ptr_nonnull(res);
    json_decref(ev);
    json_decref(m);
    json_decref(lg);
    json_decref(st);
    json_decref(eff);
    loyd_buf_free(&err);
    return res;
}

#define WON                                                                                        \
    "{\"type\":\"deal.won\",\"key\":\"deal:7:won\",\"at\":1772366400000,"                          \
    "\"deal\":{\"id\":\"7\",\"amount\":100000,\"currency\":\"RUB\"}}"
#define MEMBER "{\"id\":\"43\",\"tier\":\"bronze\",\"referrer\":\"9\"}"

static const char *reason_of(json_t *res, size_t i)
{
    return json_string_value(
        json_object_get(json_array_get(json_object_get(res, "rejected"), i), "reason"));
}

START_TEST(test_effect_rejections)
{
    make_pack("return { ['deal.won'] = function(ev, m, s) return {\n"
              "  award{ points = 37.5, reason = 'float' },\n"
              "  award{ points = -5, reason = 'negative' },\n"
              "  award{ points = 5 },\n"
              "  award{ points = 5, reason = 'x', reson = 'typo' },\n"
              "  { kind = 'gift', points = 1 },\n"
              "  offer{ code = 'A', discount_pct = 5, discount_amount = 100, valid_days = 3 },\n"
              "  set_tier{ tier = 'gld' },\n"
              "  award{ points = 10, reason = 'to a stranger', member = '77' },\n"
              "  redeem{ points = 10, reason = 'no balance' },\n"
              "  set_field{ name = 'balance', value = 5 },\n"
              "  award{ points = 100, reason = 'ok', ref = ev.deal.id },\n"
              "  award{ points = 10, reason = 'referrer', member = m.referrer },\n"
              "} end }\n",
              NULL);
    int rc;
    json_t *res = eval_json(WON, MEMBER, NULL, NULL, &rc);
    ck_assert_int_eq(rc, 0);
    ck_assert(json_is_true(json_object_get(res, "ok")));
    ck_assert_ptr_nonnull(strstr(reason_of(res, 0), "'points' must be an integer, got 37.5"));
    ck_assert_ptr_nonnull(strstr(reason_of(res, 1), "points must be 1.."));
    ck_assert_ptr_nonnull(strstr(reason_of(res, 2), "missing required field 'reason'"));
    ck_assert_ptr_nonnull(
        strstr(reason_of(res, 3), "unknown field 'reson' (did you mean 'reason'?)"));
    ck_assert_ptr_nonnull(strstr(reason_of(res, 4), "unknown effect kind 'gift'"));
    ck_assert_ptr_nonnull(strstr(reason_of(res, 5), "exactly one of 'discount_pct'"));
    ck_assert_ptr_nonnull(
        strstr(reason_of(res, 6), "not in settings.tiers (did you mean 'gold'?)"));
    ck_assert_ptr_nonnull(strstr(reason_of(res, 7), "only when it is this member's referrer"));
    ck_assert_ptr_nonnull(strstr(reason_of(res, 8), "insufficient balance"));
    ck_assert_ptr_nonnull(strstr(reason_of(res, 9), "owned by the ledger"));
    ck_assert_int_eq(json_array_size(json_object_get(res, "rejected")), 10);
    json_t *acc = json_object_get(res, "accepted");
    ck_assert_int_eq(json_array_size(acc), 2);
    ck_assert_int_eq(json_integer_value(json_object_get(res, "balance")), 100);
    /* Rows: this member's award (provisional id 1) and the referrer's. */
    json_t *rows = json_object_get(res, "ledger");
    ck_assert_int_eq(json_array_size(rows), 2);
    ck_assert_str_eq(json_string_value(json_object_get(json_array_get(rows, 1), "member_id")), "9");
    /* Write-backs: balance first, then a refresh of the referrer. */
    json_t *ob = json_object_get(res, "outbox");
    ck_assert_str_eq(json_string_value(json_object_get(json_array_get(ob, 0), "op")),
                     "contact.fields");
    ck_assert_int_eq(json_integer_value(json_object_get(
                         json_object_get(json_array_get(ob, 0), "fields"), "balance")),
                     100);
    ck_assert_str_eq(json_string_value(json_object_get(json_array_get(ob, 1), "op")),
                     "member.refresh");
    /* The purchase goes into the history. */
    ck_assert_str_eq(json_string_value(json_object_get(json_object_get(res, "purchase"), "op")),
                     "add");
    /* The trace says which file proposed what. */
    json_t *tr = json_object_get(res, "trace");
    ck_assert_int_eq(json_array_size(json_object_get(tr, "proposed")), 12);
    json_decref(res);
}
END_TEST

START_TEST(test_fail_closed)
{
    make_pack(
        "return { ['deal.won'] = function() return { award{ points = 5, reason = 'a' } } end,\n"
        "  tick = function() return award{ points = 1, reason = 'not a list' } end,\n"
        "  birthday = function() while true do end end }\n",
        "return { ['deal.won'] = function(ev) local t = nil; return t.x end }\n");
    int rc;
    json_t *res = eval_json(WON, MEMBER, NULL, NULL, &rc);
    ck_assert_int_eq(rc, LOYD_ERULE);
    ck_assert(json_is_false(json_object_get(res, "ok")));
    const char *e = json_string_value(json_object_get(res, "error"));
    ck_assert_ptr_nonnull(strstr(e, "rules/b.lua:1: attempt to index a nil value"));
    ck_assert_ptr_nonnull(strstr(e, "stack traceback"));
    /* a.lua's award is not applied: no rows, no effects, no write-back. */
    ck_assert_int_eq(json_array_size(json_object_get(res, "ledger")), 0);
    ck_assert_int_eq(json_array_size(json_object_get(res, "accepted")), 0);
    ck_assert_int_eq(json_array_size(json_object_get(res, "outbox")), 0);
    json_decref(res);

    res = eval_json("{\"type\":\"tick\",\"at\":1772366400000}", MEMBER, NULL, NULL, &rc);
    ck_assert_int_eq(rc, LOYD_EEFFECT);
    ck_assert_ptr_nonnull(
        strstr(json_string_value(json_object_get(res, "error")), "returned a single effect"));
    json_decref(res);

    res = eval_json("{\"type\":\"birthday\",\"at\":1772366400000}", MEMBER, NULL, NULL, &rc);
    ck_assert_int_eq(rc, LOYD_EBUDGET);
    ck_assert(json_is_false(json_object_get(res, "ok")));
    json_decref(res);

    res = eval_json("{\"type\":\"deal.lost\",\"at\":1}", MEMBER, NULL, NULL, &rc);
    ck_assert_int_eq(rc, -EINVAL);
    ck_assert_ptr_nonnull(
        strstr(json_string_value(json_object_get(res, "error")), "not a canonical event"));
    json_decref(res);
}
END_TEST

START_TEST(test_caps_and_budgets)
{
    make_pack("return { ['deal.won'] = function() return {\n"
              "  award{ points = 700, reason = 'a' },\n"
              "  award{ points = 700, reason = 'b' },\n"
              "  award{ points = 500, reason = 'c', campaign = 'bf' },\n"
              "} end }\n",
              NULL);
    int rc;
    /* 300 already awarded today. */
    const char *ledger = "[{\"id\":1,\"kind\":\"award\",\"points\":300,\"at\":1772360000000}]";
    json_t *res = eval_json(WON, MEMBER, ledger, "{\"caps\":{\"award_per_day\":1500}}", &rc);
    ck_assert_int_eq(rc, 0);
    json_t *acc = json_object_get(res, "accepted");
    ck_assert_int_eq(json_array_size(acc), 2);
    ck_assert_int_eq(json_integer_value(json_object_get(json_array_get(acc, 1), "points")), 500);
    ck_assert_int_eq(json_integer_value(json_object_get(json_array_get(acc, 1), "capped_from")),
                     700);
    ck_assert_ptr_nonnull(strstr(reason_of(res, 0), "cap award_per_day reached (1500 of 1500"));
    json_decref(res);

    res = eval_json(WON, MEMBER, NULL, "{\"caps\":{\"award_per_event\":1000}}", &rc);
    ck_assert_int_eq(json_integer_value(json_object_get(res, "balance")), 1000);
    json_decref(res);

    /* The campaign budget counts what the tenant already spent on it. */
    json_t *ev = json_loads(WON, 0, NULL), *m = json_loads(MEMBER, 0, NULL);
    json_t *st = json_pack("{s:{s:i}}", "budgets", "bf", 1000), *eff = NULL;
    json_t *totals = json_pack("{s:i}", "bf", 800);
    struct loyd_buf err = {0};
    ck_assert_int_eq(loyd_pack_settings(pack, st, NULL, &eff, &err), 0);
    struct loyd_rules_input in = {
        .event = ev, .member = m, .settings = eff, .campaign_totals = totals};
    ck_assert_int_eq(loyd_rules_eval(rules, &in, &res), 0);
    acc = json_object_get(res, "accepted");
    ck_assert_int_eq(json_integer_value(json_object_get(json_array_get(acc, 2), "points")), 200);
    json_decref(res);
    json_object_set_new(totals, "bf", json_integer(1000));
    ck_assert_int_eq(loyd_rules_eval(rules, &in, &res), 0);
    ck_assert_ptr_nonnull(strstr(reason_of(res, 0), "budget of campaign 'bf' exhausted"));
    json_decref(res);
    json_decref(ev);
    json_decref(m);
    json_decref(st);
    json_decref(eff);
    json_decref(totals);
    loyd_buf_free(&err);
}
END_TEST

START_TEST(test_negative_policy_and_expiry)
{
    make_pack(
        "return { ['deal.reopened'] = function(ev) return { reverse{ ref = ev.deal.id } } end,\n"
        "  tick = function(ev, m) return { note{ text = 'balance ' .. m.balance .. ' lots ' .. "
        "#m.lots } } end }\n",
        NULL);
    /* Award 3000 for deal 7, 2000 of it spent on deal 8. */
    const char *ledger =
        "[{\"id\":1,\"kind\":\"award\",\"points\":3000,\"ref\":\"7\",\"at\":1},"
        " {\"id\":2,\"kind\":\"redeem\",\"points\":-2000,\"lot_id\":1,\"ref\":\"8\",\"at\":2},"
        " {\"id\":3,\"kind\":\"award\",\"points\":50,\"at\":3,\"expires_ms\":1772000000000}]";
    const char *reopen =
        "{\"type\":\"deal.reopened\",\"at\":1772366400000,\"deal\":{\"id\":\"7\"}}";
    int rc;
    json_t *res = eval_json(reopen, MEMBER, ledger, NULL, &rc);
    ck_assert_int_eq(rc, 0);
    json_t *e = json_array_get(json_object_get(res, "accepted"), 0);
    ck_assert_int_eq(json_integer_value(json_object_get(e, "reversed")), 1000);
    ck_assert_int_eq(json_integer_value(json_object_get(e, "shortfall")), 2000);
    ck_assert_int_eq(json_integer_value(json_object_get(res, "balance")), 0);
    /* The expired 50-point lot went first, as an expire row. */
    ck_assert_str_eq(json_string_value(json_object_get(
                         json_array_get(json_object_get(res, "ledger"), 0), "kind")),
                     "expire");
    ck_assert_str_eq(json_string_value(json_object_get(res, "purchase")
                                           ? json_object_get(json_object_get(res, "purchase"), "op")
                                           : NULL),
                     "remove");
    json_decref(res);

    res = eval_json(reopen, MEMBER, ledger, "{\"allow_negative_balance\":true}", &rc);
    e = json_array_get(json_object_get(res, "accepted"), 0);
    ck_assert_int_eq(json_integer_value(json_object_get(e, "reversed")), 3000);
    ck_assert_int_eq(json_integer_value(json_object_get(res, "balance")), -2000);
    json_decref(res);

    /* Handlers see the member after expiry. */
    res = eval_json("{\"type\":\"tick\",\"at\":1772366400000}", MEMBER, ledger, NULL, &rc);
    ck_assert_str_eq(json_string_value(json_object_get(
                         json_array_get(json_object_get(res, "accepted"), 0), "text")),
                     "balance 1000 lots 1");
    json_decref(res);
}
END_TEST

START_TEST(test_birthday_once_and_view)
{
    make_pack(
        "return { birthday = function(ev, m) return {\n"
        "  offer{ code = 'B1', discount_pct = 10, valid_days = 7, birthday = true },\n"
        "  offer{ code = 'B2', discount_pct = 10, valid_days = 7, birthday = true } } end }\n",
        NULL);
    int rc;
    json_t *res =
        eval_json("{\"type\":\"birthday\",\"at\":1772366400000}", MEMBER, NULL, NULL, &rc);
    ck_assert_int_eq(json_array_size(json_object_get(res, "accepted")), 1);
    ck_assert_ptr_nonnull(strstr(reason_of(res, 0), "already given in 2026"));
    ck_assert_int_eq(json_integer_value(json_object_get(json_object_get(res, "member"),
                                                        "last_birthday_offer_year")),
                     2026);
    json_decref(res);

    json_t *m = json_loads(
        "{\"id\":\"1\",\"birthday\":\"1990-02-28\",\"attributes\":{\"vip\":true}}", 0, NULL);
    json_t *lg = json_loads("[{\"id\":1,\"kind\":\"award\",\"points\":10,\"at\":1,"
                            "\"expires_ms\":1772409600000}]",
                            0, NULL);
    json_t *pur = json_loads("[{\"deal_id\":\"1\",\"amount\":500,\"at\":1772000000000}]", 0, NULL);
    json_t *view = NULL;
    struct loyd_buf err = {0};
    ck_assert_int_eq(loyd_rules_member_view(m, lg, pur, T0, 0, &view, &err), 0);
    ck_assert_int_eq(json_integer_value(json_object_get(view, "balance")), 10);
    json_t *lot = json_array_get(json_object_get(view, "lots"), 0);
    ck_assert_str_eq(json_string_value(json_object_get(lot, "expires_on")), "2026-03-01");
    ck_assert_int_eq(json_integer_value(json_object_get(json_object_get(view, "spend"), "d30")),
                     500);
    ck_assert_ptr_null(json_object_get(view, "referrer")); /* absent, not null: nil in Lua */
    ck_assert(json_is_true(json_object_get(json_object_get(view, "attributes"), "vip")));
    json_decref(view);
    json_decref(m);
    json_decref(lg);
    json_decref(pur);
    loyd_buf_free(&err);
}
END_TEST

static char *capture(int (*fn)(const char *, FILE *), const char *dir, int *rc)
{
    FILE *f = tmpfile();
    ck_assert_ptr_nonnull(f);
    *rc = fn(dir, f);
    long n = ftell(f);
    rewind(f);
    char *buf = loyd_xcalloc(1, (size_t)n + 1);
    ck_assert_uint_eq(fread(buf, 1, (size_t)n, f), (size_t)n);
    fclose(f);
    return buf;
}

static int run_tests(const char *dir, FILE *out)
{
    return loyd_pack_test_run(dir, NULL, out);
}

static int run_check(const char *dir, FILE *out)
{
    return loyd_pack_check_run(dir, NULL, out);
}

static char *src_path(const char *rel)
{
    const char *src = getenv("LOYD_SRC");
    return loyd_xasprintf("%s/%s", src != NULL ? src : ".", rel);
}

START_TEST(test_lint_finds_problems)
{
    char *dir = src_path("tests/data/packs/lint");
    int rc;
    char *out = capture(run_check, dir, &rc);
    ck_assert_int_eq(rc, 1);
    ck_assert_ptr_nonnull(strstr(out, "lint/rules/a.lua:2: 'deal.wonn' is not an event name "
                                      "(did you mean 'deal.won'?)"));
    ck_assert_ptr_nonnull(strstr(out, "lint/rules/a.lua:5: handler 'tick' is a number, not a "
                                      "function"));
    ck_assert_ptr_nonnull(strstr(out, "lint/rules/a.lua:6: handler 'contact.created' returned a "
                                      "single effect"));
    ck_assert_ptr_nonnull(strstr(out, "lint/rules/a.lua:9: handler 'birthday', effect 1: award: "
                                      "unknown field 'reson' (did you mean 'reason'?)"));
    ck_assert_ptr_nonnull(strstr(out, "4 problems found"));
    free(out);
    free(dir);

    dir = src_path("tests/data/packs/syntax");
    out = capture(run_check, dir, &rc);
    ck_assert_int_eq(rc, 1);
    ck_assert_ptr_nonnull(strstr(out, "syntax/rules/broken.lua:4: unexpected symbol near 'end'"));
    free(out);
    free(dir);
}
END_TEST

START_TEST(test_runner_diff)
{
    char *dir = src_path("tests/data/packs/failing");
    int rc;
    char *out = capture(run_tests, dir, &rc);
    ck_assert_int_eq(rc, 1);
    ck_assert_ptr_nonnull(strstr(out, "  FAIL expects too much\n"
                                      "      effects (- expected, + actual):\n"
                                      "      - {kind=\"award\", points=99}\n"
                                      "      + {kind=\"award\", points=10, reason=\"flat\"}\n"));
    ck_assert_ptr_nonnull(strstr(out, "  ok   passes\n"));
    ck_assert_ptr_nonnull(strstr(out, "  ok   a failing rule is an error\n"));
    ck_assert_ptr_nonnull(strstr(out, "2 passed, 1 failed\n"));
    free(out);
    free(dir);
}
END_TEST

START_TEST(test_retail_pack_passes)
{
    char *dir = src_path("rules/retail");
    char *argv_test[] = {"test", dir, NULL};
    char *argv_check[] = {"check", dir, NULL};
    /* The commands print to stdout; keep the test log readable. */
    ck_assert_ptr_nonnull(freopen("/dev/null", "w", stdout));
    ck_assert_int_eq(loyd_cmd_test(2, argv_test), 0);
    ck_assert_int_eq(loyd_cmd_check(2, argv_check), 0);
    char *argv_bad[] = {"test", NULL};
    ck_assert_int_eq(loyd_cmd_test(1, argv_bad), 2);
    free(dir);
    dir = src_path("tests/data/packs/child");
    char *argv_child[] = {"test", dir, NULL};
    ck_assert_int_eq(loyd_cmd_test(2, argv_child), 0);
    free(dir);
}
END_TEST

START_TEST(test_retail_output)
{
    char *dir = src_path("rules/retail");
    int rc;
    char *out = capture(run_tests, dir, &rc);
    ck_assert_msg(rc == 0, "%s", out);
    ck_assert_ptr_nonnull(strstr(out, " passed, 0 failed\n"));
    ck_assert_ptr_null(strstr(out, "FAIL"));
    free(out);
    out = capture(run_check, dir, &rc);
    ck_assert_msg(rc == 0, "%s", out);
    ck_assert_ptr_nonnull(strstr(out, "pack retail 1.1.0: 8 rule files"));
    free(out);
    free(dir);
}
END_TEST

/* set_field{crm = false} is the pack's own bookkeeping: kept on the member, never written back. */
START_TEST(test_set_field_crm_false)
{
    make_pack("return { ['deal.won'] = function(ev, m, s) return {\n"
              "  set_field{ name = 'shown', value = 1 },\n"
              "  set_field{ name = 'kept', value = 7, crm = false },\n"
              "  set_field{ name = 'bad', value = 1, crm = 'no' },\n"
              "} end,\n"
              "  tick = function(ev, m, s) return {\n"
              "  set_field{ name = 'kept', value = 8, crm = false },\n"
              "} end }\n",
              NULL);
    int rc;
    json_t *res = eval_json(WON, MEMBER, NULL, NULL, &rc);
    ck_assert_int_eq(rc, 0);
    json_t *attrs = json_object_get(json_object_get(res, "member"), "attributes");
    ck_assert_int_eq(json_integer_value(json_object_get(attrs, "shown")), 1);
    ck_assert_int_eq(json_integer_value(json_object_get(attrs, "kept")), 7);
    json_t *out = json_array_get(json_object_get(res, "outbox"), 0);
    ck_assert_str_eq(json_string_value(json_object_get(out, "op")), "contact.fields");
    json_t *fields = json_object_get(out, "fields");
    ck_assert_int_eq(json_integer_value(json_object_get(fields, "shown")), 1);
    ck_assert_ptr_null(json_object_get(fields, "kept"));
    ck_assert_int_eq(json_array_size(json_object_get(res, "rejected")), 1);
    ck_assert_ptr_nonnull(strstr(reason_of(res, 0), "set_field: 'crm' must be true or false"));
    json_decref(res);

    /* Only bookkeeping changed: nothing to write to the CRM at all. */
    res = eval_json("{\"type\":\"tick\",\"key\":\"tick:1\",\"at\":1772366400000,"
                    "\"member_id\":\"43\"}",
                    MEMBER, NULL, NULL, &rc);
    ck_assert_int_eq(rc, 0);
    attrs = json_object_get(json_object_get(res, "member"), "attributes");
    ck_assert_int_eq(json_integer_value(json_object_get(attrs, "kept")), 8);
    ck_assert_int_eq(json_array_size(json_object_get(res, "outbox")), 0);
    json_decref(res);
}
END_TEST

/* A pack that declares counters (stamps on the card, seen only in loyd) and windows. */
static const char *counter_conf =
    "return { name = 't', version = '1',\n"
    "  counters = { stamps = { crm = true }, seen = {} },\n"
    "  windows = { 'd90', 'since:2026-01-01' },\n"
    "  settings = { allow_negative_balance = { type = 'bool', default = false } } }\n";

static const char *counter_rules =
    "return { ['deal.won'] = function(ev, m) return {\n"
    "  count{ name = 'stamps', ref = ev.deal.id },\n"
    "  count{ name = 'stamps', by = 2, ref = ev.deal.id },\n"
    "  count{ name = 'seen', ref = ev.deal.id },\n"
    "  count{ name = 'seen', by = -5 },\n"
    "  count{ name = 'stams' },\n"
    "  count{ name = 'stamps', by = 1, reset = true },\n"
    "  count{ name = 'stamps', by = 0 },\n"
    "  award{ points = m.counters.stamps * 100 + m.counters.seen + 1, reason = 'view' },\n"
    "} end,\n"
    "  tick = function(ev, m) return { count{ name = 'stamps', reset = true, ref = 'card' } } "
    "end,\n"
    "  ['deal.reopened'] = function(ev) return { reverse{ ref = ev.deal.id } } end }\n";

static json_t *eval_member(const char *event, json_t *member, int *rc)
{
    char *m = json_dumps(member, JSON_COMPACT);
    json_t *res = eval_json(event, m, NULL, NULL, rc);
    free(m);
    return res;
}

static json_t *contact_fields(json_t *res)
{
    json_t *o = json_array_get(json_object_get(res, "outbox"), 0);
    ck_assert_str_eq(json_string_value(json_object_get(o, "op")), "contact.fields");
    return json_object_get(o, "fields");
}

#define REOPENED(deal)                                                                             \
    "{\"type\":\"deal.reopened\",\"key\":\"r\",\"at\":1772366500000,\"deal\":{\"id\":\"" deal      \
    "\",\"contact_id\":\"43\"}}"

/* count{}: increments, refusals, reset, what the view shows, the CRM mapping, reversal. */
START_TEST(test_count_effect)
{
    conf_text = counter_conf;
    make_pack(counter_rules, NULL);
    int rc;
    json_t *res = eval_json(WON, "{\"id\":\"43\",\"counters\":{\"stamps\":2}}", NULL, NULL, &rc);
    ck_assert_int_eq(rc, 0);
    json_t *acc = json_object_get(res, "accepted");
    ck_assert_int_eq(json_array_size(acc), 4);
    json_t *c1 = json_array_get(acc, 0), *c2 = json_array_get(acc, 1);
    ck_assert_int_eq(json_integer_value(json_object_get(c1, "from")), 2);
    ck_assert_int_eq(json_integer_value(json_object_get(c1, "value")), 3);
    ck_assert_int_eq(json_integer_value(json_object_get(c2, "value")), 5);
    ck_assert_str_eq(json_string_value(json_object_get(c2, "ref")), "7");
    /* The view is before the event: 2 stamps, seen absent but declared, so 0. */
    ck_assert_int_eq(json_integer_value(json_object_get(json_array_get(acc, 3), "points")), 201);
    ck_assert_int_eq(json_array_size(json_object_get(res, "rejected")), 4);
    ck_assert_ptr_nonnull(strstr(reason_of(res, 0), "counter 'seen' is 1; by = -5 would take it "
                                                    "below 0"));
    ck_assert_ptr_nonnull(strstr(reason_of(res, 1), "count: 'stams' is not a counter pack.conf "
                                                    "declares (did you mean 'stamps'?)"));
    ck_assert_ptr_nonnull(strstr(reason_of(res, 2), "give either 'by' or 'reset = true'"));
    ck_assert_ptr_nonnull(strstr(reason_of(res, 3), "'by' must be a non-zero integer"));
    json_t *upd = json_object_get(res, "member");
    json_t *counters = json_object_get(upd, "counters");
    ck_assert_int_eq(json_integer_value(json_object_get(counters, "stamps")), 5);
    ck_assert_int_eq(json_integer_value(json_object_get(counters, "seen")), 1);
    ck_assert_int_eq(json_array_size(json_object_get(upd, "counter_log")), 3);
    /* stamps is mapped to the CRM (pack.conf crm = true), seen is not. */
    json_t *fields = contact_fields(res);
    ck_assert_int_eq(json_integer_value(json_object_get(fields, "stamps")), 5);
    ck_assert_ptr_null(json_object_get(fields, "seen"));
    ck_assert_ptr_null(json_object_get(upd, "attributes"));

    /* The deal is reopened: every counter change under its ref is undone, nothing else. */
    json_t *m = json_pack("{s:s, s:O, s:O}", "id", "43", "counters", counters, "counter_log",
                          json_object_get(upd, "counter_log"));
    json_decref(res);
    res = eval_member(REOPENED("7"), m, &rc);
    json_decref(m);
    ck_assert_int_eq(rc, 0);
    ck_assert_int_eq(json_array_size(json_object_get(res, "rejected")), 0);
    json_t *rev = json_array_get(json_object_get(res, "accepted"), 0);
    ck_assert_int_eq(
        json_integer_value(json_object_get(json_object_get(rev, "counters"), "stamps")), 2);
    upd = json_object_get(res, "member");
    counters = json_object_get(upd, "counters");
    ck_assert_int_eq(json_integer_value(json_object_get(counters, "stamps")), 2);
    ck_assert_int_eq(json_integer_value(json_object_get(counters, "seen")), 0);
    ck_assert_int_eq(json_array_size(json_object_get(upd, "counter_log")), 0);
    fields = contact_fields(res);
    ck_assert_int_eq(json_integer_value(json_object_get(fields, "stamps")), 2);
    ck_assert_ptr_null(json_object_get(fields, "seen"));
    /* Once undone, the ref carries nothing any more. */
    m = json_pack("{s:s, s:O, s:O}", "id", "43", "counters", counters, "counter_log",
                  json_object_get(upd, "counter_log"));
    json_decref(res);
    res = eval_member(REOPENED("7"), m, &rc);
    json_decref(m);
    ck_assert_int_eq(json_array_size(json_object_get(res, "accepted")), 0);
    ck_assert_ptr_nonnull(strstr(reason_of(res, 0), "nothing carries ref '7'"));
    json_decref(res);

    /* A reset takes the card to 0 and remembers what it took: its reversal gives it back. */
    res = eval_json("{\"type\":\"tick\",\"key\":\"t\",\"at\":1772366400000,"
                    "\"member_id\":\"43\"}",
                    "{\"id\":\"43\",\"counters\":{\"stamps\":9}}", NULL, NULL, &rc);
    json_t *reset = json_array_get(json_object_get(res, "accepted"), 0);
    ck_assert(json_is_true(json_object_get(reset, "reset")));
    ck_assert_int_eq(json_integer_value(json_object_get(reset, "from")), 9);
    ck_assert_int_eq(json_integer_value(json_object_get(reset, "value")), 0);
    upd = json_object_get(res, "member");
    ck_assert_int_eq(json_integer_value(json_object_get(contact_fields(res), "stamps")), 0);
    m = json_pack("{s:s, s:O, s:O}", "id", "43", "counters", json_object_get(upd, "counters"),
                  "counter_log", json_object_get(upd, "counter_log"));
    json_decref(res);
    res = eval_member(REOPENED("card"), m, &rc);
    json_decref(m);
    ck_assert_int_eq(json_integer_value(json_object_get(
                         json_object_get(json_object_get(res, "member"), "counters"), "stamps")),
                     9);
    json_decref(res);

    /* Undoing more than is left stops at 0, and says so. */
    res = eval_json(REOPENED("5"),
                    "{\"id\":\"43\",\"counters\":{\"stamps\":1},\"counter_log\":[{\"name\":"
                    "\"stamps\",\"by\":3,\"ref\":\"5\",\"at\":1}]}",
                    NULL, NULL, &rc);
    ck_assert_int_eq(json_integer_value(json_object_get(
                         json_object_get(json_object_get(res, "member"), "counters"), "stamps")),
                     0);
    char *notes = json_dumps(json_object_get(json_object_get(res, "trace"), "notes"), 0);
    ck_assert_ptr_nonnull(strstr(notes, "counter 'stamps' is 1, undoing 3 stops at 0"));
    free(notes);
    json_decref(res);

    /* Stored counters that are not whole non-negative numbers are refused as input. */
    res = eval_json(WON, "{\"id\":\"43\",\"counters\":{\"stamps\":-1}}", NULL, NULL, &rc);
    ck_assert_int_eq(rc, -EINVAL);
    ck_assert_ptr_nonnull(strstr(json_string_value(json_object_get(res, "error")),
                                 "member.counters.stamps must be a non-negative integer"));
    json_decref(res);
}
END_TEST

/* Without a declaration in pack.conf any counter name counts, and none reaches the CRM. */
START_TEST(test_count_undeclared)
{
    make_pack("return { ['deal.won'] = function(ev, m) return {\n"
              "  count{ name = 'visits', ref = ev.deal.id },\n"
              "  count{ name = 'balance' },\n"
              "  award{ points = (m.counters.visits or 0) + 1, reason = 'x' } } end }\n",
              NULL);
    int rc;
    json_t *res = eval_json(WON, MEMBER, NULL, NULL, &rc);
    ck_assert_int_eq(rc, 0);
    ck_assert_int_eq(json_array_size(json_object_get(res, "accepted")), 2);
    ck_assert_ptr_nonnull(strstr(reason_of(res, 0), "'balance' is not a counter name"));
    ck_assert_int_eq(json_integer_value(json_object_get(
                         json_object_get(json_object_get(res, "member"), "counters"), "visits")),
                     1);
    ck_assert_ptr_null(json_object_get(contact_fields(res), "visits"));
    json_decref(res);
}
END_TEST

/* pack.conf windows: member.spend / member.purchases carry them next to d30, d365, total. */
START_TEST(test_windows_in_view)
{
    conf_text = counter_conf;
    make_pack("return { tick = function(ev, m) return {\n"
              "  award{ points = m.spend.d90 + m.purchases['since:2026-01-01'], reason = 'w' } } "
              "end }\n",
              NULL);
    const int64_t day = LOYD_DAY_MS;
    json_t *pur = json_pack(
        "[{s:s,s:I,s:I},{s:s,s:I,s:I},{s:s,s:I,s:I}]", "deal_id", "1", "amount", (json_int_t)1000,
        "at", (json_int_t)(T0 - 10 * day), "deal_id", "2", "amount", (json_int_t)2000, "at",
        (json_int_t)(T0 - 80 * day), /* 2025-12-11: d90, not this year */
        "deal_id", "3", "amount", (json_int_t)4000, "at", (json_int_t)(T0 - 200 * day));
    json_t *m = json_pack("{s:s, s:{s:i}}", "id", "43", "counters", "stamps", 4);
    json_t *view = NULL;
    struct loyd_buf err = {0};
    ck_assert_int_eq(loyd_rules_pack_member_view(pack, m, NULL, pur, T0, 0, &view, &err), 0);
    json_t *spend = json_object_get(view, "spend"), *cnt = json_object_get(view, "purchases");
    ck_assert_int_eq(json_integer_value(json_object_get(spend, "d90")), 3000);
    ck_assert_int_eq(json_integer_value(json_object_get(cnt, "d90")), 2);
    ck_assert_int_eq(json_integer_value(json_object_get(spend, "since:2026-01-01")), 1000);
    ck_assert_int_eq(json_integer_value(json_object_get(cnt, "since:2026-01-01")), 1);
    ck_assert_int_eq(json_integer_value(json_object_get(spend, "d30")), 1000);
    ck_assert_int_eq(json_integer_value(json_object_get(spend, "total")), 7000);
    json_t *counters = json_object_get(view, "counters");
    ck_assert_int_eq(json_integer_value(json_object_get(counters, "stamps")), 4);
    ck_assert(json_is_integer(json_object_get(counters, "seen"))); /* declared: 0, not nil */
    ck_assert_int_eq(json_integer_value(json_object_get(counters, "seen")), 0);
    json_decref(view);

    /* The handlers see the same view. */
    json_t *ev = json_pack("{s:s, s:s, s:I, s:s}", "type", "tick", "key", "t", "at", (json_int_t)T0,
                           "member_id", "43");
    struct loyd_rules_input in = {.event = ev, .member = m, .purchases = pur};
    json_t *res = NULL;
    ck_assert_int_eq(loyd_rules_eval(rules, &in, &res), 0);
    ck_assert_int_eq(json_integer_value(json_object_get(
                         json_array_get(json_object_get(res, "accepted"), 0), "points")),
                     3001);
    json_decref(res);
    json_decref(ev);
    json_decref(m);
    json_decref(pur);
    loyd_buf_free(&err);
}
END_TEST

START_TEST(test_stamps_pack_passes)
{
    char *dir = src_path("tests/data/packs/stamps");
    int rc;
    char *out = capture(run_tests, dir, &rc);
    ck_assert_msg(rc == 0, "%s", out);
    ck_assert_ptr_nonnull(strstr(out, "8 passed, 0 failed\n"));
    free(out);
    out = capture(run_check, dir, &rc);
    ck_assert_msg(rc == 0, "%s", out);
    free(out);
    free(dir);
}
END_TEST

/* ---- campaigns: the `campaigns` setting type and the loyd.campaign_* helpers ---------------- */

static const char *campaign_conf =
    "return { name = 't', version = '1', settings = {\n"
    "  campaigns = { type = 'campaigns', default = {\n"
    "    { name = 'bf', from = '2026-03-01', to = '2026-03-07', multiplier = 2, budget = 1500 },\n"
    "    { name = 'wkend', weekdays = { 6, 7 }, bonus_bp = 2500 },\n"
    "    { name = 'later', from = '2026-03-08', multiplier = 5 } } },\n"
    "  budgets = { type = 'map', of = 'int', default = {} },\n"
    "} }\n";

static const char *campaign_rules =
    "return { ['deal.won'] = function(ev, m, s)\n"
    "  local out = { award{ points = 1000, reason = 'base', ref = ev.deal.id } }\n"
    "  for _, e in ipairs(loyd.campaign_awards(s.campaigns, 1000,\n"
    "                     { reason = 'deal ' .. ev.deal.id, ref = ev.deal.id })) do\n"
    "    out[#out + 1] = e\n"
    "  end\n"
    "  out[#out + 1] = note{ text = 'left ' .. tostring(loyd.campaign_remaining('bf'))\n"
    "    .. ' spent ' .. loyd.campaign_spent('bf')\n"
    "    .. ' none ' .. tostring(loyd.campaign_remaining('nope'))\n"
    "    .. ' active ' .. #loyd.active_campaigns(s.campaigns) }\n"
    "  return out\n"
    "end,\n"
    "  tick = function(ev, m, s)\n"
    "    local bonus = loyd.campaign_awards(s.campaigns, 10, { expire_in_days = 3 })\n"
    "    return bonus\n"
    "  end,\n"
    "  birthday = function(ev, m, s)\n"
    "    local bonus = loyd.campaign_awards(s.campaigns, 1.5)\n"
    "    return bonus\n"
    "  end }\n";

/* deal.won at @p at (ms) with the tenant-wide @p totals (JSON text, NULL: none). */
static json_t *campaign_eval(int64_t at, const char *settings, const char *totals)
{
    char event[256];
    snprintf(event, sizeof(event),
             "{\"type\":\"deal.won\",\"key\":\"deal:7:won\",\"at\":%lld,"
             "\"deal\":{\"id\":\"7\",\"amount\":100000}}",
             (long long)at);
    json_t *ev = json_loads(event, 0, NULL), *m = json_loads(MEMBER, 0, NULL);
    json_t *st = json_loads(settings != NULL ? settings : "{}", 0, NULL), *eff = NULL;
    json_t *tot = totals != NULL ? json_loads(totals, 0, NULL) : NULL, *res = NULL;
    struct loyd_buf err = {0};
    ck_assert_msg(loyd_pack_settings(pack, st, NULL, &eff, &err) == 0, "%s", err.data);
    struct loyd_rules_input in = {
        .event = ev, .member = m, .settings = eff, .campaign_totals = tot};
    ck_assert_int_eq(loyd_rules_eval(rules, &in, &res), 0);
    json_decref(ev);
    json_decref(m);
    json_decref(st);
    json_decref(eff);
    json_decref(tot);
    loyd_buf_free(&err);
    return res;
}

/* The campaigns of the accepted awards, in order, as "name:points" joined by spaces. */
static char *campaign_awards_of(json_t *res)
{
    struct loyd_buf b = {0};
    size_t i;
    json_t *e;
    loyd_buf_puts(&b, "");
    json_array_foreach(json_object_get(res, "accepted"), i, e)
    {
        const char *c = json_string_value(json_object_get(e, "campaign"));
        if (c != NULL)
            loyd_buf_printf(&b, "%s%s:%lld", b.len > 0 ? " " : "", c,
                            (long long)json_integer_value(json_object_get(e, "points")));
    }
    return b.data;
}

static const char *note_text(json_t *res)
{
    size_t i;
    json_t *o;
    json_array_foreach(json_object_get(res, "outbox"), i, o)
    {
        if (strcmp(json_string_value(json_object_get(o, "op")), "note") == 0)
            return json_string_value(json_object_get(o, "text"));
    }
    return "";
}

#define D0301 1772366400000LL /* Sunday: the window's first day */
#define D0304 1772625600000LL /* Wednesday */
#define D0307 1772884800000LL /* Saturday: the window's last day */
#define D0308 1772971200000LL /* Sunday: the day after it */

START_TEST(test_campaign_helper)
{
    conf_text = campaign_conf;
    make_pack(campaign_rules, NULL);
    json_t *res = campaign_eval(D0301, NULL, NULL);
    char *got = campaign_awards_of(res);
    /* bf doubles (+1000), the weekend adds 25 %, "later" has not started. */
    ck_assert_str_eq(got, "bf:1000 wkend:250");
    free(got);
    json_t *bf = json_array_get(json_object_get(res, "accepted"), 1);
    ck_assert_str_eq(json_string_value(json_object_get(bf, "reason")), "campaign bf, deal 7");
    ck_assert_str_eq(json_string_value(json_object_get(bf, "ref")), "7");
    ck_assert_str_eq(note_text(res), "left 1500 spent 0 none nil active 2");
    json_decref(res);

    /* Wednesday inside the window: no weekend bonus. */
    res = campaign_eval(D0304, NULL, NULL);
    got = campaign_awards_of(res);
    ck_assert_str_eq(got, "bf:1000");
    free(got);
    json_decref(res);

    /* The last day still counts; the day after, bf has ended and "later" begins. */
    res = campaign_eval(D0307, NULL, NULL);
    got = campaign_awards_of(res);
    ck_assert_str_eq(got, "bf:1000 wkend:250");
    free(got);
    json_decref(res);
    res = campaign_eval(D0308, NULL, NULL);
    got = campaign_awards_of(res);
    ck_assert_str_eq(got, "wkend:250 later:4000");
    free(got);
    json_decref(res);

    /* The tenant's overrides replace the list; a tenant's bonus_bp is read as well. */
    res = campaign_eval(D0304, "{\"campaigns\":[{\"name\":\"mid\",\"bonus_bp\":1000}]}", NULL);
    got = campaign_awards_of(res);
    ck_assert_str_eq(got, "mid:100");
    free(got);
    json_decref(res);
}
END_TEST

START_TEST(test_campaign_budget)
{
    conf_text = campaign_conf;
    make_pack(campaign_rules, NULL);
    /* 800 of bf's 1500 spent tenant-wide: the bonus is cut to 700, with a note. */
    json_t *res = campaign_eval(D0304, NULL, "{\"bf\":800}");
    json_t *bf = json_array_get(json_object_get(res, "accepted"), 1);
    ck_assert_int_eq(json_integer_value(json_object_get(bf, "points")), 700);
    ck_assert_int_eq(json_integer_value(json_object_get(bf, "capped_from")), 1000);
    ck_assert_str_eq(note_text(res), "left 700 spent 800 none nil active 1");
    json_t *notes = json_object_get(json_object_get(res, "trace"), "notes");
    ck_assert_ptr_nonnull(strstr(json_string_value(json_array_get(notes, 0)),
                                 "award of 1000 points cut to 700 by the budget of campaign 'bf'"));
    json_decref(res);

    /* Spent: the bonus is refused, the base award stays, rules read 0 left. */
    res = campaign_eval(D0304, NULL, "{\"bf\":1500}");
    ck_assert_str_eq(reason_of(res, 0),
                     "budget of campaign 'bf' exhausted (1,500 points of 1,500 points awarded)");
    ck_assert_int_eq(json_integer_value(json_object_get(res, "balance")), 1000);
    ck_assert_str_eq(note_text(res), "left 0 spent 1500 none nil active 1");
    json_decref(res);

    /* settings.budgets still counts; with a campaign budget too, the smaller one binds. */
    res = campaign_eval(D0304, "{\"budgets\":{\"bf\":900}}", "{\"bf\":800}");
    bf = json_array_get(json_object_get(res, "accepted"), 1);
    ck_assert_int_eq(json_integer_value(json_object_get(bf, "points")), 100);
    ck_assert_str_eq(note_text(res), "left 100 spent 800 none nil active 1");
    json_decref(res);
    res = campaign_eval(D0304, "{\"budgets\":{\"nope\":5}}", NULL);
    ck_assert_str_eq(note_text(res), "left 1500 spent 0 none 5 active 1");
    json_decref(res);
}
END_TEST

START_TEST(test_campaign_helper_errors)
{
    conf_text = campaign_conf;
    make_pack(campaign_rules, NULL);
    int rc;
    json_t *res = eval_json("{\"type\":\"tick\",\"key\":\"t\",\"at\":1772366400000}", MEMBER, NULL,
                            NULL, &rc);
    ck_assert_int_eq(rc, LOYD_ERULE);
    const char *e = json_string_value(json_object_get(res, "error"));
    ck_assert_msg(strstr(e, "rules/a.lua:14: loyd.campaign_awards: unknown option "
                            "'expire_in_days'") != NULL,
                  "%s", e);
    json_decref(res);
    res = eval_json("{\"type\":\"birthday\",\"key\":\"b\",\"at\":1772366400000}", MEMBER, NULL,
                    NULL, &rc);
    ck_assert_int_eq(rc, LOYD_ERULE);
    e = json_string_value(json_object_get(res, "error"));
    ck_assert_msg(strstr(e, "rules/a.lua:18: loyd.campaign_awards: points must be an integer "
                            "number of ledger units, got 1.5") != NULL,
                  "%s", e);
    json_decref(res);
}
END_TEST

/* ISO weekdays across years, leap days and before 1970 (the helper's and the CLI's). */
START_TEST(test_iso_weekday)
{
    ck_assert_int_eq(loyd_iso_weekday("2026-03-01"), 7);
    ck_assert_int_eq(loyd_iso_weekday("2026-11-30"), 1);
    ck_assert_int_eq(loyd_iso_weekday("2024-02-29"), 4);
    ck_assert_int_eq(loyd_iso_weekday("1970-01-01"), 4);
    ck_assert_int_eq(loyd_iso_weekday("1969-12-31"), 3);
    ck_assert_int_eq(loyd_iso_weekday("2000-01-01"), 6);
    ck_assert_int_eq(loyd_iso_weekday("2026-02-29"), 0);
    ck_assert_int_eq(loyd_iso_weekday("2026-3-1"), 0);
    /* The Lua helper agrees with C on every day of two years (2024 a leap year). */
    conf_text = campaign_conf;
    make_pack("return { tick = function(ev, m, s)\n"
              "  local c = { name = 'x', weekdays = { 1 }, multiplier = 2 }\n"
              "  local out, d = {}, '2023-12-25'\n"
              "  for i = 1, 731 do\n"
              "    if loyd.campaign_active(c, d) then out[#out + 1] = d end\n"
              "    d = loyd.date_add_days(d, 1)\n"
              "  end\n"
              "  return { note{ text = table.concat(out, ',') } }\n"
              "end }\n",
              NULL);
    int rc;
    json_t *res = eval_json("{\"type\":\"tick\",\"key\":\"t\",\"at\":1772366400000}", MEMBER, NULL,
                            NULL, &rc);
    ck_assert_int_eq(rc, 0);
    const char *mondays = note_text(res);
    size_t n = 0;
    for (const char *p = mondays; *p != '\0'; p += 11, n++) {
        char d[11];
        memcpy(d, p, 10);
        d[10] = '\0';
        ck_assert_msg(loyd_iso_weekday(d) == 1, "%s is not a Monday", d);
        if (p[10] == '\0')
            break;
    }
    ck_assert_int_eq(n + 1, 105);
    json_decref(res);
}
END_TEST

Suite *rules_suite(void)
{
    Suite *s = suite_create("rules");
    TCase *tc = tcase_create("engine");
    tcase_add_checked_fixture(tc, NULL, teardown);
    tcase_set_timeout(tc, 20);
    tcase_add_test(tc, test_effect_rejections);
    tcase_add_test(tc, test_fail_closed);
    tcase_add_test(tc, test_caps_and_budgets);
    tcase_add_test(tc, test_negative_policy_and_expiry);
    tcase_add_test(tc, test_birthday_once_and_view);
    tcase_add_test(tc, test_set_field_crm_false);
    tcase_add_test(tc, test_campaign_helper);
    tcase_add_test(tc, test_campaign_budget);
    tcase_add_test(tc, test_campaign_helper_errors);
    tcase_add_test(tc, test_iso_weekday);
    tcase_add_test(tc, test_count_effect);
    tcase_add_test(tc, test_count_undeclared);
    tcase_add_test(tc, test_windows_in_view);
    suite_add_tcase(s, tc);
    TCase *cli = tcase_create("commands");
    tcase_set_timeout(cli, 30);
    tcase_add_test(cli, test_lint_finds_problems);
    tcase_add_test(cli, test_runner_diff);
    tcase_add_test(cli, test_retail_pack_passes);
    tcase_add_test(cli, test_retail_output);
    tcase_add_test(cli, test_stamps_pack_passes);
    suite_add_tcase(s, cli);
    return s;
}
