/* SPDX-License-Identifier: MIT */
/*
 * The fields loyd provisions on a Bitrix24 portal explain themselves: the connector's first write
 * makes UF_CRM_LOYD_* with labels in Russian and English (and an English LABEL for the portal's
 * other languages), the point fields as numbers with two decimals, and the emulator gives the
 * labels back per language as crm.*.userfield.list {filter: {LANG}} does on a portal.
 *
 * Same fixture as check_b24_connector.c: a real host (core/host.c) on a libuv loop, the real HTTP
 * client, a temporary SQLite store, the emulator on 127.0.0.1 (port chosen by the OS).
 */
#include <check.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <uv.h>

#include "../../connectors/bitrix24/b24.h"
#include "../../connectors/bitrix24/emu.h"
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

/* ---- loop and emulator helpers ------------------------------------------------------------ */

static void run_until(const bool *flag)
{
    while (!*flag)
        uv_run(&loop, UV_RUN_ONCE);
}

struct hres {
    bool done;
    int err;
    json_t *body;
};

static void on_http(void *arg, int err, const struct loyd_http_response *res)
{
    struct hres *h = arg;
    h->err = err;
    h->body = err == 0 ? json_loadb(res->body, res->body_len, 0, NULL) : NULL;
    h->done = true;
}

/* A CRM call through the emulator's webhook; @return its result (owned). */
static json_t *crm(const char *method, const char *json_body)
{
    static const char *const hdrs[] = {"Content-Type: application/json", NULL};
    char url[256];
    struct hres h = {0};
    snprintf(url, sizeof(url), "http://127.0.0.1:%d/rest/1/code1/%s", port, method);
    struct loyd_http_opts o = {.method = "POST", .url = url, .headers = hdrs,
                               .body = json_body, .body_len = strlen(json_body)};
    ck_assert_int_eq(loyd_http_client_start(client, &o, on_http, &h), 0);
    run_until(&h.done);
    ck_assert_int_eq(h.err, 0);
    ck_assert_ptr_nonnull(h.body);
    json_t *res = json_incref(json_object_get(h.body, "result"));
    ck_assert_msg(res != NULL, "%s failed: %s", method,
                  json_string_value(json_object_get(h.body, "error_description")));
    json_decref(h.body);
    return res;
}

/* The definition of field @p name as crm.<entity>.userfield.list gives it in @p lang (NULL:
 * without LANG); @return owned, or NULL when the portal has no such field. */
static json_t *uf_get(const char *entity, const char *name, const char *lang)
{
    char method[64], body[256];
    snprintf(method, sizeof(method), "crm.%s.userfield.list", entity);
    if (lang != NULL)
        snprintf(body, sizeof(body), "{\"filter\":{\"FIELD_NAME\":\"%s\",\"LANG\":\"%s\"}}", name,
                 lang);
    else
        snprintf(body, sizeof(body), "{\"filter\":{\"FIELD_NAME\":\"%s\"}}", name);
    json_t *r = crm(method, body);
    ck_assert_uint_le(json_array_size(r), 1);
    json_t *u = json_incref(json_array_get(r, 0));
    json_decref(r);
    return u;
}

static const char *str(const json_t *o, const char *key)
{
    return json_string_value(json_object_get(o, key));
}

/* Every label of field @p name in @p lang is @p want. */
static void assert_labels(const char *entity, const char *name, const char *lang,
                          const char *want)
{
    json_t *u = uf_get(entity, name, lang);
    ck_assert_msg(u != NULL, "%s is not on the portal", name);
    static const char *const keys[] = {"EDIT_FORM_LABEL", "LIST_COLUMN_LABEL",
                                       "LIST_FILTER_LABEL"};
    for (size_t i = 0; i < sizeof(keys) / sizeof(keys[0]); i++)
        ck_assert_msg(str(u, keys[i]) != NULL && strcmp(str(u, keys[i]), want) == 0,
                      "%s %s [%s]: '%s', want '%s'", name, keys[i], lang,
                      str(u, keys[i]) ? str(u, keys[i]) : "(none)", want);
    json_decref(u);
}

/* ---- fixture ------------------------------------------------------------------------------ */

static void setup(void)
{
    snprintf(dir, sizeof(dir), "%s/loyd-b24f-XXXXXX", getenv("TMPDIR") ? getenv("TMPDIR") : "/tmp");
    ck_assert_ptr_nonnull(mkdtemp(dir));
    snprintf(dbpath, sizeof(dbpath), "%s/loyd.db", dir);
    ck_assert_int_eq(uv_loop_init(&loop), 0);
    ck_assert_int_eq(loyd_store_open(&loop, dbpath, &store), 0);
    ck_assert_int_eq(loyd_http_client_create(&loop, NULL, &client), 0);
    loyd_host_init(&host, &loop, client, store);
    emu_ctx = loyd_host_ctx_create(&host, "bitrix24", NULL);
    plug_ctx = loyd_host_ctx_create(&host, "bitrix24", NULL);
    ck_assert_int_eq(loyd_plugin_bitrix24.init(&loyd_host_api, plug_ctx, NULL, &pstate), 0);
    json_t *o = json_pack("{s:s, s:s, s:s, s:i, s:{s:i, s:i}}", "member_id", MEMBER,
                          "webhook_user", "1", "webhook_code", "code1", "seed", 7, "rate",
                          "drain", 1000, "burst", 1000);
    ck_assert_int_eq(b24emu_emulator.start(&loyd_host_api, emu_ctx, "127.0.0.1:0", o,
                                           &emu_state, &port),
                     0);
    json_decref(o);
}

static void open_tenant(void)
{
    char url[128];
    snprintf(url, sizeof(url), "http://127.0.0.1:%d/rest/1/code1/", port);
    json_t *c = json_pack("{s:s, s:i, s:i}", "webhook_url", url, "rate_per_sec", 1000,
                          "rate_burst", 1000);
    t_ctx = loyd_host_ctx_create(&host, "bitrix24", "acme");
    ck_assert_int_eq(loyd_plugin_bitrix24.connector->tenant_open(pstate, t_ctx, c, &tenant), 0);
    json_decref(c);
}

static void on_closed(void *arg)
{
    (*(int *)arg)++;
}

static void teardown(void)
{
    int closed = 0;
    if (tenant != NULL)
        loyd_plugin_bitrix24.connector->tenant_close(tenant);
    tenant = NULL;
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
    ck_assert_int_eq(uv_loop_close(&loop), 0);
    char cmd[300];
    snprintf(cmd, sizeof(cmd), "rm -rf '%s'", dir);
    ck_assert_int_eq(system(cmd), 0);
}

struct wres {
    bool done;
    int results[8];
    size_t n;
};

static void on_write(void *arg, const int *results, size_t n)
{
    struct wres *r = arg;
    ck_assert_uint_le(n, 8);
    memcpy(r->results, results, n * sizeof(int));
    r->n = n;
    r->done = true;
}

static void write_items(const char *json, struct wres *r)
{
    json_t *items = json_loads(json, 0, NULL);
    ck_assert_ptr_nonnull(items);
    memset(r, 0, sizeof(*r));
    ck_assert_int_eq(loyd_plugin_bitrix24.connector->write(tenant, items, on_write, r), 0);
    json_decref(items);
    run_until(&r->done);
}

/* ---- tests -------------------------------------------------------------------------------- */

START_TEST(test_provisioned_fields_are_labelled)
{
    json_decref(crm("crm.contact.add", "{\"fields\":{\"NAME\":\"Anna\"}}"));
    json_decref(crm("crm.deal.add", "{\"fields\":{\"CONTACT_ID\":1}}"));
    open_tenant();
    struct wres r;
    write_items("[{\"op\":\"contact.fields\",\"uid\":\"f1\",\"contact_id\":\"1\","
                "\"fields\":{\"balance\":455,\"tier\":\"gold\",\"review_bonus_paid\":true}},"
                "{\"op\":\"deal.mark\",\"uid\":\"m1\",\"deal_id\":\"1\",\"awarded\":3750}]",
                &r);
    ck_assert_uint_eq(r.n, 2);
    ck_assert_int_eq(r.results[0], 0);
    ck_assert_int_eq(r.results[1], 0);

    assert_labels("contact", "UF_CRM_LOYD_BALANCE", "en", "Loyalty: balance (points)");
    assert_labels("contact", "UF_CRM_LOYD_BALANCE", "ru", "Лояльность: баланс (баллы)");
    assert_labels("contact", "UF_CRM_LOYD_TIER", "en", "Loyalty: tier");
    assert_labels("contact", "UF_CRM_LOYD_TIER", "ru", "Лояльность: уровень");
    assert_labels("deal", "UF_CRM_LOYD_AWARDED", "en", "Loyalty: points for this deal");
    assert_labels("deal", "UF_CRM_LOYD_AWARDED", "ru", "Лояльность: баллы за сделку");
    assert_labels("contact", "UF_CRM_LOYD_REVIEW_BONUS_PAID", "en", "Loyalty: review bonus paid");
    assert_labels("contact", "UF_CRM_LOYD_REVIEW_BONUS_PAID", "ru",
                  "Лояльность: review bonus paid");
    /* A language loyd sends no label for gets the plain LABEL, in English. */
    assert_labels("contact", "UF_CRM_LOYD_BALANCE", "de", "Loyalty: balance (points)");

    /* Points are numbers with two decimals (455, 3.5), not integers. */
    static const char *const points[][2] = {{"contact", "UF_CRM_LOYD_BALANCE"},
                                            {"deal", "UF_CRM_LOYD_AWARDED"}};
    for (size_t i = 0; i < 2; i++) {
        json_t *u = uf_get(points[i][0], points[i][1], NULL);
        ck_assert_ptr_nonnull(u);
        ck_assert_str_eq(str(u, "USER_TYPE_ID"), "double");
        ck_assert_int_eq(
            json_integer_value(json_object_get(json_object_get(u, "SETTINGS"), "PRECISION")), 2);
        /* Without LANG a portal lists no labels at all. */
        ck_assert_ptr_null(json_object_get(u, "EDIT_FORM_LABEL"));
        json_decref(u);
    }
    json_t *u = uf_get("contact", "UF_CRM_LOYD_TIER", NULL);
    ck_assert_str_eq(str(u, "USER_TYPE_ID"), "string");
    json_decref(u);

    /* The values landed in the new fields, the deal's mark included. */
    json_t *c = crm("crm.contact.get", "{\"id\":1}");
    ck_assert_str_eq(str(c, "UF_CRM_LOYD_BALANCE"), "455");
    ck_assert_str_eq(str(c, "UF_CRM_LOYD_TIER"), "gold");
    json_decref(c);
    json_t *d = crm("crm.deal.get", "{\"id\":1}");
    ck_assert_str_eq(str(d, "UF_CRM_LOYD_AWARDED"), "3750");
    json_decref(d);
}
END_TEST

/* The emulator keeps labels as a portal does: a string for every language, a map for the
 * languages it names with LABEL for the rest, nothing for a language with neither. */
START_TEST(test_emulator_label_languages)
{
    json_decref(crm("crm.contact.userfield.add",
                    "{\"fields\":{\"FIELD_NAME\":\"ONE\",\"USER_TYPE_ID\":\"string\","
                    "\"EDIT_FORM_LABEL\":\"Same everywhere\"}}"));
    json_decref(crm("crm.contact.userfield.add",
                    "{\"fields\":{\"FIELD_NAME\":\"TWO\",\"USER_TYPE_ID\":\"string\","
                    "\"LABEL\":\"Fallback\",\"EDIT_FORM_LABEL\":{\"ru\":\"Два\",\"xx\":\"?\"}}}"));
    json_t *u = uf_get("contact", "UF_CRM_ONE", "ru");
    ck_assert_str_eq(str(u, "EDIT_FORM_LABEL"), "Same everywhere");
    ck_assert(json_is_null(json_object_get(u, "LIST_COLUMN_LABEL")));
    json_decref(u);
    u = uf_get("contact", "UF_CRM_ONE", "EN");
    ck_assert_str_eq(str(u, "EDIT_FORM_LABEL"), "Same everywhere");
    json_decref(u);
    u = uf_get("contact", "UF_CRM_TWO", "ru");
    ck_assert_str_eq(str(u, "EDIT_FORM_LABEL"), "Два");
    ck_assert_str_eq(str(u, "LIST_COLUMN_LABEL"), "Fallback");
    ck_assert_str_eq(str(u, "HELP_MESSAGE"), "Fallback");
    json_decref(u);
    u = uf_get("contact", "UF_CRM_TWO", "en");
    ck_assert_str_eq(str(u, "EDIT_FORM_LABEL"), "Fallback");
    json_decref(u);
    /* A language the portal does not have has no labels. */
    u = uf_get("contact", "UF_CRM_TWO", "xx");
    ck_assert(json_is_null(json_object_get(u, "EDIT_FORM_LABEL")));
    json_decref(u);
}
END_TEST

Suite *b24_fields_suite(void)
{
    Suite *s = suite_create("b24_fields");
    TCase *tc = tcase_create("fields");
    tcase_add_checked_fixture(tc, setup, teardown);
    tcase_set_timeout(tc, 30);
    tcase_add_test(tc, test_provisioned_fields_are_labelled);
    tcase_add_test(tc, test_emulator_label_languages);
    suite_add_tcase(s, tc);
    return s;
}
