/* SPDX-License-Identifier: MIT */
/*
 * End to end through the Bitrix24 emulator: a real `loyd emulate bitrix24` and a real
 * `loyd serve` with the retail pack, on loopback ports.  The test plays the shop: it writes to
 * the portal through the portal's REST API (OAuth, as another app would), the portal posts
 * webhooks to loyd, loyd reads the portal back through its inbound webhook, applies the rules
 * and writes the balance onto the contact card.  Everything is checked on the portal.
 */
#include <check.h>
#include <signal.h>
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
static bool oauth_app; /* the tenant is an OAuth app that waits for its install */

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
    oauth_app = false;
    char cmd[600];
    snprintf(cmd, sizeof(cmd), "rm -rf '%s'", dir);
    ck_assert_int_eq(system(cmd), 0);
    free(dir);
}

/*
 * A REST call as the shop's own app (OAuth); @return the parsed answer (new).  The shop shares
 * the portal's request limit with loyd, so it waits on 503 like any polite client.
 */
static json_t *shop(const char *method, json_t *params /* taken */, int want)
{
    char path[128], *body = NULL;
    /* With loyd as the portal's OAuth app, the shop uses an inbound webhook, so that expiring
     * the app's tokens does not lock the shop out. */
    if (oauth_app)
        snprintf(path, sizeof(path), "/rest/1/" CODE "/%s.json", method);
    else
        snprintf(path, sizeof(path), "/rest/%s.json", method);
    if (!oauth_app)
        json_object_set_new(params, "auth", json_string(ACCESS));
    char *text = json_dumps(params, JSON_COMPACT);
    json_decref(params);
    int st;
    for (int tries = 0;; tries++) {
        st = loyd_e2e_http(eport, "POST", path, "Content-Type: application/json\r\n", text,
                           strlen(text), &body);
        if (st != 503 || want == 503 || tries == 120)
            break;
        free(body);
        body = NULL;
        usleep(500000);
    }
    free(text);
    ck_assert_msg(st == want, "%s: HTTP %d: %s", method, st, body ? body : "");
    json_t *r = json_loads(body ? body : "", 0, NULL);
    free(body);
    return r;
}

static char *shop_add(const char *method, json_t *fields)
{
    json_t *r = shop(method, json_pack("{s:o}", "fields", fields), 200);
    char *id = loyd_xasprintf("%lld", (long long)json_integer_value(json_object_get(r, "result")));
    json_decref(r);
    return id;
}

static void deal_update(const char *id, json_t *fields)
{
    json_decref(shop("crm.deal.update", json_pack("{s:s, s:o}", "id", id, "fields", fields), 200));
}

/* The value of one of loyd's fields on a contact or deal card, or -1. */
static long long card(const char *kind, const char *id, const char *field)
{
    char method[48];
    snprintf(method, sizeof(method), "crm.%s.get", kind);
    json_t *r = shop(method, json_pack("{s:s}", "id", id), 200);
    json_t *v = json_object_get(json_object_get(r, "result"), field);
    long long n = json_is_string(v) && json_string_value(v)[0] ? atoll(json_string_value(v))
                  : json_is_number(v)                          ? (long long)json_number_value(v)
                                                               : -1;
    json_decref(r);
    return n;
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

static long long emu_calls(const char *field)
{
    json_t *r = shop("loyd.emu.calls", json_object(), 200);
    long long v = json_integer_value(json_object_get(json_object_get(r, "result"), field));
    json_decref(r);
    return v;
}

/* Waits until the portal has posted everything and loyd has nothing left to do. */
static void settle(int timeout_ms)
{
    int calm = 0;
    for (int t = 0; t < timeout_ms; t += 100) {
        if (emu_calls("events_pending") == 0 && metric("loyd_inbox_depth") == 0 &&
            metric("loyd_outbox_depth") == 0) {
            if (++calm == 5)
                return;
        } else {
            calm = 0;
        }
        usleep(100000);
    }
    char *log = loyd_e2e_log(&daemon_proc);
    ck_abort_msg("loyd did not settle in %d ms; log:\n%s", timeout_ms, log);
}

static void wait_card(const char *kind, const char *id, const char *field, long long want,
                      int timeout_ms)
{
    long long have = -2;
    for (int t = 0; t < timeout_ms; t += 100) {
        if ((have = card(kind, id, field)) == want)
            return;
        usleep(400000);
        t += 300;
    }
    char *log = loyd_e2e_log(&daemon_proc);
    size_t n = strlen(log);
    ck_abort_msg("%s %s: %s is %lld, wanted %lld; loyd's log ends:\n%s", kind, id, field, have,
                 want, n > 3000 ? log + n - 3000 : log);
}

static void start_daemon(const char *listen, const char *worker)
{
    char *conf = loyd_xasprintf("listen = \"%s\"\nstore = \"loyd.db\"\ntenants = \"tenants.d\"\n"
                                "packs = \"%s/rules\"\nlog_level = \"info\"\n"
                                "worker = { poll_ms = 100, retry_max_ms = 2000%s }\n",
                                listen, getenv("LOYD_SRC"), worker);
    loyd_e2e_write(dir, "loyd.conf", conf);
    free(conf);
    const char *argv[] = {"serve", "-c", "loyd.conf", NULL};
    loyd_e2e_spawn(&daemon_proc, dir, argv);
    dport = loyd_e2e_wait_port(&daemon_proc, 10000);
    ck_assert_int_gt(dport, 0);
}

static json_t *shop(const char *method, json_t *params /* taken */, int want);

/*
 * Emulator, daemon (retail pack, the emulator's webhook URL), and the event subscriptions.
 * @p fault (taken, may be NULL) is switched on before loyd starts.
 */
static void start(const char *worker, const char *rate, json_t *fault)
{
    dir = loyd_e2e_tmpdir();
    memset(&emu, 0, sizeof(emu));
    memset(&daemon_proc, 0, sizeof(daemon_proc));
    char *opts = loyd_xasprintf(
                   "{\"webhook_code\": \"" CODE "\", \"application_token\": \"" TOKEN "\","
                   " \"member_id\": \"" MEMBER "\", \"access_token\": \"" ACCESS "\","
                   " \"refresh_token\": \"testrefreshtoken0123456789abcdef\","
                   " \"token_ttl_s\": 86400, \"rate\": %s}", rate);
    loyd_e2e_write(dir, "emu.json", opts);
    free(opts);
    const char *eargv[] = {"emulate", "bitrix24", "--listen", "127.0.0.1:0", "--options",
                           "emu.json", NULL};
    loyd_e2e_spawn(&emu, dir, eargv);
    eport = loyd_e2e_wait_port(&emu, 10000);
    ck_assert_int_gt(eport, 0);
    char *tenant =
        oauth_app
            ? loyd_xasprintf("connector = \"bitrix24\"\npack = \"retail\"\n"
                             "timezone = \"Europe/Moscow\"\n"
                             "crm = { client_id = \"app.1\", client_secret = \"sec\","
                             " oauth_url = \"http://127.0.0.1:%d/oauth/token/\","
                             " rest_url = \"http://127.0.0.1:%d/rest/\", member_id = \"" MEMBER
                             "\" }\n",
                             eport, eport)
            : loyd_xasprintf("connector = \"bitrix24\"\npack = \"retail\"\n"
                             "timezone = \"Europe/Moscow\"\n"
                             "crm = { webhook_url = \"http://127.0.0.1:%d/rest/1/" CODE "/\","
                             " application_token = \"" TOKEN "\", member_id = \"" MEMBER
                             "\" }\n",
                             eport);
    loyd_e2e_write(dir, "tenants.d/shop.conf", tenant);
    free(tenant);
    if (fault != NULL)
        json_decref(shop("loyd.emu.fault", fault, 200));
    start_daemon("127.0.0.1:0", worker);
    static const char *const events[] = {"ONAPPINSTALL",       "ONCRMCONTACTADD",
                                         "ONCRMCONTACTUPDATE", "ONCRMCONTACTDELETE",
                                         "ONCRMDEALADD",       "ONCRMDEALUPDATE",
                                         "ONCRMDEALDELETE"};
    char handler[96];
    snprintf(handler, sizeof(handler), "http://127.0.0.1:%d/hooks/shop", dport);
    for (size_t i = 0; i < LOYD_ARRAY_SIZE(events); i++)
        json_decref(shop("event.bind", json_pack("{s:s, s:s}", "event", events[i], "handler",
                                                 handler),
                         200));
}

static char *new_customer(const char *name)
{
    return shop_add("crm.contact.add", json_pack("{s:s, s:s}", "NAME", name, "BIRTHDATE",
                                                 "1990-05-17"));
}

static char *won_deal(const char *contact, const char *amount)
{
    return shop_add("crm.deal.add", json_pack("{s:s, s:s, s:s, s:s, s:s}", "TITLE", "Order",
                                              "OPPORTUNITY", amount, "CURRENCY_ID", "RUB",
                                              "STAGE_ID", "WON", "CONTACT_ID", contact));
}

/* A webhook exactly as the portal sends it, posted by the test itself. */
static int post_event(const char *event, const char *id, long ts)
{
    char body[512];
    snprintf(body, sizeof(body),
             "event=%s&event_handler_id=201&data%%5BFIELDS%%5D%%5BID%%5D=%s&ts=%ld"
             "&auth%%5Bdomain%%5D=emu.bitrix24.test&auth%%5Bclient_endpoint%%5D=x"
             "&auth%%5Bserver_endpoint%%5D=x&auth%%5Bmember_id%%5D=" MEMBER
             "&auth%%5Bapplication_token%%5D=" TOKEN,
             event, id, ts);
    return loyd_e2e_http(dport, "POST", "/hooks/shop",
                         "Content-Type: application/x-www-form-urlencoded\r\n", body,
                         strlen(body), NULL);
}

START_TEST(test_won_deal_awards_once_and_reopen_reverses)
{
    start("", "{\"drain\": 2, \"burst\": 50}", NULL);
    char *anna = new_customer("Anna");
    wait_card("contact", anna, "UF_CRM_LOYD_BALANCE", 5, 20000); /* welcome bonus: 500 units */

    /* 10,000.00 RUB won at bronze: 3% cashback = 30000 ledger units, 300 points on the card. */
    char *deal = won_deal(anna, "10000.00");
    wait_card("contact", anna, "UF_CRM_LOYD_BALANCE", 305, 20000);
    wait_card("deal", deal, "UF_CRM_LOYD_AWARDED", 300, 20000);
    settle(20000);
    long long applied = metric("loyd_events_applied_total");

    /* Five more updates of the won deal award nothing more. */
    for (int i = 0; i < 5; i++) {
        char title[32];
        snprintf(title, sizeof(title), "Order, edit %d", i);
        deal_update(deal, json_pack("{s:s}", "TITLE", title));
        usleep(300000);
    }
    settle(20000);
    ck_assert_int_eq(card("contact", anna, "UF_CRM_LOYD_BALANCE"), 305);
    ck_assert_int_eq(metric("loyd_events_applied_total"), applied);

    /* Duplicated and reordered webhooks: an old ADD after the UPDATEs, the same UPDATE twice. */
    long now = (long)(loyd_wall_ms() / 1000);
    ck_assert_int_eq(post_event("ONCRMDEALUPDATE", deal, now), 200);
    ck_assert_int_eq(post_event("ONCRMDEALUPDATE", deal, now), 200);
    ck_assert_int_eq(post_event("ONCRMDEALADD", deal, now - 60), 200);
    ck_assert_int_eq(post_event("ONCRMCONTACTADD", anna, now - 60), 200);
    settle(20000);
    ck_assert_int_eq(card("contact", anna, "UF_CRM_LOYD_BALANCE"), 305);
    ck_assert_int_eq(metric("loyd_events_applied_total"), applied);
    ck_assert_int_ge(metric("loyd_webhooks_duplicate_total"), 1);

    /* Reopened: the cashback is reversed and the card and the deal say so. */
    deal_update(deal, json_pack("{s:s}", "STAGE_ID", "LOSE"));
    wait_card("contact", anna, "UF_CRM_LOYD_BALANCE", 5, 20000);
    wait_card("deal", deal, "UF_CRM_LOYD_AWARDED", 0, 20000);
    settle(20000);
    ck_assert_int_eq(metric("loyd_events_applied_total"), applied + 1);
    ck_assert_int_eq(metric("loyd_writebacks_total{outcome=\"dead\"}"), 0);
    ck_assert_int_eq(metric("loyd_inbox_dead_total"), 0);
    free(anna);
    free(deal);
}
END_TEST

/* 30 seconds of 503 QUERY_LIMIT_EXCEEDED on loyd's calls: afterwards every write-back lands. */
START_TEST(test_503_burst_then_every_write_lands)
{
    enum { N = 4 };
    char *contacts[N], *deals[N];
    /* The burst starts before loyd does: its start-up sync, too, waits it out, and then reads
     * customers created in its first second, which are news, not history. */
    start("", "{\"drain\": 2, \"burst\": 50}",
          json_pack("{s:s, s:i, s:s}", "mode", "503_burst", "seconds", 30, "only", "webhook"));
    for (int i = 0; i < N; i++) {
        char name[16], amount[16];
        snprintf(name, sizeof(name), "C%d", i);
        snprintf(amount, sizeof(amount), "%d000.00", i + 1);
        contacts[i] = new_customer(name);
        deals[i] = won_deal(contacts[i], amount);
    }
    sleep(2);
    /* During the burst nothing reached the cards. */
    for (int i = 0; i < N; i++)
        ck_assert_int_eq(card("contact", contacts[i], "UF_CRM_LOYD_BALANCE"), -1);
    for (int i = 0; i < N; i++) {
        /* 5 points welcome + 3% of (i+1) * 1000.00 RUB, the newest value (per-contact order). */
        wait_card("contact", contacts[i], "UF_CRM_LOYD_BALANCE", 5 + (i + 1) * 30, 90000);
        wait_card("deal", deals[i], "UF_CRM_LOYD_AWARDED", (i + 1) * 30, 30000);
    }
    settle(30000);
    ck_assert_int_eq(metric("loyd_writebacks_total{outcome=\"dead\"}"), 0);
    ck_assert_int_eq(metric("loyd_inbox_dead_total"), 0);
    for (int i = 0; i < N; i++) {
        free(contacts[i]);
        free(deals[i]);
    }
}
END_TEST

/* How many of loyd's timeline comments a contact's card shows. */
static int comments_on(const char *contact)
{
    json_t *r = shop("crm.timeline.comment.list",
                     json_pack("{s:{s:s, s:s}}", "filter", "ENTITY_ID", contact, "ENTITY_TYPE",
                               "contact"),
                     200);
    int n = 0;
    size_t i;
    json_t *c;
    json_array_foreach(json_object_get(r, "result"), i, c)
    {
        const char *text = json_string_value(json_object_get(c, "COMMENT"));
        n += text != NULL && strstr(text, "loyd") != NULL;
    }
    json_decref(r);
    return n;
}

/*
 * loyd killed with SIGKILL at random moments while customers buy and some purchases are
 * reopened; the portal drops the webhooks it cannot deliver meanwhile (Bitrix24 does not
 * retry), so the sweep has to find them.  In the end every card and the ledger show exactly
 * the expected totals, and every reversal note (an add, which a retry could duplicate) is on
 * its card exactly once.
 */
START_TEST(test_sigkill_under_load)
{
    enum { N = 12 };
    char *contacts[N], *deals[N];
    char listen[32];
    start(", sweep_interval_ms = 1500", "{\"drain\": 20, \"burst\": 200}", NULL);
    snprintf(listen, sizeof(listen), "127.0.0.1:%d", dport);
    srand((unsigned)getpid());
    for (int i = 0; i < N; i++) {
        contacts[i] = new_customer("K");
        deals[i] = won_deal(contacts[i], "2000.00");
        if (i % 2 == 1) {
            /* Reopened once the award is on the deal: the cashback is reversed and a note
             * says so.  (A deal reopened before loyd ever saw it won is simply not won.) */
            wait_card("deal", deals[i], "UF_CRM_LOYD_AWARDED", 60, 60000);
            deal_update(deals[i], json_pack("{s:s}", "STAGE_ID", "LOSE"));
            usleep((useconds_t)(rand() % 300000));
        }
        if (i % 3 == 2) {
            usleep((useconds_t)(rand() % 400000));
            kill(daemon_proc.pid, SIGKILL);
            ck_assert_int_eq(loyd_e2e_wait_exit(&daemon_proc, 5000), 128 + SIGKILL);
            start_daemon(listen, ", sweep_interval_ms = 1500");
        }
    }
    for (int i = 0; i < N; i++)
        wait_card("contact", contacts[i], "UF_CRM_LOYD_BALANCE", 5 + (i % 2 ? 0 : 60),
                  60000);
    settle(30000);
    ck_assert_int_eq(metric("loyd_writebacks_total{outcome=\"dead\"}"), 0);
    for (int i = 0; i < N; i++) {
        ck_assert_int_eq(card("deal", deals[i], "UF_CRM_LOYD_AWARDED"), i % 2 ? 0 : 60);
        ck_assert_msg(comments_on(contacts[i]) == i % 2, "contact %s has %d notes, wanted %d",
                      contacts[i], comments_on(contacts[i]), i % 2);
    }
    /* The ledger, read from the store: N welcome bonuses, N cashbacks, N/2 reversals. */
    char cmd[700], out[64] = "";
    snprintf(cmd, sizeof(cmd),
             "sqlite3 '%s/loyd.db' 'SELECT COUNT(*) || \" \" || SUM(points) FROM ledger' 2>&1",
             dir);
    FILE *f = popen(cmd, "r");
    ck_assert_ptr_nonnull(f);
    ck_assert_ptr_nonnull(fgets(out, sizeof(out), f));
    pclose(f);
    char want[64];
    snprintf(want, sizeof(want), "%d %d\n", 2 * N + N / 2, N * 6500 - N / 2 * 6000);
    ck_assert_str_eq(out, want);
    for (int i = 0; i < N; i++) {
        free(contacts[i]);
        free(deals[i]);
    }
}
END_TEST

/*
 * The OAuth app way: the tenant has only the app's credentials.  Webhooks wait until the portal
 * installs the app; its ONAPPINSTALL brings the application token and the first token pair;
 * when the access token expires, loyd refreshes it once and goes on.
 */
START_TEST(test_oauth_app_install_and_refresh)
{
    oauth_app = true;
    start("", "{\"drain\": 2, \"burst\": 50}", NULL);
    char *anna = new_customer("Anna");
    sleep(1);
    ck_assert_int_eq(card("contact", anna, "UF_CRM_LOYD_BALANCE"), -1); /* not installed yet */
    json_decref(shop("loyd.emu.install", json_object(), 200));
    wait_card("contact", anna, "UF_CRM_LOYD_BALANCE", 5, 30000);
    char *deal = won_deal(anna, "1000.00");
    wait_card("contact", anna, "UF_CRM_LOYD_BALANCE", 35, 30000);
    /* Every access token the portal issued dies now: loyd's next call gets 401. */
    json_decref(shop("loyd.emu.fault", json_pack("{s:s}", "mode", "expire_tokens"), 200));
    deal_update(deal, json_pack("{s:s}", "STAGE_ID", "LOSE"));
    wait_card("contact", anna, "UF_CRM_LOYD_BALANCE", 5, 30000);
    settle(20000);
    ck_assert_int_eq(metric("loyd_writebacks_total{outcome=\"dead\"}"), 0);
    ck_assert_int_eq(metric("loyd_inbox_dead_total"), 0);
    free(anna);
    free(deal);
}
END_TEST

/* How often the portal ran @p method (batch commands included), as the emulator counts. */
static long long method_calls(const char *method)
{
    json_t *r = shop("loyd.emu.calls", json_object(), 200);
    long long v = json_integer_value(
        json_object_get(json_object_get(json_object_get(r, "result"), "calls"), method));
    json_decref(r);
    return v;
}

/* The text of the newest of loyd's timeline comments on a contact that contains @p needle. */
static bool comment_says(const char *contact, const char *needle)
{
    json_t *r = shop("crm.timeline.comment.list",
                     json_pack("{s:{s:s, s:s}}", "filter", "ENTITY_ID", contact, "ENTITY_TYPE",
                               "contact"),
                     200);
    bool found = false;
    size_t i;
    json_t *c;
    json_array_foreach(json_object_get(r, "result"), i, c)
    {
        const char *text = json_string_value(json_object_get(c, "COMMENT"));
        found = found || (text != NULL && strstr(text, needle) != NULL);
    }
    json_decref(r);
    return found;
}

/*
 * loyd is down while deals are won: the portal drops the webhooks it cannot deliver (Bitrix24
 * never retries).  With the periodic sweep an hour away, the restart itself must read what
 * changed meanwhile, so the purchases are awarded within seconds.
 */
START_TEST(test_restart_catches_up_at_once)
{
    char listen[32];
    start(", sweep_interval_ms = 3600000", "{\"drain\": 20, \"burst\": 200}", NULL);
    snprintf(listen, sizeof(listen), "127.0.0.1:%d", dport);
    char *anna = new_customer("Anna");
    wait_card("contact", anna, "UF_CRM_LOYD_BALANCE", 5, 20000);
    settle(20000);
    kill(daemon_proc.pid, SIGKILL);
    ck_assert_int_eq(loyd_e2e_wait_exit(&daemon_proc, 5000), 128 + SIGKILL);
    long long failed = emu_calls("events_failed");
    char *deals[3];
    for (int i = 0; i < 3; i++)
        deals[i] = won_deal(anna, "1000.00"); /* 30 points each */
    for (int t = 0; t < 100 && emu_calls("events_failed") < failed + 3; t++)
        usleep(100000);
    ck_assert_int_ge(emu_calls("events_failed"), failed + 3); /* the portal gave up on them */

    start_daemon(listen, ", sweep_interval_ms = 3600000");
    wait_card("contact", anna, "UF_CRM_LOYD_BALANCE", 95, 20000);
    ck_assert_int_eq(metric("loyd_catchups_total"), 1);
    settle(20000);
    for (int i = 0; i < 3; i++) {
        ck_assert_int_eq(card("deal", deals[i], "UF_CRM_LOYD_AWARDED"), 30);
        free(deals[i]);
    }
    free(anna);
}
END_TEST

/*
 * Points as people count them, and the ledger as the truth: a 15,000 RUB purchase shows 450
 * points on the deal (not 45000 kopecks), and a balance a manager typed over by hand is put
 * back with a note on the timeline, once.
 */
START_TEST(test_hand_edited_balance_is_put_back)
{
    start("", "{\"drain\": 20, \"burst\": 200}", NULL);
    char *anna = new_customer("Anna");
    wait_card("contact", anna, "UF_CRM_LOYD_BALANCE", 5, 20000);
    char *deal = won_deal(anna, "15000.00");
    wait_card("deal", deal, "UF_CRM_LOYD_AWARDED", 450, 20000);
    wait_card("contact", anna, "UF_CRM_LOYD_BALANCE", 455, 20000);
    settle(20000);
    ck_assert_int_eq(metric("loyd_fields_repaired_total"), 0);

    json_decref(shop("crm.contact.update",
                     json_pack("{s:s, s:{s:s}}", "id", anna, "fields", "UF_CRM_LOYD_BALANCE",
                               "1"),
                     200));
    wait_card("contact", anna, "UF_CRM_LOYD_BALANCE", 455, 20000);
    settle(20000);
    ck_assert_int_eq(metric("loyd_fields_repaired_total"), 1);
    ck_assert_msg(comment_says(anna, "the balance was changed to 1; the ledger says 455 points"),
                  "no repair note on the card");
    /* The echo of loyd's own repair and further edits of other fields repair nothing. */
    json_decref(shop("crm.contact.update",
                     json_pack("{s:s, s:{s:s}}", "id", anna, "fields", "NAME", "Anna P."), 200));
    settle(20000);
    ck_assert_int_eq(metric("loyd_fields_repaired_total"), 1);
    ck_assert_int_eq(card("contact", anna, "UF_CRM_LOYD_BALANCE"), 455);
    /* A second edit later is put back again. */
    json_decref(shop("crm.contact.update",
                     json_pack("{s:s, s:{s:s}}", "id", anna, "fields", "UF_CRM_LOYD_BALANCE",
                               "7"),
                     200));
    wait_card("contact", anna, "UF_CRM_LOYD_BALANCE", 455, 20000);
    settle(20000);
    ck_assert_int_eq(metric("loyd_fields_repaired_total"), 2);
    free(anna);
    free(deal);
}
END_TEST

/*
 * SIGTERM while a write-back is on its way: the portal has applied it, its answer is slow.
 * loyd waits for the answer and records the delivery before it exits, so the next start does
 * not send it again.
 */
START_TEST(test_sigterm_records_delivered_writes)
{
    char listen[32];
    start("", "{\"drain\": 20, \"burst\": 200}", NULL);
    snprintf(listen, sizeof(listen), "127.0.0.1:%d", dport);
    char *anna = new_customer("Anna");
    wait_card("contact", anna, "UF_CRM_LOYD_BALANCE", 5, 20000);
    settle(20000);
    long long updates = method_calls("crm.contact.update");

    char *deal = won_deal(anna, "1000.00");
    json_decref(shop("loyd.emu.fault", json_pack("{s:s, s:i}", "mode", "slow", "ms", 2500), 200));
    for (int t = 0; t < 200 && method_calls("crm.contact.update") == updates; t++)
        usleep(50000);
    ck_assert_int_eq(method_calls("crm.contact.update"), updates + 1); /* applied, answer due */
    kill(daemon_proc.pid, SIGTERM);
    ck_assert_int_eq(loyd_e2e_wait_exit(&daemon_proc, 15000), 0);
    json_decref(shop("loyd.emu.fault", json_pack("{s:s}", "mode", "none"), 200));

    start_daemon(listen, "");
    settle(20000);
    ck_assert_int_eq(card("contact", anna, "UF_CRM_LOYD_BALANCE"), 35);
    ck_assert_int_eq(method_calls("crm.contact.update"), updates + 1);
    free(anna);
    free(deal);
}
END_TEST

/*
 * Deleting a won deal is an ordinary CRM action: its points are reversed, the note says the
 * deal was deleted (a lost one, that it was lost), and nothing becomes a dead letter or an
 * error, although the deal card is gone and cannot be marked.
 */
START_TEST(test_lost_and_deleted_deals_say_so)
{
    start("", "{\"drain\": 20, \"burst\": 200}", NULL);
    char *anna = new_customer("Anna");
    wait_card("contact", anna, "UF_CRM_LOYD_BALANCE", 5, 20000);
    char *lost = won_deal(anna, "1000.00"), *gone = won_deal(anna, "2000.00");
    wait_card("contact", anna, "UF_CRM_LOYD_BALANCE", 95, 20000);
    deal_update(lost, json_pack("{s:s}", "STAGE_ID", "LOSE"));
    wait_card("contact", anna, "UF_CRM_LOYD_BALANCE", 65, 20000);
    json_decref(shop("crm.deal.delete", json_pack("{s:s}", "id", gone), 200));
    wait_card("contact", anna, "UF_CRM_LOYD_BALANCE", 5, 20000);
    settle(20000);
    char want[64];
    snprintf(want, sizeof(want), "Deal %s was lost:", lost);
    ck_assert_msg(comment_says(anna, want), "no \"%s\" note", want);
    snprintf(want, sizeof(want), "Deal %s was deleted:", gone);
    ck_assert_msg(comment_says(anna, want), "no \"%s\" note", want);
    ck_assert_msg(!comment_says(anna, "reopened"), "a lost or deleted deal called reopened");
    ck_assert_int_eq(metric("loyd_writebacks_total{outcome=\"dead\"}"), 0);
    ck_assert_int_eq(metric("loyd_dead_letters"), 0);
    ck_assert_int_eq(metric("loyd_inbox_dead_total"), 0);
    char *log = loyd_e2e_log(&daemon_proc);
    ck_assert_msg(strstr(log, "<3>") == NULL && strstr(log, "<4>") == NULL,
                  "errors or warnings logged:\n%s", log);
    free(log);
    free(anna);
    free(lost);
    free(gone);
}
END_TEST

/*
 * A contact created on its birthday, after the day's job has run, still gets the birthday
 * offer that day (in the tenant's zone, Europe/Moscow: UTC+3), once.
 */
START_TEST(test_birthday_on_the_day_of_creation)
{
    start("", "{\"drain\": 20, \"burst\": 200}", NULL);
    ck_assert(loyd_e2e_wait_log(&daemon_proc, "daily jobs of", 10000, NULL));
    time_t now = time(NULL) + 3 * 3600;
    struct tm tm;
    gmtime_r(&now, &tm);
    char born[40];
    snprintf(born, sizeof(born), "%04d-%02d-%02d", tm.tm_year + 1900 - 30, tm.tm_mon + 1,
             tm.tm_mday);
    char *anna = shop_add("crm.contact.add", json_pack("{s:s, s:s}", "NAME", "Anna", "BIRTHDATE",
                                                       born));
    wait_card("contact", anna, "UF_CRM_LOYD_BALANCE", 5, 20000);
    settle(20000);
    ck_assert_msg(comment_says(anna, "Personal offer BDAY-"), "no birthday offer on the card");
    json_t *r = shop("crm.activity.list", json_pack("{s:{s:s}}", "filter", "OWNER_ID", anna),
                     200);
    char *text = json_dumps(r, 0);
    ck_assert_msg(strstr(text, "Congratulate on the birthday") != NULL, "no task: %s", text);
    free(text);
    json_decref(r);
    /* A second look at the contact gives nothing twice. */
    json_decref(shop("crm.contact.update",
                     json_pack("{s:s, s:{s:s}}", "id", anna, "fields", "NAME", "Anna P."), 200));
    settle(20000);
    ck_assert_int_eq(comments_on(anna), 1);
    free(anna);
}
END_TEST

Suite *e2e_b24_suite(void)
{
    Suite *s = suite_create("e2e_b24");
    TCase *tc = tcase_create("bitrix24");
    tcase_add_checked_fixture(tc, NULL, teardown);
    tcase_set_timeout(tc, 240);
    tcase_add_test(tc, test_won_deal_awards_once_and_reopen_reverses);
    tcase_add_test(tc, test_503_burst_then_every_write_lands);
    tcase_add_test(tc, test_sigkill_under_load);
    tcase_add_test(tc, test_oauth_app_install_and_refresh);
    tcase_add_test(tc, test_restart_catches_up_at_once);
    tcase_add_test(tc, test_hand_edited_balance_is_put_back);
    tcase_add_test(tc, test_sigterm_records_delivered_writes);
    tcase_add_test(tc, test_lost_and_deleted_deals_say_so);
    tcase_add_test(tc, test_birthday_on_the_day_of_creation);
    suite_add_tcase(s, tc);
    return s;
}
