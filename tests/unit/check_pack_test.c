/* SPDX-License-Identifier: MIT */
/*
 * `loyd test` and `loyd check` for agencies (pack_test.c): a tenant file's settings under the
 * tests', a settings matrix, other members' balances, test data checked with file:line before
 * anything runs, rejected effects in the diff, -k and a readable -v.  The packs are
 * tests/data/packs/agency (with tenants.d/) and tests/data/packs/badtests.
 */
#include <check.h>
#include <stdlib.h>
#include <string.h>

#include "rules.h"

static char *src_path(const char *rel)
{
    const char *src = getenv("LOYD_SRC");
    return loyd_xasprintf("%s/%s", src != NULL ? src : ".", rel);
}

/* Runs `loyd test` on a pack under tests/data/packs with @p o; @return new output text. */
static char *run(const char *pack, struct loyd_pack_test_opts *o, int *rc)
{
    char *dir = loyd_xasprintf("tests/data/packs/%s", pack), *full = src_path(dir);
    FILE *f = tmpfile();
    ck_assert_ptr_nonnull(f);
    *rc = loyd_pack_test_run(full, o, f);
    long n = ftell(f);
    rewind(f);
    char *buf = loyd_xcalloc(1, (size_t)n + 1);
    ck_assert_uint_eq(fread(buf, 1, (size_t)n, f), (size_t)n);
    fclose(f);
    free(full);
    free(dir);
    return buf;
}

static char *check(const char *pack, int *rc)
{
    char *dir = loyd_xasprintf("tests/data/packs/%s", pack), *full = src_path(dir);
    FILE *f = tmpfile();
    ck_assert_ptr_nonnull(f);
    *rc = loyd_pack_check_run(full, NULL, f);
    long n = ftell(f);
    rewind(f);
    char *buf = loyd_xcalloc(1, (size_t)n + 1);
    ck_assert_uint_eq(fread(buf, 1, (size_t)n, f), (size_t)n);
    fclose(f);
    free(full);
    free(dir);
    return buf;
}

#define HAS(out, text) ck_assert_msg(strstr(out, text) != NULL, "missing:\n%s\nin:\n%s", text, out)
#define LACKS(out, text)                                                                           \
    ck_assert_msg(strstr(out, text) == NULL, "unexpected:\n%s\nin:\n%s", text, out)

/* --tenant: the deployed settings apply under the test's; its secrets are never needed. */
START_TEST(test_tenant_settings)
{
    struct loyd_pack_test_opts o = {.filter = "vip"};
    int rc;
    char *out = run("agency", &o, &rc);
    HAS(out, "  ok   vip cashback\n");
    ck_assert_int_eq(rc, 0);
    free(out);

    /* acme.conf gives vip 5 %: the test written against the defaults no longer holds. */
    o.tenant = src_path("tests/data/packs/agency/tenants.d/acme.conf");
    out = run("agency", &o, &rc);
    ck_assert_int_eq(rc, 1);
    HAS(out, "  FAIL vip cashback\n"
             "      effects (- expected, + actual):\n"
             "      - {kind=\"award\", points=2000}\n"
             "      + {kind=\"award\", points=5000, reason=\"cashback\", ref=\"10\"}\n");
    free(out);
    free((char *)o.tenant);

    /* A setting the pack does not have, in the tenant file: its line and the nearest name. */
    o.tenant = src_path("tests/data/packs/agency/tenants.d/typo.conf");
    out = run("agency", &o, &rc);
    ck_assert_int_eq(rc, 2);
    HAS(out, "agency/tenants.d/typo.conf:6: settings: unknown setting 'referer_points' for pack "
             "'agency' (did you mean 'referrer_points'?)\n");
    free(out);
    free((char *)o.tenant);

    o.tenant = src_path("tests/data/packs/agency/tenants.d/other.conf");
    out = run("agency", &o, &rc);
    ck_assert_int_eq(rc, 2);
    HAS(out, "agency/tenants.d/other.conf:3: the tenant runs pack 'retail', not the pack under "
             "test ('agency' in ");
    free(out);
    free((char *)o.tenant);

    o.tenant = "/nonexistent/acme.conf";
    out = run("agency", &o, &rc);
    ck_assert_int_eq(rc, 2);
    HAS(out, "/nonexistent/acme.conf: cannot read the tenant file");
    free(out);
}
END_TEST

/* A matrix runs each case once per entry and names the entry that failed. */
START_TEST(test_matrix)
{
    int rc;
    char *out = run("agency", NULL, &rc);
    ck_assert_int_eq(rc, 1);
    /* A file matrix of two tenant files (by path: name and relative pack) and plain settings. */
    HAS(out, "  ok   referrer bonus per client [acme]\n"
             "  FAIL referrer bonus per client [beta]\n"
             "      members[\"7\"].balance: expected 700, got 0\n");
    HAS(out, "  FAIL referrer bonus per client [plain]\n"
             "      members[\"7\"].balance: expected 700, got 500\n");
    /* A case's own matrix replaces the file's; its settings still apply above the entry. */
    HAS(out, "  ok   a test's own matrix [high]\n"
             "  FAIL a test's own matrix [low]\n"
             "      members[\"7\"].balance: expected 2, got 1\n");
    LACKS(out, "a test's own matrix [acme]");
    free(out);

    /* -k sees the entry's name: one entry of one file, and only that file is listed. */
    struct loyd_pack_test_opts o = {.filter = "[low]"};
    out = run("agency", &o, &rc);
    HAS(out, "tests/matrix.lua\n  FAIL a test's own matrix [low]\n");
    LACKS(out, "cashback.lua");
    LACKS(out, "[high]");
    HAS(out, "0 passed, 1 failed\n");
    free(out);

    o.filter = "no such test";
    out = run("agency", &o, &rc);
    ck_assert_int_eq(rc, 1);
    LACKS(out, ".lua");
    HAS(out, "no test name contains 'no such test'\n0 passed, 0 failed\n");
    free(out);
}
END_TEST

/* expect.members: the referrer's rows and balance, and the rejected effects of a failure. */
START_TEST(test_other_members_and_rejections)
{
    int rc;
    char *out = run("agency", NULL, &rc);
    HAS(out, "  ok   the referrer's bonus lands on the referrer\n");
    HAS(out, "  FAIL referrer bonus per client [plain]\n"
             "      members[\"7\"].balance: expected 700, got 500\n"
             "      rejected effects (effect: reason):\n"
             "      ! redeem{points=1000000, reason=\"too much\"}: insufficient balance");
    HAS(out,
        "      ! award{member=\"7\", points=0, reason=\"referral\", ref=\"10\"}: award: points "
        "must be ");
    free(out);
}
END_TEST

/* -v: a line per step, the member before the event in the pack's points, handler logs. */
START_TEST(test_verbose_trace)
{
    struct loyd_pack_test_opts o = {.filter = "display units", .verbose = true};
    int rc;
    char *out = run("agency", &o, &rc);
    ck_assert_msg(rc == 0, "%s", out);
    HAS(out, "  ok   trace in display units\n"
             "      trace:\n"
             "      event 1: deal.won on 2026-03-01 {deal={amount=100000, id=\"10\"}}\n"
             "        before: balance 12.5 points, tier base, lots: 12.5 (until 2026-06-01)\n");
    HAS(out, "/tests/data/packs/agency/rules/a.lua: 2 effects\n"
             "          log: cashback for deal 10\n"
             "        accepted award{points=1000, reason=\"cashback\", ref=\"10\"}\n"
             "        rejected redeem{points=1000000, reason=\"too much\"}: ");
    HAS(out, "        after: balance 22.5 points, tier base\n");
    LACKS(out, "\"handlers\""); /* no JSON dump */
    free(out);
}
END_TEST

/* loyd check finds mistakes in test data, each at its line, with the nearest valid name. */
START_TEST(test_check_validates_cases)
{
    int rc;
    char *out = check("badtests", &rc);
    ck_assert_int_eq(rc, 1);
    HAS(out, "badtests/tests/meta.lua:2: test file: unknown field 'matrx' (did you mean "
             "'matrix'?)\n");
    HAS(out, "badtests/tests/typos.lua:5: expect: unknown field 'balanse' (did you mean "
             "'balance'?)\n");
    HAS(out, "badtests/tests/typos.lua:8: event type 'deal.wom': unknown (did you mean "
             "'deal.won'?)\n");
    HAS(out, "badtests/tests/typos.lua:11: test: unknown field 'evnts' (did you mean "
             "'events'?)\n");
    HAS(out, "badtests/tests/typos.lua:13: events[1]: unknown field 'dael' (did you mean "
             "'deal'?)\n");
    HAS(out, "badtests/tests/typos.lua:14: settings: unknown setting 'bonsu' for pack 'badtests' "
             "(did you mean 'bonus'?)\n");
    HAS(out, "badtests/tests/typos.lua:18: expect.members[\"7\"]: unknown field 'balence' (did "
             "you mean 'balance'?)\n");
    HAS(out, "badtests/tests/typos.lua:20: matrix 'x': unknown setting 'bonnus' for pack "
             "'badtests' (did you mean 'bonus'?)\n");
    HAS(out, "8 problems found\n");
    free(out);

    out = check("agency", &rc);
    ck_assert_msg(rc == 0, "%s", out);
    HAS(out, "2 test files (5 tests): OK\n");
    free(out);
}
END_TEST

/* loyd test reports the same as test-data errors, before running: no "rule error". */
START_TEST(test_run_reports_test_data)
{
    int rc;
    char *out = run("badtests", NULL, &rc);
    ck_assert_int_eq(rc, 1);
    HAS(out, "tests/meta.lua\n  ERROR ");
    HAS(out, "  FAIL event type typo\n"
             "      ");
    HAS(out, "badtests/tests/typos.lua:8: event type 'deal.wom': unknown (did you mean "
             "'deal.won'?)\n");
    HAS(out, "  FAIL expect typo\n      ");
    LACKS(out, "rule error");
    HAS(out, "  ok   fine\n");
    HAS(out, "1 passed, 8 failed\n");
    free(out);
}
END_TEST

Suite *pack_test_suite(void)
{
    Suite *s = suite_create("pack_test");
    TCase *tc = tcase_create("agency");
    tcase_add_test(tc, test_tenant_settings);
    tcase_add_test(tc, test_matrix);
    tcase_add_test(tc, test_other_members_and_rejections);
    tcase_add_test(tc, test_verbose_trace);
    tcase_add_test(tc, test_check_validates_cases);
    tcase_add_test(tc, test_run_reports_test_data);
    suite_add_tcase(s, tc);
    return s;
}
