/* SPDX-License-Identifier: MIT */
/* loyd command line: dispatches to serve, demo, check, test and emulate. */
#include <stdio.h>
#include <string.h>

#include "log.h"

int main(int argc, char **argv)
{
    if (argc > 1 && strcmp(argv[1], "--version") == 0) {
        printf("loyd 0.1.0\n");
        return 0;
    }
    fprintf(stderr, "usage: loyd serve -c FILE | demo | check PACK | test PACK | emulate CRM\n");
    return 2;
}
