/* SPDX-License-Identifier: MIT */
/*
 * The plugin loader and the example plugin, against a fake host that records log calls:
 * built-in and dlopen'ed plugins load through one path, an ABI mismatch is refused before
 * anything else of the plugin is touched, config is validated against the plugin's schema.
 */
#include <check.h>
#include <errno.h>
#include <stdarg.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include "plugin_loader.h"

static struct loyd_buf logged;

static void fake_log(void *hctx, int level, const char *fmt, ...)
{
    va_list ap;
    (void)hctx;
    loyd_buf_printf(&logged, "<%d>", level);
    va_start(ap, fmt);
    char line[512];
    vsnprintf(line, sizeof(line), fmt, ap);
    va_end(ap);
    loyd_buf_printf(&logged, "%s\n", line);
}

static const struct loyd_host_api fake_host = {
    .abi = LOYD_PLUGIN_ABI,
    .size = sizeof(struct loyd_host_api),
    .log = fake_log,
};

static void setup(void)
{
    loyd_buf_reset(&logged);
}

static char *so_path(const char *name)
{
    const char *dir = getenv("LOYD_PLUGIN_DIR");
    ck_assert_msg(dir != NULL, "LOYD_PLUGIN_DIR is not set (run through make check)");
    return loyd_xasprintf("%s/%s", dir, name);
}

START_TEST(test_builtin_example_loads_and_runs)
{
    struct loyd_plugin_handle *h = NULL;
    struct loyd_buf err = {0};
    json_t *cfg = json_pack("{s:s}", "label", "shop");

    ck_assert_int_eq(loyd_plugin_load("example", NULL, cfg, &fake_host, NULL, &h, &err), 0);
    ck_assert_ptr_null(h->dl);
    ck_assert_str_eq(h->plugin->version, "1.0.0");
    json_t *ev = json_pack("{s:s}", "type", "deal.won");
    json_t *effects = json_array();
    h->plugin->on_event(h->state, ev, effects);
    h->plugin->on_event(h->state, ev, effects);
    loyd_plugin_unload(h);
    ck_assert_ptr_nonnull(strstr(logged.data, "shop: ready"));
    ck_assert_ptr_nonnull(strstr(logged.data, "shop: saw 2 events"));
    json_decref(ev);
    json_decref(effects);
    json_decref(cfg);
    loyd_buf_free(&err);
}
END_TEST

START_TEST(test_config_defaults_and_unknown_key)
{
    struct loyd_plugin_handle *h = NULL;
    struct loyd_buf err = {0};

    ck_assert_int_eq(loyd_plugin_load("example", NULL, NULL, &fake_host, NULL, &h, &err), 0);
    ck_assert_str_eq(json_string_value(json_object_get(h->config, "label")), "example");
    loyd_plugin_unload(h);

    json_t *bad = json_pack("{s:s}", "lable", "x");
    h = NULL;
    loyd_buf_reset(&logged);
    ck_assert_int_eq(loyd_plugin_load("example", NULL, bad, &fake_host, NULL, &h, &err),
                     LOYD_ECONFIG);
    ck_assert_ptr_null(h);
    ck_assert_msg(strstr(err.data, "lable") && strstr(err.data, "'label'"), "%s", err.data);
    /* init never ran, so neither did destroy */
    ck_assert_uint_eq(logged.len, 0);
    json_decref(bad);
    loyd_buf_free(&err);
}
END_TEST

START_TEST(test_shared_object_loads)
{
    struct loyd_plugin_handle *h = NULL;
    struct loyd_buf err = {0};
    char *path = so_path("example.so");

    ck_assert_msg(loyd_plugin_load("example_so", path, NULL, &fake_host, NULL, &h, &err) == 0,
                  "%s", err.data);
    ck_assert_ptr_nonnull(h->dl);
    /* A different copy of the descriptor than the built-in one: it really came from dlopen. */
    ck_assert_ptr_ne(h->plugin, loyd_builtin_plugins[0]);
    ck_assert_int_eq(h->plugin->abi, LOYD_PLUGIN_ABI);
    ck_assert_str_eq(h->plugin->name, "example_so");
    loyd_plugin_unload(h);
    ck_assert_ptr_nonnull(strstr(logged.data, "example: ready"));
    free(path);
    loyd_buf_free(&err);
}
END_TEST

START_TEST(test_abi_mismatch_refused)
{
    struct loyd_plugin_handle *h = NULL;
    struct loyd_buf err = {0};
    char *path = so_path("example_bad_abi.so");

    ck_assert_int_eq(loyd_plugin_load("example_so", path, NULL, &fake_host, NULL, &h, &err),
                     LOYD_EABI);
    ck_assert_ptr_null(h);
    ck_assert_msg(strstr(err.data, "ABI 999") != NULL, "%s", err.data);
    /* Refused before init: the plugin never logged anything. */
    ck_assert_uint_eq(logged.len, 0);
    free(path);
    loyd_buf_free(&err);
}
END_TEST

START_TEST(test_missing_and_malformed)
{
    const struct loyd_plugin *p;
    struct loyd_buf err = {0};
    void *dl;

    ck_assert_int_eq(loyd_plugin_find("nosuch", NULL, &p, &dl, &err), -ENOENT);
    ck_assert_ptr_nonnull(strstr(err.data, "no built-in plugin named 'nosuch'"));
    loyd_buf_reset(&err);
    ck_assert_int_eq(loyd_plugin_find("example", "/nonexistent/x.so", &p, &dl, &err), -ENOENT);
    loyd_buf_reset(&err);
    ck_assert_int_eq(loyd_plugin_find("Bad-Name", NULL, &p, &dl, &err), LOYD_EPLUGIN);
    loyd_buf_reset(&err);
    /* The right file, the wrong symbol. */
    char *path = so_path("example.so");
    ck_assert_int_eq(loyd_plugin_find("other", path, &p, &dl, &err), LOYD_EPLUGIN);
    ck_assert_ptr_nonnull(strstr(err.data, "does not export loyd_plugin_other"));
    free(path);

    struct loyd_plugin bad = {.abi = LOYD_PLUGIN_ABI, .size = 8, .name = "x"};
    loyd_buf_reset(&err);
    ck_assert_int_eq(loyd_plugin_verify(&bad, "test", &err), LOYD_EABI);
    bad.size = sizeof(bad);
    loyd_buf_reset(&err);
    ck_assert_int_eq(loyd_plugin_verify(&bad, "test", &err), LOYD_EPLUGIN); /* no init */
    bad.kind = LOYD_PLUGIN_CONNECTOR;
    ck_assert_ptr_null(loyd_plugin_connector(&bad));
    loyd_buf_free(&err);
}
END_TEST

START_TEST(test_builtin_connectors_are_connectors)
{
    struct loyd_buf err = {0};
    for (size_t i = 0; loyd_builtin_plugins[i] != NULL; i++) {
        const struct loyd_plugin *p = loyd_builtin_plugins[i];
        ck_assert_msg(loyd_plugin_verify(p, "built-in", &err) == 0, "%s", err.data);
    }
    const struct loyd_plugin *p;
    void *dl;
    ck_assert_int_eq(loyd_plugin_find("bitrix24", NULL, &p, &dl, &err), 0);
    ck_assert_ptr_nonnull(loyd_plugin_connector(p));
    ck_assert_ptr_nonnull(loyd_plugin_connector(p)->emulator);
    loyd_buf_free(&err);
}
END_TEST

Suite *plugin_loader_suite(void)
{
    Suite *s = suite_create("plugin_loader");
    TCase *tc = tcase_create("load");
    tcase_add_checked_fixture(tc, setup, NULL);
    tcase_add_test(tc, test_builtin_example_loads_and_runs);
    tcase_add_test(tc, test_config_defaults_and_unknown_key);
    tcase_add_test(tc, test_shared_object_loads);
    tcase_add_test(tc, test_abi_mismatch_refused);
    tcase_add_test(tc, test_missing_and_malformed);
    tcase_add_test(tc, test_builtin_connectors_are_connectors);
    suite_add_tcase(s, tc);
    return s;
}
