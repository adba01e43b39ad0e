/* SPDX-License-Identifier: MIT */
/*
 * Command-line front ends of `loyd check PACK_DIR` and
 * `loyd test [-v] [-k TEXT] [--tenant FILE] PACK_DIR` (the work is in pack_test.c).  Results go
 * to stdout: they are the command's output; usage errors go to stderr.
 */
#include <stdio.h>
#include <string.h>

#include "rules.h"

static const char check_help[] =
    "usage: loyd check PACK_DIR\n"
    "\n"
    "Loads PACK_DIR/pack.conf (and the packs it extends), validates the settings schema and\n"
    "defaults, compiles every rule file and lints the handlers: unknown event names, handlers\n"
    "that are not functions, and one dry call per handler whose result must be nil or a list\n"
    "of well-formed effects.  The test files are loaded and their cases checked as `loyd test`\n"
    "would before running them: unknown fields of a test, its member, events and expect, event\n"
    "types, settings and matrix entries.  Every problem is one 'file:line: message' line, with\n"
    "the nearest valid name when there is one.\n"
    "\n"
    "Extends search path: $LOYD_RULES_PATH (colon-separated directories).\n"
    "Exit status: 0 clean (a summary line); 1 problems found; 2 no such pack or usage error.\n";

static const char test_help[] =
    "usage: loyd test [-v] [-k TEXT] [--tenant FILE] PACK_DIR\n"
    "\n"
    "Runs PACK_DIR/tests/*.lua offline with a frozen clock: member state and events in, the\n"
    "real engine and ledger math, expected effects out.  Prints one line per test ('ok' or\n"
    "'FAIL'), a diff (- expected, + actual) and the rejected effects for each failure, and\n"
    "'N passed, N failed'.  A test file's matrix runs each test once per entry: 'name [acme]'.\n"
    "\n"
    "  -k TEXT        run only the tests whose name (with its [matrix entry]) contains TEXT;\n"
    "                 files without such a test are not listed\n"
    "  -v             print each test's trace: per event the member before it (balance, tier,\n"
    "                 lots in the pack's points), each handler and its log lines, the effects\n"
    "                 accepted and rejected (with the reason), the balance after\n"
    "  --tenant FILE  apply the `settings` of this tenant file (tenants.d/NAME.conf) under each\n"
    "                 test's own settings; the tenant must run this pack.  Its env/file\n"
    "                 secrets are not read.\n"
    "\n"
    "Extends search path: $LOYD_RULES_PATH (colon-separated directories).\n"
    "Exit status: 0 every test passed; 1 a test failed (or none ran); 2 the pack or the\n"
    "tenant file could not be used, or a usage error.\n";

static bool is_help(const char *a)
{
    return strcmp(a, "--help") == 0 || strcmp(a, "-h") == 0;
}

int loyd_cmd_check(int argc, char **argv)
{
    const char *dir = NULL;

    for (int i = 1; i < argc; i++) {
        if (is_help(argv[i])) {
            fputs(check_help, stdout);
            return 0;
        }
        if (argv[i][0] == '-') {
            fprintf(stderr, "loyd check: unknown option '%s'\nusage: loyd check PACK_DIR\n",
                    argv[i]);
            return 2;
        }
        if (dir != NULL) {
            fprintf(stderr, "loyd check: one PACK_DIR only ('%s' and '%s')\n", dir, argv[i]);
            return 2;
        }
        dir = argv[i];
    }
    if (dir == NULL) {
        fprintf(stderr, "usage: loyd check PACK_DIR   (loyd check --help explains)\n");
        return 2;
    }
    int rc = loyd_pack_check_run(dir, NULL, stdout);
    fflush(stdout);
    return rc;
}

int loyd_cmd_test(int argc, char **argv)
{
    static const char usage[] = "usage: loyd test [-v] [-k TEXT] [--tenant FILE] PACK_DIR   "
                                "(loyd test --help explains)\n";
    struct loyd_pack_test_opts o = {0};
    const char *dir = NULL;

    for (int i = 1; i < argc; i++) {
        const char *a = argv[i];
        if (is_help(a)) {
            fputs(test_help, stdout);
            return 0;
        } else if (strcmp(a, "-v") == 0 || strcmp(a, "--verbose") == 0) {
            o.verbose = true;
        } else if (strcmp(a, "-k") == 0 || strcmp(a, "--tenant") == 0) {
            if (i + 1 >= argc) {
                fprintf(stderr, "loyd test: %s needs a value\n%s", a, usage);
                return 2;
            }
            *(strcmp(a, "-k") == 0 ? &o.filter : &o.tenant) = argv[++i];
        } else if (strncmp(a, "--tenant=", 9) == 0) {
            o.tenant = a + 9;
        } else if (a[0] == '-') {
            fprintf(stderr, "loyd test: unknown option '%s'\n%s", a, usage);
            return 2;
        } else if (dir != NULL) {
            fprintf(stderr, "loyd test: one PACK_DIR only ('%s' and '%s')\n", dir, a);
            return 2;
        } else {
            dir = a;
        }
    }
    if (dir == NULL) {
        fputs(usage, stderr);
        return 2;
    }
    int rc = loyd_pack_test_run(dir, &o, stdout);
    fflush(stdout);
    return rc;
}
