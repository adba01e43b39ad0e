/* SPDX-License-Identifier: MIT */
#include <check.h>
#include <errno.h>
#include <string.h>

#include "util.h"

START_TEST(test_ct_equal)
{
    ck_assert(loyd_ct_streq("secret", "secret"));
    ck_assert(!loyd_ct_streq("secret", "secreT"));
    ck_assert(!loyd_ct_streq("secre", "secret"));
    ck_assert(!loyd_ct_streq("secrets", "secret"));
    ck_assert(!loyd_ct_streq("", "secret"));
    ck_assert(!loyd_ct_streq(NULL, "secret"));
    ck_assert(loyd_ct_streq("", ""));
}
END_TEST

START_TEST(test_strerror)
{
    ck_assert_str_eq(loyd_strerror(LOYD_EABI), "plugin ABI mismatch");
    ck_assert_str_eq(loyd_strerror(-ENOMEM), strerror(ENOMEM));
    ck_assert_str_eq(loyd_strerror(-999999), "unknown error");
}
END_TEST

START_TEST(test_buf)
{
    struct loyd_buf b = {0};
    for (int i = 0; i < 1000; i++)
        loyd_buf_printf(&b, "%d,", i);
    ck_assert_uint_eq(b.len, strlen(b.data));
    ck_assert(strncmp(b.data, "0,1,2,", 6) == 0);
    loyd_buf_reset(&b);
    ck_assert_str_eq(b.data, "");
    loyd_buf_free(&b);
}
END_TEST

Suite *util_suite(void)
{
    Suite *s = suite_create("util");
    TCase *tc = tcase_create("core");
    tcase_add_test(tc, test_ct_equal);
    tcase_add_test(tc, test_strerror);
    tcase_add_test(tc, test_buf);
    suite_add_tcase(s, tc);
    return s;
}
