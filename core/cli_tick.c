/* SPDX-License-Identifier: MIT */
/*
 * `loyd tick` (cli_tick.h): a tenant's daily jobs on demand, so that a birthday offer or a tier
 * downgrade can be watched on a live tenant instead of waiting for the daemon's day to turn.
 *
 * It is the daemon's scheduler (worker.c sched_page) in a process of its own: the same members
 * page by page, the same events and keys, the same engine, one event at a time.  The store is
 * opened for writing (SQLite WAL: the daemon's connections and this one take turns, each
 * transaction whole), and closed cleanly so that every apply is durable before it exits.
 */
#include "cli_tick.h"

#include <dirent.h>
#include <errno.h>
#include <inttypes.h>
#include <stdarg.h>
#include <stdbool.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sqlite3.h>
#include <time.h>
#include <unistd.h>
#include <uv.h>

#include "applied.h"
#include "config.h"
#include "engine.h"
#include "ledger.h"
#include "log.h"
#include "pack.h"
#include "points.h"
#include "store.h"
#include "tz.h"
#include "util.h"

#define DEFAULT_CONFIG "/etc/loyd/loyd.conf" /* packaging/loyd.service */
#define MEMBERS_PAGE 200
#define DAY_MS (24 * 3600 * 1000LL)

static const char usage_text[] =
    "usage: loyd tick [-c FILE] [--date YYYY-MM-DD] TENANT\n"
    "\n"
    "Runs TENANT's daily jobs now, as the daemon does once a day: a birthday event for every\n"
    "member born on that day and a tick event for every member (tier downgrades, expiry\n"
    "warnings, whatever the pack's tick handlers do), through the tenant's pack into the store.\n"
    "Prints one line per event the rules acted on and a summary, points in the pack's unit.\n"
    "\n"
    "  -c, --config FILE  the daemon config, as given to `loyd serve -c` (default " DEFAULT_CONFIG
    ")\n"
    "  --date YYYY-MM-DD  the day to run, in the tenant's time zone (default: today there)\n"
    "  --dry-run          apply to a copy of the store and print what the rules would do:\n"
    "                     nothing is stored, nothing reaches the CRM\n"
    "\n"
    "The events carry the daemon's own keys (birthday:<id>:<year>, tick:<id>:<date>): a day is\n"
    "applied once, whether `loyd tick` or the daemon runs it first, and running it again\n"
    "changes nothing.  With --date the events are dated that day at 12:00 in the tenant's zone:\n"
    "the rules' today() is that day, and ledger rows, offers and their expiry dates count from\n"
    "it.  A past day is applied for real: it catches up a day the daemon missed.  A future day\n"
    "is always a dry run (what a downgrade or a birthday will do then): applied for real, its\n"
    "write-backs would wait in the outbox until that day and hold back the members' others.\n"
    "The members and their balances are what the store holds now, whatever the day.\n"
    "\n"
    "CRM write-backs (card fields, notes, tasks) are queued in the store: the daemon sends them\n"
    "(`loyd serve` must be running for the CRM to show them).  Safe while the daemon runs.\n"
    "Exit status: 0 done; 1 the config, pack or store cannot be used, or an event failed in\n"
    "the rules (a dead letter); 2 usage error.\n";

struct tick {
    const char *config_path, *tenant_name, *date_arg;
    struct loyd_config *cfg;
    struct loyd_tenant_config *tenant;
    struct loyd_engine *engine;
    struct loyd_store *store;
    uv_loop_t loop;
    bool loop_ready;
    char day[11];
    int64_t at_ms;
    bool bday, tick;
    bool dry_run;
    char *copy; /* the store's copy a dry run writes to (removed at the end), or NULL */

    /* The page being applied. */
    json_t *events; /* array of events */
    size_t next;
    char *after; /* the last member id of the page */
    bool done;
    int rc; /* the run's outcome: 0, or 1 after a failure */

    /* What happened. */
    size_t members, birthdays, ticks, applied, acted, duplicates, failed;
    int64_t awarded, redeemed, balance_delta;
    json_t *kinds; /* effect kind -> count */
};

static void fail(const char *fmt, ...) LOYD_PRINTF(1, 2);
static void fail(const char *fmt, ...)
{
    va_list ap;
    fputs("loyd tick: ", stderr);
    va_start(ap, fmt);
    vfprintf(stderr, fmt, ap);
    va_end(ap);
    fputc('\n', stderr);
}

static void fail_lines(const struct loyd_buf *b)
{
    if (b->len > 0) {
        fputs(b->data, stderr);
        if (b->data[b->len - 1] != '\n')
            fputc('\n', stderr);
    }
}

static const char *sfield(const json_t *o, const char *k)
{
    return json_string_value(json_object_get(o, k));
}

static int64_t ifield(const json_t *o, const char *k)
{
    return (int64_t)json_integer_value(json_object_get(o, k));
}

static int cmp_str(const void *a, const void *b)
{
    return strcmp(*(char *const *)a, *(char *const *)b);
}

/* ---- opening ------------------------------------------------------------------------------ */

/* Tenant @p name's file only (another tenant's may need secrets this shell does not have). */
static int tenant_load(struct tick *t)
{
    const char *dir = t->cfg->tenants_dir, *name = t->tenant_name;
    DIR *dh = opendir(dir);
    char **names = NULL;
    size_t n = 0;
    bool found = false;
    struct dirent *de;
    int rc = 1;

    if (dh == NULL) {
        fail("cannot read the tenants folder %s (from %s): %s", dir, t->cfg->path, strerror(errno));
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
        fail("unknown tenant '%s': no %s.conf in %s (%s%s)%s%s%s", name, name, dir,
             n > 0 ? "known tenants: " : "it has no tenant files", n > 0 ? known.data : "",
             hint ? "; did you mean '" : "", hint ? hint : "", hint ? "'?" : "");
        loyd_buf_free(&known);
    } else {
        struct loyd_buf err = {0};
        char *path = loyd_xasprintf("%s/%s.conf", dir, name);
        if (loyd_tenant_config_load(path, &t->tenant, &err) != 0) {
            fail_lines(&err);
            fail("cannot load the tenant file %s", path);
        } else {
            rc = 0;
        }
        free(path);
        loyd_buf_free(&err);
    }
    for (size_t i = 0; i < n; i++)
        free(names[i]);
    free(names);
    return rc;
}

/* The day to run and the time its events carry; the engine's zone offset is that day's. */
static int day_pick(struct tick *t, int *tz)
{
    struct loyd_buf err = {0};
    time_t now = time(NULL);
    int rc = loyd_tz_offset_min(t->tenant->timezone, now, tz, &err);

    if (rc == 0 && t->date_arg == NULL) {
        t->at_ms = (int64_t)now * 1000;
        loyd_date_format(t->at_ms, *tz, t->day);
    } else if (rc == 0) {
        int64_t day_ms;
        if (strlen(t->date_arg) != 10 || loyd_date_parse(t->date_arg, *tz, &day_ms) != 0) {
            fail("--date '%s': expected a date YYYY-MM-DD", t->date_arg);
            return 2;
        }
        /* Noon: the same calendar day whatever the zone's offset does that day (DST). */
        rc = loyd_tz_offset_min(t->tenant->timezone, (time_t)((day_ms + DAY_MS / 2) / 1000), tz,
                                &err);
        if (rc == 0 && loyd_date_parse(t->date_arg, *tz, &day_ms) == 0) {
            memcpy(t->day, t->date_arg, sizeof(t->day));
            char today[11];
            loyd_date_format((int64_t)now * 1000, *tz, today);
            /* Today's events carry the time now, as the daemon's would. */
            t->at_ms = strcmp(today, t->day) == 0 ? (int64_t)now * 1000 : day_ms + DAY_MS / 2;
            if (strcmp(t->day, today) > 0)
                t->dry_run = true; /* see the usage: a future day is only ever previewed */
        }
    }
    if (rc != 0) {
        fail("%s in %s", err.data ? err.data : loyd_strerror(rc), t->tenant->path);
        loyd_buf_free(&err);
        return 1;
    }
    return 0;
}

static int engine_open(struct tick *t, int tz)
{
    struct loyd_sandbox_limits lim = {.memory_bytes = t->cfg->rules.memory_bytes,
                                      .instructions = t->cfg->rules.instructions,
                                      .wall_ms = t->cfg->rules.wall_ms};
    struct loyd_buf err = {0};
    char *dir = loyd_tenant_pack_dir(t->cfg, t->tenant);
    int rc = loyd_engine_create(t->tenant->name, dir, t->cfg->packs_dir, t->tenant->settings, tz,
                                &lim, &t->engine, &err);
    if (rc != 0) {
        fail_lines(&err);
        fail("the pack '%s' (%s) of tenant '%s' cannot be used", t->tenant->pack, dir,
             t->tenant->name);
    }
    loyd_buf_free(&err);
    free(dir);
    return rc != 0 ? 1 : 0;
}

/*
 * A dry run's store: a consistent copy of the real one (VACUUM INTO reads one snapshot, beside
 * a running daemon) in the temporary folder.  @return 0 and t->copy; 1 (printed).
 */
static int store_copy(struct tick *t)
{
    const char *path = t->cfg->store;
    if (strncmp(path, "sqlite://", 9) == 0)
        path += 9;
    else if (strncmp(path, "sqlite:", 7) == 0)
        path += 7;
    const char *tmp =
        getenv("TMPDIR") != NULL && getenv("TMPDIR")[0] != '\0' ? getenv("TMPDIR") : "/tmp";
    char *dir = loyd_xasprintf("%s/loyd-tick-XXXXXX", tmp);
    if (mkdtemp(dir) == NULL) {
        fail("--dry-run: cannot make a folder for the store's copy in %s: %s", tmp,
             strerror(errno));
        free(dir);
        return 1;
    }
    t->copy = loyd_xasprintf("%s/loyd.db", dir);
    free(dir);
    sqlite3 *db = NULL;
    sqlite3_stmt *st = NULL;
    int rc = sqlite3_open_v2(path, &db, SQLITE_OPEN_READONLY, NULL);
    if (rc == SQLITE_OK) {
        sqlite3_busy_timeout(db, 5000);
        rc = sqlite3_prepare_v2(db, "VACUUM INTO ?1", -1, &st, NULL);
    }
    if (rc == SQLITE_OK)
        rc = sqlite3_bind_text(st, 1, t->copy, -1, SQLITE_STATIC);
    if (rc == SQLITE_OK && (rc = sqlite3_step(st)) == SQLITE_DONE)
        rc = SQLITE_OK;
    if (rc != SQLITE_OK)
        fail("--dry-run: cannot copy the store %s to %s: %s", path, t->copy,
             db != NULL ? sqlite3_errmsg(db) : sqlite3_errstr(rc));
    sqlite3_finalize(st);
    sqlite3_close(db);
    return rc == SQLITE_OK ? 0 : 1;
}

/* Removes a dry run's copy and its folder (and the WAL files the store left beside it). */
static void copy_remove(struct tick *t)
{
    if (t->copy == NULL)
        return;
    static const char *const ext[] = {"", "-wal", "-shm"};
    for (size_t i = 0; i < LOYD_ARRAY_SIZE(ext); i++) {
        char *f = loyd_xasprintf("%s%s", t->copy, ext[i]);
        unlink(f);
        free(f);
    }
    char *slash = strrchr(t->copy, '/');
    *slash = '\0';
    rmdir(t->copy);
    free(t->copy);
    t->copy = NULL;
}

static int store_open(struct tick *t)
{
    struct loyd_store *probe = NULL;
    /* A store that does not exist is not created: a typo in `store` would start a new one. */
    int rc = loyd_store_open_readonly(t->cfg->store, &probe);
    loyd_store_destroy(probe);
    if (rc == -ENOENT) {
        fail("the store %s does not exist (`store` in %s; the daemon creates it when it first "
             "starts)",
             t->cfg->store, t->cfg->path);
        return 1;
    }
    if (rc == 0) {
        if (uv_loop_init(&t->loop) != 0) {
            fail("cannot set up the event loop");
            return 1;
        }
        t->loop_ready = true;
        if (t->dry_run && store_copy(t) != 0)
            return 1;
        rc = loyd_store_open(&t->loop, t->dry_run ? t->copy : t->cfg->store, &t->store);
    }
    if (rc != 0) {
        fail("cannot open the store %s: %s", t->dry_run ? t->copy : t->cfg->store,
             loyd_strerror(rc));
        return 1;
    }
    return 0;
}

/* ---- the day's events ---------------------------------------------------------------------- */

/* Whether a member born on @p birthday ("YYYY-MM-DD") has a birthday on @p day (as the
 * daemon's scheduler: 29 February is celebrated on 28 February in common years). */
static bool birthday_on(const char *birthday, const char *day)
{
    if (birthday == NULL || strlen(birthday) != 10)
        return false;
    if (strcmp(birthday + 5, day + 5) == 0)
        return true;
    int year = atoi(day);
    bool leap = (year % 4 == 0 && year % 100 != 0) || year % 400 == 0;
    return !leap && strcmp(birthday + 5, "02-29") == 0 && strcmp(day + 5, "02-28") == 0;
}

/* The next page of members as events; @return false at the end or on a store error. */
static bool page_load(struct tick *t)
{
    json_t *members = NULL, *m;
    size_t i;
    int rc = loyd_store_members_list(t->store, t->tenant->name, t->after, MEMBERS_PAGE, &members);

    if (rc != 0) {
        fail("reading the members from the store %s: %s", t->cfg->store, loyd_strerror(rc));
        t->rc = 1;
        return false;
    }
    if (json_array_size(members) == 0) {
        json_decref(members);
        return false;
    }
    json_decref(t->events);
    t->events = json_array();
    t->next = 0;
    json_array_foreach(members, i, m)
    {
        const char *id = sfield(m, "member_id");
        if (id == NULL)
            continue;
        t->members++;
        if (t->bday && birthday_on(sfield(json_object_get(m, "profile"), "birthday"), t->day)) {
            char *key = loyd_xasprintf("birthday:%s:%.4s", id, t->day);
            json_array_append_new(t->events,
                                  json_pack("{s:s, s:s, s:I, s:{s:s}}", "type", "birthday", "key",
                                            key, "at", (json_int_t)t->at_ms, "contact", "id", id));
            free(key);
            t->birthdays++;
        }
        if (t->tick) {
            char *key = loyd_xasprintf("tick:%s:%s", id, t->day);
            json_array_append_new(t->events,
                                  json_pack("{s:s, s:s, s:I, s:s}", "type", "tick", "key", key,
                                            "at", (json_int_t)t->at_ms, "member_id", id));
            free(key);
            t->ticks++;
        }
    }
    free(t->after);
    t->after =
        loyd_xstrdup(sfield(json_array_get(members, json_array_size(members) - 1), "member_id"));
    json_decref(members);
    return true;
}

static void step(struct tick *t);

static void on_closed(void *arg)
{
    (void)arg;
}

static void finish(struct tick *t)
{
    t->done = true;
    loyd_store_close(t->store, on_closed, t);
}

/* What the rules did with one event: its line and the totals. */
static void account(struct tick *t, const json_t *ev)
{
    const char *key = sfield(ev, "key");
    json_t *row = NULL, *x;
    size_t i;

    if (loyd_store_event_get(t->store, t->tenant->name, key, &row) != 0)
        return;
    const json_t *trace = json_object_get(row, "trace");
    struct loyd_buf words = {0};
    if (loyd_applied_words(ev, trace, loyd_engine_points_unit(t->engine), &words)) {
        t->acted++;
        printf("  %s  %s\n", key, words.data);
    }
    json_array_foreach(json_object_get(trace, "accepted"), i, x)
    {
        const char *kind = sfield(x, "kind");
        if (kind == NULL)
            continue;
        json_object_set_new(t->kinds, kind,
                            json_integer(json_integer_value(json_object_get(t->kinds, kind)) + 1));
        if (strcmp(kind, "award") == 0)
            t->awarded += ifield(x, "points");
        else if (strcmp(kind, "redeem") == 0)
            t->redeemed += ifield(x, "points");
    }
    t->balance_delta += ifield(trace, "balance") - ifield(trace, "balance_before");
    loyd_buf_free(&words);
    json_decref(row);
}

static void on_applied(void *arg, int err)
{
    struct tick *t = arg;
    const json_t *ev = json_array_get(t->events, t->next);

    if (err == 0) {
        t->applied++;
        account(t, ev);
    } else if (err == LOYD_EDUP) {
        t->duplicates++;
    } else {
        t->failed++;
        t->rc = 1;
        fail("event %s failed: %s%s", sfield(ev, "key"), loyd_strerror(err),
             err == -EINVAL || err == LOYD_ERULE || err == LOYD_EBUDGET || err == LOYD_ERULEMEM ||
                     err == LOYD_EEFFECT
                 ? " (a dead letter now; the store's dead_letters table has the details)"
                 : "");
        if (err == LOYD_EDB || err == -ECANCELED) {
            finish(t); /* the store is not usable: the rest would fail the same way */
            return;
        }
    }
    t->next++;
    step(t);
}

/* Applies the next event (one at a time, as the daemon's lane), loading pages as needed. */
static void step(struct tick *t)
{
    for (;;) {
        if (t->events == NULL || t->next >= json_array_size(t->events)) {
            if (!page_load(t)) {
                finish(t);
                return;
            }
            continue;
        }
        const json_t *ev = json_array_get(t->events, t->next);
        int rc = loyd_engine_process(t->engine, t->store, ev, 0, on_applied, t);
        if (rc == 0)
            return;
        t->failed++;
        t->rc = 1;
        fail("event %s not applied: %s", sfield(ev, "key"), loyd_strerror(rc));
        if (rc != -EINVAL) {
            finish(t);
            return;
        }
        t->next++;
    }
}

/* ---- the summary ------------------------------------------------------------------------------
 */

static void summary(struct tick *t)
{
    const struct loyd_points_unit *u = loyd_engine_points_unit(t->engine);
    char aw[80], rd[80], bal[80];
    const char *k;
    json_t *v;
    size_t n = 0;

    printf("%zu member%s, %zu birthday%s, %zu tick%s: %zu event%s applied (%zu with effects), "
           "%zu already applied before, %zu failed\n",
           t->members, t->members == 1 ? "" : "s", t->birthdays, t->birthdays == 1 ? "" : "s",
           t->ticks, t->ticks == 1 ? "" : "s", t->applied, t->applied == 1 ? "" : "s", t->acted,
           t->duplicates, t->failed);
    printf("effects:");
    json_object_foreach(t->kinds, k, v)
        printf("%s %" JSON_INTEGER_FORMAT " %s", n++ ? "," : "", json_integer_value(v), k);
    loyd_points_format(t->awarded, u, LOYD_POINTS_GROUP | LOYD_POINTS_UNIT, aw, sizeof(aw));
    loyd_points_format(t->redeemed, u, LOYD_POINTS_GROUP | LOYD_POINTS_UNIT, rd, sizeof(rd));
    bal[0] = t->balance_delta > 0 ? '+' : '\0';
    loyd_points_format(t->balance_delta, u, LOYD_POINTS_GROUP | LOYD_POINTS_UNIT,
                       bal + (bal[0] != 0), sizeof(bal) - 1);
    printf("%s; %s awarded, %s redeemed, balances %s in all\n", n ? "" : " none", aw, rd, bal);
    if (t->applied > 0 && !t->dry_run)
        printf("CRM write-backs are queued in the store; the daemon (`loyd serve`) sends them.\n");
}

/* ---- the command ------------------------------------------------------------------------------
 */

static void tick_close(struct tick *t)
{
    if (t->store != NULL && !t->done)
        loyd_store_close(t->store, on_closed, t);
    if (t->loop_ready) {
        uv_run(&t->loop, UV_RUN_DEFAULT);
        loyd_store_destroy(t->store);
        if (uv_loop_close(&t->loop) != 0)
            loyd_log_err(CORE, "event loop did not close");
    }
    copy_remove(t);
    loyd_engine_destroy(t->engine);
    loyd_tenant_config_free(t->tenant);
    loyd_config_free(t->cfg);
    json_decref(t->events);
    json_decref(t->kinds);
    free(t->after);
}

int loyd_cmd_tick(int argc, char **argv)
{
    struct tick t = {0};
    struct loyd_buf err = {0};
    int tz = 0, rc;

    for (int i = 1; i < argc; i++) {
        if (strcmp(argv[i], "--help") == 0 || strcmp(argv[i], "-h") == 0) {
            fputs(usage_text, stdout);
            return 0;
        } else if ((strcmp(argv[i], "-c") == 0 || strcmp(argv[i], "--config") == 0) &&
                   i + 1 < argc) {
            t.config_path = argv[++i];
        } else if (strcmp(argv[i], "--date") == 0 && i + 1 < argc) {
            t.date_arg = argv[++i];
        } else if (strcmp(argv[i], "--dry-run") == 0) {
            t.dry_run = true;
        } else if (argv[i][0] != '-' && t.tenant_name == NULL) {
            t.tenant_name = argv[i];
        } else {
            fprintf(stderr, "loyd tick: unexpected argument '%s'\n\n%s", argv[i], usage_text);
            return 2;
        }
    }
    if (t.tenant_name == NULL) {
        fprintf(stderr, "loyd tick: TENANT is required\n\n%s", usage_text);
        return 2;
    }
    /* Warnings and errors only: the store's and the engine's own lines say what went wrong. */
    loyd_log_set_level(LOYD_LOG_WARN);
    const char *path = t.config_path != NULL ? t.config_path : DEFAULT_CONFIG;
    if ((rc = loyd_config_load(path, &t.cfg, &err)) != 0) {
        if (rc == -ENOENT && t.config_path == NULL)
            fail("no config at %s (the default): give the daemon's with -c FILE", path);
        else {
            fail_lines(&err);
            fail("cannot load the config %s", path);
        }
        loyd_buf_free(&err);
        return 1;
    }
    if (tenant_load(&t) != 0 || (rc = day_pick(&t, &tz)) != 0 || engine_open(&t, tz) != 0 ||
        store_open(&t) != 0) {
        tick_close(&t);
        return rc == 2 ? 2 : 1;
    }
    t.bday = loyd_engine_handles(t.engine, "birthday");
    t.tick = loyd_engine_handles(t.engine, "tick");
    t.kinds = json_object();
    printf("tenant %s, %s (%s)%s%s\n", t.tenant->name, t.day, t.tenant->timezone,
           t.dry_run ? ", a dry run on a copy of the store: nothing is stored or sent" : "",
           !t.bday && !t.tick ? "; the pack handles neither birthday nor tick events" : "");
    fflush(stdout);
    if (t.bday || t.tick)
        step(&t);
    else
        finish(&t);
    uv_run(&t.loop, UV_RUN_DEFAULT);
    summary(&t);
    rc = t.rc;
    tick_close(&t);
    return rc;
}
