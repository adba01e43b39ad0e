/* SPDX-License-Identifier: MIT */
/*
 * The one test runner: every tests/<kind>/check_<name>.c exports Suite *<name>_suite(void),
 * and the build lists them in suites.h.  CK_RUN_SUITE / CK_RUN_CASE filter, CK_FORK=no debugs.
 */
#include <check.h>
#include <stdlib.h>

#define LOYD_SUITE(name) Suite *name##_suite(void);
#include "suites.h"
#undef LOYD_SUITE

int main(void)
{
    SRunner *sr = srunner_create(NULL);
#define LOYD_SUITE(name) srunner_add_suite(sr, name##_suite());
#include "suites.h"
#undef LOYD_SUITE
    srunner_run_all(sr, CK_NORMAL);
    int failed = srunner_ntests_failed(sr);
    srunner_free(sr);
    return failed == 0 ? EXIT_SUCCESS : EXIT_FAILURE;
}
