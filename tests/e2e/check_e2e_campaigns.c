/* SPDX-License-Identifier: MIT */
/*
 * End to end: `loyd campaigns`, the real binary as a subprocess, against a store filled
 * through the store API in a temporary directory.  The tenant overrides the campaigns its pack
 * declares (the `campaigns` setting type) and the older `budgets` map names one more; the
 * ledger holds campaign awards of two members.  Points are shown in the pack's unit (100
 * ledger units = 1 point); "runs on" is asked for fixed days with --date, never the clock.
 */
#include <check.h>
#include <fcntl.h>
#include <jansson.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/stat.h>
#include <sys/wait.h>
#include <unistd.h>
#include <uv.h>

#include "e2e.h"
#include "store.h"
#include "util.h"

static char *dir, *conf;
static uv_loop_t loop;
static struct loyd_store *store;
static int pending;

static void done(void *arg, int err)
{
    ck_assert_msg(err == 0, "%s: %d", (const char *)arg, err);
    pending--;
}

static void award(const char *key, const char *member, int64_t points, const char *campaign)
{
    struct loyd_ledger_entry e = {
        .points = points, .kind = "award", .reason = "campaign bonus", .campaign = campaign};
    struct loyd_apply a = {
        .tenant = "acme",
        .event_key = key,
        .event_type = "deal.won",
        .member_id = member,
        .ledger = &e,
        .n_ledger = 1,
        .applied_ms = 1795694400000ULL, /* 2026-11-25 12:00 UTC */
    };
    ck_assert_int_eq(loyd_store_apply(store, &a, done, (void *)key), 0);
    pending++;
    uv_run(&loop, UV_RUN_DEFAULT);
    ck_assert_int_eq(pending, 0);
}

static void setup(void)
{
    dir = loyd_e2e_tmpdir();
    conf = loyd_xasprintf("%s/loyd.conf", dir);
    loyd_e2e_write(dir, "loyd.conf",
                   "listen = \"127.0.0.1:0\"\nstore = \"loyd.db\"\ntenants = \"tenants.d\"\n"
                   "packs = \"packs\"\n");
    /* The tenant's campaigns replace the pack's default list; budgets add "legacy". */
    loyd_e2e_write(
        dir, "tenants.d/acme.conf",
        "connector = \"bitrix24\"\npack = \"camp\"\ntimezone = \"Europe/Moscow\"\n"
        "crm = { application_token = \"51856fefc120afa4b628cc82d3935cce\" }\n"
        "settings = {\n"
        "  campaigns = {\n"
        "    { name = \"bf2026\", from = \"2026-11-20\", to = \"2026-11-30\", multiplier = 3,\n"
        "      budget = 400000 },\n"
        "    { name = \"weekend\", weekdays = { 6, 7 }, bonus_bp = 5000 },\n"
        "    { name = \"flash\", from = \"2026-11-25\", to = \"2026-11-25\", multiplier = 2,\n"
        "      budget = 10000 },\n"
        "  },\n"
        "  budgets = { legacy = 100000 },\n"
        "}\n");
    loyd_e2e_write(dir, "tenants.d/shop.conf",
                   "connector = \"bitrix24\"\npack = \"camp\"\n"
                   "crm = { application_token = \"51856fefc120afa4b628cc82d3935cce\" }\n"
                   "settings = { campaigns = { { name = \"x\", multipler = 2 } } }\n");
    char *pdir = loyd_xasprintf("%s/packs", dir);
    ck_assert_int_eq(mkdir(pdir, 0700), 0);
    loyd_e2e_write(pdir, "camp/pack.conf",
                   "return { name = \"camp\", version = \"2\",\n"
                   "  points = { unit = \"points\", minor = 100 },\n"
                   "  settings = {\n"
                   "    campaigns = { type = \"campaigns\", default = {\n"
                   "      { name = \"spring\", from = \"2026-03-01\", multiplier = 2 } } },\n"
                   "    budgets = { type = \"map\", of = \"int\", default = {} },\n"
                   "  } }\n");
    free(pdir);

    ck_assert_int_eq(uv_loop_init(&loop), 0);
    char *db = loyd_xasprintf("%s/loyd.db", dir);
    ck_assert_int_eq(loyd_store_open(&loop, db, &store), 0);
    free(db);
    award("deal:1:won", "43", 150000, "bf2026");
    award("deal:2:won", "44", 50000, "bf2026");
    award("deal:3:won", "44", 20000, "legacy");
    award("deal:4:won", "43", 10000, "flash");
}

static void closed(void *arg)
{
    (void)arg;
}

static void teardown(void)
{
    loyd_store_close(store, closed, NULL);
    uv_run(&loop, UV_RUN_DEFAULT);
    loyd_store_destroy(store);
    store = NULL;
    ck_assert_int_eq(uv_loop_close(&loop), 0);
    char *cmd = loyd_xasprintf("rm -rf '%s'", dir);
    ck_assert_int_eq(system(cmd), 0);
    free(cmd);
    free(conf);
    free(dir);
}

static char *slurp(const char *path)
{
    FILE *f = fopen(path, "r");
    char *buf = NULL;
    size_t len = 0;
    FILE *m = open_memstream(&buf, &len);
    if (f != NULL) {
        char chunk[4096];
        size_t r;
        while ((r = fread(chunk, 1, sizeof(chunk), f)) > 0)
            fwrite(chunk, 1, r, m);
        fclose(f);
    }
    fclose(m);
    return buf;
}

/* Runs LOYD_BIN with @p argv; @return its exit status; *out, *err get stdout and stderr. */
static int run(const char *const argv[], char **out, char **err)
{
    const char *bin = getenv("LOYD_BIN");
    char *opath = loyd_xasprintf("%s/stdout", dir), *epath = loyd_xasprintf("%s/stderr", dir);
    char *args[32];
    size_t n = 0;
    int status;

    ck_assert_msg(bin != NULL, "LOYD_BIN is not set (run through make check)");
    args[n++] = (char *)bin;
    for (size_t i = 0; argv[i] != NULL && n < 31; i++)
        args[n++] = (char *)argv[i];
    args[n] = NULL;
    pid_t pid = fork();
    ck_assert(pid >= 0);
    if (pid == 0) {
        int o = open(opath, O_WRONLY | O_CREAT | O_TRUNC, 0600);
        int e = open(epath, O_WRONLY | O_CREAT | O_TRUNC, 0600);
        if (o < 0 || e < 0 || chdir("/") != 0)
            _exit(127);
        dup2(o, STDOUT_FILENO);
        dup2(e, STDERR_FILENO);
        execv(bin, args);
        _exit(127);
    }
    ck_assert_int_eq(waitpid(pid, &status, 0), pid);
    *out = slurp(opath);
    *err = slurp(epath);
    free(opath);
    free(epath);
    ck_assert_msg(strstr(*err, "runtime error") == NULL && strstr(*err, "Sanitizer") == NULL,
                  "sanitizer report:\n%s", *err);
    ck_assert_msg(WIFEXITED(status), "killed by signal %d:\n%s", WTERMSIG(status), *err);
    return WEXITSTATUS(status);
}

#define HAS(text, needle)                                                                          \
    ck_assert_msg(strstr((text), (needle)) != NULL, "no '%s' in:\n%s", (needle), (text))

/* The line of @p out that starts with @p name (a table row). */
static const char *row_of(const char *out, const char *name)
{
    size_t n = strlen(name);
    for (const char *p = out; p != NULL && *p != '\0';
         p = strchr(p, '\n') ? strchr(p, '\n') + 1 : NULL)
        if (strncmp(p, name, n) == 0 && p[n] == ' ')
            return p;
    ck_abort_msg("no row '%s' in:\n%s", name, out);
    return NULL;
}

static bool row_has(const char *row, const char *needle)
{
    const char *end = strchr(row, '\n');
    const char *hit = strstr(row, needle);
    return hit != NULL && (end == NULL || hit < end);
}

#define ROW_HAS(out, name, needle)                                                                 \
    ck_assert_msg(row_has(row_of((out), (name)), (needle)), "row '%s' has no '%s' in:\n%s",        \
                  (name), (needle), (out))

START_TEST(lists_campaigns)
{
    char *out, *err;
    const char *argv[] = {"campaigns", "-c", conf, "--date", "2026-11-25", "acme", NULL};
    ck_assert_msg(run(argv, &out, &err) == 0, "%s%s", out, err);
    HAS(out, "tenant  acme  (pack camp 2; 2026-11-25, Wednesday, Europe/Moscow)");
    /* The tenant's list replaced the pack's default: no "spring". */
    ck_assert_msg(strstr(out, "spring") == NULL, "%s", out);
    ROW_HAS(out, "bf2026", "2026-11-20 .. 2026-11-30");
    ROW_HAS(out, "bf2026", "x3");
    ROW_HAS(out, "bf2026", "4,000 points");
    ROW_HAS(out, "bf2026", " 2,000 points  2,000 points");
    ROW_HAS(out, "bf2026", "running");
    ROW_HAS(out, "weekend", "Sat, Sun");
    ROW_HAS(out, "weekend", "+50%");
    ROW_HAS(out, "weekend", "no limit");
    ROW_HAS(out, "weekend", "not on Wednesdays");
    ROW_HAS(out, "flash", "running, budget spent");
    ROW_HAS(out, "flash", "100 points");
    ROW_HAS(out, "flash", " 0 points  running");
    /* Named only by budgets: listed with what it drew, not as a declared campaign. */
    ROW_HAS(out, "legacy", "1,000 points");
    ROW_HAS(out, "legacy", " 200 points");
    ROW_HAS(out, "legacy", " 800 points");
    ROW_HAS(out, "legacy", "not declared");
    /* Declared campaigns first, in the tenant's order. */
    ck_assert(strstr(out, "bf2026") < strstr(out, "weekend"));
    ck_assert(strstr(out, "flash") < strstr(out, "legacy"));
    ck_assert_str_eq(err, "");
    free(out);
    free(err);

    const char *later[] = {"campaigns", "-c", conf, "--date", "2026-12-05", "acme", NULL};
    ck_assert_int_eq(run(later, &out, &err), 0);
    HAS(out, "2026-12-05, Saturday");
    ROW_HAS(out, "bf2026", "ended 2026-11-30");
    ROW_HAS(out, "weekend", "running");
    free(out);
    free(err);

    const char *before[] = {"campaigns", "-c", conf, "--date", "2026-11-01", "acme", NULL};
    ck_assert_int_eq(run(before, &out, &err), 0);
    ROW_HAS(out, "bf2026", "starts 2026-11-20");
    free(out);
    free(err);
}
END_TEST

START_TEST(lists_json)
{
    char *out, *err;
    const char *argv[] = {"campaigns", "-c", conf, "--date", "2026-11-28", "--json", "acme", NULL};
    ck_assert_msg(run(argv, &out, &err) == 0, "%s", err);
    json_t *j = json_loads(out, 0, NULL);
    ck_assert_msg(j != NULL, "not JSON:\n%s", out);
    ck_assert_str_eq(json_string_value(json_object_get(j, "weekday")), "Saturday");
    ck_assert_int_eq(json_integer_value(json_object_get(json_object_get(j, "unit"), "minor")), 100);
    json_t *cs = json_object_get(j, "campaigns");
    ck_assert_int_eq(json_array_size(cs), 4);
    json_t *bf = json_array_get(cs, 0);
    ck_assert_str_eq(json_string_value(json_object_get(bf, "name")), "bf2026");
    ck_assert_int_eq(json_integer_value(json_object_get(bf, "budget")), 400000);
    ck_assert_int_eq(json_integer_value(json_object_get(bf, "spent")), 200000);
    ck_assert_int_eq(json_integer_value(json_object_get(bf, "remaining")), 200000);
    ck_assert_str_eq(json_string_value(json_object_get(bf, "remaining_display")), "2,000 points");
    ck_assert_int_eq(json_integer_value(json_object_get(bf, "multiplier")), 3);
    ck_assert(json_is_true(json_object_get(bf, "active")));
    json_t *we = json_array_get(cs, 1);
    ck_assert_int_eq(json_integer_value(json_object_get(we, "bonus_bp")), 5000);
    ck_assert(json_is_null(json_object_get(we, "budget")));
    ck_assert(json_is_true(json_object_get(we, "active")));
    ck_assert_int_eq(json_array_size(json_object_get(we, "weekdays")), 2);
    json_t *fl = json_array_get(cs, 2);
    ck_assert_str_eq(json_string_value(json_object_get(fl, "state")), "ended");
    json_t *lg = json_array_get(cs, 3);
    ck_assert(json_is_false(json_object_get(lg, "declared")));
    ck_assert_int_eq(json_integer_value(json_object_get(lg, "remaining")), 80000);
    json_decref(j);
    free(out);
    free(err);
}
END_TEST

START_TEST(bad_settings_and_usage)
{
    char *out, *err;
    /* A tenant whose campaign has a typo: named with the field and the nearest one. */
    const char *bad[] = {"campaigns", "-c", conf, "shop", NULL};
    ck_assert_int_eq(run(bad, &out, &err), 1);
    HAS(err, "setting 'campaigns'[1] (\"x\"): unknown field 'multipler' (did you mean "
             "'multiplier'?)");
    HAS(err, "loyd campaigns: the settings of tenant 'shop' do not fit its pack 'camp'");
    free(out);
    free(err);

    const char *help[] = {"campaigns", "--help", NULL};
    ck_assert_int_eq(run(help, &out, &err), 0);
    HAS(out, "usage: loyd campaigns [-c FILE] [--date YYYY-MM-DD] [--json] TENANT");
    free(out);
    free(err);

    const char *none[] = {"campaigns", "-c", conf, NULL};
    ck_assert_int_eq(run(none, &out, &err), 2);
    HAS(err, "loyd campaigns: which tenant?");
    free(out);
    free(err);

    const char *date[] = {"campaigns", "-c", conf, "--date", "2026-02-30", "acme", NULL};
    ck_assert_int_eq(run(date, &out, &err), 2);
    HAS(err, "--date '2026-02-30': expected a date YYYY-MM-DD");
    free(out);
    free(err);

    const char *who[] = {"campaigns", "-c", conf, "acme2", NULL};
    ck_assert_int_eq(run(who, &out, &err), 1);
    HAS(err, "unknown tenant 'acme2'");
    free(out);
    free(err);
}
END_TEST

Suite *e2e_campaigns_suite(void)
{
    Suite *s = suite_create("e2e_campaigns");
    TCase *tc = tcase_create("campaigns");
    tcase_add_checked_fixture(tc, setup, teardown);
    tcase_set_timeout(tc, 60);
    tcase_add_test(tc, lists_campaigns);
    tcase_add_test(tc, lists_json);
    tcase_add_test(tc, bad_settings_and_usage);
    suite_add_tcase(s, tc);
    return s;
}
