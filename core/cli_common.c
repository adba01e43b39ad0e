/* SPDX-License-Identifier: MIT */
/* The operator commands' shared plumbing (see cli_common.h), moved here from cli_member.c. */
#include "cli_common.h"

#include <dirent.h>
#include <errno.h>
#include <stdarg.h>
#include <stdlib.h>
#include <string.h>

#include "log.h"
#include "tz.h"

void loyd_cli_fail(const struct loyd_cli *c, const char *fmt, ...)
{
    va_list ap;
    fprintf(stderr, "loyd %s: ", c->verb);
    va_start(ap, fmt);
    vfprintf(stderr, fmt, ap);
    va_end(ap);
    fputc('\n', stderr);
}

/* Multi-line problem text (config, pack), one "file:line: message" per line, as it is. */
void loyd_cli_fail_lines(const struct loyd_buf *b)
{
    if (b->len > 0) {
        fputs(b->data, stderr);
        if (b->data[b->len - 1] != '\n')
            fputc('\n', stderr);
    }
}

/* Local time of @p ms in the tenant's zone (TZ is set to it in loyd_cli_open). */
void loyd_cli_local_tm(int64_t ms, struct tm *tm)
{
    time_t t = (time_t)(ms >= 0 ? ms / 1000 : -((-ms + 999) / 1000));
    localtime_r(&t, tm);
}

void loyd_cli_fmt_date(int64_t ms, char out[16])
{
    struct tm tm;
    loyd_cli_local_tm(ms, &tm);
    strftime(out, 16, "%Y-%m-%d", &tm);
}

/* @p v ledger units as people count them, "455 points"; @p sign adds '+' to a gain. */
void loyd_cli_fmt_points(const struct loyd_cli *c, int64_t v, bool sign, char out[80])
{
    size_t n = 0;
    if (sign && v > 0)
        out[n++] = '+';
    loyd_points_format(v, &c->unit, LOYD_POINTS_GROUP | LOYD_POINTS_UNIT, out + n, 80 - n);
}

/* Display width of UTF-8 text: code points (names are often Cyrillic). */
static size_t text_width(const char *s)
{
    size_t w = 0;
    for (; *s != '\0'; s++)
        if (((unsigned char)*s & 0xc0) != 0x80)
            w++;
    return w;
}

void loyd_cli_table_add(struct loyd_cli_table *t, const char *const *cells)
{
    t->cells = loyd_xrealloc(t->cells, (t->nrows + 1) * t->ncols * sizeof(*t->cells));
    for (size_t i = 0; i < t->ncols; i++)
        t->cells[t->nrows * t->ncols + i] = loyd_xstrdup(cells[i] != NULL ? cells[i] : "");
    t->nrows++;
}

void loyd_cli_table_print(struct loyd_cli_table *t, const char *indent, FILE *f)
{
    size_t *w = loyd_xcalloc(t->ncols, sizeof(*w));
    for (size_t r = 0; r < t->nrows; r++)
        for (size_t i = 0; i < t->ncols; i++) {
            size_t cw = text_width(t->cells[r * t->ncols + i]);
            if (cw > w[i])
                w[i] = cw;
        }
    for (size_t r = 0; r < t->nrows; r++) {
        /* Trailing empty cells would only leave spaces at the end of the line. */
        size_t last = t->ncols;
        while (last > 1 && t->cells[r * t->ncols + last - 1][0] == '\0')
            last--;
        fputs(indent, f);
        for (size_t i = 0; i < last; i++) {
            const char *cell = t->cells[r * t->ncols + i];
            size_t pad = w[i] - text_width(cell);
            if (t->align[i] == 'r')
                fprintf(f, "%*s%s", (int)pad, "", cell);
            else if (i + 1 < last)
                fprintf(f, "%s%*s", cell, (int)pad, "");
            else
                fputs(cell, f);
            if (i + 1 < last)
                fputs("  ", f);
        }
        fputc('\n', f);
    }
    free(w);
    for (size_t i = 0; i < t->nrows * t->ncols; i++)
        free(t->cells[i]);
    free(t->cells);
    t->cells = NULL;
    t->nrows = 0;
}

/* ---- opening: config, tenant, pack, time zone, store ---------------------------------------- */

static int cmp_str(const void *a, const void *b)
{
    return strcmp(*(char *const *)a, *(char *const *)b);
}

/*
 * Loads tenant @p name's file.  Only that file: another tenant's file may hold secrets from
 * the daemon's environment that this shell does not have.
 */
static int tenant_load(struct loyd_cli *c, const char *name)
{
    const char *dir = c->cfg->tenants_dir;
    DIR *dh = opendir(dir);
    char **names = NULL;
    size_t n = 0;
    bool found = false;
    struct dirent *de;
    int rc = 1;

    if (dh == NULL) {
        if (errno == ENOENT)
            loyd_cli_fail(c, "the tenants folder %s (from %s) does not exist", dir, c->cfg->path);
        else
            loyd_cli_fail(c, "cannot read the tenants folder %s: %s", dir, strerror(errno));
        return 1;
    }
    while ((de = readdir(dh)) != NULL) {
        size_t len = strlen(de->d_name);
        if (de->d_name[0] == '.' || len <= 5 || strcmp(de->d_name + len - 5, ".conf") != 0)
            continue;
        names = loyd_xrealloc(names, (n + 1) * sizeof(*names));
        names[n] = loyd_xstrndup(de->d_name, len - 5);
        found = found || strcmp(names[n], name) == 0;
        n++;
    }
    closedir(dh);
    if (n > 0)
        qsort(names, n, sizeof(*names), cmp_str);

    if (!found) {
        struct loyd_buf known = {0};
        for (size_t i = 0; i < n; i++)
            loyd_buf_printf(&known, "%s%s", i ? ", " : "", names[i]);
        const char *hint = loyd_suggest(name, (const char *const *)names, n);
        loyd_cli_fail(c, "unknown tenant '%s': no %s.conf in %s (%s%s)%s%s%s", name, name, dir,
                      n > 0 ? "known tenants: " : "it has no tenant files", n > 0 ? known.data : "",
                      hint ? "; did you mean '" : "", hint ? hint : "", hint ? "'?" : "");
        loyd_buf_free(&known);
        goto out;
    }
    struct loyd_buf err = {0};
    char *path = loyd_xasprintf("%s/%s.conf", dir, name);
    if (loyd_tenant_config_load(path, &c->tenant, &err) != 0) {
        loyd_cli_fail_lines(&err);
        loyd_cli_fail(c, "cannot load the tenant file %s", path);
    } else {
        rc = 0;
    }
    free(path);
    loyd_buf_free(&err);
out:
    for (size_t i = 0; i < n; i++)
        free(names[i]);
    free(names);
    return rc;
}

/* The tenant's pack, loaded as the daemon loads it (its unit says how points are counted). */
static int pack_load(struct loyd_cli *c)
{
    struct loyd_buf err = {0};
    struct loyd_pack *p = NULL;
    char *dir = loyd_tenant_pack_dir(c->cfg, c->tenant);
    int rc = loyd_pack_load(dir, c->cfg->packs_dir, &p, &err);

    if (rc != 0) {
        loyd_cli_fail_lines(&err);
        /* Guessing the unit could show 45500 points where a person has 455: refuse. */
        loyd_cli_fail(
            c, "cannot load the pack '%s' (%s) of tenant '%s': it says how points are counted",
            c->tenant->pack, dir, c->tenant->name);
    } else {
        c->unit = p->points;
        c->pack = p;
        p = NULL;
    }
    loyd_pack_destroy(p);
    loyd_buf_free(&err);
    free(dir);
    return rc != 0 ? 1 : 0;
}

int loyd_cli_open(struct loyd_cli *c, const char *tenant)
{
    struct loyd_buf err = {0};
    const char *path = c->config_path != NULL ? c->config_path : LOYD_CLI_DEFAULT_CONFIG;
    int tz, rc;

    /* Only problems reach stderr; the store's own error lines say what SQLite said. */
    loyd_log_set_level(LOYD_LOG_ERR);
    if ((rc = loyd_config_load(path, &c->cfg, &err)) != 0) {
        if (rc == -ENOENT && c->config_path == NULL)
            loyd_cli_fail(c, "no config at %s (the default): give the daemon's with -c FILE", path);
        else {
            loyd_cli_fail_lines(&err);
            loyd_cli_fail(c, "cannot load the config %s", path);
        }
        loyd_buf_free(&err);
        return 1;
    }
    if (tenant_load(c, tenant) != 0 || pack_load(c) != 0)
        return 1;
    if (loyd_tz_offset_min(c->tenant->timezone, time(NULL), &tz, &err) != 0) {
        loyd_cli_fail(c, "%s in %s", err.data, c->tenant->path);
        loyd_buf_free(&err);
        return 1;
    }
    c->tz_offset_min = tz;
    /* Every date shown is the tenant's: this process has no other use for local time. */
    setenv("TZ", c->tenant->timezone, 1);
    tzset();

    rc = loyd_store_open_readonly(c->cfg->store, &c->store);
    if (rc == -ENOENT) {
        loyd_cli_fail(c,
                      "the store %s does not exist (`store` in %s; the daemon creates it when it "
                      "first starts)",
                      c->cfg->store, c->cfg->path);
        return 1;
    }
    if (rc != 0) {
        loyd_cli_fail(c, "cannot open the store %s: %s", c->cfg->store, loyd_strerror(rc));
        return 1;
    }
    return 0;
}

void loyd_cli_close(struct loyd_cli *c)
{
    loyd_store_destroy(c->store);
    loyd_pack_destroy(c->pack);
    loyd_tenant_config_free(c->tenant);
    loyd_config_free(c->cfg);
}

int loyd_cli_store_failed(const struct loyd_cli *c, const char *what, int rc)
{
    loyd_cli_fail(c, "reading %s from the store %s: %s", what, c->cfg->store, loyd_strerror(rc));
    return 1;
}

void loyd_cli_print_json(const json_t *v)
{
    char *text = json_dumps(v, JSON_INDENT(2));
    if (text != NULL) {
        fputs(text, stdout);
        fputc('\n', stdout);
        free(text);
    }
}
