/* SPDX-License-Identifier: MIT */
/*
 * The Bitrix24 connector's webhook verification and parsing, against a fake host whose kv is
 * in memory and whose form parser is the real one.  Payloads are the documented ones.
 */
#include <check.h>
#include <stdarg.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include "../../connectors/bitrix24/b24.h"
#include "form.h"
#include "plugin_loader.h"

static json_t *kv;
static struct loyd_buf logged;

static void fake_log(void *hctx, int level, const char *fmt, ...)
{
    va_list ap;
    char line[512];
    (void)hctx;
    va_start(ap, fmt);
    vsnprintf(line, sizeof(line), fmt, ap);
    va_end(ap);
    loyd_buf_printf(&logged, "<%d>%s\n", level, line);
}

static int fake_kv_get(void *hctx, const char *key, char **out)
{
    const char *v = json_string_value(json_object_get(kv, key));
    (void)hctx;
    *out = v ? strdup(v) : NULL;
    return 0;
}

static int fake_kv_put(void *hctx, const char *key, const char *value, loyd_done_cb cb, void *arg)
{
    (void)hctx;
    json_object_set_new(kv, key, json_string(value));
    cb(arg, 0);
    return 0;
}

static int fake_form_parse(void *hctx, const char *body, size_t len, json_t **out,
                           struct loyd_errbuf *err)
{
    struct loyd_buf msg = {0};
    (void)hctx;
    int rc = loyd_form_parse(body, len, NULL, out, &msg);
    if (rc != 0)
        snprintf(err->msg, err->size, "%s", msg.data ? msg.data : "?");
    loyd_buf_free(&msg);
    return rc;
}

static uint64_t fake_now_ms(void *hctx)
{
    (void)hctx;
    return 1736405807000ull;
}

static const struct loyd_host_api host = {
    .abi = LOYD_PLUGIN_ABI,
    .size = sizeof(struct loyd_host_api),
    .log = fake_log,
    .now_ms = fake_now_ms,
    .kv_get = fake_kv_get,
    .kv_put = fake_kv_put,
    .form_parse = fake_form_parse,
};

#define TOKEN "51856fefc120afa4b628cc82d3935cce"
#define MEMBER "a223c6b3710f85df22e9377d6c4f7553"
#define DEAL_UPDATE(token)                                                                         \
    "event=ONCRMDEALUPDATE&event_handler_id=201&data%5BFIELDS%5D%5BID%5D=759&ts=1736405807"        \
    "&auth%5Bdomain%5D=some-domain.bitrix24.com&auth%5Bmember_id%5D=" MEMBER                       \
    "&auth%5Bapplication_token%5D=" token
#define INSTALL(token)                                                                             \
    "event=ONAPPINSTALL&data%5BVERSION%5D=1.0.0&ts=1696527000&auth%5Bmember_id%5D=" MEMBER         \
    "&auth%5Baccess_token%5D=s6p6eclrvim6da22ft9ch94ekreb52lv"                                     \
    "&auth%5Bclient_endpoint%5D=https%3A%2F%2Fsome-domain.bitrix24.com%2Frest%2F"                  \
    "&auth%5Brefresh_token%5D=4s386p3q0tr8dy89xvmt96234v3dljg8&auth%5Bapplication_token%5D=" token

extern const struct loyd_plugin loyd_plugin_bitrix24;

static void *open_tenant(const char *crm_json)
{
    static void *plugin_state;
    json_t *crm = json_loads(crm_json, 0, NULL);
    void *t = NULL;
    ck_assert_ptr_nonnull(crm);
    if (plugin_state == NULL)
        ck_assert_int_eq(loyd_plugin_bitrix24.init(&host, NULL, NULL, &plugin_state), 0);
    ck_assert_int_eq(b24_tenant_open(plugin_state, NULL, crm, &t), 0);
    json_decref(crm);
    return t;
}

/* Opens a tenant with @p crm_json; @return what tenant_open returned (the tenant is closed). */
static int open_rc(const char *crm_json)
{
    void *plugin_state = NULL;
    json_t *crm = json_loads(crm_json, 0, NULL);
    void *t = NULL;
    ck_assert_ptr_nonnull(crm);
    ck_assert_int_eq(loyd_plugin_bitrix24.init(&host, NULL, NULL, &plugin_state), 0);
    int rc = b24_tenant_open(plugin_state, NULL, crm, &t);
    json_decref(crm);
    if (rc == 0)
        b24_tenant_close(t);
    loyd_plugin_bitrix24.destroy(plugin_state);
    return rc;
}

static int parse(void *t, const char *body, const char *ctype, json_t **notices, char *msg)
{
    struct loyd_http_header h = {"Content-Type", ctype};
    struct loyd_http_request req = {.method = "POST", .path = "/hooks/acme", .query = "",
                                    .headers = &h, .n_headers = ctype ? 1 : 0, .body = body,
                                    .body_len = strlen(body), .remote_addr = "127.0.0.1"};
    struct loyd_webhook wh = {.tenant = "acme", .http = &req};
    struct loyd_errbuf eb = {msg, 256};
    msg[0] = '\0';
    *notices = NULL;
    return b24_webhook_parse(t, &wh, notices, &eb);
}

static const char *FORM = "application/x-www-form-urlencoded";

static void setup(void)
{
    kv = json_object();
    loyd_buf_reset(&logged);
}

static void teardown(void)
{
    json_decref(kv);
}

START_TEST(test_documented_update_with_configured_token)
{
    void *t = open_tenant("{\"application_token\":\"" TOKEN "\"}");
    json_t *n;
    char msg[256];

    ck_assert_int_eq(parse(t, DEAL_UPDATE(TOKEN), FORM, &n, msg), 0);
    ck_assert_int_eq(json_array_size(n), 1);
    json_t *x = json_array_get(n, 0);
    ck_assert_str_eq(json_string_value(json_object_get(x, "entity")), "deal");
    ck_assert_str_eq(json_string_value(json_object_get(x, "id")), "759");
    ck_assert_str_eq(json_string_value(json_object_get(x, "action")), "update");
    ck_assert_str_eq(json_string_value(json_object_get(x, "member_id")), MEMBER);
    ck_assert_int_eq(json_integer_value(json_object_get(x, "ts")), 1736405807);
    json_decref(n);
    b24_tenant_close(t);
}
END_TEST

START_TEST(test_wrong_or_missing_token_refused)
{
    void *t = open_tenant("{\"application_token\":\"" TOKEN "\"}");
    json_t *n;
    char msg[256];

    ck_assert_int_eq(parse(t, DEAL_UPDATE("51856fefc120afa4b628cc82d3935ccf"), FORM, &n, msg),
                     LOYD_EAUTH);
    ck_assert_ptr_null(n);
    ck_assert_ptr_nonnull(strstr(msg, "wrong auth[application_token]"));
    ck_assert_ptr_null(strstr(msg, TOKEN)); /* the secret is never echoed */
    ck_assert_int_eq(parse(t, DEAL_UPDATE(TOKEN "x"), FORM, &n, msg), LOYD_EAUTH);
    ck_assert_int_eq(parse(t, DEAL_UPDATE(""), FORM, &n, msg), LOYD_EAUTH);
    ck_assert_int_eq(parse(t, "event=ONCRMDEALUPDATE&data%5BFIELDS%5D%5BID%5D=1", FORM, &n, msg),
                     LOYD_EAUTH);
    b24_tenant_close(t);

    /* No token configured and no app installed: nothing can be verified, so nothing passes. */
    t = open_tenant("{}");
    ck_assert_int_eq(parse(t, DEAL_UPDATE(TOKEN), FORM, &n, msg), LOYD_EAUTH);
    ck_assert_ptr_nonnull(strstr(msg, "no application token is known"));
    b24_tenant_close(t);
}
END_TEST

START_TEST(test_member_id_pinned)
{
    void *t = open_tenant("{\"application_token\":\"" TOKEN "\",\"member_id\":\"other\"}");
    json_t *n;
    char msg[256];
    ck_assert_int_eq(parse(t, DEAL_UPDATE(TOKEN), FORM, &n, msg), LOYD_EAUTH);
    ck_assert_ptr_nonnull(strstr(msg, "another portal"));
    b24_tenant_close(t);
}
END_TEST

START_TEST(test_malformed)
{
    void *t = open_tenant("{\"application_token\":\"" TOKEN "\"}");
    json_t *n;
    char msg[256];

    ck_assert_int_eq(parse(t, "{\"event\":\"x\"}", "application/json", &n, msg), LOYD_EPARSE);
    ck_assert_ptr_nonnull(strstr(msg, "expected application/x-www-form-urlencoded"));
    ck_assert_int_eq(parse(t, "a=%zz", FORM, &n, msg), LOYD_EPARSE);
    ck_assert_int_eq(parse(t, "auth%5Bmember_id%5D=" MEMBER, FORM, &n, msg), LOYD_EPARSE);
    ck_assert_ptr_nonnull(strstr(msg, "no 'event' field"));
    const char *no_id = "event=ONCRMDEALUPDATE&data%5BFIELDS%5D%5BID%5D=abc&auth%5Bmember_id%5D="
                        MEMBER "&auth%5Bapplication_token%5D=" TOKEN;
    ck_assert_int_eq(parse(t, no_id, FORM, &n, msg), LOYD_EPARSE);
    ck_assert_ptr_nonnull(strstr(msg, "numeric data[FIELDS][ID]"));
    /* A verified event loyd does not act on is accepted with no notices. */
    const char *lead = "event=ONCRMLEADADD&data%5BFIELDS%5D%5BID%5D=5&auth%5Bmember_id%5D=" MEMBER
                       "&auth%5Bapplication_token%5D=" TOKEN;
    ck_assert_int_eq(parse(t, lead, FORM, &n, msg), 0);
    ck_assert_int_eq(json_array_size(n), 0);
    json_decref(n);
    b24_tenant_close(t);
}
END_TEST

START_TEST(test_install_then_events)
{
    /* An OAuth app (client_id set): the install also hands over the app's first token pair. */
    void *t = open_tenant("{\"client_id\":\"app.1\"}");
    json_t *n;
    char msg[256];

    ck_assert_int_eq(parse(t, INSTALL(TOKEN), FORM, &n, msg), 0);
    ck_assert_str_eq(json_string_value(json_object_get(json_array_get(n, 0), "action")),
                     "install");
    json_decref(n);
    ck_assert_str_eq(json_string_value(json_object_get(kv, "application_token:" MEMBER)), TOKEN);
    json_t *pair = json_loads(json_string_value(json_object_get(kv, "oauth")), 0, NULL);
    ck_assert_str_eq(json_string_value(json_object_get(pair, "refresh")),
                     "4s386p3q0tr8dy89xvmt96234v3dljg8");
    ck_assert_str_eq(json_string_value(json_object_get(pair, "access")),
                     "s6p6eclrvim6da22ft9ch94ekreb52lv");
    ck_assert_str_eq(json_string_value(json_object_get(pair, "endpoint")),
                     "https://some-domain.bitrix24.com/rest/");
    json_decref(pair);
    ck_assert_int_eq(parse(t, DEAL_UPDATE(TOKEN), FORM, &n, msg), 0);
    json_decref(n);
    ck_assert_int_eq(parse(t, DEAL_UPDATE("0000000000000000000000000000000"), FORM, &n, msg),
                     LOYD_EAUTH);
    /* A forged second install cannot replace the real token. */
    ck_assert_int_eq(parse(t, INSTALL("forgedforgedforgedforgedforged00"), FORM, &n, msg),
                     LOYD_EAUTH);
    ck_assert_str_eq(json_string_value(json_object_get(kv, "application_token:" MEMBER)), TOKEN);
    b24_tenant_close(t);

    /* After a restart the token comes back from the store. */
    t = open_tenant("{}");
    ck_assert_int_eq(parse(t, DEAL_UPDATE(TOKEN), FORM, &n, msg), 0);
    json_decref(n);
    b24_tenant_close(t);
}
END_TEST

#define LOOPBACK_ONLY                                                                              \
    "http:// is accepted only for a loopback address (127.0.0.1, ::1, localhost); use https://"

START_TEST(test_http_only_for_loopback)
{
    /* https anywhere; plain http only to this machine (the emulator, a local proxy). */
    static const char *const ok[] = {
        "https://shop.bitrix24.ru/rest/1/abc/", "http://127.0.0.1:8080/rest/1/abc/",
        "http://127.3.4.5/rest/1/abc/",         "http://localhost/rest/1/abc/",
        "HTTP://LocalHost:99/rest/1/abc/",      "http://[::1]:9000/rest/1/abc/",
    };
    static const char *const refused[] = {
        "http://shop.bitrix24.ru/rest/1/abc/",     "http://10.0.0.1/rest/1/abc/",
        "http://127.0.0.1.example.com/rest/1/a/",  "http://localhost.example.com/rest/1/a/",
        "http://127.0.0.1@shop.example.com/rest/1/a/", "http://[::2]/rest/1/abc/",
        "http://128.0.0.1/rest/1/abc/",
    };
    char buf[256];
    for (size_t i = 0; i < sizeof(ok) / sizeof(ok[0]); i++) {
        snprintf(buf, sizeof(buf), "{\"webhook_url\":\"%s\"}", ok[i]);
        loyd_buf_reset(&logged);
        ck_assert_msg(open_rc(buf) == 0, "%s refused: %s", ok[i], logged.data);
        ck_assert_ptr_null(strstr(logged.data ? logged.data : "", "https://"));
    }
    for (size_t i = 0; i < sizeof(refused) / sizeof(refused[0]); i++) {
        snprintf(buf, sizeof(buf), "{\"webhook_url\":\"%s\"}", refused[i]);
        loyd_buf_reset(&logged);
        ck_assert_msg(open_rc(buf) == LOYD_ECONFIG, "%s accepted", refused[i]);
        ck_assert_ptr_nonnull(strstr(logged.data, "crm.webhook_url: " LOOPBACK_ONLY));
    }
    /* The OAuth app's addresses follow the same rule. */
    loyd_buf_reset(&logged);
    ck_assert_int_eq(
        open_rc("{\"client_id\":\"app.1\",\"rest_url\":\"http://shop.example.com/rest/\"}"),
        LOYD_ECONFIG);
    ck_assert_ptr_nonnull(strstr(logged.data, "crm.rest_url: " LOOPBACK_ONLY));
    loyd_buf_reset(&logged);
    ck_assert_int_eq(open_rc("{\"client_id\":\"app.1\",\"oauth_url\":"
                             "\"http://oauth.example.com/oauth/token/\"}"),
                     LOYD_ECONFIG);
    ck_assert_ptr_nonnull(strstr(logged.data, "crm.oauth_url: " LOOPBACK_ONLY));
    loyd_buf_reset(&logged);
    ck_assert_int_eq(open_rc("{\"client_id\":\"app.1\",\"rest_url\":\"http://127.0.0.1:1/rest/\","
                             "\"oauth_url\":\"http://[::1]:2/oauth/token/\"}"),
                     0);
    /* Another scheme is no URL loyd can call. */
    loyd_buf_reset(&logged);
    ck_assert_int_eq(open_rc("{\"webhook_url\":\"ftp://shop.example.com/rest/1/abc/\"}"),
                     LOYD_ECONFIG);
    ck_assert_ptr_nonnull(strstr(logged.data, "crm.webhook_url: expected an https:// URL"));
}
END_TEST

START_TEST(test_schema_is_the_connectors)
{
    const struct loyd_plugin *p;
    struct loyd_buf err = {0};
    void *dl;
    ck_assert_int_eq(loyd_plugin_find("bitrix24", NULL, &p, &dl, &err), 0);
    ck_assert_ptr_eq(loyd_plugin_connector(p)->tenant_config, b24_tenant_config);
    ck_assert_ptr_eq(loyd_plugin_connector(p)->webhook_parse, b24_webhook_parse);
    loyd_buf_free(&err);
}
END_TEST

Suite *b24_webhook_suite(void)
{
    Suite *s = suite_create("b24_webhook");
    TCase *tc = tcase_create("verify");
    tcase_add_checked_fixture(tc, setup, teardown);
    tcase_add_test(tc, test_documented_update_with_configured_token);
    tcase_add_test(tc, test_wrong_or_missing_token_refused);
    tcase_add_test(tc, test_member_id_pinned);
    tcase_add_test(tc, test_malformed);
    tcase_add_test(tc, test_install_then_events);
    tcase_add_test(tc, test_http_only_for_loopback);
    tcase_add_test(tc, test_schema_is_the_connectors);
    suite_add_tcase(s, tc);
    return s;
}
