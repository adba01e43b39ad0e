/* SPDX-License-Identifier: MIT */
/*
 * Referrals and offers through the real daemon and the Bitrix24 emulator (`loyd emulate
 * bitrix24` and `loyd serve` with the retail pack, as in check_e2e_refund.c), with the tenant's
 * defaults: the friend's "Loyalty: referred by" contact field holds the referrer's phone in
 * another format; the friend's first purchase pays both, and losing it takes both back, on
 * both cards.  A birthday offer's code typed on a won deal ("Loyalty: offer code used") is
 * offer.redeemed, applied once, and the offer is used.
 */
#include <check.h>
#include <signal.h>
#include <stdbool.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <time.h>
#include <unistd.h>

#include <jansson.h>

#include "e2e.h"
#include "util.h"

#define CODE "w3bh00kc0de12345"
#define TOKEN "51856fefc120afa4b628cc82d3935cce"
#define MEMBER "a223c6b3710f85df22e9377d6c4f7553"
#define ACCESS "testaccesstoken0123456789abcdef0"

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
    char *s = json_is_string(v)   ? loyd_xstrdup(json_string_value(v))
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
    snprintf(cmd, sizeof(cmd), "sqlite3 -cmd '.timeout 5000' '%s/loyd.db' \"%s\" 2>&1", dir, query);
    FILE *f = popen(cmd, "r");
    ck_assert_ptr_nonnull(f);
    char *got = fgets(out, sizeof(out), f);
    pclose(f);
    return got != NULL && out[0] != '\0' && out[0] != '\n' ? atoll(out) : 0;
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

/* Emulator, daemon (retail pack, the referral and offer fields as by default), subscriptions. */
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
    const char *eargv[] = {"emulate",   "bitrix24", "--listen", "127.0.0.1:0",
                           "--options", "emu.json", NULL};
    loyd_e2e_spawn(&emu, dir, eargv);
    eport = loyd_e2e_wait_port(&emu, 10000);
    ck_assert_int_gt(eport, 0);
    char *tenant =
        loyd_xasprintf("connector = \"bitrix24\"\npack = \"retail\"\n"
                       "timezone = \"Europe/Moscow\"\n"
                       "crm = { webhook_url = \"http://127.0.0.1:%d/rest/1/" CODE "/\","
                       " application_token = \"" TOKEN "\", member_id = \"" MEMBER "\" }\n",
                       eport);
    loyd_e2e_write(dir, "tenants.d/shop.conf", tenant);
    free(tenant);
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
    static const char *const events[] = {"ONCRMCONTACTADD", "ONCRMCONTACTUPDATE", "ONCRMDEALADD",
                                         "ONCRMDEALUPDATE", "ONCRMDEALDELETE"};
    char handler[96];
    snprintf(handler, sizeof(handler), "http://127.0.0.1:%d/hooks/shop", dport);
    for (size_t i = 0; i < LOYD_ARRAY_SIZE(events); i++)
        json_decref(
            shop("event.bind", json_pack("{s:s, s:s}", "event", events[i], "handler", handler)));
}

static char *won_deal(const char *contact, const char *amount, const char *offer_code)
{
    json_t *f = json_pack("{s:s, s:s, s:s, s:s, s:s}", "TITLE", "Order", "OPPORTUNITY", amount,
                          "CURRENCY_ID", "RUB", "STAGE_ID", "WON", "CONTACT_ID", contact);
    if (offer_code != NULL)
        json_object_set_new(f, "UF_CRM_LOYD_OFFER_CODE", json_string(offer_code));
    return shop_add("crm.deal.add", f);
}

static long long member_balance(const char *contact)
{
    char q[200];
    snprintf(q, sizeof(q), "SELECT COALESCE(SUM(points), 0) FROM ledger WHERE member_id = '%s'",
             contact);
    return sql_int(q);
}

/* loyd has made its fields on the portal (the first write-back provisions them all). */
static void wait_fields(void)
{
    for (int t = 0; t < 20000; t += 200) {
        json_t *r = shop("crm.deal.userfield.list", json_object());
        json_t *x;
        size_t i;
        bool found = false;
        json_array_foreach(json_object_get(r, "result"), i, x)
        {
            const char *n = json_string_value(json_object_get(x, "FIELD_NAME"));
            found = found || (n != NULL && strcmp(n, "UF_CRM_LOYD_OFFER_CODE") == 0);
        }
        json_decref(r);
        if (found)
            return;
        usleep(200000);
    }
    char *log = log_tail();
    ck_abort_msg("loyd's deal field UF_CRM_LOYD_OFFER_CODE was not made; log ends:\n%s", log);
}

START_TEST(test_referral_both_cards_and_reversal)
{
    char q[300];
    start();
    char *olga =
        shop_add("crm.contact.add", json_pack("{s:s, s:[{s:s, s:s}]}", "NAME", "Olga", "PHONE",
                                              "VALUE", "+7 916 123 45 67", "VALUE_TYPE", "WORK"));
    wait_card("contact", olga, "UF_CRM_LOYD_BALANCE", "5", 20000); /* the welcome bonus */
    wait_fields();
    /* The manager types who referred Anna, as the customer said it. */
    char *anna =
        shop_add("crm.contact.add", json_pack("{s:s, s:s}", "NAME", "Anna",
                                              "UF_CRM_LOYD_REFERRED_BY", "8 (916) 123-45-67"));
    snprintf(q, sizeof(q),
             "SELECT COUNT(*) FROM members WHERE member_id = '%s' AND "
             "json_extract(json, '$.referrer') = '%s'",
             anna, olga);
    wait_sql(q, 1, 20000);

    /* Anna's first purchase: her cashback and bonus, and Olga's bonus on Olga's card. */
    char *deal = won_deal(anna, "1000.00", NULL);
    snprintf(q, sizeof(q), "SELECT COUNT(*) FROM ledger WHERE ref = 'referral:%s'", deal);
    wait_sql(q, 2, 20000);
    settle(20000);
    ck_assert_int_eq(member_balance(anna), 500 + 3000 + 300);
    ck_assert_int_eq(member_balance(olga), 500 + 500);
    wait_card("contact", olga, "UF_CRM_LOYD_BALANCE", "10", 20000);
    wait_card("contact", anna, "UF_CRM_LOYD_BALANCE", "38", 20000);

    /* The purchase is lost: both are taken back, on both cards. */
    json_decref(shop("crm.deal.update",
                     json_pack("{s:s, s:{s:s}}", "id", deal, "fields", "STAGE_ID", "LOSE")));
    snprintf(q, sizeof(q),
             "SELECT COUNT(*) FROM ledger WHERE ref = 'referral:%s' AND "
             "kind = 'reverse'",
             deal);
    wait_sql(q, 2, 20000);
    settle(20000);
    ck_assert_int_eq(member_balance(anna), 500);
    ck_assert_int_eq(member_balance(olga), 500);
    wait_card("contact", olga, "UF_CRM_LOYD_BALANCE", "5", 20000);
    wait_card("contact", anna, "UF_CRM_LOYD_BALANCE", "5", 20000);
    ck_assert_int_eq(sql_int("SELECT COUNT(*) FROM dead_letters"), 0);
    /* Olga's phone is personal data: no log line repeats it. */
    char *log = loyd_e2e_log(&daemon_proc);
    ck_assert_ptr_null(strstr(log, "916"));
    free(log);
    free(olga);
    free(anna);
    free(deal);
}
END_TEST

START_TEST(test_offer_code_on_won_deal_redeems_once)
{
    char q[400], birthday[32];
    start();
    /* Born today (the tenant's calendar, Moscow: UTC+3): the birthday offer comes at once. */
    time_t now = time(NULL) + 3 * 3600;
    struct tm tm;
    gmtime_r(&now, &tm);
    snprintf(birthday, sizeof(birthday), "1992-%02d-%02d", tm.tm_mon + 1, tm.tm_mday);
    char *ivan =
        shop_add("crm.contact.add", json_pack("{s:s, s:s}", "NAME", "Ivan", "BIRTHDATE", birthday));
    snprintf(q, sizeof(q),
             "SELECT COUNT(*) FROM members WHERE member_id = '%s' AND "
             "json_extract(json, '$.offers[0].status') = 'open'",
             ivan);
    wait_sql(q, 1, 20000);
    wait_fields();
    char code[64];
    snprintf(code, sizeof(code), "bday-%s-%04d", ivan, tm.tm_year + 1900); /* any case */

    char *deal = won_deal(ivan, "1000.00", code);
    wait_sql("SELECT COUNT(*) FROM events WHERE type = 'offer.redeemed'", 1, 20000);
    settle(20000);
    snprintf(q, sizeof(q),
             "SELECT COUNT(*) FROM members WHERE member_id = '%s' AND "
             "json_extract(json, '$.offers[0].status') = 'used' AND "
             "json_extract(json, '$.offers[0].deal_id') = '%s'",
             ivan, deal);
    ck_assert_int_eq(sql_int(q), 1);
    /* The deal changes again, another deal shows the same code: no second use. */
    json_decref(shop("crm.deal.update", json_pack("{s:s, s:{s:s}}", "id", deal, "fields", "TITLE",
                                                  "Order, gift wrapped")));
    char *again = won_deal(ivan, "500.00", code);
    snprintf(q, sizeof(q), "SELECT COUNT(*) FROM ledger WHERE ref = '%s'", again);
    wait_sql(q, 1, 20000);
    settle(20000);
    ck_assert_int_eq(sql_int("SELECT COUNT(*) FROM events WHERE type = 'offer.redeemed'"), 1);
    char *needle = loyd_xasprintf("deal %s: offer code '%s' is not an open offer", again, code);
    ck_assert_msg(loyd_e2e_wait_log(&daemon_proc, needle, 10000, NULL), "no warning: %s", needle);
    free(needle);
    ck_assert_int_eq(sql_int("SELECT COUNT(*) FROM dead_letters"), 0);
    free(ivan);
    free(deal);
    free(again);
}
END_TEST

Suite *e2e_referral_suite(void)
{
    Suite *s = suite_create("e2e_referral");
    TCase *tc = tcase_create("bitrix24");
    tcase_add_checked_fixture(tc, NULL, teardown);
    tcase_set_timeout(tc, 180);
    tcase_add_test(tc, test_referral_both_cards_and_reversal);
    tcase_add_test(tc, test_offer_code_on_won_deal_redeems_once);
    suite_add_tcase(s, tc);
    return s;
}
