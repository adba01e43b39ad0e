/* SPDX-License-Identifier: MIT */
/*
 * Command-line front ends of `loyd check PACK_DIR` and `loyd test [-v] [-k TEXT] PACK_DIR`
 * (the work is in pack_test.c).  Results go to stdout: they are the command's output.
 */
#include <stdio.h>
#include <string.h>

#include "rules.h"

int loyd_cmd_check(int argc, char **argv)
{
    const char *dir = NULL;

    for (int i = 1; i < argc; i++) {
        if (argv[i][0] == '-' || dir != NULL) {
            fprintf(stderr, "usage: loyd check PACK_DIR\n");
            return 2;
        }
        dir = argv[i];
    }
    if (dir == NULL) {
        fprintf(stderr, "usage: loyd check PACK_DIR\n");
        return 2;
    }
    int rc = loyd_pack_check_run(dir, NULL, stdout);
    fflush(stdout);
    return rc;
}

int loyd_cmd_test(int argc, char **argv)
{
    struct loyd_pack_test_opts o = {0};
    const char *dir = NULL;

    for (int i = 1; i < argc; i++) {
        if (strcmp(argv[i], "-v") == 0) {
            o.verbose = true;
        } else if (strcmp(argv[i], "-k") == 0 && i + 1 < argc) {
            o.filter = argv[++i];
        } else if (argv[i][0] != '-' && dir == NULL) {
            dir = argv[i];
        } else {
            dir = NULL;
            break;
        }
    }
    if (dir == NULL) {
        fprintf(stderr, "usage: loyd test [-v] [-k TEXT] PACK_DIR\n");
        return 2;
    }
    int rc = loyd_pack_test_run(dir, &o, stdout);
    fflush(stdout);
    return rc;
}
