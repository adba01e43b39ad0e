/* SPDX-License-Identifier: MIT */
/*
 * `loyd demo`: the whole path on one machine, with nothing else running.  It starts the
 * Bitrix24 emulator and the daemon (retail pack) on loopback ports in this process, then a
 * story thread plays a shop manager: it creates a contact and deals through the emulator's
 * REST API (so real webhooks flow), moves the clock (birthday, tier, expiry), and after each
 * step waits until loyd is quiet and prints what happened: the events, the rules' decisions,
 * the balance, what the CRM card shows, and how many REST calls carried how many updates.
 *
 * Threads: the loop (daemon + emulator) runs on the main thread; the story thread only makes
 * blocking HTTP calls to the two servers and asks the loop thread, through an async handle,
 * for what only it may touch (the clock, the store, "are you quiet?").
 */
#include "demo.h"

#include <curl/curl.h>
#include <errno.h>
#include <inttypes.h>
#include <signal.h>
#include <stdarg.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/stat.h>
#include <unistd.h>

#include "daemon.h"
#include "engine.h"
#include "http_client.h"
#include "log.h"
#include "ledger.h"
#include "plugin_loader.h"

#ifndef LOYD_PACKS_DIR
#define LOYD_PACKS_DIR "/usr/local/share/loyd/rules"
#endif

#define TENANT "shop"
#define WEBHOOK_CODE "demo4u8x2k9q7w3e"
#define APP_TOKEN "d3m0a9917c0ffee5e1f2b3c4d5e6f708"
#define MEMBER_ID "a223c6b3710f85df22e9377d6c4f7553"
#define DAY_MS (24LL * 3600 * 1000)
#define QUIET_TIMEOUT_MS 60000

enum op { OP_NONE, OP_MOVE_CLOCK, OP_QUIET, OP_MEMBER, OP_STOP };

struct demo {
    uv_loop_t loop;
    uv_async_t async;
    struct loyd_daemon *daemon;
    /* The emulator, on its own host and client (it is "another machine"). */
    struct loyd_host emu_host;
    struct loyd_http_client *emu_client;
    struct loyd_host_ctx *emu_hctx;
    struct loyd_plugin_handle *plugin;
    const struct loyd_emulator *emu;
    void *emu_state;
    int emu_port;
    char dir[256];
    char rest[128]; /* http://127.0.0.1:E/rest/1/<code>/ */
    char ctl[128];  /* http://127.0.0.1:E/rest/ (emulator control) */

    /* Story thread <-> loop thread. */
    uv_thread_t story;
    uv_mutex_t mu;
    uv_cond_t cv;
    enum op op;
    int64_t op_arg;
    const char *op_str;
    bool op_done, op_result;
    int story_rc;
    CURL *curl;
    uint64_t last_requests, last_updates;
    uint64_t own_requests, own_updates; /* the story's own calls, not loyd's */
    unsigned step_events;               /* events applied since the last report */
    struct loyd_points_unit unit;       /* the pack's: points as people count them */
    json_t *labels;                     /* UF_CRM_LOYD_* -> its English label on the portal */
};

/* @p v ledger units as people read them ("455 points"); four calls may share one say(). */
static const char *pts(struct demo *dm, long long v)
{
    static char bufs[4][64];
    static unsigned next;
    char *b = bufs[next++ % 4];
    loyd_points_format((int64_t)v, &dm->unit, LOYD_POINTS_GROUP | LOYD_POINTS_UNIT, b, 64);
    return b;
}

static void say(const char *fmt, ...) LOYD_PRINTF(1, 2);
static void say(const char *fmt, ...)
{
    va_list ap;
    flockfile(stdout);
    va_start(ap, fmt);
    vprintf(fmt, ap);
    va_end(ap);
    fflush(stdout);
    funlockfile(stdout);
}

/* ---- loop thread: what the story asks for -------------------------------------------------- */

static const char *jstr(const json_t *o, const char *k)
{
    return json_string_value(json_object_get(o, k));
}

static const char *or_(const char *s, const char *otherwise)
{
    return s != NULL ? s : otherwise;
}

static long long jint(const json_t *o, const char *k)
{
    return (long long)json_integer_value(json_object_get(o, k));
}

/* One accepted effect, in words. */
static void say_effect(struct demo *dm, const json_t *e)
{
    const char *kind = jstr(e, "kind");
    if (kind == NULL)
        return;
    if (strcmp(kind, "award") == 0)
        say("      + %s: %s%s%s%s\n", pts(dm, jint(e, "points")),
            jstr(e, "reason") ? jstr(e, "reason") : "award",
            jstr(e, "expires_on") ? " (valid through " : "",
            jstr(e, "expires_on") ? jstr(e, "expires_on") : "", jstr(e, "expires_on") ? ")" : "");
    else if (strcmp(kind, "redeem") == 0)
        say("      - %s redeemed: %s\n", pts(dm, jint(e, "points")), or_(jstr(e, "reason"), ""));
    else if (strcmp(kind, "reverse") == 0)
        say("      ↺ reversed %s of deal %s (%s)\n", pts(dm, jint(e, "reversed")),
            or_(jstr(e, "ref"), "?"), or_(jstr(e, "reason"), ""));
    else if (strcmp(kind, "set_tier") == 0)
        say("      ★ tier → %s (%s)\n", or_(jstr(e, "tier"), "?"), or_(jstr(e, "reason"), ""));
    else if (strcmp(kind, "offer") == 0)
        say("      ✉ offer %s: %lld%% off, valid until %s\n", or_(jstr(e, "code"), "?"),
            jint(e, "discount_pct"), or_(jstr(e, "valid_until"), "?"));
    else if (strcmp(kind, "note") == 0)
        say("      ✎ note on the card: \"%s\"\n", or_(jstr(e, "text"), ""));
    else if (strcmp(kind, "task") == 0)
        say("      ☐ task for the manager: \"%s\" (due %s)\n", or_(jstr(e, "title"), ""),
            or_(jstr(e, "due_on"), "?"));
    else if (strcmp(kind, "set_field") == 0 && json_is_false(json_object_get(e, "crm")))
        say("      remembered %s (kept in loyd, not on the card)\n", or_(jstr(e, "name"), "?"));
    else if (strcmp(kind, "set_field") == 0)
        say("      field %s set\n", or_(jstr(e, "name"), "?"));
    else
        say("      %s\n", kind);
}

static void on_event(void *arg, const char *tenant, const json_t *ev, int err)
{
    struct demo *dm = arg;
    struct loyd_store *s = dm->daemon->store;
    const char *type = jstr(ev, "type"), *key = jstr(ev, "key");
    json_t *row = NULL, *x;
    size_t i;

    if (err == LOYD_EDUP || type == NULL || strcmp(type, "contact.learned") == 0)
        return;
    dm->step_events++;
    say("    ▸ %s  [%s]\n", type, key);
    if (err != 0) {
        say("      rules failed: %s (a dead letter now)\n", loyd_strerror(err));
        return;
    }
    if (loyd_store_event_get(s, tenant, key, &row) != 0)
        return;
    json_t *trace = json_object_get(row, "trace");
    json_array_foreach(json_object_get(trace, "notes"), i, x)
        say("      %s\n", json_string_value(x));
    json_array_foreach(json_object_get(trace, "accepted"), i, x)
        say_effect(dm, x);
    json_array_foreach(json_object_get(trace, "rejected"), i, x)
        say("      ✗ %s refused: %s\n", or_(jstr(json_object_get(x, "effect"), "kind"), "effect"),
            or_(jstr(x, "reason"), ""));
    if (jint(trace, "balance") != jint(trace, "balance_before"))
        say("      balance %s → %s\n", pts(dm, jint(trace, "balance_before")),
            pts(dm, jint(trace, "balance")));
    else if (json_array_size(json_object_get(trace, "accepted")) == 0)
        say("      (the rules had nothing to do)\n");
    json_decref(row);
}

static void on_write(void *arg, const char *tenant, const json_t *items, const int *results,
                     size_t n)
{
    size_t ok = 0;
    (void)arg;
    (void)tenant;
    (void)items;
    for (size_t i = 0; i < n; i++)
        ok += results[i] == 0;
    say("    ⇄ write-back: %zu of %zu updates delivered in one batch%s\n", ok, n,
        ok < n ? " (the rest will be retried)" : "");
}

static void say_member(struct demo *dm, const char *id)
{
    struct loyd_store *s = dm->daemon->store;
    json_t *m = NULL, *lots = NULL, *lot;
    int64_t bal = 0;
    size_t i;

    if (loyd_store_balance(s, TENANT, id, &bal) != 0)
        return;
    if (loyd_store_member_get(s, TENANT, id, &m) != 0)
        m = NULL;
    const char *tier = jstr(json_object_get(m, "profile"), "tier");
    say("    loyd's ledger: balance %s, tier %s\n", pts(dm, bal), tier ? tier : "-");
    if (loyd_store_lots_open(s, TENANT, id, &lots) == 0) {
        json_array_foreach(lots, i, lot)
        {
            char on[11] = "never";
            if (jint(lot, "expires_ms") > 0)
                loyd_date_format(jint(lot, "expires_ms") - 1, 0, on);
            say("      lot #%lld: %s of %s left, %s%s\n", jint(lot, "id"),
                pts(dm, jint(lot, "remaining")), pts(dm, jint(lot, "points")),
                jint(lot, "expires_ms") > 0 ? "expires after " : "expires ", on);
        }
    }
    json_decref(lots);
    json_decref(m);
}

static void stop_all(struct demo *dm);

static void on_async(uv_async_t *a)
{
    struct demo *dm = a->data;

    uv_mutex_lock(&dm->mu);
    enum op op = dm->op;
    dm->op_result = false;
    switch (op) {
    case OP_MOVE_CLOCK:
        dm->daemon->host.clock_offset_ms += dm->op_arg;
        loyd_daemon_kick(dm->daemon);
        break;
    case OP_QUIET:
        dm->op_result = loyd_daemon_quiet(dm->daemon);
        break;
    case OP_MEMBER:
        if (dm->step_events == 0)
            say("    no loyalty event: nothing a rule cares about changed\n");
        dm->step_events = 0;
        say_member(dm, dm->op_str);
        break;
    case OP_STOP:
        stop_all(dm);
        break;
    case OP_NONE:
        break;
    }
    if (op != OP_NONE) {
        dm->op = OP_NONE;
        dm->op_done = true;
        uv_cond_signal(&dm->cv);
    }
    uv_mutex_unlock(&dm->mu);
}

/* ---- story thread ---------------------------------------------------------------------------- */

static bool ask(struct demo *dm, enum op op, int64_t arg, const char *str)
{
    uv_mutex_lock(&dm->mu);
    dm->op = op;
    dm->op_arg = arg;
    dm->op_str = str;
    dm->op_done = false;
    uv_async_send(&dm->async);
    while (!dm->op_done)
        uv_cond_wait(&dm->cv, &dm->mu);
    bool r = dm->op_result;
    uv_mutex_unlock(&dm->mu);
    return r;
}

static size_t on_body(char *p, size_t size, size_t n, void *arg)
{
    struct loyd_buf *b = arg;
    if (b->len + size * n > (8u << 20))
        return 0;
    loyd_buf_append(b, p, size * n);
    return size * n;
}

/* One REST call: @return the "result" (new) or NULL (the error is printed). */
static json_t *rest_once(struct demo *dm, const char *base, const char *method, json_t *params,
                         bool *limited);

/* The story shares the portal's request limit with loyd: like any polite client, it waits. */
static json_t *rest(struct demo *dm, const char *base, const char *method, json_t *params)
{
    bool control = strncmp(method, "loyd.emu.", 9) == 0;
    for (int tries = 0;; tries++) {
        bool limited = false;
        json_t *r = rest_once(dm, base, method, json_incref(params), &limited);
        if (!control && !limited) {
            dm->own_requests++;
            if (r != NULL && (strstr(method, ".add") || strstr(method, ".update") ||
                              strstr(method, ".delete")))
                dm->own_updates++;
        }
        if (!limited || tries == 20) {
            if (limited)
                say("  ! %s: the portal kept refusing (QUERY_LIMIT_EXCEEDED)\n", method);
            json_decref(params);
            return r;
        }
        uv_sleep(600);
    }
}

static json_t *rest_once(struct demo *dm, const char *base, const char *method, json_t *params,
                         bool *limited)
{
    char url[256];
    struct loyd_buf body = {0};
    struct curl_slist *h = curl_slist_append(NULL, "Content-Type: application/json");
    char *text = json_dumps(params ? params : json_object(), JSON_COMPACT);
    json_t *res = NULL;
    long status = 0;

    json_decref(params);
    snprintf(url, sizeof(url), "%s%s.json", base, method);
    curl_easy_reset(dm->curl);
    curl_easy_setopt(dm->curl, CURLOPT_URL, url);
    curl_easy_setopt(dm->curl, CURLOPT_HTTPHEADER, h);
    curl_easy_setopt(dm->curl, CURLOPT_POSTFIELDS, text);
    curl_easy_setopt(dm->curl, CURLOPT_WRITEFUNCTION, on_body);
    curl_easy_setopt(dm->curl, CURLOPT_WRITEDATA, &body);
    curl_easy_setopt(dm->curl, CURLOPT_TIMEOUT_MS, 30000L);
    curl_easy_setopt(dm->curl, CURLOPT_NOPROXY, "*");
    CURLcode cc = curl_easy_perform(dm->curl);
    curl_easy_getinfo(dm->curl, CURLINFO_RESPONSE_CODE, &status);
    json_t *doc = cc == CURLE_OK && body.data ? json_loadb(body.data, body.len, 0, NULL) : NULL;
    if (status == 200 && json_object_get(doc, "result") != NULL)
        res = json_incref(json_object_get(doc, "result"));
    else if (status == 503)
        *limited = true;
    else
        say("  ! %s failed: %s %s\n", method,
            cc != CURLE_OK ? curl_easy_strerror(cc) : or_(jstr(doc, "error"), ""),
            or_(jstr(doc, "error_description"), ""));
    json_decref(doc);
    loyd_buf_free(&body);
    free(text);
    curl_slist_free_all(h);
    return res;
}

/* Waits until the emulator has posted every event and loyd has processed all of it. */
static bool wait_quiet(struct demo *dm)
{
    int calm = 0;
    for (int waited = 0; waited < QUIET_TIMEOUT_MS; waited += 50) {
        json_t *c = rest(dm, dm->ctl, "loyd.emu.calls", NULL);
        bool emu_calm = c != NULL && jint(c, "events_pending") == 0;
        json_decref(c);
        if (emu_calm && ask(dm, OP_QUIET, 0, NULL)) {
            if (++calm == 3)
                return true;
        } else {
            calm = 0;
        }
        uv_sleep(50);
    }
    say("  ! loyd did not settle within %d s\n", QUIET_TIMEOUT_MS / 1000);
    return false;
}

/* loyd's fields on a card, by the labels the portal shows (read once per entity kind). */
static void say_fields(struct demo *dm, const char *kind, const json_t *card)
{
    const char *k;
    json_t *v;
    if (dm->labels == NULL)
        dm->labels = json_object();
    json_object_foreach((json_t *)card, k, v)
    {
        if (strncmp(k, "UF_CRM_LOYD_", 12) != 0 || json_is_null(v) ||
            (json_is_string(v) && json_string_value(v)[0] == '\0'))
            continue;
        if (json_object_get(dm->labels, k) == NULL) {
            char method[48];
            snprintf(method, sizeof(method), "crm.%s.userfield.list", kind);
            json_t *l = rest(dm, dm->rest, method,
                             json_pack("{s:{s:s, s:s}}", "filter", "FIELD_NAME", k, "LANG", "en"));
            const char *label = jstr(json_array_get(l, 0), "EDIT_FORM_LABEL");
            json_object_set_new(dm->labels, k, json_string(label != NULL ? label : k));
            json_decref(l);
        }
        char *t = json_is_string(v) ? loyd_xstrdup(json_string_value(v))
                                    : json_dumps(v, JSON_ENCODE_ANY);
        say("      %-32s %s\n", jstr(dm->labels, k), t);
        free(t);
    }
}

/* The deal's card: what loyd wrote onto it. */
static void say_deal(struct demo *dm, const char *id)
{
    json_t *d = rest(dm, dm->rest, "crm.deal.get", json_pack("{s:s}", "id", id));
    if (d == NULL)
        return;
    say("    CRM card of deal %s (%s):\n", id, or_(jstr(d, "TITLE"), ""));
    say_fields(dm, "deal", d);
    json_decref(d);
}

/* What the contact's card shows now: loyd's fields, comments, tasks. */
static void say_card(struct demo *dm, const char *id)
{
    json_t *c = rest(dm, dm->rest, "crm.contact.get", json_pack("{s:s}", "id", id));
    if (c == NULL)
        return;
    say("    CRM card of %s %s:\n", or_(jstr(c, "NAME"), ""), or_(jstr(c, "LAST_NAME"), ""));
    say_fields(dm, "contact", c);
    json_decref(c);
    json_t *l = rest(dm, dm->rest, "crm.timeline.comment.list",
                     json_pack("{s:{s:s, s:s}}", "filter", "ENTITY_ID", id, "ENTITY_TYPE",
                               "contact"));
    if (json_array_size(l) > 0) {
        json_t *last = json_array_get(l, json_array_size(l) - 1);
        const char *text = jstr(last, "COMMENT");
        int n = text ? (int)strcspn(text, "\n") : 0;
        say("    timeline: %zu comments, the latest: \"%.*s\"\n", json_array_size(l), n,
            text ? text : "");
    }
    json_decref(l);
}

/* REST traffic since the last report, as the emulator counted it. */
static void say_traffic(struct demo *dm)
{
    json_t *c = rest(dm, dm->ctl, "loyd.emu.calls", NULL);
    uint64_t req = (uint64_t)jint(c, "requests"), upd = (uint64_t)jint(c, "updates");
    uint64_t own_req = dm->own_requests, own_upd = dm->own_updates;
    say("    loyd's REST traffic: %" PRIu64 " calls carried %" PRIu64 " updates\n",
        req - dm->last_requests - own_req, upd - dm->last_updates - own_upd);
    dm->last_requests = req;
    dm->last_updates = upd;
    dm->own_requests = dm->own_updates = 0;
    json_decref(c);
}

static bool settle(struct demo *dm, const char *contact)
{
    if (!wait_quiet(dm))
        return false;
    ask(dm, OP_MEMBER, 0, contact);
    say_card(dm, contact);
    say_traffic(dm);
    say("\n");
    return true;
}

static char *id_of(json_t *result)
{
    char *s = json_is_integer(result)  ? loyd_xasprintf("%lld", (long long)json_integer_value(result))
              : json_is_string(result) ? loyd_xstrdup(json_string_value(result))
                                       : NULL;
    json_decref(result);
    return s;
}

static void move_clock(struct demo *dm, int64_t days)
{
    json_decref(rest(dm, dm->ctl, "loyd.emu.clock", json_pack("{s:I}", "advance_ms",
                                                               (json_int_t)(days * DAY_MS))));
    ask(dm, OP_MOVE_CLOCK, days * DAY_MS, NULL);
}

static int play(struct demo *dm)
{
    char today[11], birthday[11];
    int64_t now = (int64_t)loyd_wall_ms();
    char *anna = NULL, *deal1 = NULL, *deal2 = NULL;
    int rc = 1;

    /* loyd subscribes to the portal's events the way an app does. */
    static const char *const events[] = {"ONCRMCONTACTADD", "ONCRMCONTACTUPDATE",
                                         "ONCRMCONTACTDELETE", "ONCRMDEALADD",
                                         "ONCRMDEALUPDATE", "ONCRMDEALDELETE"};
    char handler[128];
    say("0. loyd subscribes to the portal's events and reads what the portal already has.\n");
    snprintf(handler, sizeof(handler), "http://127.0.0.1:%d/hooks/" TENANT, dm->daemon->port);
    for (size_t i = 0; i < LOYD_ARRAY_SIZE(events); i++) {
        json_t *r = rest(dm, dm->rest, "event.bind",
                         json_pack("{s:s, s:s}", "event", events[i], "handler", handler));
        if (r == NULL)
            return 1;
        json_decref(r);
    }
    if (!wait_quiet(dm)) /* the start-up sync of an empty portal */
        return 1;
    say_traffic(dm);
    say("\n");

    loyd_date_format(now, 180, today);
    loyd_date_format(now + DAY_MS, 180, birthday);
    memcpy(birthday, "1990", 4);

    say("1. A new customer: Anna Petrova, born %s (her birthday is tomorrow).\n", birthday);
    anna = id_of(rest(dm, dm->rest, "crm.contact.add",
                      json_pack("{s:{s:s, s:s, s:s, s:[{s:s, s:s}]}}", "fields", "NAME", "Anna",
                                "LAST_NAME", "Petrova", "BIRTHDATE", birthday, "PHONE", "VALUE",
                                "+79001234567", "VALUE_TYPE", "WORK")));
    if (anna == NULL || !settle(dm, anna))
        goto out;

    say("2. She buys for 12,500.00 RUB: the deal is created, then moved to a won stage.\n");
    deal1 = id_of(rest(dm, dm->rest, "crm.deal.add",
                       json_pack("{s:{s:s, s:s, s:s, s:s, s:s}}", "fields", "TITLE",
                                 "Order 1001", "OPPORTUNITY", "12500.00", "CURRENCY_ID", "RUB",
                                 "STAGE_ID", "NEW", "CONTACT_ID", anna)));
    if (deal1 == NULL || !wait_quiet(dm))
        goto out;
    json_decref(rest(dm, dm->rest, "crm.deal.update",
                     json_pack("{s:s, s:{s:s}}", "id", deal1, "fields", "STAGE_ID", "WON")));
    if (!settle(dm, anna))
        goto out;
    say_deal(dm, deal1);
    say("\n");

    say("3. The manager edits the won deal five more times: no new points.\n");
    for (int i = 0; i < 5; i++) {
        char title[64];
        snprintf(title, sizeof(title), "Order 1001 (edit %d)", i + 1);
        json_decref(rest(dm, dm->rest, "crm.deal.update",
                         json_pack("{s:s, s:{s:s}}", "id", deal1, "fields", "TITLE", title)));
    }
    if (!settle(dm, anna))
        goto out;

    say("4. A second purchase of 25,000.00 RUB takes her 365-day spend past silver.\n");
    deal2 = id_of(rest(dm, dm->rest, "crm.deal.add",
                       json_pack("{s:{s:s, s:s, s:s, s:s, s:s}}", "fields", "TITLE",
                                 "Order 1002", "OPPORTUNITY", "25000.00", "CURRENCY_ID", "RUB",
                                 "STAGE_ID", "WON", "CONTACT_ID", anna)));
    if (deal2 == NULL || !settle(dm, anna))
        goto out;

    say("5. The clock moves one day: it is Anna's birthday.\n");
    move_clock(dm, 1);
    if (!settle(dm, anna))
        goto out;

    say("6. Order 1002 is returned: the deal leaves its won stage and its points go back.\n");
    json_decref(rest(dm, dm->rest, "crm.deal.update",
                     json_pack("{s:s, s:{s:s}}", "id", deal2, "fields", "STAGE_ID", "LOSE")));
    if (!settle(dm, anna))
        goto out;
    say_deal(dm, deal2);
    say("\n");

    say("7. The clock moves 352 days: points expire in two weeks, the card gets a warning.\n");
    move_clock(dm, 352);
    if (!settle(dm, anna))
        goto out;

    say("8. Fifteen days later the points have expired.\n");
    move_clock(dm, 15);
    if (!settle(dm, anna))
        goto out;
    rc = 0;
out:
    free(anna);
    free(deal1);
    free(deal2);
    return rc;
}

static void story_main(void *arg)
{
    struct demo *dm = arg;
    dm->curl = curl_easy_init();
    say("loyd demo: a Bitrix24 portal (emulated, %s) and loyd with the retail pack.\n"
        "Everything runs on 127.0.0.1; data in %s.\n\n",
        dm->rest, dm->dir);
    dm->story_rc = dm->curl != NULL ? play(dm) : 1;
    curl_easy_cleanup(dm->curl);
    if (dm->story_rc == 0)
        say("Done.  To point loyd at your own portal, create an inbound webhook in Bitrix24\n"
            "(Developer resources > Other > Inbound webhook, CRM scope) and an outbound one for\n"
            "the ONCRM* events with the handler https://<your host>/hooks/<tenant>, then write\n"
            "tenants.d/<tenant>.conf:\n\n"
            "  return {\n"
            "    connector = \"bitrix24\",\n"
            "    pack = \"retail\",\n"
            "    timezone = \"Europe/Moscow\",\n"
            "    crm = {\n"
            "      webhook_url = \"https://<portal>.bitrix24.ru/rest/<user>/<code>/\",\n"
            "      application_token = \"<the outbound webhook's application token>\",\n"
            "    },\n"
            "  }\n\n"
            "and run `loyd serve -c loyd.conf` (see README.md).\n");
    ask(dm, OP_STOP, 0, NULL);
}

/* ---- set-up and shut-down (loop thread) ------------------------------------------------------ */

static void closed_noop(uv_handle_t *h)
{
    (void)h;
}

static void emu_host_closed(void *arg)
{
    struct demo *dm = arg;
    uv_close((uv_handle_t *)&dm->async, closed_noop);
}

static void emu_client_closed(void *arg)
{
    struct demo *dm = arg;
    loyd_host_close(&dm->emu_host, emu_host_closed, dm);
}

static void stop_all(struct demo *dm)
{
    if (dm->daemon != NULL)
        loyd_daemon_stop(dm->daemon);
    if (dm->emu_state != NULL)
        dm->emu->stop(dm->emu_state);
    dm->emu_state = NULL;
    if (dm->emu_client != NULL)
        loyd_http_client_close(dm->emu_client, emu_client_closed, dm);
    else
        uv_close((uv_handle_t *)&dm->async, closed_noop);
}

static const char *packs_dir(char *buf, size_t size)
{
    /* From a build tree (build/loyd), the source's rules/; else the installed packs. */
    char self[512];
    ssize_t n = readlink("/proc/self/exe", self, sizeof(self) - 1);
    struct stat sb;
    if (n > 0) {
        self[n] = '\0';
        char *dir = loyd_dirname(self);
        snprintf(buf, size, "%s/../rules", dir);
        free(dir);
        char probe[600];
        snprintf(probe, sizeof(probe), "%s/retail/pack.conf", buf);
        if (stat(probe, &sb) == 0)
            return buf;
    }
    return LOYD_PACKS_DIR;
}

static int write_file(const char *dir, const char *name, const char *text)
{
    char path[512];
    snprintf(path, sizeof(path), "%s/%s", dir, name);
    FILE *f = fopen(path, "w");
    if (f == NULL)
        return -errno;
    fputs(text, f);
    return fclose(f) == 0 ? 0 : -errno;
}

static int start_emulator(struct demo *dm, struct loyd_buf *err)
{
    int rc = loyd_http_client_create(&dm->loop, NULL, &dm->emu_client);
    if (rc != 0)
        return rc;
    loyd_host_init(&dm->emu_host, &dm->loop, dm->emu_client, NULL);
    dm->emu_hctx = loyd_host_ctx_create(&dm->emu_host, "bitrix24", NULL);
    if ((rc = loyd_plugin_load("bitrix24", NULL, NULL, &loyd_host_api, dm->emu_hctx, &dm->plugin,
                               err)) != 0)
        return rc;
    const struct loyd_connector_ops *ops = loyd_plugin_connector(dm->plugin->plugin);
    dm->emu = ops != NULL ? ops->emulator : NULL;
    if (dm->emu == NULL)
        return -ENOTSUP;
    json_t *opts = json_pack("{s:s, s:s, s:s, s:s, s:i}", "portal", "demo.bitrix24.test",
                             "webhook_code", WEBHOOK_CODE, "application_token", APP_TOKEN,
                             "member_id", MEMBER_ID, "tz_offset_min", 180);
    rc = dm->emu->start(&loyd_host_api, dm->emu_hctx, "127.0.0.1:0", opts, &dm->emu_state,
                        &dm->emu_port);
    json_decref(opts);
    if (rc != 0)
        dm->emu_state = NULL;
    return rc;
}

static int write_config(struct demo *dm)
{
    char packs[512], *conf, *tenant, sub[300];
    int rc;

    conf = loyd_xasprintf("return {\n  listen = \"127.0.0.1:0\",\n  store = \"loyd.db\",\n"
                          "  tenants = \"tenants.d\",\n  packs = \"%s\",\n"
                          "  log_level = \"warn\",\n}\n",
                          packs_dir(packs, sizeof(packs)));
    tenant = loyd_xasprintf("return {\n  connector = \"bitrix24\",\n  pack = \"retail\",\n"
                            "  timezone = \"Europe/Moscow\",\n  crm = {\n"
                            "    webhook_url = \"%s\",\n    application_token = \"%s\",\n"
                            "    member_id = \"%s\",\n  },\n}\n",
                            dm->rest, APP_TOKEN, MEMBER_ID);
    snprintf(sub, sizeof(sub), "%s/tenants.d", dm->dir);
    rc = mkdir(sub, 0700) == 0 ? 0 : -errno;
    if (rc == 0)
        rc = write_file(dm->dir, "loyd.conf", conf);
    if (rc == 0)
        rc = write_file(sub, TENANT ".conf", tenant);
    free(conf);
    free(tenant);
    return rc;
}

int loyd_cmd_demo(int argc, char **argv)
{
    struct demo *dm = loyd_xcalloc(1, sizeof(*dm));
    struct loyd_buf err = {0};
    char conf[300];
    int rc, code = 1;

    for (int i = 1; i < argc; i++) {
        if (strcmp(argv[i], "--help") == 0 || strcmp(argv[i], "-h") == 0) {
            printf("usage: loyd demo\n\nRuns the Bitrix24 emulator and loyd with the retail "
                   "pack on loopback ports,\nplays a customer's year and prints what loyd "
                   "did.  Needs nothing else.\n");
            free(dm);
            return 0;
        }
        fprintf(stderr, "loyd demo: unexpected argument '%s'\n", argv[i]);
        free(dm);
        return 2;
    }
    const char *tmp = getenv("TMPDIR");
    snprintf(dm->dir, sizeof(dm->dir), "%s/loyd-demo-XXXXXX", tmp && *tmp ? tmp : "/tmp");
    if (mkdtemp(dm->dir) == NULL) {
        fprintf(stderr, "loyd demo: cannot create a directory in %s: %s\n",
                tmp && *tmp ? tmp : "/tmp", strerror(errno));
        free(dm);
        return 1;
    }
    signal(SIGPIPE, SIG_IGN);
    curl_global_init(CURL_GLOBAL_DEFAULT);
    loyd_log_set_level(LOYD_LOG_WARN);
    uv_loop_init(&dm->loop);
    uv_mutex_init(&dm->mu);
    uv_cond_init(&dm->cv);
    uv_async_init(&dm->loop, &dm->async, on_async);
    dm->async.data = dm;

    if ((rc = start_emulator(dm, &err)) != 0) {
        fprintf(stderr, "loyd demo: the Bitrix24 emulator did not start: %s\n",
                err.data ? err.data : loyd_strerror(rc));
        stop_all(dm);
        goto run;
    }
    snprintf(dm->rest, sizeof(dm->rest), "http://127.0.0.1:%d/rest/1/" WEBHOOK_CODE "/",
             dm->emu_port);
    snprintf(dm->ctl, sizeof(dm->ctl), "http://127.0.0.1:%d/rest/", dm->emu_port);
    if ((rc = write_config(dm)) != 0) {
        fprintf(stderr, "loyd demo: cannot write the config in %s: %s\n", dm->dir,
                loyd_strerror(rc));
        stop_all(dm);
        goto run;
    }
    snprintf(conf, sizeof(conf), "%s/loyd.conf", dm->dir);
    rc = loyd_daemon_start(&dm->loop, conf, &dm->daemon);
    if (rc != 0) {
        fprintf(stderr, "loyd demo: loyd did not start: %s\n", loyd_strerror(rc));
        stop_all(dm);
        goto run;
    }
    dm->unit = *loyd_engine_points_unit(loyd_daemon_tenant(dm->daemon, TENANT)->engine);
    struct loyd_worker_observer obs = {.event = on_event, .write = on_write, .arg = dm};
    loyd_daemon_set_observer(dm->daemon, &obs);
    uv_thread_create(&dm->story, story_main, dm);
    uv_run(&dm->loop, UV_RUN_DEFAULT);
    uv_thread_join(&dm->story);
    code = dm->story_rc;
    goto done;
run:
    uv_run(&dm->loop, UV_RUN_DEFAULT);
done:
    if (dm->daemon != NULL && loyd_daemon_destroy(dm->daemon) != 0)
        code = 1;
    loyd_plugin_unload(dm->plugin);
    loyd_host_ctx_destroy(dm->emu_hctx);
    loyd_http_client_destroy(dm->emu_client);
    if (uv_loop_close(&dm->loop) != 0)
        code = 1;
    uv_mutex_destroy(&dm->mu);
    uv_cond_destroy(&dm->cv);
    curl_global_cleanup();
    loyd_buf_free(&err);
    json_decref(dm->labels);
    free(dm);
    return code;
}
