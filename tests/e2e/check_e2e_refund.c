/* SPDX-License-Identifier: MIT */
/*
 * Refunds through the real daemon and the Bitrix24 emulator (`loyd emulate bitrix24` and
 * `loyd serve` with the retail pack, as in check_e2e_b24.c): a deal paid partly with points
 * (the tenant's crm.redeem_field) and then lost gives the points back, on the card and in the
 * ledger; an event the daemon cannot apply is a dead letter with its reason, a metric and an
 * error-level log line, never a silent skip.
 */
#include <check.h>
#include <signal.h>
#include <stdbool.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <unistd.h>

#include <jansson.h>

#include "e2e.h"
#include "util.h"

#define CODE "w3bh00kc0de12345"
#define TOKEN "51856fefc120afa4b628cc82d3935cce"
#define MEMBER "a223c6b3710f85df22e9377d6c4f7553"
#define ACCESS "testaccesstoken0123456789abcdef0"
#define PAY_FIELD "UF_CRM_PAY_POINTS"

static char *dir;
static struct loyd_proc emu, daemon_proc;
static int eport, dport;

static void stop(struct loyd_proc *p)
{
    if (p->pid > 0) {
        kill(p->pid, SIGKILL);
        loyd_e2e_wait_exit(p, 5000);
        p->pid = 0;
    }
}

static void teardown(void)
{
    loyd_e2e_assert_clean(&emu);
    loyd_e2e_assert_clean(&daemon_proc);
    stop(&emu);
    stop(&daemon_proc);
    char cmd[600];
    snprintf(cmd, sizeof(cmd), "rm -rf '%s'", dir);
    ck_assert_int_eq(system(cmd), 0);
    free(dir);
}

static char *log_tail(void)
{
    char *log = loyd_e2e_log(&daemon_proc);
    size_t n = strlen(log);
    if (n > 4000)
        memmove(log, log + n - 4000, 4001);
    return log;
}

/* A REST call as the shop's own app (OAuth); @return the parsed answer (new). */
static json_t *shop(const char *method, json_t *params /* taken */)
{
    char path[128], *body = NULL;
    snprintf(path, sizeof(path), "/rest/%s.json", method);
    json_object_set_new(params, "auth", json_string(ACCESS));
    char *text = json_dumps(params, JSON_COMPACT);
    json_decref(params);
    int st;
    for (int tries = 0;; tries++) {
        st = loyd_e2e_http(eport, "POST", path, "Content-Type: application/json\r\n", text,
                           strlen(text), &body);
        if (st != 503 || tries == 120)
            break;
        free(body);
        body = NULL;
        usleep(500000);
    }
    free(text);
    ck_assert_msg(st == 200, "%s: HTTP %d: %s", method, st, body ? body : "");
    json_t *r = json_loads(body ? body : "", 0, NULL);
    free(body);
    return r;
}

static char *shop_add(const char *method, json_t *fields)
{
    json_t *r = shop(method, json_pack("{s:o}", "fields", fields));
    char *id = loyd_xasprintf("%lld", (long long)json_integer_value(json_object_get(r, "result")));
    json_decref(r);
    return id;
}

/* A field of a card as the portal returns it (new string; "" when empty or absent). */
static char *card(const char *kind, const char *id, const char *field)
{
    char method[48];
    snprintf(method, sizeof(method), "crm.%s.get", kind);
    json_t *r = shop(method, json_pack("{s:s}", "id", id));
    json_t *v = json_object_get(json_object_get(r, "result"), field);
    char *s = json_is_string(v)    ? loyd_xstrdup(json_string_value(v))
              : json_is_number(v) ? loyd_xasprintf("%g", json_number_value(v))
                                   : loyd_xstrdup("");
    json_decref(r);
    return s;
}

static long long metric(const char *name)
{
    char *m = NULL;
    ck_assert_int_eq(loyd_e2e_http(dport, "GET", "/metrics", NULL, NULL, 0, &m), 200);
    char *needle = loyd_xasprintf("\n%s ", name);
    const char *p = strstr(m, needle);
    long long v = p ? atoll(p + strlen(needle)) : -1;
    free(needle);
    free(m);
    return v;
}

/* One integer from the daemon's store, read with the sqlite3 shell (WAL: beside the daemon). */
static long long sql_int(const char *query)
{
    char cmd[1200], out[64] = "";
    snprintf(cmd, sizeof(cmd), "sqlite3 -cmd '.timeout 5000' '%s/loyd.db' \"%s\" 2>&1", dir,
             query);
    FILE *f = popen(cmd, "r");
    ck_assert_ptr_nonnull(f);
    char *got = fgets(out, sizeof(out), f);
    pclose(f);
    return got != NULL && out[0] != '\0' && out[0] != '\n' ? atoll(out) : 0;
}

static void sql_exec(const char *stmt)
{
    char cmd[1200];
    snprintf(cmd, sizeof(cmd), "sqlite3 -cmd '.timeout 5000' '%s/loyd.db' \"%s\"", dir, stmt);
    ck_assert_int_eq(system(cmd), 0);
}

static void wait_sql(const char *query, long long want, int timeout_ms)
{
    long long have = 0;
    for (int t = 0; t < timeout_ms; t += 200) {
        if ((have = sql_int(query)) == want)
            return;
        usleep(200000);
    }
    char *log = log_tail();
    ck_abort_msg("%s is %lld, wanted %lld; loyd's log ends:\n%s", query, have, want, log);
}

static void wait_card(const char *kind, const char *id, const char *field, const char *want,
                      int timeout_ms)
{
    char *have = NULL;
    for (int t = 0; t < timeout_ms; t += 400) {
        free(have);
        have = card(kind, id, field);
        if (strcmp(have, want) == 0) {
            free(have);
            return;
        }
        usleep(400000);
    }
    char *log = log_tail();
    ck_abort_msg("%s %s: %s is '%s', wanted '%s'; loyd's log ends:\n%s", kind, id, field, have,
                 want, log);
}

static long long emu_pending(void)
{
    json_t *r = shop("loyd.emu.calls", json_object());
    long long v =
        json_integer_value(json_object_get(json_object_get(r, "result"), "events_pending"));
    json_decref(r);
    return v;
}

/* Waits until the portal has posted everything and loyd has nothing left to do. */
static void settle(int timeout_ms)
{
    int calm = 0;
    for (int t = 0; t < timeout_ms; t += 100) {
        if (emu_pending() == 0 && metric("loyd_inbox_depth") == 0 &&
            metric("loyd_outbox_depth") == 0) {
            if (++calm == 5)
                return;
        } else {
            calm = 0;
        }
        usleep(100000);
    }
    char *log = log_tail();
    ck_abort_msg("loyd did not settle in %d ms; log:\n%s", timeout_ms, log);
}

/* Emulator, daemon (retail pack, redeem_field set) and the event subscriptions. */
static void start(void)
{
    dir = loyd_e2e_tmpdir();
    memset(&emu, 0, sizeof(emu));
    memset(&daemon_proc, 0, sizeof(daemon_proc));
    loyd_e2e_write(dir, "emu.json",
                   "{\"webhook_code\": \"" CODE "\", \"application_token\": \"" TOKEN "\","
                   " \"member_id\": \"" MEMBER "\", \"access_token\": \"" ACCESS "\","
                   " \"refresh_token\": \"testrefreshtoken0123456789abcdef\","
                   " \"token_ttl_s\": 86400, \"rate\": {\"drain\": 2, \"burst\": 50}}");
    const char *eargv[] = {"emulate", "bitrix24", "--listen", "127.0.0.1:0", "--options",
                           "emu.json", NULL};
    loyd_e2e_spawn(&emu, dir, eargv);
    eport = loyd_e2e_wait_port(&emu, 10000);
    ck_assert_int_gt(eport, 0);
    char *tenant = loyd_xasprintf("connector = \"bitrix24\"\npack = \"retail\"\n"
                                  "timezone = \"Europe/Moscow\"\n"
                                  "crm = { webhook_url = \"http://127.0.0.1:%d/rest/1/" CODE "/\","
                                  " application_token = \"" TOKEN "\", member_id = \"" MEMBER
                                  "\", redeem_field = \"" PAY_FIELD "\" }\n",
                                  eport);
    loyd_e2e_write(dir, "tenants.d/shop.conf", tenant);
    free(tenant);
    /* The shop's own deal field in which the manager types the points to pay with. */
    json_decref(shop("crm.deal.userfield.add",
                     json_pack("{s:{s:s, s:s, s:s}}", "fields", "FIELD_NAME", PAY_FIELD + 7,
                               "USER_TYPE_ID", "double", "EDIT_FORM_LABEL", "Pay with points")));
    char *conf = loyd_xasprintf("listen = \"127.0.0.1:0\"\nstore = \"loyd.db\"\n"
                                "tenants = \"tenants.d\"\npacks = \"%s/rules\"\n"
                                "log_level = \"info\"\n"
                                "worker = { poll_ms = 100, retry_max_ms = 2000 }\n",
                                getenv("LOYD_SRC"));
    loyd_e2e_write(dir, "loyd.conf", conf);
    free(conf);
    const char *argv[] = {"serve", "-c", "loyd.conf", NULL};
    loyd_e2e_spawn(&daemon_proc, dir, argv);
    dport = loyd_e2e_wait_port(&daemon_proc, 10000);
    ck_assert_int_gt(dport, 0);
    static const char *const events[] = {"ONCRMCONTACTADD", "ONCRMCONTACTUPDATE",
                                         "ONCRMDEALADD", "ONCRMDEALUPDATE", "ONCRMDEALDELETE"};
    char handler[96];
    snprintf(handler, sizeof(handler), "http://127.0.0.1:%d/hooks/shop", dport);
    for (size_t i = 0; i < LOYD_ARRAY_SIZE(events); i++)
        json_decref(shop("event.bind",
                         json_pack("{s:s, s:s}", "event", events[i], "handler", handler)));
}

static char *new_customer(const char *name)
{
    return shop_add("crm.contact.add", json_pack("{s:s}", "NAME", name));
}

static char *won_deal(const char *contact, const char *amount, const char *pay_points)
{
    json_t *f = json_pack("{s:s, s:s, s:s, s:s, s:s}", "TITLE", "Order", "OPPORTUNITY", amount,
                          "CURRENCY_ID", "RUB", "STAGE_ID", "WON", "CONTACT_ID", contact);
    if (pay_points != NULL)
        json_object_set_new(f, PAY_FIELD, json_string(pay_points));
    return shop_add("crm.deal.add", f);
}

static long long member_balance(const char *contact)
{
    char q[200];
    snprintf(q, sizeof(q), "SELECT COALESCE(SUM(points), 0) FROM ledger WHERE member_id = '%s'",
             contact);
    return sql_int(q);
}

START_TEST(test_lost_deal_paid_with_points_gives_them_back)
{
    char q[300];
    start();
    char *anna = new_customer("Anna");
    snprintf(q, sizeof(q), "SELECT COUNT(*) FROM ledger WHERE member_id = '%s'", anna);
    wait_sql(q, 1, 20000); /* the welcome bonus */

    /* A first purchase earns cashback: the points she will pay with. */
    char *first = won_deal(anna, "10000.00", NULL);
    snprintf(q, sizeof(q), "SELECT COUNT(*) FROM ledger WHERE ref = '%s'", first);
    wait_sql(q, 1, 20000);
    settle(20000);
    long long before = member_balance(anna);
    char *card_before = card("contact", anna, "UF_CRM_LOYD_BALANCE");
    ck_assert_int_gt(before, 0);
    ck_assert_str_ne(card_before, "");

    /* The second is paid partly with points (the manager's field), then lost. */
    char *deal = won_deal(anna, "10000.00", "100");
    snprintf(q, sizeof(q),
             "SELECT COUNT(*) > 0 FROM ledger WHERE ref = '%s' AND kind = 'redeem'", deal);
    wait_sql(q, 1, 20000);
    settle(20000);
    snprintf(q, sizeof(q), "SELECT -SUM(points) FROM ledger WHERE ref = '%s' AND "
             "kind = 'redeem'", deal);
    long long redeemed = sql_int(q);
    ck_assert_int_gt(redeemed, 0);
    snprintf(q, sizeof(q), "SELECT SUM(points) FROM ledger WHERE ref = '%s' AND kind = 'award'",
             deal);
    long long cashback = sql_int(q);
    ck_assert_int_eq(member_balance(anna), before - redeemed + cashback);

    json_decref(shop("crm.deal.update", json_pack("{s:s, s:{s:s}}", "id", deal, "fields",
                                                  "STAGE_ID", "LOSE")));
    /* The reversal's rows: the spent points back, the deal's cashback taken back. */
    snprintf(q, sizeof(q), "SELECT SUM(points) = 0 FROM ledger WHERE ref = '%s'", deal);
    wait_sql(q, 1, 20000);
    settle(20000);
    snprintf(q, sizeof(q), "SELECT SUM(points) FROM ledger WHERE ref = '%s' AND points > 0 AND "
             "kind <> 'award'", deal);
    ck_assert_int_eq(sql_int(q), redeemed);
    ck_assert_int_eq(member_balance(anna), before);
    /* What is left to spend is what she had before the deal, lot by lot. */
    snprintf(q, sizeof(q),
             "SELECT COUNT(*) FROM ledger l WHERE member_id = '%s' AND lot_id IS NULL AND "
             "points + (SELECT COALESCE(SUM(points), 0) FROM ledger d WHERE d.lot_id = l.id) "
             "<> points AND (ref IS NULL OR ref <> '%s')",
             anna, deal);
    ck_assert_int_eq(sql_int(q), 0);
    wait_card("contact", anna, "UF_CRM_LOYD_BALANCE", card_before, 20000);
    char *awarded = card("deal", deal, "UF_CRM_LOYD_AWARDED");
    ck_assert_msg(atof(awarded) == 0, "the lost deal still shows '%s' points", awarded);
    free(awarded);
    ck_assert_int_eq(sql_int("SELECT COUNT(*) FROM dead_letters"), 0);
    ck_assert_int_eq(metric("loyd_events_refused_total"), 0);
    free(card_before);
    free(anna);
    free(first);
    free(deal);
}
END_TEST

START_TEST(test_refused_event_is_a_dead_letter)
{
    char q[400];
    start();
    char *ivan = new_customer("Ivan");
    snprintf(q, sizeof(q), "SELECT COUNT(*) FROM ledger WHERE member_id = '%s'", ivan);
    wait_sql(q, 1, 20000);
    settle(20000);
    ck_assert_int_eq(metric("loyd_events_refused_total"), 0);
    /* A ledger row loyd never writes (a hand edit): the member's ledger no longer replays. */
    snprintf(q, sizeof(q),
             "INSERT INTO ledger (tenant, member_id, event_key, kind, points, reason, "
             "created_ms) SELECT tenant, member_id, event_key, 'adjust', 5, "
             "printf('%%.300c', 'x'), created_ms FROM ledger WHERE member_id = '%s'",
             ivan);
    sql_exec(q);
    char *deal = won_deal(ivan, "1000.00", NULL);
    for (int t = 0; t < 20000 && metric("loyd_events_refused_total") < 1; t += 200)
        usleep(200000);
    char *log = log_tail();
    ck_assert_msg(metric("loyd_events_refused_total") >= 1, "no refusal counted; log:\n%s", log);
    free(log);
    settle(20000);
    snprintf(q, sizeof(q),
             "SELECT COUNT(*) FROM dead_letters WHERE kind = 'event' AND ref LIKE 'deal:%s:%%' "
             "AND error LIKE '%%at most 256 bytes%%'",
             deal);
    ck_assert_int_eq(sql_int(q), 1);
    ck_assert_int_ge(metric("loyd_dead_letters"), 1);
    /* One line at error level (journald priority 3) names the event and the reason. */
    log = loyd_e2e_log(&daemon_proc);
    char *needle = loyd_xasprintf("tenant=shop event deal:%s:", deal);
    bool found = false;
    for (char *line = strtok(log, "\n"); line != NULL && !found; line = strtok(NULL, "\n"))
        found = strncmp(line, "<3>", 3) == 0 && strstr(line, needle) != NULL &&
                strstr(line, "at most 256 bytes") != NULL;
    free(log);
    log = log_tail();
    ck_assert_msg(found, "no error line for the event; log ends:\n%s", log);
    ck_assert_ptr_null(strstr(log, "skipped: it names no member"));
    free(needle);
    free(log);
    free(ivan);
    free(deal);
}
END_TEST

Suite *e2e_refund_suite(void)
{
    Suite *s = suite_create("e2e_refund");
    TCase *tc = tcase_create("bitrix24");
    tcase_add_checked_fixture(tc, NULL, teardown);
    tcase_set_timeout(tc, 180);
    tcase_add_test(tc, test_lost_deal_paid_with_points_gives_them_back);
    tcase_add_test(tc, test_refused_event_is_a_dead_letter);
    suite_add_tcase(s, tc);
    return s;
}
