/* SPDX-License-Identifier: MIT */
#include <check.h>
#include <errno.h>
#include <string.h>

#include "tz.h"

START_TEST(test_tz_offsets)
{
    struct loyd_buf err = {0};
    int off = -1;
    /* 2026-01-15 and 2026-07-15, noon UTC. */
    time_t winter = 1768478400, summer = 1784116800;

    ck_assert_int_eq(loyd_tz_offset_min("UTC", winter, &off, &err), 0);
    ck_assert_int_eq(off, 0);
    ck_assert_int_eq(loyd_tz_offset_min("Europe/Moscow", winter, &off, &err), 0);
    ck_assert_int_eq(off, 180);
    ck_assert_int_eq(loyd_tz_offset_min("Europe/Berlin", winter, &off, &err), 0);
    ck_assert_int_eq(off, 60);
    ck_assert_int_eq(loyd_tz_offset_min("Europe/Berlin", summer, &off, &err), 0);
    ck_assert_int_eq(off, 120);
    ck_assert_int_eq(loyd_tz_offset_min("Asia/Kolkata", summer, &off, &err), 0);
    ck_assert_int_eq(off, 330);
    ck_assert_int_eq(loyd_tz_offset_min("Mars/Olympus", winter, &off, &err), -ENOENT);
    ck_assert_ptr_nonnull(strstr(err.data, "'Mars/Olympus'"));
    ck_assert_int_eq(loyd_tz_offset_min("../../etc/passwd", winter, &off, &err), -ENOENT);
    loyd_buf_free(&err);
}
END_TEST

Suite *tz_suite(void)
{
    Suite *s = suite_create("tz");
    TCase *tc = tcase_create("offsets");
    tcase_add_test(tc, test_tz_offsets);
    suite_add_tcase(s, tc);
    return s;
}
