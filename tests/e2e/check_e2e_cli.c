/* SPDX-License-Identifier: MIT */
/*
 * End to end: `loyd member` and `loyd ledger`, the real binary as a subprocess, against a
 * store filled through the store API in a temporary directory (a daemon config, two tenant
 * files and a pack that counts 100 ledger units as one point).  The store stays open for
 * writing while the commands run, as it would under a running daemon.
 */
#include <check.h>
#include <errno.h>
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

/* 2026-01-10 12:00:00 UTC = 15:00 in Moscow; 2026-02-01 09:30 UTC = 12:30 in Moscow. */
#define T_AWARD 1768046400000LL
#define T_REDEEM 1769938200000LL
#define T_EXPIRES 1799582400000LL /* 2027-01-10 12:00 UTC */

static char *dir, *conf;
static uv_loop_t loop;
static struct loyd_store *store;
static int pending;

static void done(void *arg, int err)
{
    ck_assert_msg(err == 0, "%s: %d", (const char *)arg, err);
    pending--;
}

static void kv(const char *key, const char *value)
{
    ck_assert_int_eq(loyd_store_kv_put(store, "acme", key, value, done, (void *)key), 0);
    pending++;
}

static void fill(void)
{
    kv("crm:contact:43", "{\"name\":\"Anna Petrova\",\"phone\":\"+7 (916) 123-45-67\","
                         "\"email\":\"Anna.Petrova@Example.com\"}");
    kv("crm:contact:44", "{\"name\":\"Boris\",\"phone\":\"+7 916 000-11-22\"}");
    /* Two contacts with one phone: a search must not pick one of them silently. */
    kv("crm:contact:45", "{\"name\":\"Vera\",\"phone\":\"+7 999 555-44-33\"}");
    kv("crm:contact:46", "{\"name\":\"Vera (work)\",\"phone\":[\"89995554433\"]}");
    kv("crm:deal:759", "{\"won\":true}"); /* not a contact: never searched */

    struct loyd_ledger_entry award = {.points = 50000,
                                      .kind = "award",
                                      .reason = "cashback 3% (silver)",
                                      .expires_ms = T_EXPIRES,
                                      .ref = "759"};
    struct loyd_apply a1 = {
        .tenant = "acme",
        .event_key = "deal:759:won:1",
        .event_type = "deal.won",
        .event_json = "{\"type\":\"deal.won\",\"key\":\"deal:759:won:1\",\"deal\":{\"id\":\"759\","
                      "\"amount\":1500000,\"currency\":\"RUB\",\"contact_id\":\"43\"}}",
        .member_id = "43",
        .member_json = "{\"tier\":\"silver\"}",
        .ledger = &award,
        .n_ledger = 1,
        .applied_ms = T_AWARD,
    };
    ck_assert_int_eq(loyd_store_apply(store, &a1, done, "apply 1"), 0);
    pending++;
    uv_run(&loop, UV_RUN_DEFAULT);

    /* The first ledger row of a new store is id 1. */
    struct loyd_ledger_entry redeem = {
        .points = -4500, .kind = "redeem", .reason = "paid with points", .lot_id = 1, .ref = "760"};
    struct loyd_apply a2 = {
        .tenant = "acme",
        .event_key = "deal:760:won:1",
        .event_type = "deal.won",
        .event_json = "{\"type\":\"deal.won\",\"key\":\"deal:760:won:1\",\"deal\":{\"id\":\"760\","
                      "\"amount\":900000,\"currency\":\"RUB\",\"contact_id\":\"43\"}}",
        .member_id = "43",
        .ledger = &redeem,
        .n_ledger = 1,
        .applied_ms = T_REDEEM,
    };
    ck_assert_int_eq(loyd_store_apply(store, &a2, done, "apply 2"), 0);
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
    loyd_e2e_write(dir, "tenants.d/acme.conf",
                   "connector = \"bitrix24\"\npack = \"unitpack\"\ntimezone = \"Europe/Moscow\"\n"
                   "crm = { application_token = \"51856fefc120afa4b628cc82d3935cce\" }\n");
    loyd_e2e_write(dir, "tenants.d/shop.conf",
                   "connector = \"bitrix24\"\npack = \"unitpack\"\n"
                   "crm = { application_token = \"51856fefc120afa4b628cc82d3935cce\" }\n");
    char *pdir = loyd_xasprintf("%s/packs", dir);
    ck_assert_int_eq(mkdir(pdir, 0700), 0);
    loyd_e2e_write(pdir, "unitpack/pack.conf",
                   "return { name = \"unitpack\", version = \"1\",\n"
                   "         points = { unit = \"points\", minor = 100 } }\n");
    free(pdir);

    ck_assert_int_eq(uv_loop_init(&loop), 0);
    char *db = loyd_xasprintf("%s/loyd.db", dir);
    ck_assert_int_eq(loyd_store_open(&loop, db, &store), 0);
    free(db);
    fill();
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

/* The member command that found Anna (43), whichever way she was named. */
static void assert_anna(const char *out)
{
    HAS(out, "contact   43  Anna Petrova");
    HAS(out, "tier      silver");
    HAS(out, "balance   455 points");
    HAS(out, "email     Anna.Petrova@Example.com");
}

START_TEST(member_by_id)
{
    char *out, *err;
    const char *argv[] = {"member", "-c", conf, "acme", "43", NULL};
    ck_assert_int_eq(run(argv, &out, &err), 0);
    assert_anna(out);
    /* The lot: 455 of 500 points left, awarded and expiring on Moscow dates. */
    HAS(out, "455 points  2026-01-10  2027-01-10");
    /* Ledger rows in Moscow time, signed points, reasons, event keys and deal amounts. */
    HAS(out, "2026-01-10 15:00  award   +500 points  deal:759:won:1  cashback 3% (silver)  "
             "15,000.00 RUB");
    HAS(out, "2026-02-01 12:30  redeem   -45 points  deal:760:won:1  paid with points      "
             "9,000.00 RUB");
    HAS(out, "ledger    2 rows");
    /* Nothing in raw ledger units. */
    ck_assert_msg(strstr(out, "45500") == NULL && strstr(out, "50000") == NULL, "%s", out);
    ck_assert_str_eq(err, "");
    free(out);
    free(err);
}
END_TEST

START_TEST(member_by_phone_and_email)
{
    static const char *const whos[] = {"8 (916) 123-45-67", "+79161234567", "7-916-123-4567",
                                       "anna.petrova@EXAMPLE.COM", " Anna.Petrova@example.com "};
    for (size_t i = 0; i < LOYD_ARRAY_SIZE(whos); i++) {
        char *out, *err;
        const char *argv[] = {"member", "-c", conf, "acme", whos[i], NULL};
        ck_assert_msg(run(argv, &out, &err) == 0, "%s: %s", whos[i], err);
        assert_anna(out);
        free(out);
        free(err);
    }
}
END_TEST

START_TEST(member_json)
{
    char *out, *err;
    const char *argv[] = {"member", "--json", "-c", conf, "acme", "8 916 123 45 67", NULL};
    ck_assert_int_eq(run(argv, &out, &err), 0);
    json_error_t je;
    json_t *j = json_loads(out, 0, &je);
    ck_assert_msg(j != NULL, "not JSON (%s):\n%s", je.text, out);
    ck_assert_str_eq(json_string_value(json_object_get(j, "contact_id")), "43");
    ck_assert_str_eq(json_string_value(json_object_get(j, "tier")), "silver");
    ck_assert(json_is_integer(json_object_get(j, "balance")));
    ck_assert_int_eq(json_integer_value(json_object_get(j, "balance")), 45500);
    ck_assert_str_eq(json_string_value(json_object_get(j, "balance_display")), "455 points");
    ck_assert_int_eq(json_integer_value(json_object_get(json_object_get(j, "unit"), "minor")), 100);

    json_t *lot = json_array_get(json_object_get(j, "lots"), 0);
    ck_assert_int_eq(json_array_size(json_object_get(j, "lots")), 1);
    ck_assert_int_eq(json_integer_value(json_object_get(lot, "remaining")), 45500);
    ck_assert_int_eq(json_integer_value(json_object_get(lot, "points")), 50000);
    ck_assert_str_eq(json_string_value(json_object_get(lot, "expires_on")), "2027-01-10");

    json_t *rows = json_object_get(j, "ledger");
    ck_assert_int_eq(json_array_size(rows), 2);
    ck_assert_int_eq(json_integer_value(json_object_get(j, "ledger_total")), 2);
    json_t *r0 = json_array_get(rows, 0), *r1 = json_array_get(rows, 1);
    ck_assert_int_eq(json_integer_value(json_object_get(r0, "points")), 50000);
    ck_assert_str_eq(json_string_value(json_object_get(r0, "points_display")), "+500 points");
    ck_assert_str_eq(json_string_value(json_object_get(r0, "at")), "2026-01-10T15:00:00+03:00");
    ck_assert_str_eq(json_string_value(json_object_get(r0, "event_key")), "deal:759:won:1");
    json_t *deal = json_object_get(r0, "deal");
    ck_assert_int_eq(json_integer_value(json_object_get(deal, "amount")), 1500000);
    ck_assert_str_eq(json_string_value(json_object_get(deal, "amount_display")), "15,000.00 RUB");
    ck_assert_int_eq(json_integer_value(json_object_get(r1, "points")), -4500);
    ck_assert_str_eq(json_string_value(json_object_get(r1, "points_display")), "-45 points");
    ck_assert_str_eq(json_string_value(json_object_get(r1, "kind")), "redeem");
    json_decref(j);
    free(out);
    free(err);
}
END_TEST

START_TEST(member_not_found)
{
    char *out, *err;
    const char *id[] = {"member", "-c", conf, "acme", "999", NULL};
    ck_assert_int_eq(run(id, &out, &err), 1);
    HAS(err, "no member or contact with the id '999'");
    ck_assert_str_eq(out, "");
    free(out);
    free(err);

    const char *phone[] = {"member", "-c", conf, "acme", "+7 000 000-00-00", NULL};
    ck_assert_int_eq(run(phone, &out, &err), 1);
    HAS(err, "no contact of tenant 'acme' has the phone +7 000 000-00-00");
    HAS(err, "digits 70000000000 with the 4 contacts");
    free(out);
    free(err);

    const char *mail[] = {"member", "-c", conf, "acme", "nobody@example.com", NULL};
    ck_assert_int_eq(run(mail, &out, &err), 1);
    HAS(err, "no contact of tenant 'acme' has the email nobody@example.com");
    free(out);
    free(err);
}
END_TEST

START_TEST(member_ambiguous)
{
    char *out, *err;
    const char *argv[] = {"member", "-c", conf, "acme", "8 999 555 44 33", NULL};
    ck_assert_int_eq(run(argv, &out, &err), 1);
    HAS(err, "2 contacts of tenant 'acme' have the phone 8 999 555 44 33");
    HAS(err, "45  Vera");
    HAS(err, "46  Vera (work)");
    ck_assert_str_eq(out, "");
    free(out);
    free(err);
}
END_TEST

START_TEST(unknown_tenant)
{
    char *out, *err;
    const char *argv[] = {"member", "-c", conf, "acm", "43", NULL};
    ck_assert_int_eq(run(argv, &out, &err), 1);
    HAS(err, "unknown tenant 'acm'");
    HAS(err, "tenants.d");
    HAS(err, "known tenants: acme, shop");
    HAS(err, "did you mean 'acme'?");
    free(out);
    free(err);

    const char *ledger[] = {"ledger", "-c", conf, "shpo", NULL};
    ck_assert_int_eq(run(ledger, &out, &err), 1);
    HAS(err, "did you mean 'shop'?");
    free(out);
    free(err);
}
END_TEST

START_TEST(ledger_lists)
{
    char *out, *err;
    const char *all[] = {"ledger", "-c", conf, "acme", NULL};
    ck_assert_int_eq(run(all, &out, &err), 0);
    HAS(out, "2026-01-10 15:00  43  award   +500 points  deal:759:won:1");
    HAS(out, "2026-02-01 12:30  43  redeem   -45 points  deal:760:won:1");
    ck_assert(strstr(out, "award") < strstr(out, "redeem")); /* oldest first */
    free(out);
    free(err);

    /* The newest row only, found through the member's email. */
    const char *last[] = {"ledger",  "-c", conf,   "--member", "ANNA.petrova@example.com",
                          "--limit", "1",  "acme", NULL};
    ck_assert_int_eq(run(last, &out, &err), 0);
    HAS(out, "redeem");
    ck_assert_msg(strstr(out, "award") == NULL, "%s", out);
    free(out);
    free(err);

    /* From 2026-02-01 00:00 Moscow time (2026-01-31 21:00 UTC) on: the redemption. */
    const char *since[] = {"ledger", "-c", conf, "--since", "2026-02-01", "--json", "acme", NULL};
    ck_assert_int_eq(run(since, &out, &err), 0);
    json_t *j = json_loads(out, 0, NULL);
    ck_assert_msg(json_is_array(j) && json_array_size(j) == 1, "%s", out);
    json_t *r = json_array_get(j, 0);
    ck_assert(json_is_integer(json_object_get(r, "points")));
    ck_assert_int_eq(json_integer_value(json_object_get(r, "points")), -4500);
    ck_assert_str_eq(json_string_value(json_object_get(r, "points_display")), "-45 points");
    ck_assert_str_eq(json_string_value(json_object_get(r, "member_id")), "43");
    json_decref(j);
    free(out);
    free(err);

    const char *none[] = {"ledger", "-c", conf, "--since", "2030-01-01", "--json", "acme", NULL};
    ck_assert_int_eq(run(none, &out, &err), 0);
    j = json_loads(out, 0, NULL);
    ck_assert_msg(json_is_array(j) && json_array_size(j) == 0, "%s", out);
    json_decref(j);
    free(out);
    free(err);

    const char *nobody[] = {"ledger", "-c", conf, "--member", "nobody@example.com", "acme", NULL};
    ck_assert_int_eq(run(nobody, &out, &err), 1);
    HAS(err, "nobody@example.com");
    free(out);
    free(err);
}
END_TEST

START_TEST(usage)
{
    char *out, *err;
    const char *help[] = {"member", "--help", NULL};
    ck_assert_int_eq(run(help, &out, &err), 0);
    HAS(out, "usage: loyd member");
    free(out);
    free(err);
    const char *lhelp[] = {"ledger", "--help", NULL};
    ck_assert_int_eq(run(lhelp, &out, &err), 0);
    HAS(out, "usage: loyd ledger");
    free(out);
    free(err);

    const char *bad[][8] = {
        {"member", NULL},
        {"member", "-c", conf, "acme", NULL},
        {"member", "--bogus", "-c", conf, "acme", "43", NULL},
        {"ledger", "-c", conf, "--limit", "0", "acme", NULL},
        {"ledger", "-c", conf, "--since", "2026-02-30", "acme", NULL},
        {"ledger", "-c", conf, "acme", "extra", NULL},
        {"ledger", "-c", NULL},
    };
    for (size_t i = 0; i < LOYD_ARRAY_SIZE(bad); i++) {
        ck_assert_msg(run(bad[i], &out, &err) == 2, "case %zu: %s", i, err);
        ck_assert_msg(err[0] != '\0', "case %zu: no message", i);
        free(out);
        free(err);
    }
}
END_TEST

START_TEST(missing_store)
{
    char *out, *err;
    loyd_e2e_write(dir, "other.conf",
                   "store = \"nothere.db\"\ntenants = \"tenants.d\"\n"
                   "packs = \"packs\"\n");
    char *other = loyd_xasprintf("%s/other.conf", dir), *db = loyd_xasprintf("%s/nothere.db", dir);
    const char *argv[] = {"member", "-c", other, "acme", "43", NULL};
    ck_assert_int_eq(run(argv, &out, &err), 1);
    HAS(err, "nothere.db does not exist");
    struct stat sb;
    ck_assert_msg(stat(db, &sb) != 0, "the command created the store");
    free(out);
    free(err);
    free(other);
    free(db);
}
END_TEST

/* More contacts and rows than one store page (1000): searches and listings read them all. */
START_TEST(pages)
{
    char key[64], val[128];
    for (int i = 0; i < 1100; i++) {
        snprintf(key, sizeof(key), "crm:contact:p%04d", i);
        snprintf(val, sizeof(val), "{\"name\":\"P%d\",\"phone\":\"+1 555 000 %04d\"}", i, i);
        ck_assert_int_eq(loyd_store_kv_put(store, "acme", key, val, done, "kv"), 0);
        pending++;
    }
    struct loyd_ledger_entry *e = calloc(1100, sizeof(*e));
    for (int i = 0; i < 1100; i++)
        e[i] = (struct loyd_ledger_entry){.points = 100 + i, .kind = "award", .reason = "bulk"};
    struct loyd_apply a = {.tenant = "acme",
                           .event_key = "bulk:1",
                           .event_type = "bulk",
                           .member_id = "p1099",
                           .ledger = e,
                           .n_ledger = 1100,
                           .applied_ms = T_REDEEM + 1000};
    ck_assert_int_eq(loyd_store_apply(store, &a, done, "bulk"), 0);
    pending++;
    uv_run(&loop, UV_RUN_DEFAULT);
    ck_assert_int_eq(pending, 0);
    free(e);

    char *out, *err;
    const char *who[] = {"member", "-c", conf, "acme", "1 (555) 000-1099", NULL};
    ck_assert_msg(run(who, &out, &err) == 0, "%s", err);
    HAS(out, "contact   p1099  P1099");
    HAS(out, "last 20 of 1100 rows");
    free(out);
    free(err);

    const char *all[] = {"ledger", "-c", conf, "--json", "acme", NULL};
    ck_assert_int_eq(run(all, &out, &err), 0);
    json_t *j = json_loads(out, 0, NULL);
    ck_assert_msg(json_is_array(j), "%.300s", out);
    ck_assert_int_eq(json_array_size(j), 1102);
    json_decref(j);
    free(out);
    free(err);

    /* The newest 1050, still oldest first: 101st bulk row (points 150) to the last (1199). */
    const char *newest[] = {"ledger", "-c", conf, "--json", "--limit", "1050", "acme", NULL};
    ck_assert_int_eq(run(newest, &out, &err), 0);
    j = json_loads(out, 0, NULL);
    ck_assert_int_eq(json_array_size(j), 1050);
    ck_assert_int_eq(json_integer_value(json_object_get(json_array_get(j, 0), "points")), 150);
    ck_assert_int_eq(json_integer_value(json_object_get(json_array_get(j, 1049), "points")), 1199);
    json_decref(j);
    free(out);
    free(err);
}
END_TEST

/* The store API under the commands: read-only means no writes and no file created. */
START_TEST(readonly_store)
{
    struct loyd_store *ro = NULL;
    char *db = loyd_xasprintf("%s/loyd.db", dir), *missing = loyd_xasprintf("%s/no.db", dir);
    struct stat sb;

    ck_assert_int_eq(loyd_store_open_readonly(missing, &ro), -ENOENT);
    ck_assert_ptr_null(ro);
    ck_assert_int_ne(stat(missing, &sb), 0);

    ck_assert_int_eq(loyd_store_open_readonly(db, &ro), 0);
    ck_assert_int_eq(loyd_store_kv_put(ro, "acme", "x", "1", NULL, NULL), -ECANCELED);
    int64_t bal = 0;
    ck_assert_int_eq(loyd_store_balance(ro, "acme", "43", &bal), 0);
    ck_assert_int_eq(bal, 45500);

    json_t *rows = NULL;
    ck_assert_int_eq(loyd_store_kv_scan(ro, "acme", "crm:contact:", "crm:contact:44", 10, &rows),
                     0);
    ck_assert_int_eq(json_array_size(rows), 2); /* 45 and 46; crm:deal:759 is past the prefix */
    ck_assert_str_eq(json_string_value(json_object_get(json_array_get(rows, 0), "key")),
                     "crm:contact:45");
    json_decref(rows);

    struct loyd_ledger_query q = {.member_id = "43", .newest_first = true};
    ck_assert_int_eq(loyd_store_ledger_query(ro, "acme", &q, 1, &rows), 0);
    ck_assert_int_eq(json_array_size(rows), 1);
    ck_assert_str_eq(json_string_value(json_object_get(json_array_get(rows, 0), "kind")), "redeem");
    json_decref(rows);
    q = (struct loyd_ledger_query){.since_ms = T_AWARD + 1};
    ck_assert_int_eq(loyd_store_ledger_query(ro, "acme", &q, 10, &rows), 0);
    ck_assert_int_eq(json_array_size(rows), 1);
    json_decref(rows);
    loyd_store_destroy(ro);
    free(db);
    free(missing);
}
END_TEST

Suite *e2e_cli_suite(void)
{
    Suite *s = suite_create("e2e_cli");
    TCase *tc = tcase_create("cli");
    tcase_add_checked_fixture(tc, setup, teardown);
    tcase_set_timeout(tc, 60);
    tcase_add_test(tc, member_by_id);
    tcase_add_test(tc, member_by_phone_and_email);
    tcase_add_test(tc, member_json);
    tcase_add_test(tc, member_not_found);
    tcase_add_test(tc, member_ambiguous);
    tcase_add_test(tc, unknown_tenant);
    tcase_add_test(tc, ledger_lists);
    tcase_add_test(tc, usage);
    tcase_add_test(tc, missing_store);
    tcase_add_test(tc, pages);
    tcase_add_test(tc, readonly_store);
    suite_add_tcase(s, tc);
    return s;
}
