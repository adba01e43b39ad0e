/* SPDX-License-Identifier: MIT */
/*
 * The Bitrix24 connector's REST side (enrich, write, sync, tokens, limits) driven through a
 * real host (core/host.c) on a libuv loop, with the real HTTP client and a temporary SQLite
 * store, against the Bitrix24 emulator listening on 127.0.0.1 (port chosen by the OS).
 * Emulator state and counters are read over HTTP with loyd.emu.*; nothing sleeps to assert.
 */
#include <check.h>
#include <stdarg.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <uv.h>

#include "../../connectors/bitrix24/b24.h"
#include "../../connectors/bitrix24/emu.h"
#include "../../connectors/bitrix24/oauth.h"
#include "../../connectors/bitrix24/rest.h"
#include "host.h"
#include "http_client.h"
#include "store.h"
#include "util.h"

extern const struct loyd_plugin loyd_plugin_bitrix24;

#define MEMBER "a223c6b3710f85df22e9377d6c4f7553"

static uv_loop_t loop;
static struct loyd_http_client *client;
static struct loyd_store *store;
static struct loyd_host host;
static struct loyd_host_ctx *emu_ctx, *plug_ctx, *t_ctx;
static void *emu_state, *pstate, *tenant;
static int port;
static char dir[128], dbpath[192];
static struct loyd_host_api api; /* the host API, with kv_put/http_start recorded */
static json_t *trace;

static int rec_kv_put_real(void *hctx, const char *key, const char *value, loyd_done_cb cb,
                           void *arg);
struct put_wrap {
    loyd_done_cb cb;
    void *arg;
    char key[128];
};

static void put_done(void *arg, int err)
{
    struct put_wrap *w = arg;
    char line[160];
    snprintf(line, sizeof(line), "done:%s", w->key);
    json_array_append_new(trace, json_string(line));
    if (w->cb != NULL)
        w->cb(w->arg, err);
    free(w);
}

static int rec_kv_put_real(void *hctx, const char *key, const char *value, loyd_done_cb cb,
                           void *arg)
{
    struct put_wrap *w = loyd_xcalloc(1, sizeof(*w));
    w->cb = cb;
    w->arg = arg;
    snprintf(w->key, sizeof(w->key), "%s", key);
    int rc = loyd_host_api.kv_put(hctx, key, value, put_done, w);
    if (rc != 0)
        free(w);
    return rc;
}

static struct loyd_buf logged; /* what the connector logged, "<level>text\n" a line */

static void rec_log(void *hctx, int level, const char *fmt, ...)
{
    char line[1024];
    va_list ap;
    va_start(ap, fmt);
    vsnprintf(line, sizeof(line), fmt, ap);
    va_end(ap);
    loyd_buf_printf(&logged, "<%d>%s\n", level, line);
    loyd_host_api.log(hctx, level, "%s", line);
}

static int rec_http_start(void *hctx, const struct loyd_http_opts *o, loyd_http_done_cb cb,
                          void *arg)
{
    if (strstr(o->url, "/oauth/token") != NULL)
        json_array_append_new(trace, json_string("refresh"));
    else if (strstr(o->url, "batch") != NULL)
        json_array_append_new(trace, json_string("batch"));
    return loyd_host_api.http_start(hctx, o, cb, arg);
}

/* ---- loop helpers ------------------------------------------------------------------- */

static void run_until(const bool *flag)
{
    while (!*flag)
        uv_run(&loop, UV_RUN_ONCE);
}

struct hres {
    bool done;
    int err;
    long status;
    json_t *body;
};

static void on_http(void *arg, int err, const struct loyd_http_response *res)
{
    struct hres *h = arg;
    h->err = err;
    h->status = res->status;
    h->body = err == 0 ? json_loadb(res->body, res->body_len, 0, NULL) : NULL;
    h->done = true;
}

/* Calls the emulator (path after /rest/) with a JSON body; @return the answer (owned). */
static json_t *emu_call(const char *path, const char *json_body)
{
    static const char *const hdrs[] = {"Content-Type: application/json", NULL};
    char url[256];
    struct hres h = {0};
    snprintf(url, sizeof(url), "http://127.0.0.1:%d/rest/%s", port, path);
    struct loyd_http_opts o = {.method = "POST", .url = url, .headers = hdrs,
                               .body = json_body, .body_len = strlen(json_body)};
    ck_assert_int_eq(loyd_http_client_start(client, &o, on_http, &h), 0);
    run_until(&h.done);
    ck_assert_int_eq(h.err, 0);
    ck_assert_ptr_nonnull(h.body);
    return h.body;
}

/* A CRM call through the webhook; @return result (owned). */
static json_t *crm(const char *method, const char *json_body)
{
    char path[128];
    snprintf(path, sizeof(path), "1/code1/%s", method);
    json_t *r = emu_call(path, json_body);
    json_t *res = json_incref(json_object_get(r, "result"));
    ck_assert_msg(res != NULL, "%s failed: %s", method,
                  json_string_value(json_object_get(r, "error_description")));
    json_decref(r);
    return res;
}

static long long crm_id(const char *method, const char *json_body)
{
    json_t *r = crm(method, json_body);
    long long id = json_integer_value(r);
    json_decref(r);
    return id;
}

static json_t *emu_state_get(void)
{
    json_t *r = emu_call("loyd.emu.state", "{}");
    json_t *s = json_incref(json_object_get(r, "result"));
    json_decref(r);
    return s;
}

static long long emu_calls(const char *method)
{
    json_t *r = emu_call("loyd.emu.calls", "{}");
    long long n = json_integer_value(json_object_get(
        json_object_get(json_object_get(r, "result"), "calls"), method));
    json_decref(r);
    return n;
}

static long long emu_counter(const char *name)
{
    json_t *r = emu_call("loyd.emu.calls", "{}");
    long long n = json_integer_value(json_object_get(json_object_get(r, "result"), name));
    json_decref(r);
    return n;
}

static void emu_fault(const char *json)
{
    json_decref(emu_call("loyd.emu.fault", json));
}

/* ---- fixture ------------------------------------------------------------------------ */

static void start_emu(const char *opts_json)
{
    json_t *o = json_loads(opts_json, 0, NULL);
    ck_assert_ptr_nonnull(o);
    ck_assert_int_eq(b24emu_emulator.start(&loyd_host_api, emu_ctx, "127.0.0.1:0", o,
                                           &emu_state, &port),
                     0);
    json_decref(o);
}

#define EMU_BASE                                                                                  \
    "\"member_id\":\"" MEMBER "\",\"webhook_user\":\"1\",\"webhook_code\":\"code1\","             \
    "\"client_id\":\"app.1\",\"client_secret\":\"sec\",\"access_token\":\"at1\","                 \
    "\"refresh_token\":\"rt1\",\"seed\":7"

static void base_setup(void)
{
    snprintf(dir, sizeof(dir), "%s/loyd-b24c-XXXXXX", getenv("TMPDIR") ? getenv("TMPDIR") : "/tmp");
    ck_assert_ptr_nonnull(mkdtemp(dir));
    snprintf(dbpath, sizeof(dbpath), "%s/loyd.db", dir);
    ck_assert_int_eq(uv_loop_init(&loop), 0);
    ck_assert_int_eq(loyd_store_open(&loop, dbpath, &store), 0);
    ck_assert_int_eq(loyd_http_client_create(&loop, NULL, &client), 0);
    loyd_host_init(&host, &loop, client, store);
    emu_ctx = loyd_host_ctx_create(&host, "bitrix24", NULL);
    plug_ctx = loyd_host_ctx_create(&host, "bitrix24", NULL);
    api = loyd_host_api;
    api.kv_put = rec_kv_put_real;
    api.http_start = rec_http_start;
    api.log = rec_log;
    loyd_buf_reset(&logged);
    trace = json_array();
    ck_assert_int_eq(loyd_plugin_bitrix24.init(&api, plug_ctx, NULL, &pstate), 0);
}

static void setup(void)
{
    base_setup();
    start_emu("{" EMU_BASE ",\"rate\":{\"drain\":1000,\"burst\":1000}}");
}

static void open_tenant(const char *extra)
{
    char buf[1024];
    snprintf(buf, sizeof(buf),
             "{\"webhook_url\":\"http://127.0.0.1:%d/rest/1/code1/\",\"rate_per_sec\":1000,"
             "\"rate_burst\":1000%s%s}",
             port, extra && *extra ? "," : "", extra ? extra : "");
    json_t *c = json_loads(buf, 0, NULL);
    ck_assert_ptr_nonnull(c);
    if (t_ctx == NULL)
        t_ctx = loyd_host_ctx_create(&host, "bitrix24", "acme");
    ck_assert_int_eq(loyd_plugin_bitrix24.connector->tenant_open(pstate, t_ctx, c, &tenant), 0);
    json_decref(c);
}

static void open_tenant_json(const char *json)
{
    json_t *c = json_loads(json, 0, NULL);
    ck_assert_ptr_nonnull(c);
    if (t_ctx == NULL)
        t_ctx = loyd_host_ctx_create(&host, "bitrix24", "acme");
    ck_assert_int_eq(loyd_plugin_bitrix24.connector->tenant_open(pstate, t_ctx, c, &tenant), 0);
    json_decref(c);
}

static void close_tenant(void)
{
    if (tenant != NULL)
        loyd_plugin_bitrix24.connector->tenant_close(tenant);
    tenant = NULL;
}

static void on_closed(void *arg)
{
    (*(int *)arg)++;
}

static void teardown(void)
{
    int closed = 0;
    close_tenant();
    loyd_plugin_bitrix24.destroy(pstate);
    b24emu_emulator.stop(emu_state);
    loyd_host_close(&host, on_closed, &closed);
    loyd_http_client_close(client, on_closed, &closed);
    loyd_store_close(store, on_closed, &closed);
    while (closed < 3)
        uv_run(&loop, UV_RUN_ONCE);
    uv_run(&loop, UV_RUN_DEFAULT);
    loyd_http_client_destroy(client);
    loyd_store_destroy(store);
    loyd_host_ctx_destroy(emu_ctx);
    loyd_host_ctx_destroy(plug_ctx);
    loyd_host_ctx_destroy(t_ctx);
    t_ctx = NULL;
    json_decref(trace);
    loyd_buf_free(&logged);
    ck_assert_int_eq(uv_loop_close(&loop), 0);
    char cmd[300];
    snprintf(cmd, sizeof(cmd), "rm -rf '%s'", dir);
    ck_assert_int_eq(system(cmd), 0);
}

/* ---- connector calls ------------------------------------------------------------------ */

struct eres {
    bool done;
    int err;
    json_t *snaps;
    bool more;
    int results[64];
    size_t n;
};

static void on_enrich(void *arg, int err, json_t *snaps)
{
    struct eres *r = arg;
    r->err = err;
    r->snaps = snaps;
    r->done = true;
}

static json_t *enrich(const char *entity, const char *id, const char *action, int *err)
{
    struct eres r = {0};
    json_t *n = json_pack("{s:s,s:s,s:s}", "entity", entity, "id", id, "action", action);
    ck_assert_int_eq(loyd_plugin_bitrix24.connector->enrich(tenant, n, on_enrich, &r), 0);
    json_decref(n);
    run_until(&r.done);
    *err = r.err;
    return r.snaps;
}

static void on_write(void *arg, const int *results, size_t n)
{
    struct eres *r = arg;
    memcpy(r->results, results, n * sizeof(int));
    r->n = n;
    r->done = true;
}

static void write_items(const char *json, struct eres *r)
{
    json_t *items = json_loads(json, 0, NULL);
    ck_assert_ptr_nonnull(items);
    memset(r, 0, sizeof(*r));
    ck_assert_int_eq(loyd_plugin_bitrix24.connector->write(tenant, items, on_write, r), 0);
    json_decref(items);
    run_until(&r->done);
}

static int write1(const char *json_item)
{
    char buf[2048];
    struct eres r;
    snprintf(buf, sizeof(buf), "[%s]", json_item);
    write_items(buf, &r);
    ck_assert_int_eq(r.n, 1);
    return r.results[0];
}

static void on_done(void *arg, int err)
{
    struct eres *r = arg;
    r->err = err;
    r->done = true;
}

static void on_sync(void *arg, int err, json_t *snaps, bool more)
{
    struct eres *r = arg;
    r->err = err;
    r->snaps = snaps;
    r->more = more;
    r->done = true;
}

static json_t *sync_page(const char *entity, const char *after, uint64_t since, bool *more)
{
    struct eres r = {0};
    struct loyd_sync_request q = {entity, after, since};
    ck_assert_int_eq(loyd_plugin_bitrix24.connector->sync(tenant, &q, on_sync, &r), 0);
    run_until(&r.done);
    ck_assert_int_eq(r.err, 0);
    *more = r.more;
    return r.snaps;
}

static struct b24_rest_stats stats(void)
{
    struct b24_rest_stats s;
    b24_rest_stats(((struct b24_tenant *)tenant)->rest, &s);
    return s;
}

static struct b24_oauth_stats ostats(void)
{
    struct b24_oauth_stats s;
    b24_oauth_stats(b24_rest_oauth(((struct b24_tenant *)tenant)->rest), &s);
    return s;
}

/* Runs the loop until the tenant's kv @p key holds a value containing @p needle (committed). */
static void wait_kv(const char *key, const char *needle)
{
    for (;;) {
        char *v = NULL;
        bool stored = loyd_store_kv_get(store, "acme", key, &v) == 0 && v != NULL &&
                      strstr(v, needle) != NULL;
        free(v);
        if (stored)
            return;
        uv_run(&loop, UV_RUN_ONCE);
    }
}

/* ---- tests ---------------------------------------------------------------------------- */

START_TEST(test_money_parser)
{
    int64_t v;
    ck_assert_int_eq(b24_money_minor("125000.50", "RUB", &v), 0);
    ck_assert_int_eq(v, 12500050);
    ck_assert_int_eq(b24_money_minor("125000.5", "EUR", &v), 0);
    ck_assert_int_eq(v, 12500050);
    ck_assert_int_eq(b24_money_minor("7", NULL, &v), 0);
    ck_assert_int_eq(v, 700);
    ck_assert_int_eq(b24_money_minor("-3.01", "USD", &v), 0);
    ck_assert_int_eq(v, -301);
    ck_assert_int_eq(b24_money_minor("1000.00", "JPY", &v), 0);
    ck_assert_int_eq(v, 1000);
    ck_assert_int_eq(b24_money_minor("1500", "KRW", &v), 0);
    ck_assert_int_eq(v, 1500);
    ck_assert_int_eq(b24_money_minor("1.500", "RUB", &v), 0); /* zeros carry no precision */
    ck_assert_int_eq(v, 150);
    static const char *const bad[] = {"",     "abc",     "1e5",   "--1",   "1.2.3", "1000.50x",
                                      "0x10", "1.005",   "+5",    "-",     ".",
                                      "99999999999999999999"};
    for (size_t i = 0; i < sizeof(bad) / sizeof(bad[0]); i++)
        ck_assert_msg(b24_money_minor(bad[i], "RUB", &v) != 0, "accepted '%s'", bad[i]);
    /* More precision than the currency has is not money. */
    ck_assert_int_ne(b24_money_minor("1000.50", "JPY", &v), 0);
}
END_TEST

static void make_loyd_fields(void)
{
    json_decref(crm("crm.contact.userfield.add",
                    "{\"fields\":{\"FIELD_NAME\":\"LOYD_BALANCE\",\"USER_TYPE_ID\":\"integer\"}}"));
    json_decref(crm("crm.contact.userfield.add",
                    "{\"fields\":{\"FIELD_NAME\":\"REVIEW_LEFT\",\"USER_TYPE_ID\":\"string\"}}"));
}

START_TEST(test_enrich_won_deal_with_contact)
{
    char body[512];
    int err;
    make_loyd_fields();
    long long cid = crm_id("crm.contact.add",
                           "{\"fields\":{\"NAME\":\"Anna\",\"LAST_NAME\":\"Petrova\","
                           "\"BIRTHDATE\":\"1990-05-17\",\"UF_CRM_LOYD_BALANCE\":1250,"
                           "\"UF_CRM_REVIEW_LEFT\":\"Y\","
                           "\"PHONE\":[{\"VALUE\":\"+79990001122\",\"VALUE_TYPE\":\"WORK\"}],"
                           "\"EMAIL\":[{\"VALUE\":\"anna@example.com\"}]}}");
    snprintf(body, sizeof(body),
             "{\"fields\":{\"TITLE\":\"Order\",\"OPPORTUNITY\":\"125000.50\","
             "\"CURRENCY_ID\":\"RUB\",\"STAGE_ID\":\"C1:WON\",\"CONTACT_ID\":%lld}}", cid);
    long long did = crm_id("crm.deal.add", body);
    open_tenant("\"attributes\":{\"review_left\":\"UF_CRM_REVIEW_LEFT\"}");
    char ids[24];
    snprintf(ids, sizeof(ids), "%lld", did);
    json_t *s = enrich("deal", ids, "update", &err);
    ck_assert_int_eq(err, 0);
    ck_assert_int_eq(json_array_size(s), 2);
    json_t *d = json_array_get(s, 0), *c = json_array_get(s, 1);
    ck_assert_str_eq(json_string_value(json_object_get(d, "kind")), "deal");
    ck_assert(json_is_true(json_object_get(d, "won")));
    ck_assert_int_eq(json_integer_value(json_object_get(d, "amount")), 12500050);
    ck_assert_str_eq(json_string_value(json_object_get(d, "currency")), "RUB");
    ck_assert_str_eq(json_string_value(json_object_get(d, "stage")), "C1:WON");
    snprintf(ids, sizeof(ids), "%lld", cid);
    ck_assert_str_eq(json_string_value(json_object_get(d, "contact_id")), ids);
    ck_assert(json_integer_value(json_object_get(d, "modified_at")) > 0);
    ck_assert_str_eq(json_string_value(json_object_get(c, "name")), "Anna Petrova");
    ck_assert_str_eq(json_string_value(json_object_get(c, "birthday")), "1990-05-17");
    ck_assert_str_eq(json_string_value(json_object_get(c, "phone")), "+79990001122");
    ck_assert_str_eq(json_string_value(json_object_get(c, "email")), "anna@example.com");
    ck_assert_str_eq(json_string_value(json_object_get(json_object_get(c, "fields"), "balance")),
                     "1250");
    ck_assert(json_is_true(json_object_get(json_object_get(c, "attributes"), "review_left")));
    json_decref(s);

    /* A contact on its own; then one with no birthday and no deal contact. */
    s = enrich("contact", ids, "update", &err);
    ck_assert_int_eq(err, 0);
    ck_assert_int_eq(json_array_size(s), 1);
    json_decref(s);
    did = crm_id("crm.deal.add", "{\"fields\":{\"OPPORTUNITY\":\"10\",\"CURRENCY_ID\":\"JPY\"}}");
    snprintf(ids, sizeof(ids), "%lld", did);
    s = enrich("deal", ids, "add", &err);
    ck_assert_int_eq(err, 0);
    ck_assert_int_eq(json_array_size(s), 1);
    ck_assert(json_is_false(json_object_get(json_array_get(s, 0), "won")));
    ck_assert_int_eq(json_integer_value(json_object_get(json_array_get(s, 0), "amount")), 10);
    ck_assert_ptr_null(json_object_get(json_array_get(s, 0), "contact_id"));
    json_decref(s);
    /* install: nothing to read */
    s = enrich("app", "1", "install", &err);
    ck_assert_int_eq(err, 0);
    ck_assert_int_eq(json_array_size(s), 0);
    json_decref(s);
}
END_TEST

START_TEST(test_enrich_deleted)
{
    int err;
    char ids[24];
    long long cid = crm_id("crm.contact.add", "{\"fields\":{\"NAME\":\"Gone\"}}");
    snprintf(ids, sizeof(ids), "{\"id\":%lld}", cid);
    json_decref(crm("crm.contact.delete", ids));
    open_tenant(NULL);
    snprintf(ids, sizeof(ids), "%lld", cid);
    /* Codeless "Not found" in a batch whose result map is PHP's [] */
    json_t *s = enrich("contact", ids, "update", &err);
    ck_assert_int_eq(err, 0);
    ck_assert_int_eq(json_array_size(s), 1);
    ck_assert(json_is_true(json_object_get(json_array_get(s, 0), "deleted")));
    ck_assert_str_eq(json_string_value(json_object_get(json_array_get(s, 0), "kind")), "contact");
    json_decref(s);
    s = enrich("deal", "99999", "update", &err);
    ck_assert_int_eq(err, 0);
    ck_assert(json_is_true(json_object_get(json_array_get(s, 0), "deleted")));
    json_decref(s);
    s = enrich("deal", "5", "delete", &err);
    ck_assert_int_eq(err, 0);
    ck_assert(json_is_true(json_object_get(json_array_get(s, 0), "deleted")));
    json_decref(s);
}
END_TEST

START_TEST(test_enrich_coalesced)
{
    struct eres r[6];
    memset(r, 0, sizeof(r));
    for (int i = 0; i < 3; i++)
        crm_id("crm.contact.add", "{\"fields\":{\"NAME\":\"X\"}}");
    open_tenant(NULL);
    long long before = emu_calls("batch");
    for (int i = 0; i < 6; i++) {
        char id[8];
        snprintf(id, sizeof(id), "%d", i % 3 + 1);
        json_t *n = json_pack("{s:s,s:s,s:s}", "entity", i % 2 ? "deal" : "contact", "id", id,
                              "action", "update");
        ck_assert_int_eq(loyd_plugin_bitrix24.connector->enrich(tenant, n, on_enrich, &r[i]), 0);
        json_decref(n);
    }
    for (int i = 0; i < 6; i++) {
        run_until(&r[i].done);
        ck_assert_int_eq(r[i].err, 0);
        json_decref(r[i].snaps);
    }
    /* 3 x crm.contact.get, 3 x (crm.deal.get + crm.deal.contact.items.get): one call. */
    ck_assert_int_eq(emu_calls("batch") - before, 1);
    ck_assert_int_eq(stats().calls, 1);
    ck_assert_int_eq(stats().commands, 3 + 3 * 2);
}
END_TEST

#define CONTACT_FIELDS(id, bal)                                                                   \
    "{\"op\":\"contact.fields\",\"uid\":\"f" #id "-" #bal "\",\"contact_id\":\"" #id             \
    "\",\"fields\":{\"balance\":" #bal ",\"tier\":\"gold\"}}"

START_TEST(test_write_ops_and_provision_once)
{
    long long cid = crm_id("crm.contact.add", "{\"fields\":{\"NAME\":\"Anna\"}}");
    char body[200];
    snprintf(body, sizeof(body), "{\"fields\":{\"CONTACT_ID\":%lld}}", cid);
    long long did = crm_id("crm.deal.add", body);
    ck_assert_int_eq(cid, 1);
    ck_assert_int_eq(did, 1);
    open_tenant(NULL);
    struct eres r;
    write_items("[" CONTACT_FIELDS(1, 1250) ","
                "{\"op\":\"note\",\"uid\":\"n1\",\"entity\":\"contact\",\"id\":\"1\","
                "\"text\":\"You earned 125 points\"},"
                "{\"op\":\"task\",\"uid\":\"t1\",\"entity\":\"contact\",\"id\":\"1\","
                "\"title\":\"Call Anna\",\"text\":\"Gold tier\",\"deadline_ms\":1760000000000},"
                "{\"op\":\"deal.mark\",\"uid\":\"m1\",\"deal_id\":\"1\",\"awarded\":3750},"
                "{\"op\":\"bogus\",\"uid\":\"b1\"}]",
                &r);
    ck_assert_int_eq(r.n, 5);
    for (int i = 0; i < 4; i++)
        ck_assert_msg(r.results[i] == 0, "item %d: %d", i, r.results[i]);
    ck_assert_int_eq(r.results[4], -EINVAL);
    json_t *st = emu_state_get();
    json_t *c = json_array_get(json_object_get(st, "contacts"), 0);
    ck_assert_str_eq(json_string_value(json_object_get(c, "UF_CRM_LOYD_BALANCE")), "1250");
    ck_assert_str_eq(json_string_value(json_object_get(c, "UF_CRM_LOYD_TIER")), "gold");
    json_t *d = json_array_get(json_object_get(st, "deals"), 0);
    ck_assert_str_eq(json_string_value(json_object_get(d, "UF_CRM_LOYD_AWARDED")), "3750");
    json_t *cm = json_array_get(json_object_get(st, "timeline_comments"), 0);
    ck_assert_ptr_nonnull(strstr(json_string_value(json_object_get(cm, "COMMENT")), "loyd n1"));
    json_t *a = json_array_get(json_object_get(st, "activities"), 0);
    ck_assert_ptr_nonnull(strstr(json_string_value(json_object_get(a, "description")), "loyd t1"));
    ck_assert_str_eq(json_string_value(json_object_get(a, "title")), "Call Anna");
    ck_assert_int_eq(json_integer_value(json_object_get(a, "ownerTypeId")), 3);
    /* loyd's own writes echo as events to handlers, as on a portal */
    ck_assert_int_ge(json_integer_value(json_object_get(json_object_get(st, "counters"),
                                                        "updates")), 4);
    json_decref(st);
    /* balance, tier and "referred by"; "points for this deal", "redeemed", "offer code used" */
    ck_assert_int_eq(emu_calls("crm.contact.userfield.add"), 3);
    ck_assert_int_eq(emu_calls("crm.deal.userfield.add"), 3);
    long long lists = emu_calls("crm.contact.userfield.list");

    /* the enrich echo shows loyd's fields */
    int err;
    json_t *s = enrich("contact", "1", "update", &err);
    /* Points as the card shows them: the host reads them in the pack's unit. */
    ck_assert_str_eq(json_string_value(json_object_get(
                         json_object_get(json_array_get(s, 0), "fields"), "balance")), "1250");
    ck_assert_str_eq(json_string_value(json_object_get(
                         json_object_get(json_array_get(s, 0), "fields"), "tier")), "gold");
    json_decref(s);

    /* restart: kv remembers the fields once committed */
    wait_kv("uf:known", "deal:UF_CRM_LOYD_AWARDED");
    close_tenant();
    open_tenant(NULL);
    ck_assert_int_eq(write1(CONTACT_FIELDS(1, 1300)), 0);
    ck_assert_int_eq(write1("{\"op\":\"deal.mark\",\"uid\":\"m2\",\"deal_id\":\"1\",\"awarded\":1}"),
                     0);
    ck_assert_int_eq(emu_calls("crm.contact.userfield.add"), 3);
    ck_assert_int_eq(emu_calls("crm.deal.userfield.add"), 3);
    ck_assert_int_eq(emu_calls("crm.contact.userfield.list"), lists);
    /* a new set_field name is provisioned on first use */
    ck_assert_int_eq(write1("{\"op\":\"contact.fields\",\"uid\":\"x\",\"contact_id\":\"1\","
                            "\"fields\":{\"vip\":\"yes\"}}"),
                     0);
    ck_assert_int_eq(emu_calls("crm.contact.userfield.add"), 4);
    /* deleted contact: dead, not retried */
    json_decref(crm("crm.contact.delete", "{\"id\":1}"));
    ck_assert_int_eq(write1(CONTACT_FIELDS(1, 5)), LOYD_ECRM);
    ck_assert_int_eq(write1("{\"op\":\"note\",\"uid\":\"n9\",\"entity\":\"contact\",\"id\":\"1\","
                            "\"text\":\"x\"}"),
                     LOYD_ECRM);
}
END_TEST

START_TEST(test_write_50_items_one_call)
{
    for (int i = 0; i < 50; i++)
        crm_id("crm.contact.add", "{\"fields\":{\"NAME\":\"X\"}}");
    open_tenant(NULL);
    ck_assert_int_eq(write1(CONTACT_FIELDS(1, 1)), 0); /* provisions */
    struct b24_rest_stats s0 = stats();
    struct loyd_buf b = {0};
    loyd_buf_printf(&b, "[");
    for (int i = 1; i <= 50; i++)
        loyd_buf_printf(&b, "%s{\"op\":\"contact.fields\",\"uid\":\"u%d\",\"contact_id\":\"%d\","
                            "\"fields\":{\"balance\":%d}}",
                        i > 1 ? "," : "", i, i, i * 10);
    loyd_buf_printf(&b, "]");
    struct eres r;
    write_items(b.data, &r);
    loyd_buf_free(&b);
    ck_assert_int_eq(r.n, 50);
    for (int i = 0; i < 50; i++)
        ck_assert_int_eq(r.results[i], 0);
    ck_assert_int_eq(stats().calls - s0.calls, 1);
    ck_assert_int_eq(stats().commands - s0.commands, 50);
}
END_TEST

START_TEST(test_bucket_respected)
{
    /* A small bucket with a fast drain keeps the test short; the shape is the portal's. */
    b24emu_emulator.stop(emu_state);
    start_emu("{" EMU_BASE ",\"rate\":{\"drain\":40,\"burst\":4}}");
    for (int i = 0; i < 3; i++)
        crm_id("crm.contact.add", "{\"fields\":{\"NAME\":\"X\"}}");
    json_decref(emu_call("loyd.emu.reset_limits", "{}"));
    char buf[512];
    snprintf(buf, sizeof(buf), "{\"webhook_url\":\"http://127.0.0.1:%d/rest/1/code1/\","
                               "\"rate_per_sec\":40,\"rate_burst\":4}", port);
    open_tenant_json(buf);
    struct loyd_rate_policy rp;
    loyd_plugin_bitrix24.connector->rate_policy(tenant, &rp);
    ck_assert_uint_eq(rp.per_sec_milli, 40000);
    ck_assert_uint_eq(rp.burst, 4);
    ck_assert_uint_eq(rp.max_batch, 50);
    for (int i = 0; i < 120; i++) {
        char item[256];
        snprintf(item, sizeof(item), "{\"op\":\"contact.fields\",\"uid\":\"b%d\","
                                     "\"contact_id\":\"%d\",\"fields\":{\"balance\":%d}}",
                 i, i % 3 + 1, i);
        int rc = write1(item);
        ck_assert_msg(rc == 0, "write %d: %d; emulator requests %lld, our calls %llu", i, rc,
                      emu_counter("requests"), (unsigned long long)stats().calls);
    }
    /* Paced by loyd's own bucket: the portal never had to refuse a call. */
    ck_assert_int_eq(stats().limit_errors, 0);
    ck_assert_int_ge(stats().calls, 120);
}
END_TEST

START_TEST(test_503_burst_then_success)
{
    crm_id("crm.contact.add", "{\"fields\":{\"NAME\":\"X\"}}");
    open_tenant(NULL);
    ck_assert_int_eq(write1(CONTACT_FIELDS(1, 1)), 0);
    emu_fault("{\"mode\":\"503_burst\",\"seconds\":2}");
    /* Refused calls ran nothing: the client backs off and sends them again by itself. */
    ck_assert_int_eq(write1(CONTACT_FIELDS(1, 2)), 0);
    ck_assert_int_ge(stats().limit_errors, 1);
    ck_assert_int_eq(stats().transport_errors, 0);
    json_t *st = emu_state_get();
    ck_assert_str_eq(json_string_value(json_object_get(
                         json_array_get(json_object_get(st, "contacts"), 0), "UF_CRM_LOYD_BALANCE")),
                     "2");
    json_decref(st);
}
END_TEST

START_TEST(test_429_operating_limit)
{
    b24emu_emulator.stop(emu_state);
    start_emu("{" EMU_BASE ",\"rate\":{\"drain\":1000,\"burst\":1000},"
              "\"operating_limit_ms\":300,\"operating_cost_ms\":100}");
    crm_id("crm.contact.add", "{\"fields\":{\"NAME\":\"X\"}}");
    open_tenant(NULL);
    for (int i = 0; i < 3; i++)
        ck_assert_int_eq(write1(CONTACT_FIELDS(1, 1)), 0);
    /* The fourth update exhausts the method's operating time: it is held, not failed. */
    struct eres w = {0};
    json_t *items = json_loads("[" CONTACT_FIELDS(1, 2) "]", 0, NULL);
    ck_assert_int_eq(loyd_plugin_bitrix24.connector->write(tenant, items, on_write, &w), 0);
    json_decref(items);
    while (stats().limit_errors == 0)
        uv_run(&loop, UV_RUN_ONCE);
    long long updates = emu_calls("crm.contact.update");
    /* Other methods still go out meanwhile, and the held one does not ride along. */
    int err;
    json_t *s = enrich("contact", "1", "update", &err);
    ck_assert_int_eq(err, 0);
    json_decref(s);
    ck_assert(!w.done);
    ck_assert_int_eq(emu_calls("crm.contact.update"), updates);
    /* operating_reset_at passes (the portal's window is 10 minutes): the update goes out. */
    json_decref(emu_call("loyd.emu.reset_limits", "{}"));
    host.clock_offset_ms += 11 * 60 * 1000;
    s = enrich("contact", "1", "update", &err);
    json_decref(s);
    run_until(&w.done);
    ck_assert_int_eq(w.results[0], 0);
    ck_assert_int_eq(emu_calls("crm.contact.update"), updates + 1);
}
END_TEST

static const struct b24_hold *hold_of(const char *method)
{
    return b24_portal_hold_of(b24_rest_portal(((struct b24_tenant *)tenant)->rest), method);
}

static uint64_t held_for(const char *method)
{
    return b24_portal_held_for(b24_rest_portal(((struct b24_tenant *)tenant)->rest), method,
                               loyd_host_now_ms(&host));
}

/* Starts writing one item; its result lands in @p w. */
static void write_start(const char *json_item, struct eres *w)
{
    char buf[2048];
    snprintf(buf, sizeof(buf), "[%s]", json_item);
    json_t *items = json_loads(buf, 0, NULL);
    ck_assert_ptr_nonnull(items);
    memset(w, 0, sizeof(*w));
    ck_assert_int_eq(loyd_plugin_bitrix24.connector->write(tenant, items, on_write, w), 0);
    json_decref(items);
}

static void wait_limit_errors(uint64_t n)
{
    while (stats().limit_errors < n)
        uv_run(&loop, UV_RUN_ONCE);
}

/* A read of contact 1: another method, and a nudge that makes the client look at its queue. */
static void read_contact(void)
{
    int err;
    json_t *s = enrich("contact", "1", "update", &err);
    ck_assert_int_eq(err, 0);
    json_decref(s);
}

START_TEST(test_429_without_reset_time)
{
    /* "batch" accounting: the nested methods' good answers carry no operating figures either,
     * so nothing tells loyd when the update's baskets drop out. */
    b24emu_emulator.stop(emu_state);
    start_emu("{" EMU_BASE ",\"rate\":{\"drain\":1000,\"burst\":1000},"
              "\"operating_batch\":\"batch\"}");
    crm_id("crm.contact.add", "{\"fields\":{\"NAME\":\"X\"}}");
    open_tenant(NULL);
    emu_fault("{\"mode\":\"429\",\"method\":\"crm.contact.update\",\"count\":2}");
    struct eres w;
    write_start(CONTACT_FIELDS(1, 1), &w);
    wait_limit_errors(1);
    /* The first hold is one basket, and it holds that method only. */
    const struct b24_hold *h = hold_of("crm.contact.update");
    ck_assert_ptr_nonnull(h);
    ck_assert_uint_eq(h->hold_ms, 60000);
    ck_assert_uint_eq(h->strikes, 1);
    ck_assert_uint_gt(held_for("crm.contact.update"), 0);
    ck_assert_uint_eq(held_for("batch"), 0);
    ck_assert_uint_eq(held_for("crm.contact.get"), 0);
    long long updates = emu_calls("crm.contact.update");
    read_contact();
    ck_assert(!w.done);
    ck_assert_int_eq(emu_calls("crm.contact.update"), updates);
    /* The minute passes (the host's clock is moved, nothing sleeps): refused again, held twice
     * as long. */
    host.clock_offset_ms += 61 * 1000;
    read_contact();
    wait_limit_errors(2);
    ck_assert_int_eq(emu_calls("crm.contact.update"), updates + 1);
    ck_assert_uint_eq(h->hold_ms, 120000);
    ck_assert_uint_eq(h->strikes, 2);
    ck_assert(!w.done);
    host.clock_offset_ms += 60 * 1000;
    read_contact();
    ck_assert(!w.done); /* a minute is not enough any more */
    ck_assert_int_eq(emu_calls("crm.contact.update"), updates + 1);
    host.clock_offset_ms += 61 * 1000;
    read_contact();
    run_until(&w.done);
    ck_assert_int_eq(w.results[0], 0);
    ck_assert_uint_eq(h->strikes, 0);
    /* After a success, a new refusal starts from one basket again. */
    emu_fault("{\"mode\":\"429\",\"method\":\"crm.contact.update\",\"count\":1}");
    write_start(CONTACT_FIELDS(1, 2), &w);
    wait_limit_errors(3);
    ck_assert_uint_eq(h->hold_ms, 60000);
    ck_assert_uint_eq(h->strikes, 1);
    host.clock_offset_ms += 61 * 1000;
    read_contact();
    run_until(&w.done);
    ck_assert_int_eq(w.results[0], 0);
    ck_assert_int_eq(stats().transport_errors, 0);
}
END_TEST

START_TEST(test_429_first_retry_at_last_reset)
{
    /* The docs: "For the first retry, refer to operating_reset_at from the last successful
     * response."  Before it no basket drops out, so an earlier retry would only be refused. */
    crm_id("crm.contact.add", "{\"fields\":{\"NAME\":\"X\"}}");
    open_tenant(NULL);
    ck_assert_int_eq(write1(CONTACT_FIELDS(1, 1)), 0);
    const struct b24_hold *h = hold_of("crm.contact.update");
    ck_assert_ptr_nonnull(h);
    ck_assert_uint_gt(h->reset_at, loyd_host_now_ms(&host));
    emu_fault("{\"mode\":\"429\",\"method\":\"crm.contact.update\",\"count\":1}");
    struct eres w;
    write_start(CONTACT_FIELDS(1, 2), &w);
    wait_limit_errors(1);
    ck_assert_uint_eq(h->until, h->reset_at);
    ck_assert_uint_gt(h->hold_ms, 120000); /* the emulator's oldest basket: 9-10 minutes */
    ck_assert_uint_le(h->hold_ms, 600000);
    host.clock_offset_ms += (int64_t)h->hold_ms - 30000;
    read_contact();
    ck_assert(!w.done);
    host.clock_offset_ms += 31000;
    read_contact();
    run_until(&w.done);
    ck_assert_int_eq(w.results[0], 0);
}
END_TEST

START_TEST(test_wrong_webhook_code)
{
    crm_id("crm.contact.add", "{\"fields\":{\"NAME\":\"X\"}}");
    char buf[512];
    snprintf(buf, sizeof(buf), "{\"webhook_url\":\"http://127.0.0.1:%d/rest/1/c0de1/\"}", port);
    open_tenant_json(buf);
    int err;
    json_t *s = enrich("contact", "1", "update", &err);
    ck_assert_ptr_null(s);
    /* It waits for the configuration to be fixed, as a refused token does... */
    ck_assert_int_eq(err, LOYD_ETOKEN);
    ck_assert_ptr_nonnull(strstr(loyd_strerror(err), "wrong webhook code"));
    /* ...but the words are the webhook code's, with what to check, and never the code. */
    const char *log = logged.data != NULL ? logged.data : "";
    ck_assert_msg(strstr(log, "refused the inbound-webhook code (HTTP 401 NO_AUTH_FOUND)") != NULL,
                  "%s", log);
    ck_assert_ptr_nonnull(strstr(log, "check crm.webhook_url"));
    ck_assert_ptr_null(strstr(log, "expired"));
    ck_assert_ptr_null(strstr(log, "c0de1"));
    ck_assert_int_eq(write1(CONTACT_FIELDS(1, 1)), LOYD_ETOKEN);
}
END_TEST

static void oauth_tenant(const char *refresh)
{
    char buf[1024];
    snprintf(buf, sizeof(buf),
             "{\"rest_url\":\"http://127.0.0.1:%d/rest/\",\"oauth_url\":"
             "\"http://127.0.0.1:%d/oauth/token/\",\"client_id\":\"app.1\",\"client_secret\":"
             "\"sec\",\"access_token\":\"at1\",\"refresh_token\":\"%s\",\"member_id\":\"" MEMBER
             "\",\"rate_per_sec\":1000,\"rate_burst\":1000}",
             port, port, refresh);
    open_tenant_json(buf);
}

static int trace_index(const char *what, int from)
{
    for (size_t i = (size_t)from; i < json_array_size(trace); i++)
        if (strcmp(json_string_value(json_array_get(trace, i)), what) == 0)
            return (int)i;
    return -1;
}

START_TEST(test_oauth_expired_one_refresh)
{
    crm_id("crm.contact.add", "{\"fields\":{\"NAME\":\"X\"}}");
    oauth_tenant("rt1");
    int err;
    json_t *s = enrich("contact", "1", "update", &err);
    ck_assert_int_eq(err, 0);
    json_decref(s);
    ck_assert_int_eq(ostats().refreshes, 0);
    emu_fault("{\"mode\":\"expire_tokens\"}");
    json_array_clear(trace);

    struct eres r[3];
    memset(r, 0, sizeof(r));
    json_t *n = json_pack("{s:s,s:s,s:s}", "entity", "contact", "id", "1", "action", "update");
    ck_assert_int_eq(loyd_plugin_bitrix24.connector->enrich(tenant, n, on_enrich, &r[0]), 0);
    while (ostats().refreshes == 0)
        uv_run(&loop, UV_RUN_ONCE);
    /* Two more while the refresh is in flight: they wait for it. */
    for (int i = 1; i < 3; i++)
        ck_assert_int_eq(loyd_plugin_bitrix24.connector->enrich(tenant, n, on_enrich, &r[i]), 0);
    json_decref(n);
    for (int i = 0; i < 3; i++) {
        run_until(&r[i].done);
        ck_assert_int_eq(r[i].err, 0);
        json_decref(r[i].snaps);
    }
    ck_assert_int_eq(ostats().refreshes, 1);
    ck_assert_int_eq(ostats().refresh_failures, 0);
    /* The new refresh token is committed before any call uses the new access token. */
    int ref = trace_index("refresh", 0);
    int done = trace_index("done:oauth", ref);
    int next = trace_index("batch", ref);
    ck_assert_int_ge(ref, 0);
    ck_assert_int_gt(done, ref);
    ck_assert_int_gt(next, done);
    char *pair = NULL;
    ck_assert_int_eq(loyd_store_kv_get(store, "acme", "oauth", &pair), 0);
    ck_assert_ptr_nonnull(pair);
    json_t *pj = json_loads(pair, 0, NULL);
    free(pair);
    char *stored = strdup(json_string_value(json_object_get(pj, "refresh")));
    json_decref(pj);
    json_t *st = emu_state_get();
    size_t i;
    json_t *tok;
    bool found = false;
    json_array_foreach(json_object_get(st, "tokens"), i, tok) {
        if (json_is_true(json_object_get(tok, "refresh_valid")) &&
            strcmp(json_string_value(json_object_get(tok, "refresh_token")), stored) == 0)
            found = true;
    }
    ck_assert(found);
    json_decref(st);
    free(stored);

    /* A restart picks the rotated pair from kv, not the spent seed in the config. */
    close_tenant();
    oauth_tenant("rt1");
    s = enrich("contact", "1", "update", &err);
    ck_assert_int_eq(err, 0);
    json_decref(s);
    ck_assert_int_eq(ostats().refreshes, 0);
    /* Two refreshes asked at once make one request (the token is single-use). */
    struct eres rr[2];
    memset(rr, 0, sizeof(rr));
    b24_oauth_refresh(b24_rest_oauth(((struct b24_tenant *)tenant)->rest), on_done, &rr[0]);
    b24_oauth_refresh(b24_rest_oauth(((struct b24_tenant *)tenant)->rest), on_done, &rr[1]);
    run_until(&rr[0].done);
    run_until(&rr[1].done);
    ck_assert_int_eq(rr[0].err, 0);
    ck_assert_int_eq(rr[1].err, 0);
    ck_assert_int_eq(ostats().refreshes, 1);
    s = enrich("contact", "1", "update", &err);
    ck_assert_int_eq(err, 0);
    json_decref(s);
}
END_TEST

START_TEST(test_oauth_invalid_grant)
{
    crm_id("crm.contact.add", "{\"fields\":{\"NAME\":\"X\"}}");
    oauth_tenant("bogus");
    emu_fault("{\"mode\":\"expire_tokens\"}");
    int err;
    json_t *s = enrich("contact", "1", "update", &err);
    ck_assert_int_eq(err, LOYD_ETOKEN);
    ck_assert_ptr_null(s);
    ck_assert_int_eq(ostats().refresh_failures, 1);
    /* Nothing left to refresh with: writes fail at once, without a call, until a reinstall. */
    uint64_t calls = stats().calls;
    ck_assert_int_eq(write1(CONTACT_FIELDS(1, 1)), LOYD_ETOKEN);
    ck_assert_int_eq(stats().calls, calls);
    ck_assert_int_eq(ostats().refreshes, 1);
}
END_TEST

/* A tenant closed (reload, shutdown) while its refresh is in flight: the answer is dropped. */
START_TEST(test_close_during_refresh)
{
    crm_id("crm.contact.add", "{\"fields\":{\"NAME\":\"X\"}}");
    oauth_tenant("rt1");
    emu_fault("{\"mode\":\"expire_tokens\"}");
    struct eres r = {0};
    json_t *n = json_pack("{s:s,s:s,s:s}", "entity", "contact", "id", "1", "action", "update");
    ck_assert_int_eq(loyd_plugin_bitrix24.connector->enrich(tenant, n, on_enrich, &r), 0);
    json_decref(n);
    while (ostats().refreshes == 0)
        uv_run(&loop, UV_RUN_ONCE);
    close_tenant();
    ck_assert(r.done);
    ck_assert_int_eq(r.err, -ECANCELED);
    /* The refresh's answer arrives after the close and is dropped; nothing was stored. */
    long long before = emu_counter("requests");
    for (int i = 0; i < 50; i++)
        uv_run(&loop, UV_RUN_NOWAIT);
    char *pair = NULL;
    ck_assert_int_eq(loyd_store_kv_get(store, "acme", "oauth", &pair), 0);
    ck_assert_ptr_null(pair);
    ck_assert_int_eq(emu_counter("requests"), before);
}
END_TEST

START_TEST(test_moved_portal_followed_with_post)
{
    crm_id("crm.contact.add", "{\"fields\":{\"NAME\":\"X\"}}");
    open_tenant(NULL);
    char buf[128];
    snprintf(buf, sizeof(buf), "{\"mode\":\"moved\",\"to\":\"http://127.0.0.1:%d/new\"}", port);
    emu_fault(buf);
    /* The batch POST reaches the new address with its body. */
    ck_assert_int_eq(write1(CONTACT_FIELDS(1, 77)), 0);
    ck_assert_int_eq(emu_counter("redirects"), 1);
    json_t *st = emu_state_get();
    ck_assert_str_eq(json_string_value(json_object_get(
                         json_array_get(json_object_get(st, "contacts"), 0), "UF_CRM_LOYD_BALANCE")),
                     "77");
    json_decref(st);
    /* Later calls go there directly, also after a restart. */
    ck_assert_int_eq(write1(CONTACT_FIELDS(1, 78)), 0);
    ck_assert_int_eq(emu_counter("redirects"), 1);
    wait_kv("portal:moved", "");
    close_tenant();
    open_tenant(NULL);
    ck_assert_int_eq(write1(CONTACT_FIELDS(1, 79)), 0);
    ck_assert_int_eq(emu_counter("redirects"), 1);
}
END_TEST

START_TEST(test_uncertain_add_not_duplicated)
{
    crm_id("crm.contact.add", "{\"fields\":{\"NAME\":\"X\"}}");
    open_tenant(NULL);
    const char *note = "{\"op\":\"note\",\"uid\":\"u-1\",\"entity\":\"contact\",\"id\":\"1\","
                       "\"text\":\"hello\"%s}";
    char buf[256];
    snprintf(buf, sizeof(buf), note, "");
    ck_assert_int_eq(write1(buf), 0);
    snprintf(buf, sizeof(buf), note, ",\"uncertain\":true");
    ck_assert_int_eq(write1(buf), 0);
    ck_assert_int_eq(emu_calls("crm.timeline.comment.add"), 1);
    ck_assert_int_eq(emu_calls("crm.timeline.comment.list"), 1);
    /* an uncertain one that never arrived is added once; a uid prefix does not match */
    ck_assert_int_eq(write1("{\"op\":\"note\",\"uid\":\"u-\",\"entity\":\"contact\",\"id\":\"1\","
                            "\"text\":\"x\",\"uncertain\":true}"),
                     0);
    ck_assert_int_eq(emu_calls("crm.timeline.comment.add"), 2);
    /* tasks likewise, through crm.activity.list */
    const char *task = "{\"op\":\"task\",\"uid\":\"t-1\",\"entity\":\"contact\",\"id\":\"1\","
                       "\"title\":\"T\",\"text\":\"d\"%s}";
    snprintf(buf, sizeof(buf), task, "");
    ck_assert_int_eq(write1(buf), 0);
    snprintf(buf, sizeof(buf), task, ",\"uncertain\":true");
    ck_assert_int_eq(write1(buf), 0);
    ck_assert_int_eq(emu_calls("crm.activity.todo.add"), 1);
    ck_assert_int_eq(emu_calls("crm.activity.list"), 1);
}
END_TEST

/*
 * An add whose answer never came may have run: it fails for the caller with LOYD_EHTTP and is
 * not sent again by the client; the caller's next attempt (marked uncertain) finds it.
 */
START_TEST(test_add_not_blindly_retried)
{
    crm_id("crm.contact.add", "{\"fields\":{\"NAME\":\"X\"}}");
    open_tenant("\"timeout_ms\":300");
    ck_assert_int_eq(write1(CONTACT_FIELDS(1, 1)), 0); /* fields provisioned */
    emu_fault("{\"mode\":\"slow\",\"ms\":1500}");
    const char *note = "{\"op\":\"note\",\"uid\":\"u-9\",\"entity\":\"contact\",\"id\":\"1\","
                       "\"text\":\"hello\"%s}";
    char buf[256];
    snprintf(buf, sizeof(buf), note, "");
    ck_assert_int_eq(write1(buf), LOYD_EHTTP);
    ck_assert_int_eq(stats().transport_errors, 1);
    emu_fault("{\"mode\":\"none\"}");
    /* The portal ran it once; nothing re-sent it. */
    ck_assert_int_eq(emu_calls("crm.timeline.comment.add"), 1);
    snprintf(buf, sizeof(buf), note, ",\"uncertain\":true");
    ck_assert_int_eq(write1(buf), 0);
    ck_assert_int_eq(emu_calls("crm.timeline.comment.add"), 1);
    ck_assert_int_eq(emu_calls("crm.timeline.comment.list"), 1);
    /* An idempotent update under the same fault is sent again until an answer comes. */
    emu_fault("{\"mode\":\"slow\",\"ms\":1500}");
    struct eres w = {0};
    json_t *items = json_loads("[" CONTACT_FIELDS(1, 5) "]", 0, NULL);
    ck_assert_int_eq(loyd_plugin_bitrix24.connector->write(tenant, items, on_write, &w), 0);
    json_decref(items);
    while (stats().transport_errors < 2)
        uv_run(&loop, UV_RUN_ONCE);
    emu_fault("{\"mode\":\"none\"}");
    run_until(&w.done);
    ck_assert_int_eq(w.results[0], 0);
}
END_TEST

START_TEST(test_sync_pages_and_sweep)
{
    json_decref(emu_call("loyd.emu.clock", "{\"now_ms\":1767225600000}")); /* 2026-01-01 */
    struct loyd_buf b = {0};
    for (int k = 0; k < 3; k++) { /* 120 contacts in three batches of 40 */
        loyd_buf_reset(&b);
        loyd_buf_printf(&b, "{\"halt\":0,\"cmd\":{");
        for (int i = 0; i < 40; i++)
            loyd_buf_printf(&b, "%s\"a%d\":\"crm.contact.add?fields[NAME]=C%d\"", i ? "," : "",
                            i, k * 40 + i);
        loyd_buf_printf(&b, "}}");
        json_decref(crm("batch", b.data));
    }
    loyd_buf_free(&b);
    open_tenant(NULL);
    bool more;
    char after[24] = "";
    int pages = 0, total = 0;
    long long last = 0;
    do {
        json_t *p = sync_page("contact", after, 0, &more);
        pages++;
        size_t i;
        json_t *s;
        json_array_foreach(p, i, s) {
            long long id = atoll(json_string_value(json_object_get(s, "id")));
            ck_assert_int_gt(id, last);
            last = id;
            total++;
        }
        ck_assert_int_eq(json_array_size(p), pages < 3 ? 50 : 20);
        ck_assert(more == (pages < 3));
        snprintf(after, sizeof(after), "%lld", last);
        json_decref(p);
    } while (more && pages < 10);
    ck_assert_int_eq(pages, 3);
    ck_assert_int_eq(total, 120);

    /* sweep: only what changed since */
    json_decref(emu_call("loyd.emu.clock", "{\"advance_ms\":3600000}"));
    json_decref(crm("crm.contact.update", "{\"id\":7,\"fields\":{\"NAME\":\"Z\"}}"));
    json_decref(crm("crm.contact.update", "{\"id\":99,\"fields\":{\"NAME\":\"Z\"}}"));
    json_t *p = sync_page("contact", NULL, 1767225600000ull + 1800000ull, &more);
    ck_assert_int_eq(json_array_size(p), 2);
    ck_assert(!more);
    ck_assert_str_eq(json_string_value(json_object_get(json_array_get(p, 0), "id")), "7");
    ck_assert_str_eq(json_string_value(json_object_get(json_array_get(p, 1), "id")), "99");
    ck_assert_str_eq(json_string_value(json_object_get(json_array_get(p, 1), "name")), "Z");
    json_decref(p);
    /* deals page too */
    json_decref(crm("crm.deal.add", "{\"fields\":{\"OPPORTUNITY\":\"5.5\",\"CONTACT_ID\":3,"
                                    "\"STAGE_ID\":\"WON\"}}"));
    p = sync_page("deal", NULL, 0, &more);
    ck_assert_int_eq(json_array_size(p), 1);
    ck_assert_int_eq(json_integer_value(json_object_get(json_array_get(p, 0), "amount")), 550);
    ck_assert_str_eq(json_string_value(json_object_get(json_array_get(p, 0), "contact_id")), "3");
    ck_assert(json_is_true(json_object_get(json_array_get(p, 0), "won")));
    json_decref(p);
}
END_TEST

START_TEST(test_shared_bucket_per_portal)
{
    open_tenant(NULL);
    void *first = tenant;
    struct loyd_host_ctx *ctx2 = loyd_host_ctx_create(&host, "bitrix24", "beta");
    struct loyd_host_ctx *ctx3 = loyd_host_ctx_create(&host, "bitrix24", "gamma");
    char buf[512];
    snprintf(buf, sizeof(buf), "{\"webhook_url\":\"http://127.0.0.1:%d/rest/7/other/\","
                               "\"rate\":\"enterprise\"}", port);
    json_t *c = json_loads(buf, 0, NULL);
    void *second = NULL, *third = NULL;
    ck_assert_int_eq(loyd_plugin_bitrix24.connector->tenant_open(pstate, ctx2, c, &second), 0);
    json_decref(c);
    /* Another portal (another host name) has its own. */
    snprintf(buf, sizeof(buf), "{\"webhook_url\":\"http://localhost:%d/rest/1/code1/\"}", port);
    c = json_loads(buf, 0, NULL);
    ck_assert_int_eq(loyd_plugin_bitrix24.connector->tenant_open(pstate, ctx3, c, &third), 0);
    json_decref(c);
    const struct b24_portal *a = b24_rest_portal(((struct b24_tenant *)first)->rest);
    const struct b24_portal *b = b24_rest_portal(((struct b24_tenant *)second)->rest);
    const struct b24_portal *d = b24_rest_portal(((struct b24_tenant *)third)->rest);
    /* One portal, one bucket: the first tenant's limits hold for both. */
    ck_assert_ptr_eq(a, b);
    ck_assert_ptr_ne(a, d);
    ck_assert_uint_eq(b->lim.drain_milli, 1000000);
    ck_assert_uint_eq(b->lim.burst, 1000);
    ck_assert_uint_eq(d->lim.drain_milli, 2000);
    ck_assert_uint_eq(d->lim.burst, 50);
    loyd_plugin_bitrix24.connector->tenant_close(second);
    loyd_plugin_bitrix24.connector->tenant_close(third);
    loyd_host_ctx_destroy(ctx2);
    loyd_host_ctx_destroy(ctx3);
    /* A bad config is refused with a message. */
    c = json_loads("{\"rate\":\"gold\"}", 0, NULL);
    ck_assert_int_eq(loyd_plugin_bitrix24.connector->tenant_open(pstate, t_ctx, c, &second),
                     LOYD_ECONFIG);
    json_decref(c);
}
END_TEST

Suite *b24_connector_suite(void)
{
    Suite *s = suite_create("b24_connector");
    TCase *tc = tcase_create("unit");
    tcase_add_test(tc, test_money_parser);
    suite_add_tcase(s, tc);
    tc = tcase_create("rest");
    tcase_add_checked_fixture(tc, setup, teardown);
    tcase_set_timeout(tc, 20);
    tcase_add_test(tc, test_enrich_won_deal_with_contact);
    tcase_add_test(tc, test_enrich_deleted);
    tcase_add_test(tc, test_enrich_coalesced);
    tcase_add_test(tc, test_write_ops_and_provision_once);
    tcase_add_test(tc, test_write_50_items_one_call);
    tcase_add_test(tc, test_bucket_respected);
    tcase_add_test(tc, test_503_burst_then_success);
    tcase_add_test(tc, test_429_operating_limit);
    tcase_add_test(tc, test_429_without_reset_time);
    tcase_add_test(tc, test_429_first_retry_at_last_reset);
    tcase_add_test(tc, test_wrong_webhook_code);
    tcase_add_test(tc, test_oauth_expired_one_refresh);
    tcase_add_test(tc, test_oauth_invalid_grant);
    tcase_add_test(tc, test_close_during_refresh);
    tcase_add_test(tc, test_moved_portal_followed_with_post);
    tcase_add_test(tc, test_uncertain_add_not_duplicated);
    tcase_add_test(tc, test_add_not_blindly_retried);
    tcase_add_test(tc, test_sync_pages_and_sweep);
    tcase_add_test(tc, test_shared_bucket_per_portal);
    suite_add_tcase(s, tc);
    return s;
}
