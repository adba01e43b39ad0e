/* SPDX-License-Identifier: MIT */
/* Rule packs: pack.conf data loader, settings schema, extends, tenant overrides. */
#include <check.h>
#include <errno.h>
#include <stdlib.h>
#include <string.h>

#include "pack.h"

static char *path_of(const char *rel)
{
    const char *src = getenv("LOYD_SRC");
    return loyd_xasprintf("%s/%s", src != NULL ? src : ".", rel);
}

static struct loyd_pack *load(const char *rel, struct loyd_buf *err, int want_rc)
{
    char *dir = path_of(rel);
    struct loyd_pack *p = NULL;
    int rc = loyd_pack_load(dir, NULL, &p, err);
    ck_assert_msg(rc == want_rc, "%s: rc %d: %s", rel, rc, err->data ? err->data : "");
    free(dir);
    return p;
}

START_TEST(test_retail_loads)
{
    struct loyd_buf err = {0};
    struct loyd_pack *p = load("rules/retail", &err, 0);
    ck_assert_str_eq(p->name, "retail");
    ck_assert_uint_eq(p->nrules, 8);
    ck_assert_str_eq(p->rules[0].name, "10_welcome.lua");
    ck_assert_uint_ge(p->ntests, 9);
    json_t *cb = json_object_get(p->defaults, "cashback_bp");
    ck_assert_int_eq(json_integer_value(json_object_get(cb, "silver")), 500);
    /* An empty {} default for a list becomes an empty JSON array. */
    ck_assert(json_is_array(json_object_get(p->defaults, "campaigns")));
    loyd_pack_destroy(p);
    loyd_buf_free(&err);
}
END_TEST

START_TEST(test_extends_merges)
{
    struct loyd_buf err = {0};
    struct loyd_pack *p = load("tests/data/packs/child", &err, 0);
    ck_assert_str_eq(p->name, "child");
    ck_assert_uint_eq(p->nrules, 9);
    ck_assert_str_eq(p->rules[8].name, "90_vip.lua");
    ck_assert_str_eq(p->rules[8].pack, "child");
    ck_assert_str_eq(p->rules[0].pack, "retail");
    /* The child restated only the default: type and help are inherited. */
    json_t *w = json_object_get(p->schema, "welcome_points");
    ck_assert_str_eq(json_string_value(json_object_get(w, "type")), "int");
    ck_assert_ptr_nonnull(json_object_get(w, "help"));
    ck_assert_int_eq(json_integer_value(json_object_get(p->defaults, "welcome_points")), 1000);
    ck_assert_int_eq(json_integer_value(json_object_get(p->defaults, "vip_bonus")), 50);
    ck_assert_uint_eq(p->ntests, 1); /* the base's tests stay with the base */
    loyd_pack_destroy(p);
    loyd_buf_free(&err);
}
END_TEST

START_TEST(test_overrides_validated)
{
    struct loyd_buf err = {0};
    struct loyd_pack *p = load("rules/retail", &err, 0);
    json_t *eff = NULL;
    json_t *ov = json_loads("{\"cashbak_bp\": {\"gold\": 900}, \"welcome_points\": \"lots\","
                            " \"max_redeem_share_bp\": 12000, \"birthday_dicount_pct\": 10}",
                            0, NULL);
    ck_assert_int_eq(loyd_pack_settings(p, ov, "tenants/shop.conf", &eff, &err), LOYD_ECONFIG);
    ck_assert_ptr_null(eff);
    ck_assert_ptr_nonnull(strstr(err.data, "tenants/shop.conf: unknown setting 'cashbak_bp' for "
                                           "pack 'retail' (did you mean 'cashback_bp'?)"));
    ck_assert_ptr_nonnull(strstr(err.data, "setting 'welcome_points': expected an integer, got "
                                           "a string"));
    ck_assert_ptr_nonnull(strstr(err.data, "setting 'max_redeem_share_bp': 12000 is out of range"));
    ck_assert_ptr_nonnull(strstr(err.data, "(did you mean 'birthday_discount_pct'?)"));
    json_decref(ov);

    /* Maps merge key by key; other values replace. */
    loyd_buf_reset(&err);
    ov = json_loads("{\"cashback_bp\": {\"gold\": 900}, \"welcome_points\": 10}", 0, NULL);
    ck_assert_int_eq(loyd_pack_settings(p, ov, NULL, &eff, &err), 0);
    json_t *cb = json_object_get(eff, "cashback_bp");
    ck_assert_int_eq(json_integer_value(json_object_get(cb, "gold")), 900);
    ck_assert_int_eq(json_integer_value(json_object_get(cb, "bronze")), 300);
    ck_assert_int_eq(json_integer_value(json_object_get(eff, "welcome_points")), 10);
    json_decref(eff);
    json_decref(ov);

    /* A map's values are typed too. */
    loyd_buf_reset(&err);
    ov = json_loads("{\"cashback_bp\": {\"gold\": \"7%\"}}", 0, NULL);
    ck_assert_int_eq(loyd_pack_settings(p, ov, NULL, &eff, &err), LOYD_ECONFIG);
    ck_assert_ptr_nonnull(strstr(err.data, "setting 'cashback_bp'.gold: expected percent_bp"));
    json_decref(ov);
    loyd_pack_destroy(p);
    loyd_buf_free(&err);
}
END_TEST

START_TEST(test_bad_conf_reports_everything)
{
    struct loyd_buf err = {0};
    struct loyd_pack *p = load("tests/data/packs/badconf", &err, LOYD_ECONFIG);
    ck_assert_ptr_null(p);
    ck_assert_ptr_nonnull(strstr(err.data, "pack.conf:4: unknown key 'extend' (did you mean "
                                           "'extends'?)"));
    ck_assert_ptr_nonnull(strstr(err.data, "pack.conf:6: setting 'cashback': unknown type "
                                           "'percnt_bp' (did you mean 'percent_bp'?)"));
    ck_assert_ptr_nonnull(strstr(err.data, "pack.conf:7: setting 'share': default: 20000 is out "
                                           "of range 0..10000"));
    ck_assert_ptr_nonnull(strstr(err.data, "pack.conf:8: setting 'days': unknown field 'hlep' "
                                           "(did you mean 'help'?)"));
    loyd_buf_free(&err);
}
END_TEST

/* pack.conf windows and counters: a wrong name is refused with its file and line. */
START_TEST(test_windows_and_counters_conf)
{
    struct loyd_buf err = {0};
    ck_assert_ptr_null(load("tests/data/packs/badwindows", &err, LOYD_ECONFIG));
    ck_assert_ptr_nonnull(strstr(err.data, "badwindows/pack.conf:4: window 'd9o' is not a window "
                                           "name: \"dN\" (the last N days, 1..36500"));
    ck_assert_ptr_nonnull(strstr(err.data, "badwindows/pack.conf:5: window 'since:2026-02-30': "
                                           "'2026-02-30' is not a valid date"));
    ck_assert_ptr_nonnull(strstr(err.data, "badwindows/pack.conf:7: counter 'stamps': unknown "
                                           "field 'crn' (did you mean 'crm'?)"));
    ck_assert_ptr_nonnull(strstr(err.data, "badwindows/pack.conf:8: counter 'visits': 'crm' must "
                                           "be true or false"));
    ck_assert_ptr_nonnull(strstr(err.data, "badwindows/pack.conf:9: counter 'bad-name': a counter "
                                           "name is 1..64 letters, digits and _"));
    loyd_buf_reset(&err);

    struct loyd_pack *p = load("tests/data/packs/stamps", &err, 0);
    ck_assert_str_eq(json_string_value(json_array_get(p->windows, 0)), "d90");
    ck_assert_str_eq(json_string_value(json_array_get(p->windows, 1)), "since:2026-01-01");
    ck_assert_uint_eq(json_array_size(p->windows), 2);
    ck_assert(json_is_true(json_object_get(json_object_get(p->counters, "stamps"), "crm")));
    ck_assert(
        json_is_false(json_object_get(json_object_get(p->counters, "weekend_visits"), "crm")));
    loyd_pack_destroy(p);
    /* A pack that declares none: no declared counters (any name counts), no extra windows. */
    p = load("rules/retail", &err, 0);
    ck_assert_ptr_null(p->counters);
    ck_assert_uint_eq(json_array_size(p->windows), 0);
    loyd_pack_destroy(p);
    loyd_buf_free(&err);
}
END_TEST

START_TEST(test_extends_loop_and_missing)
{
    struct loyd_buf err = {0};
    ck_assert_ptr_null(load("tests/data/packs/loop_a", &err, LOYD_ECONFIG));
    ck_assert_ptr_nonnull(strstr(err.data, "extends chain loops back"));
    loyd_buf_reset(&err);
    ck_assert_ptr_null(load("tests/data/packs/nope", &err, -ENOENT));
    loyd_buf_free(&err);
}
END_TEST

START_TEST(test_data_loader)
{
    static const char *const cases[][2] = {
        {"return { x = os.exit() }", "global 'os'"},
        {"return { f = function() end }", "a function is not data"},
        {"while true do end", "too much computation"},
        {"return { p = 1.5 }", "$.p: 1.5 is not an integer"},
        {"return { [1] = 1, x = 2 }", "must be a list"},
        {"return { s = ('x'):rep(10) }", "attempt to index"},
        {"return {", "t.conf:1:"},
        {"\x1bLua", "t.conf"},
    };
    for (size_t i = 0; i < LOYD_ARRAY_SIZE(cases); i++) {
        struct loyd_buf err = {0};
        json_t *out = NULL;
        ck_assert_int_eq(
            loyd_pack_load_data("t.conf", cases[i][0], strlen(cases[i][0]), &out, &err),
            LOYD_ECONFIG);
        ck_assert_msg(err.data != NULL && strstr(err.data, cases[i][1]) != NULL, "case %zu: %s", i,
                      err.data ? err.data : "(none)");
        loyd_buf_free(&err);
    }
    json_t *out = NULL;
    struct loyd_buf err = {0};
    const char *ok =
        "local k = 1000\nreturn { a = { 1, 2, 3 }, b = 2 * k, c = 'x' .. 'y', d = {} }";
    ck_assert_int_eq(loyd_pack_load_data("t.conf", ok, strlen(ok), &out, &err), 0);
    ck_assert_int_eq(json_array_size(json_object_get(out, "a")), 3);
    ck_assert_int_eq(json_integer_value(json_object_get(out, "b")), 2000);
    ck_assert_str_eq(json_string_value(json_object_get(out, "c")), "xy");
    json_decref(out);
    loyd_buf_free(&err);
}
END_TEST

START_TEST(test_suggest)
{
    static const char *const c[] = {"deal.won", "deal.reopened", "tick"};
    ck_assert_str_eq(loyd_suggest("deal.wonn", c, 3), "deal.won");
    ck_assert_str_eq(loyd_suggest("deal.rewon", c, 3), "deal.won");
    ck_assert_str_eq(loyd_suggest("tikc", c, 3), "tick");
    ck_assert_ptr_null(loyd_suggest("purchase", c, 3));
    ck_assert_int_eq(loyd_pack_line_of("a = 1\n  bb = 2\n[\"c.d\"] = 3\n", "bb"), 2);
    ck_assert_int_eq(loyd_pack_line_of("a = 1\n  bb = 2\n[\"c.d\"] = 3\n", "c.d"), 3);
    ck_assert_int_eq(loyd_pack_line_of("abb = 1\nbb == 2\n", "bb"), 1); /* not found: line 1 */
}
END_TEST

/* The `campaigns` setting type: every bad entry named on its own line, and tenant overrides. */
START_TEST(test_campaigns_type)
{
    struct loyd_buf err = {0};
    ck_assert_ptr_null(load("tests/data/packs/badcampaigns", &err, LOYD_ECONFIG));
    static const char *const want[] = {
        "pack.conf:5: setting 'campaigns': default[2] (\"typo\"): unknown field 'multipler' (did "
        "you mean 'multiplier'?)",
        "pack.conf:5: setting 'campaigns': default[2] (\"typo\"): needs 'multiplier' (2 = double "
        "points) or 'bonus_bp' (5000 = 50 % more)",
        "pack.conf:6: setting 'campaigns': default[3] (\"baddate\"): 'to' \"2026-11-31\" is not a "
        "valid date YYYY-MM-DD",
        "pack.conf:7: setting 'campaigns': default[4] (\"backwards\"): 'from' 2026-12-01 is after "
        "'to' 2026-11-30",
        "pack.conf:8: setting 'campaigns': default[5] (\"days\"): 'weekdays' must be a list of ISO "
        "weekdays, 1 (Monday) .. 7 (Sunday)",
        "pack.conf:9: setting 'campaigns': default[6] (\"both\"): give 'multiplier' or 'bonus_bp', "
        "not both",
        "pack.conf:10: setting 'campaigns': default[7] (\"neither\"): needs 'multiplier'",
        "pack.conf:11: setting 'campaigns': default[8] (\"nobudget\"): 'budget' must be a positive "
        "whole number of ledger units (leave it out for no limit)",
        "pack.conf:12: setting 'campaigns': default[9] (\"ok\"): a campaign named \"ok\" is "
        "already "
        "declared (entry 1)",
        "pack.conf:3: setting 'campaigns': default[10]: needs a 'name'",
    };
    for (size_t i = 0; i < sizeof(want) / sizeof(want[0]); i++)
        ck_assert_msg(strstr(err.data, want[i]) != NULL, "no '%s' in:\n%s", want[i], err.data);
    ck_assert_msg(strstr(err.data, "default[1] (\"ok\")") == NULL, "%s", err.data);
    loyd_buf_reset(&err);

    /* A tenant's list replaces the pack's and is checked the same way. */
    struct loyd_pack *p = load("rules/retail", &err, 0);
    ck_assert_str_eq(
        json_string_value(json_object_get(json_object_get(p->schema, "campaigns"), "type")),
        "campaigns");
    json_t *eff = NULL;
    json_t *ov = json_loads("{\"campaigns\": [{\"name\": \"bf\", \"from\": \"2026-11-20\","
                            " \"bonus_bp\": 5000, \"budget\": 100, \"weekdays\": [6, 6]}]}",
                            0, NULL);
    ck_assert_int_eq(loyd_pack_settings(p, ov, "tenants/shop.conf", &eff, &err), LOYD_ECONFIG);
    ck_assert_ptr_nonnull(strstr(err.data, "tenants/shop.conf: setting 'campaigns'[1] (\"bf\"): "
                                           "'weekdays' lists 6 twice"));
    json_decref(ov);
    loyd_buf_reset(&err);
    ov = json_loads("{\"campaigns\": [{\"name\": \"bf\", \"weekdays\": [6, 7], \"multiplier\": "
                    "2, \"budget\": 500000}], \"budgets\": {}}",
                    0, NULL);
    ck_assert_msg(loyd_pack_settings(p, ov, "tenants/shop.conf", &eff, &err) == 0, "%s", err.data);
    ck_assert_int_eq(json_array_size(json_object_get(eff, "campaigns")), 1);
    json_decref(ov);
    json_decref(eff);
    ov = json_loads("{\"campaigns\": {\"name\": \"bf\"}}", 0, NULL);
    ck_assert_int_eq(loyd_pack_settings(p, ov, "tenants/shop.conf", &eff, &err), LOYD_ECONFIG);
    ck_assert_ptr_nonnull(strstr(err.data, "tenants/shop.conf: setting 'campaigns': expected a "
                                           "list of campaigns"));
    json_decref(ov);
    loyd_pack_destroy(p);
    loyd_buf_free(&err);
}
END_TEST

Suite *pack_suite(void)
{
    Suite *s = suite_create("pack");
    TCase *tc = tcase_create("load");
    tcase_set_timeout(tc, 10);
    tcase_add_test(tc, test_retail_loads);
    tcase_add_test(tc, test_extends_merges);
    tcase_add_test(tc, test_overrides_validated);
    tcase_add_test(tc, test_bad_conf_reports_everything);
    tcase_add_test(tc, test_extends_loop_and_missing);
    tcase_add_test(tc, test_windows_and_counters_conf);
    tcase_add_test(tc, test_data_loader);
    tcase_add_test(tc, test_suggest);
    tcase_add_test(tc, test_campaigns_type);
    suite_add_tcase(s, tc);
    return s;
}
