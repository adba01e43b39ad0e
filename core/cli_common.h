/* SPDX-License-Identifier: MIT */
/*
 * What the operator commands that read one tenant share (`loyd member`, `loyd ledger`,
 * `loyd campaigns`): opening the daemon config, the tenant's file (only that one: another
 * tenant's may need secrets this shell does not have), its pack (as the daemon loads it: it
 * says how points are counted) and the store read-only; the tenant's time zone as the
 * process's local time; problems on stderr prefixed "loyd VERB: "; points in the pack's unit;
 * and a small padded text table.
 */
#ifndef LOYD_CLI_COMMON_H
#define LOYD_CLI_COMMON_H

#include <jansson.h>
#include <stdbool.h>
#include <stdint.h>
#include <stdio.h>
#include <time.h>

#include "config.h"
#include "pack.h"
#include "points.h"
#include "store.h"
#include "util.h"

/* Where the packaged service keeps its config (packaging/loyd.service). */
#define LOYD_CLI_DEFAULT_CONFIG "/etc/loyd/loyd.conf"

struct loyd_cli {
    const char *verb;        /* "member", "ledger", ...: for messages */
    const char *config_path; /* -c FILE, or NULL for LOYD_CLI_DEFAULT_CONFIG */
    /* Filled by loyd_cli_open (owned; freed by loyd_cli_close): */
    struct loyd_config *cfg;
    struct loyd_tenant_config *tenant;
    struct loyd_pack *pack;       /* the tenant's pack */
    struct loyd_points_unit unit; /* pack->points */
    int tz_offset_min;            /* the tenant zone's offset from UTC now */
    struct loyd_store *store;     /* read-only */
};

/** "loyd VERB: message\n" on stderr. */
void loyd_cli_fail(const struct loyd_cli *c, const char *fmt, ...) LOYD_PRINTF(2, 3);
/** Multi-line problem text (config, pack), one "file:line: message" per line, as it is. */
void loyd_cli_fail_lines(const struct loyd_buf *b);

/**
 * Loads the config, tenant @p tenant's file and pack, sets TZ to the tenant's zone and opens
 * the store read-only.  Every problem is printed.  @return 0; 1 (call loyd_cli_close anyway).
 */
int loyd_cli_open(struct loyd_cli *c, const char *tenant);
void loyd_cli_close(struct loyd_cli *c);
/** Prints "reading WHAT from the store PATH: error".  @return 1 (the exit status). */
int loyd_cli_store_failed(const struct loyd_cli *c, const char *what, int rc);

/** Local time (the tenant's zone once loyd_cli_open ran) of @p ms. */
void loyd_cli_local_tm(int64_t ms, struct tm *tm);
/** "2026-01-10" of @p ms in the tenant's zone. */
void loyd_cli_fmt_date(int64_t ms, char out[16]);
/** @p v ledger units as people count them, "455 points"; @p sign adds '+' to a gain. */
void loyd_cli_fmt_points(const struct loyd_cli *c, int64_t v, bool sign, char out[80]);
/** Pretty JSON and a newline on stdout. */
void loyd_cli_print_json(const json_t *v);

/* A small text table: columns padded to their widest cell (UTF-8 aware), two spaces apart. */
struct loyd_cli_table {
    size_t ncols, nrows;
    const char *align; /* 'l' or 'r' per column */
    char **cells;      /* nrows * ncols, owned */
};

/** Adds a row of ncols cells (NULL cells are empty). */
void loyd_cli_table_add(struct loyd_cli_table *t, const char *const *cells);
/** Prints every row with @p indent first, then empties the table. */
void loyd_cli_table_print(struct loyd_cli_table *t, const char *indent, FILE *f);

#endif
