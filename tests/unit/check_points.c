/* SPDX-License-Identifier: MIT */
/* Points as people count them: the pack's unit, formatting and parsing in C, and the same text
 * from loyd.format_points in a rule. */
#include <check.h>
#include <errno.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/stat.h>
#include <unistd.h>

#include "pack.h"
#include "points.h"
#include "rules.h"

static struct loyd_points_unit hundredths(void)
{
    struct loyd_points_unit u;
    struct loyd_buf err = {0};
    json_t *spec = json_pack("{s:s, s:i}", "unit", "points", "minor", 100);
    ck_assert_int_eq(loyd_points_unit_parse(spec, &u, &err), 0);
    json_decref(spec);
    loyd_buf_free(&err);
    return u;
}

static const char *fmt(int64_t v, const struct loyd_points_unit *u, int flags)
{
    static char buf[64];
    loyd_points_format(v, u, flags, buf, sizeof(buf));
    return buf;
}

START_TEST(test_format)
{
    struct loyd_points_unit u = hundredths(), whole;
    loyd_points_unit_default(&whole);

    /* The order: 15,000 RUB at 3 % is 45,000 ledger units, 450 points on the card. */
    ck_assert_str_eq(fmt(45000, &u, 0), "450");
    ck_assert_str_eq(fmt(45500, &u, LOYD_POINTS_UNIT), "455 points");
    ck_assert_str_eq(fmt(350, &u, 0), "3.5");
    ck_assert_str_eq(fmt(305, &u, 0), "3.05");
    ck_assert_str_eq(fmt(-150, &u, 0), "-1.5");
    ck_assert_str_eq(fmt(-50, &u, 0), "-0.5");
    ck_assert_str_eq(fmt(0, &u, LOYD_POINTS_UNIT), "0 points");
    ck_assert_str_eq(fmt(123456789, &u, LOYD_POINTS_GROUP), "1,234,567.89");
    ck_assert_str_eq(fmt(-100000000, &u, LOYD_POINTS_GROUP | LOYD_POINTS_UNIT),
                     "-1,000,000 points");
    ck_assert_str_eq(fmt(999, &whole, LOYD_POINTS_GROUP), "999");
    ck_assert_str_eq(fmt(1000, &whole, LOYD_POINTS_GROUP), "1,000");
    ck_assert_str_eq(fmt(INT64_MIN, &whole, 0), "-9223372036854775808");
    char small[4];
    ck_assert_uint_eq(loyd_points_format(45500, &u, 0, small, sizeof(small)), 3);
    ck_assert_str_eq(small, "455");
}
END_TEST

START_TEST(test_json_and_parse)
{
    struct loyd_points_unit u = hundredths();
    json_t *j = loyd_points_json(45500, &u);
    ck_assert(json_is_integer(j));
    ck_assert_int_eq(json_integer_value(j), 455);
    json_decref(j);
    j = loyd_points_json(1250, &u);
    ck_assert(json_is_real(j));
    ck_assert(json_real_value(j) == 12.5);
    json_decref(j);

    int64_t v = 0;
    ck_assert(loyd_points_parse("455", &u, &v) && v == 45500);
    ck_assert(loyd_points_parse("455.00", &u, &v) && v == 45500);
    ck_assert(loyd_points_parse("12.5", &u, &v) && v == 1250);
    ck_assert(loyd_points_parse("-1,200.25", &u, &v) && v == -120025);
    ck_assert(loyd_points_parse(" 3000 ", &u, &v) && v == 300000);
    ck_assert(!loyd_points_parse("12.345", &u, &v)); /* finer than the unit */
    ck_assert(!loyd_points_parse("12a", &u, &v));
    ck_assert(!loyd_points_parse("", &u, &v));
    ck_assert(!loyd_points_parse(".", &u, &v));
    ck_assert(!loyd_points_parse("99999999999999999999", &u, &v));
    ck_assert(!loyd_points_parse(NULL, &u, &v));
}
END_TEST

START_TEST(test_unit_errors)
{
    struct loyd_points_unit u;
    struct loyd_buf err = {0};
    json_t *bad = json_pack("{s:i}", "minor", 7);
    ck_assert_int_eq(loyd_points_unit_parse(bad, &u, &err), -EINVAL);
    ck_assert_ptr_nonnull(strstr(err.data, "points.minor: expected 1, 10, 100 or 1000"));
    json_decref(bad);
    loyd_buf_reset(&err);
    bad = json_pack("{s:s}", "unti", "points");
    ck_assert_int_eq(loyd_points_unit_parse(bad, &u, &err), -EINVAL);
    ck_assert_ptr_nonnull(strstr(err.data, "points.unti: unknown key"));
    json_decref(bad);
    loyd_buf_reset(&err);
    bad = json_pack("{s:s}", "unit", "a\nb");
    ck_assert_int_eq(loyd_points_unit_parse(bad, &u, &err), -EINVAL);
    json_decref(bad);
    loyd_buf_free(&err);
}
END_TEST

static char tmpdir[64];

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

static void rm_tmpdir(void)
{
    char *cmd = loyd_xasprintf("rm -rf %s", tmpdir);
    ck_assert_int_eq(system(cmd), 0);
    free(cmd);
}

/* A rule's note says what loyd_points_format says, in the unit pack.conf declares. */
START_TEST(test_pack_unit_in_rules)
{
    struct loyd_buf err = {0};
    struct loyd_pack *pack = NULL;
    struct loyd_rules *rules = NULL;
    strcpy(tmpdir, "/tmp/loyd-points-XXXXXX");
    ck_assert_ptr_nonnull(mkdtemp(tmpdir));
    write_file("pack.conf", "return { name = 'p', version = '1',\n"
                            "  points = { unit = \"bonus \\\"stars\\\"\", minor = 100 } }\n");
    write_file("rules/a.lua",
               "return { ['deal.won'] = function(ev, m, s) return {\n"
               "  note{ text = loyd.format_points(123456789) .. '|' .. loyd.format_points(-150)\n"
               "        .. '|' .. loyd.format_points(45000) .. '|' .. loyd.points_unit.minor },\n"
               "} end }\n");
    ck_assert_int_eq(loyd_pack_load(tmpdir, NULL, &pack, &err), 0);
    ck_assert_int_eq(pack->points.minor, 100);
    ck_assert_str_eq(pack->points.unit, "bonus \"stars\"");
    ck_assert_int_eq(loyd_rules_create(pack, NULL, &rules, &err), 0);

    json_t *ev = json_pack("{s:s, s:s, s:I, s:{s:s, s:I}}", "type", "deal.won", "key",
                           "deal:7:won:1", "at", (json_int_t)1772366400000LL, "deal", "id", "7",
                           "amount", (json_int_t)100000);
    json_t *member = json_pack("{s:s}", "id", "43"), *settings = json_object(), *res = NULL;
    struct loyd_rules_input in = {.event = ev, .member = member, .settings = settings};
    ck_assert_int_eq(loyd_rules_eval(rules, &in, &res), 0);
    json_t *note = json_array_get(json_object_get(res, "accepted"), 0);
    ck_assert_str_eq(json_string_value(json_object_get(note, "text")),
                     "1,234,567.89 bonus \"stars\"|-1.5 bonus \"stars\"|450 bonus \"stars\"|100");
    json_decref(res);
    json_decref(ev);
    json_decref(member);
    json_decref(settings);
    loyd_rules_destroy(rules);
    loyd_pack_destroy(pack);

    /* A pack.conf with a wrong unit names the file, the line and the key. */
    write_file("pack.conf", "return { name = 'p', version = '1',\n  points = { minor = 3 } }\n");
    ck_assert_int_ne(loyd_pack_load(tmpdir, NULL, &pack, &err), 0);
    ck_assert_msg(strstr(err.data, "pack.conf:2: points.minor: expected 1, 10, 100 or 1000"),
                  "%s", err.data);
    loyd_buf_free(&err);
    rm_tmpdir();
}
END_TEST

Suite *points_suite(void)
{
    Suite *s = suite_create("points");
    TCase *tc = tcase_create("core");
    tcase_add_test(tc, test_format);
    tcase_add_test(tc, test_json_and_parse);
    tcase_add_test(tc, test_unit_errors);
    tcase_add_test(tc, test_pack_unit_in_rules);
    suite_add_tcase(s, tc);
    return s;
}
