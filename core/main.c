/* SPDX-License-Identifier: MIT */
/* loyd's command line: one binary, one verb per job. */
#include <curl/curl.h>
#include <stdio.h>
#include <string.h>

#include "cli_campaigns.h"
#include "cli_member.h"
#include "cli_tick.h"
#include "daemon.h"
#include "demo.h"
#include "emulate.h"
#include "rules.h"
#include "log.h"

#define LOYD_VERSION "0.1.0"

static const char usage[] =
    "usage: loyd COMMAND [ARGS]\n"
    "\n"
    "  serve -c FILE            run the daemon with the config FILE\n"
    "  check PACK_DIR           compile, validate and lint a rule pack\n"
    "  test PACK_DIR            run a rule pack's offline tests\n"
    "                           (-k TEXT, -v, --tenant FILE: a tenant's settings)\n"
    "  emulate CRM [--listen HOST:PORT]   run an offline CRM emulator (bitrix24)\n"
    "  demo                     emulated Bitrix24 + loyd + retail pack: a guided story\n"
    "  member TENANT WHO        a member's balance, tier, lots and last ledger rows\n"
    "                           (WHO: contact id, phone or email; -c FILE, --json)\n"
    "  ledger TENANT            the tenant's ledger rows (--since, --member, --limit, --json)\n"
    "  tick TENANT              run the tenant's daily jobs (birthdays, ticks) now (--date)\n"
    "  campaigns TENANT         the tenant's campaigns: window, bonus, budget, spent, left,\n"
    "                           whether it runs today (-c FILE, --date, --json)\n"
    "  version                  print the version\n"
    "\n"
    "Run 'loyd COMMAND --help' for a command's options.\n";

static int cmd_serve(int argc, char **argv)
{
    const char *path = NULL;

    for (int i = 1; i < argc; i++) {
        if ((strcmp(argv[i], "-c") == 0 || strcmp(argv[i], "--config") == 0) && i + 1 < argc)
            path = argv[++i];
        else if (strcmp(argv[i], "--help") == 0 || strcmp(argv[i], "-h") == 0) {
            printf("usage: loyd serve -c FILE\n\nRuns the daemon. FILE is the daemon config "
                   "(see docs/CONFIG.md).\nSIGHUP reloads it, SIGTERM drains and stops.\n");
            return 0;
        } else {
            fprintf(stderr, "loyd serve: unexpected argument '%s'\n", argv[i]);
            return 2;
        }
    }
    if (path == NULL) {
        fprintf(stderr, "loyd serve: -c FILE is required\n");
        return 2;
    }
    return loyd_daemon_run(path);
}

static const struct {
    const char *name;
    int (*run)(int argc, char **argv);
} commands[] = {
    {"serve", cmd_serve},
    {"check", loyd_cmd_check},
    {"test", loyd_cmd_test},
    {"emulate", loyd_cmd_emulate},
    {"demo", loyd_cmd_demo},
    {"member", loyd_cmd_member},
    {"ledger", loyd_cmd_ledger},
    {"tick", loyd_cmd_tick},
    {"campaigns", loyd_cmd_campaigns},
};

int main(int argc, char **argv)
{
    if (argc < 2 || strcmp(argv[1], "--help") == 0 || strcmp(argv[1], "-h") == 0 ||
        strcmp(argv[1], "help") == 0) {
        fputs(usage, argc < 2 ? stderr : stdout);
        return argc < 2 ? 2 : 0;
    }
    if (strcmp(argv[1], "version") == 0 || strcmp(argv[1], "--version") == 0) {
        printf("loyd %s\n", LOYD_VERSION);
        return 0;
    }
    /* Before any thread exists (libuv's pool, curl's resolver). */
    if (curl_global_init(CURL_GLOBAL_DEFAULT) != CURLE_OK) {
        fprintf(stderr, "loyd: curl_global_init failed\n");
        return 1;
    }
    for (size_t i = 0; i < sizeof(commands) / sizeof(commands[0]); i++) {
        if (strcmp(argv[1], commands[i].name) == 0) {
            int rc = commands[i].run(argc - 1, argv + 1);
            curl_global_cleanup();
            return rc;
        }
    }
    fprintf(stderr, "loyd: unknown command '%s'\n\n%s", argv[1], usage);
    curl_global_cleanup();
    return 2;
}
