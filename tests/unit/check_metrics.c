/* SPDX-License-Identifier: MIT */
#include <check.h>
#include <string.h>

#include "metrics.h"

START_TEST(test_metrics_render)
{
    struct loyd_metrics m = {0};
    struct loyd_metrics_sample s = {.inbox_pending = 7, .crm_5xx = 3};
    struct loyd_buf out = {0};

    loyd_metrics_request(&m, LOYD_ROUTE_HOOKS, 200);
    loyd_metrics_request(&m, LOYD_ROUTE_HOOKS, 200);
    loyd_metrics_request(&m, LOYD_ROUTE_HOOKS, 401);
    loyd_metrics_request(&m, LOYD_ROUTE_OTHER, 404);
    ck_assert_uint_eq(loyd_metrics_requests(&m, LOYD_ROUTE_HOOKS, 200), 2);
    loyd_metrics_render(&m, &s, &out);
    ck_assert_ptr_nonnull(strstr(out.data, "loyd_http_requests_total{route=\"hooks\",status=\"200\"} 2\n"));
    ck_assert_ptr_nonnull(strstr(out.data, "loyd_http_requests_total{route=\"hooks\",status=\"401\"} 1\n"));
    ck_assert_ptr_nonnull(strstr(out.data, "loyd_http_requests_total{route=\"other\",status=\"404\"} 1\n"));
    ck_assert_ptr_nonnull(strstr(out.data, "loyd_inbox_depth 7\n"));
    ck_assert_ptr_nonnull(strstr(out.data, "loyd_crm_calls_total{outcome=\"http_5xx\"} 3\n"));
    loyd_buf_free(&out);
}
END_TEST

Suite *metrics_suite(void)
{
    Suite *s = suite_create("metrics");
    TCase *tc = tcase_create("render");
    tcase_add_test(tc, test_metrics_render);
    suite_add_tcase(s, tc);
    return s;
}
