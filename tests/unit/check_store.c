/* SPDX-License-Identifier: MIT */
/*
 * Tests of the durable store (core/store.h, SQLite backend): migrations, the inbox, grouped
 * commits, atomic and idempotent apply, ledger derivations, outbox ordering and retries, kv,
 * close flushing queued writes, and durability of acknowledged writes across SIGKILL.
 * Each test runs in its own temporary directory with its own loop.
 */
#include <check.h>
#include <errno.h>
#include <limits.h>
#include <signal.h>
#include <sqlite3.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/stat.h>
#include <sys/wait.h>
#include <time.h>
#include <unistd.h>

#include "store.h"
#include "util.h"

extern const char loyd_db_schema_sql[];

static char dir[PATH_MAX - 64];
static char dbpath[PATH_MAX];
static uv_loop_t loop;

static void rm_db(const char *path)
{
    char p[PATH_MAX + 8];
    unlink(path);
    snprintf(p, sizeof(p), "%s-wal", path);
    unlink(p);
    snprintf(p, sizeof(p), "%s-shm", path);
    unlink(p);
}

static void setup(void)
{
    snprintf(dir, sizeof(dir), "%s/loyd-store-XXXXXX",
             getenv("TMPDIR") ? getenv("TMPDIR") : "/tmp");
    ck_assert_ptr_nonnull(mkdtemp(dir));
    snprintf(dbpath, sizeof(dbpath), "%s/loyd.db", dir);
    ck_assert_int_eq(uv_loop_init(&loop), 0);
}

static void teardown(void)
{
    uv_run(&loop, UV_RUN_DEFAULT);
    ck_assert_int_eq(uv_loop_close(&loop), 0);
    rm_db(dbpath);
    rmdir(dir);
}

/* ---- helpers ------------------------------------------------------------------------------- */

struct res {
    int done, err;
    int64_t id;
};
static int completions; /* every on_id / on_done, to wait for several at once */

static void on_id(void *arg, int err, int64_t id)
{
    struct res *r = arg;
    r->done++;
    r->err = err;
    r->id = id;
    completions++;
}

static void on_done(void *arg, int err)
{
    struct res *r = arg;
    r->done++;
    r->err = err;
    completions++;
}

static void wait_for(int *done, int n)
{
    while (*done < n) {
        int alive = uv_run(&loop, UV_RUN_ONCE);
        if (!alive && *done < n)
            ck_abort_msg("loop idle while waiting for a store callback");
    }
}

static struct loyd_store *open_store(void)
{
    struct loyd_store *s = NULL;
    ck_assert_int_eq(loyd_store_open(&loop, dbpath, &s), 0);
    ck_assert_ptr_nonnull(s);
    return s;
}

static void on_closed(void *arg)
{
    (*(int *)arg)++;
}

static void close_store(struct loyd_store *s)
{
    int closed = 0;
    loyd_store_close(s, on_closed, &closed);
    wait_for(&closed, 1);
    loyd_store_destroy(s);
}

static int64_t append_sync(struct loyd_store *s, const char *tenant, const char *key,
                           const char *body, int expect_err)
{
    struct loyd_inbox_row row = {.tenant = tenant,
                                 .idem_key = key,
                                 .content_type = "text/plain",
                                 .body = body,
                                 .body_len = strlen(body),
                                 .received_ms = 1000};
    struct res r = {0};
    ck_assert_int_eq(loyd_store_inbox_append(s, &row, on_id, &r), 0);
    wait_for(&r.done, 1);
    ck_assert_int_eq(r.err, expect_err);
    return r.id;
}

static int apply_sync(struct loyd_store *s, const struct loyd_apply *a)
{
    struct res r = {0};
    ck_assert_int_eq(loyd_store_apply(s, a, on_done, &r), 0);
    wait_for(&r.done, 1);
    return r.err;
}

static int64_t raw_int(const char *path, const char *sql)
{
    sqlite3 *db;
    sqlite3_stmt *st;
    ck_assert_int_eq(sqlite3_open_v2(path, &db, SQLITE_OPEN_READONLY, NULL), SQLITE_OK);
    ck_assert_int_eq(sqlite3_prepare_v2(db, sql, -1, &st, NULL), SQLITE_OK);
    ck_assert_int_eq(sqlite3_step(st), SQLITE_ROW);
    int64_t v = sqlite3_column_int64(st, 0);
    sqlite3_finalize(st);
    sqlite3_close(db);
    return v;
}

static int64_t jint(const json_t *o, const char *k)
{
    json_t *v = json_object_get(o, k);
    ck_assert_msg(json_is_integer(v), "%s is not an integer", k);
    return json_integer_value(v);
}

static const char *jstr(const json_t *o, const char *k)
{
    json_t *v = json_object_get(o, k);
    ck_assert_msg(json_is_string(v), "%s is not a string", k);
    return json_string_value(v);
}

/* ---- open, migrations, URLs ---------------------------------------------------------------- */

START_TEST(test_open_migrates)
{
    struct loyd_store *s = open_store();
    struct res r = {0};
    ck_assert_int_eq(loyd_store_kv_put(s, "acme", "token", "t1", on_done, &r), 0);
    wait_for(&r.done, 1);
    ck_assert_int_eq(r.err, 0);
    close_store(s);

    ck_assert_int_eq(raw_int(dbpath, "PRAGMA user_version"), 2);
    ck_assert_int_eq(raw_int(dbpath, "SELECT COUNT(*) FROM sqlite_schema WHERE type = 'table' AND "
                                     "name IN ('tenants','inbox','events','members','ledger',"
                                     "'outbox','kv','dead_letters')"),
                     8);
    struct stat sb;
    ck_assert_int_eq(stat(dbpath, &sb), 0);
    ck_assert_int_eq(sb.st_mode & 0777, 0600); /* tokens live here */

    /* Reopen: migrations are not run again (it would fail on CREATE TABLE), data is intact. */
    s = open_store();
    char *v = NULL;
    ck_assert_int_eq(loyd_store_kv_get(s, "acme", "token", &v), 0);
    ck_assert_str_eq(v, "t1");
    free(v);
    close_store(s);
    ck_assert_int_eq(raw_int(dbpath, "PRAGMA user_version"), 2);
    ck_assert_int_eq(raw_int(dbpath, "SELECT COUNT(*) FROM kv"), 1);
}
END_TEST

START_TEST(test_migration_v2_appends)
{
    struct loyd_store *s = open_store();
    close_store(s);

    char *v2 = loyd_xasprintf("%s\n-- migration 3\nCREATE TABLE extra (x INTEGER);\n"
                              "INSERT INTO extra VALUES (42);\n",
                              loyd_db_schema_sql);
    ck_assert_int_eq(loyd__store_sqlite_open_schema(&loop, dbpath, v2, &s), 0);
    close_store(s);
    ck_assert_int_eq(raw_int(dbpath, "PRAGMA user_version"), 3);
    ck_assert_int_eq(raw_int(dbpath, "SELECT x FROM extra"), 42);
    /* Reopening with the same text applies nothing (an INSERT again would make 2 rows). */
    ck_assert_int_eq(loyd__store_sqlite_open_schema(&loop, dbpath, v2, &s), 0);
    close_store(s);
    ck_assert_int_eq(raw_int(dbpath, "SELECT COUNT(*) FROM extra"), 1);

    /* A failing migration 4 rolls back alone: the file stays at version 3. */
    char *v3 = loyd_xasprintf("%s-- migration 4\nCREATE TABLE more (y);\nSELECT nosuchfn();\n", v2);
    ck_assert_int_eq(loyd__store_sqlite_open_schema(&loop, dbpath, v3, &s), LOYD_EDB);
    ck_assert_ptr_null(s);
    ck_assert_int_eq(raw_int(dbpath, "PRAGMA user_version"), 3);
    ck_assert_int_eq(raw_int(dbpath, "SELECT COUNT(*) FROM sqlite_schema WHERE name = 'more'"), 0);

    /* An older loyd (schema 1-2 only) refuses a version 3 file rather than misreading it. */
    ck_assert_int_eq(loyd_store_open(&loop, dbpath, &s), LOYD_EDB);
    ck_assert_ptr_null(s);

    /* Markers out of order are a broken schema. */
    ck_assert_int_eq(
        loyd__store_sqlite_open_schema(&loop, dbpath, "-- migration 2\nSELECT 1;\n", &s), LOYD_EDB);
    free(v2);
    free(v3);
}
END_TEST

START_TEST(test_urls)
{
    struct loyd_store *s = (struct loyd_store *)1;
    ck_assert_int_eq(loyd_store_open(&loop, "postgresql://u:secret@db/loyd", &s), -ENOTSUP);
    ck_assert_ptr_null(s);
    ck_assert_int_eq(loyd_store_open(&loop, "postgres://db/loyd", &s), -ENOTSUP);
    ck_assert_int_eq(loyd_store_open(&loop, "mysql://db/loyd", &s), -EINVAL);
    ck_assert_int_eq(loyd_store_open(&loop, ":memory:", &s), -EINVAL);
    ck_assert_int_eq(loyd_store_open(&loop, "sqlite::memory:", &s), -EINVAL);

    char *url = loyd_xasprintf("sqlite:%s", dbpath);
    ck_assert_int_eq(loyd_store_open(&loop, url, &s), 0);
    close_store(s);
    free(url);
    url = loyd_xasprintf("sqlite://%s", dbpath);
    ck_assert_int_eq(loyd_store_open(&loop, url, &s), 0);
    append_sync(s, "t", "k", "b", 0);
    close_store(s);
    free(url);
    ck_assert_int_eq(raw_int(dbpath, "SELECT COUNT(*) FROM inbox"), 1);
}
END_TEST

/* ---- inbox --------------------------------------------------------------------------------- */

START_TEST(test_append_binary_body)
{
    struct loyd_store *s = open_store();
    char body[256];
    for (int i = 0; i < 256; i++)
        body[i] = (char)(255 - i); /* invalid UTF-8, NULs included */
    struct loyd_inbox_row row = {.tenant = "acme",
                                 .idem_key = "evt-1",
                                 .content_type = "application/octet-stream",
                                 .body = body,
                                 .body_len = sizeof(body),
                                 .notices_json = "[{\"code\":\"w1\"}]",
                                 .received_ms = 1234};
    struct res r = {0};
    ck_assert_int_eq(loyd_store_inbox_append(s, &row, on_id, &r), 0);
    wait_for(&r.done, 1);
    ck_assert_int_eq(r.err, 0);
    ck_assert_int_gt(r.id, 0);

    json_t *o = NULL;
    ck_assert_int_eq(loyd_store_inbox_get(s, r.id, &o), 0);
    json_t *b = json_object_get(o, "body");
    ck_assert_uint_eq(json_string_length(b), sizeof(body));
    ck_assert(memcmp(json_string_value(b), body, sizeof(body)) == 0);
    ck_assert_str_eq(jstr(o, "status"), "new");
    ck_assert_str_eq(jstr(o, "content_type"), "application/octet-stream");
    json_decref(o);

    /* Empty body and a second row; pending lists both, oldest first. */
    struct loyd_inbox_row empty = {.tenant = "acme", .idem_key = "evt-2"};
    struct res r2 = {0};
    ck_assert_int_eq(loyd_store_inbox_append(s, &empty, on_id, &r2), 0);
    wait_for(&r2.done, 1);
    ck_assert_int_eq(r2.err, 0);

    json_t *p = NULL;
    ck_assert_int_eq(loyd_store_inbox_pending(s, "acme", 10, &p), 0);
    ck_assert_uint_eq(json_array_size(p), 2);
    json_t *first = json_array_get(p, 0);
    ck_assert_int_eq(jint(first, "id"), r.id);
    ck_assert_str_eq(jstr(first, "tenant"), "acme");
    ck_assert_str_eq(jstr(first, "idem_key"), "evt-1");
    ck_assert_int_eq(jint(first, "received_ms"), 1234);
    ck_assert_int_eq(jint(first, "attempts"), 0);
    ck_assert_uint_eq(json_string_length(json_object_get(first, "body")), sizeof(body));
    ck_assert(memcmp(json_string_value(json_object_get(first, "body")), body, sizeof(body)) == 0);
    ck_assert_str_eq(jstr(json_array_get(json_object_get(first, "notices"), 0), "code"), "w1");
    ck_assert_uint_eq(json_string_length(json_object_get(json_array_get(p, 1), "body")), 0);
    json_decref(p);
    ck_assert_int_eq(loyd_store_inbox_pending(s, "other", 10, &p), 0);
    ck_assert_uint_eq(json_array_size(p), 0);
    json_decref(p);
    ck_assert_int_eq(loyd_store_inbox_pending(s, NULL, 1, &p), 0);
    ck_assert_uint_eq(json_array_size(p), 1);
    json_decref(p);

    ck_assert_int_eq(loyd_store_inbox_get(s, 9999, &o), -ENOENT);
    struct loyd_inbox_row bad = {.tenant = "acme"};
    ck_assert_int_eq(loyd_store_inbox_append(s, &bad, on_id, &r), -EINVAL);
    close_store(s);
}
END_TEST

START_TEST(test_append_duplicate)
{
    struct loyd_store *s = open_store();
    int64_t id = append_sync(s, "acme", "evt-1", "one", 0);
    ck_assert_int_eq(append_sync(s, "acme", "evt-1", "two", LOYD_EDUP), id);
    int64_t other = append_sync(s, "globex", "evt-1", "one", 0); /* unique per tenant only */
    ck_assert_int_ne(other, id);

    /* Duplicates inside one batch too. */
    struct loyd_inbox_row row = {.tenant = "acme", .idem_key = "evt-9", .body = "x", .body_len = 1};
    struct res r[3] = {{0}};
    completions = 0;
    for (int i = 0; i < 3; i++)
        ck_assert_int_eq(loyd_store_inbox_append(s, &row, on_id, &r[i]), 0);
    wait_for(&completions, 3);
    ck_assert_int_eq(r[0].err, 0);
    ck_assert_int_eq(r[1].err, LOYD_EDUP);
    ck_assert_int_eq(r[2].err, LOYD_EDUP);
    ck_assert_int_eq(r[1].id, r[0].id);
    ck_assert_int_eq(r[2].id, r[0].id);

    json_t *o = NULL;
    ck_assert_int_eq(loyd_store_inbox_get(s, id, &o), 0);
    ck_assert_str_eq(json_string_value(json_object_get(o, "body")), "one"); /* first one kept */
    json_decref(o);

    /* Once the row is processed, the same bytes are news again (the record may have changed
     * since it was read); a retry keeps merging. */
    struct res fr = {0};
    completions = 0;
    ck_assert_int_eq(loyd_store_inbox_finish(s, r[0].id, "retry", "later", on_done, &fr), 0);
    wait_for(&completions, 1);
    ck_assert_int_eq(append_sync(s, "acme", "evt-9", "x", LOYD_EDUP), r[0].id);
    completions = 0;
    ck_assert_int_eq(loyd_store_inbox_finish(s, id, "done", NULL, on_done, &fr), 0);
    wait_for(&completions, 1);
    int64_t again = append_sync(s, "acme", "evt-1", "one", 0);
    ck_assert_int_gt(again, id);
    ck_assert_int_eq(append_sync(s, "acme", "evt-1", "one", LOYD_EDUP), again);
    close_store(s);
    ck_assert_int_eq(raw_int(dbpath, "SELECT COUNT(*) FROM inbox"), 4);
}
END_TEST

struct many {
    int done, failed;
    int64_t ids[1000];
};

static void on_many(void *arg, int err, int64_t id)
{
    struct many *m = arg;
    if (err != 0)
        m->failed++;
    else
        m->ids[m->done] = id;
    m->done++;
}

START_TEST(test_grouped_commits)
{
    struct loyd_store *s = open_store();
    static struct many m;
    char key[32], body[64];
    memset(&m, 0, sizeof(m));
    for (int i = 0; i < 1000; i++) {
        snprintf(key, sizeof(key), "k%d", i);
        snprintf(body, sizeof(body), "{\"n\":%d}", i);
        struct loyd_inbox_row row = {.tenant = "acme",
                                     .idem_key = key,
                                     .body = body,
                                     .body_len = strlen(body),
                                     .content_type = "application/json"};
        ck_assert_int_eq(loyd_store_inbox_append(s, &row, on_many, &m), 0);
    }
    wait_for(&m.done, 1000);
    ck_assert_int_eq(m.failed, 0);
    for (int i = 1; i < 1000; i++)
        ck_assert_int_gt(m.ids[i], m.ids[i - 1]); /* completions in submission order */

    struct loyd_store_stats st;
    loyd_store_stats(s, &st);
    ck_assert_uint_eq(st.ops, 1000);
    ck_assert_uint_eq(st.queued, 0);
    ck_assert_msg(st.commits < 100, "1000 appends took %llu commits",
                  (unsigned long long)st.commits);
    ck_assert_uint_ge(st.commits, 1);
    ck_assert_uint_gt(st.max_batch, 1);

    json_t *p = NULL;
    ck_assert_int_eq(loyd_store_inbox_pending(s, NULL, 5000, &p), 0);
    ck_assert_uint_eq(json_array_size(p), 1000);
    json_decref(p);
    int64_t in, out, dead;
    ck_assert_int_eq(loyd_store_depths(s, &in, &out, &dead), 0);
    ck_assert_int_eq(in, 1000);
    close_store(s);
}
END_TEST

START_TEST(test_inbox_finish)
{
    struct loyd_store *s = open_store();
    int64_t a = append_sync(s, "acme", "a", "body-a", 0);
    int64_t b = append_sync(s, "acme", "b", "body-b", 0);
    struct res r = {0};

    ck_assert_int_eq(loyd_store_inbox_finish(s, a, "retry", "crm timeout", on_done, &r), 0);
    wait_for(&r.done, 1);
    ck_assert_int_eq(r.err, 0);
    json_t *o = NULL;
    ck_assert_int_eq(loyd_store_inbox_get(s, a, &o), 0);
    ck_assert_str_eq(jstr(o, "status"), "new");
    ck_assert_int_eq(jint(o, "attempts"), 1);
    ck_assert_str_eq(jstr(o, "error"), "crm timeout");
    json_decref(o);

    r.done = 0;
    ck_assert_int_eq(loyd_store_inbox_finish(s, a, "dead", "gave up", on_done, &r), 0);
    wait_for(&r.done, 1);
    ck_assert_int_eq(r.err, 0);
    r.done = 0;
    ck_assert_int_eq(loyd_store_inbox_finish(s, b, "done", NULL, on_done, &r), 0);
    wait_for(&r.done, 1);
    /* A finished row stays as it is. */
    r.done = 0;
    ck_assert_int_eq(loyd_store_inbox_finish(s, a, "done", NULL, on_done, &r), 0);
    wait_for(&r.done, 1);
    ck_assert_int_eq(r.err, 0);
    ck_assert_int_eq(loyd_store_inbox_get(s, a, &o), 0);
    ck_assert_str_eq(jstr(o, "status"), "dead");
    json_decref(o);

    r.done = 0;
    ck_assert_int_eq(loyd_store_inbox_finish(s, 9999, "done", NULL, on_done, &r), 0);
    wait_for(&r.done, 1);
    ck_assert_int_eq(r.err, -ENOENT);
    ck_assert_int_eq(loyd_store_inbox_finish(s, a, "bogus", NULL, on_done, &r), -EINVAL);

    int64_t in, out, dead;
    ck_assert_int_eq(loyd_store_depths(s, &in, &out, &dead), 0);
    ck_assert_int_eq(in, 0);
    ck_assert_int_eq(dead, 1);

    r.done = 0;
    ck_assert_int_eq(
        loyd_store_dead_letter(s, "acme", "rule", "evt-x", "{}", "boom\ntraceback", on_done, &r),
        0);
    wait_for(&r.done, 1);
    ck_assert_int_eq(r.err, 0);
    ck_assert_int_eq(loyd_store_depths(s, &in, &out, &dead), 0);
    ck_assert_int_eq(dead, 2);
    close_store(s);
    ck_assert_int_eq(raw_int(dbpath, "SELECT COUNT(*) FROM dead_letters WHERE kind = 'inbox' AND "
                                     "payload = CAST('body-a' AS BLOB) AND error = 'gave up'"),
                     1);
}
END_TEST

/* ---- apply, ledger ------------------------------------------------------------------------- */

START_TEST(test_apply_atomic_idempotent)
{
    struct loyd_store *s = open_store();
    int64_t inbox = append_sync(s, "acme", "hook-1", "deal 7 won", 0);
    struct loyd_ledger_entry award = {.points = 100,
                                      .kind = "award",
                                      .reason = "deal won",
                                      .expires_ms = 5000000,
                                      .ref = "deal-7"};
    struct loyd_outbox_item ob = {.payload_json = "{\"set\":{\"balance\":100}}"};
    struct loyd_apply a = {.tenant = "acme",
                           .event_key = "deal.won:7",
                           .event_type = "deal.won",
                           .event_json = "{\"deal\":7}",
                           .inbox_id = inbox,
                           .member_id = "m1",
                           .member_json = "{\"tier\":\"silver\"}",
                           .ledger = &award,
                           .n_ledger = 1,
                           .outbox = &ob,
                           .n_outbox = 1,
                           .trace_json = "{\"rules\":[\"won\"]}",
                           .pack_version = "1.0.0",
                           .applied_ms = 777};
    ck_assert_int_eq(apply_sync(s, &a), 0);

    int64_t bal = -1;
    ck_assert_int_eq(loyd_store_balance(s, "acme", "m1", &bal), 0);
    ck_assert_int_eq(bal, 100);
    json_t *o = NULL;
    ck_assert_int_eq(loyd_store_inbox_get(s, inbox, &o), 0);
    ck_assert_str_eq(jstr(o, "status"), "done");
    json_decref(o);
    ck_assert_int_eq(loyd_store_member_get(s, "acme", "m1", &o), 0);
    ck_assert_str_eq(jstr(json_object_get(o, "profile"), "tier"), "silver");
    ck_assert_int_eq(jint(o, "updated_ms"), 777);
    json_decref(o);
    ck_assert_int_eq(loyd_store_event_get(s, "acme", "deal.won:7", &o), 0);
    ck_assert_int_eq(jint(o, "inbox_id"), inbox);
    ck_assert_str_eq(
        json_string_value(json_array_get(json_object_get(json_object_get(o, "trace"), "rules"), 0)),
        "won");
    json_decref(o);
    ck_assert_int_eq(loyd_store_ledger_list(s, "acme", "m1", &o), 0);
    ck_assert_uint_eq(json_array_size(o), 1);
    json_t *row = json_array_get(o, 0);
    ck_assert_str_eq(jstr(row, "kind"), "award");
    ck_assert_str_eq(jstr(row, "event_key"), "deal.won:7");
    ck_assert_str_eq(jstr(row, "pack_version"), "1.0.0");
    ck_assert_int_eq(jint(row, "expires_ms"), 5000000);
    ck_assert(json_is_null(json_object_get(row, "lot_id")));
    json_decref(o);
    ck_assert_int_eq(loyd_store_ledger_by_ref(s, "acme", "deal-7", &o), 0);
    ck_assert_uint_eq(json_array_size(o), 1);
    json_decref(o);

    /* The same event again (another delivery, different inbox row, other numbers): no-op. */
    int64_t inbox2 = append_sync(s, "acme", "hook-2", "deal 7 won again", 0);
    struct loyd_ledger_entry award2 = {.points = 500, .kind = "award", .ref = "deal-7"};
    struct loyd_apply a2 = a;
    a2.inbox_id = inbox2;
    a2.ledger = &award2;
    a2.member_json = "{\"tier\":\"gold\"}";
    ck_assert_int_eq(apply_sync(s, &a2), LOYD_EDUP);
    ck_assert_int_eq(loyd_store_balance(s, "acme", "m1", &bal), 0);
    ck_assert_int_eq(bal, 100);
    ck_assert_int_eq(loyd_store_ledger_list(s, "acme", "m1", &o), 0);
    ck_assert_uint_eq(json_array_size(o), 1);
    json_decref(o);
    ck_assert_int_eq(loyd_store_member_get(s, "acme", "m1", &o), 0);
    ck_assert_str_eq(jstr(json_object_get(o, "profile"), "tier"), "silver");
    json_decref(o);
    ck_assert_int_eq(loyd_store_outbox_pending(s, "acme", 1000000, 10, &o), 0);
    ck_assert_uint_eq(json_array_size(o), 1);
    json_decref(o);
    /* ...but its inbox row is finished, or it would be processed forever. */
    ck_assert_int_eq(loyd_store_inbox_get(s, inbox2, &o), 0);
    ck_assert_str_eq(jstr(o, "status"), "done");
    json_decref(o);

    /* Atomicity: a bad entry (draws on a lot that does not exist) writes nothing at all, and the
     * writes grouped into the same transaction around it are unaffected. */
    int64_t inbox3 = append_sync(s, "acme", "hook-3", "deal 8 won", 0);
    struct loyd_ledger_entry bad[2] = {
        {.points = 40, .kind = "award", .ref = "deal-8"},
        {.points = -10, .kind = "redeem", .lot_id = 424242},
    };
    struct loyd_outbox_item ob3 = {.payload_json = "{\"x\":1}"};
    struct loyd_apply a3 = {.tenant = "acme",
                            .event_key = "deal.won:8",
                            .event_type = "deal.won",
                            .inbox_id = inbox3,
                            .member_id = "m2",
                            .member_json = "{}",
                            .ledger = bad,
                            .n_ledger = 2,
                            .outbox = &ob3,
                            .n_outbox = 1};
    struct res r1 = {0}, r2 = {0}, r3 = {0};
    completions = 0;
    ck_assert_int_eq(loyd_store_kv_put(s, "acme", "before", "1", on_done, &r1), 0);
    ck_assert_int_eq(loyd_store_apply(s, &a3, on_done, &r2), 0);
    ck_assert_int_eq(loyd_store_kv_put(s, "acme", "after", "1", on_done, &r3), 0);
    wait_for(&completions, 3);
    ck_assert_int_eq(r1.err, 0);
    ck_assert_int_eq(r2.err, -EINVAL);
    ck_assert_int_eq(r3.err, 0);
    ck_assert_int_eq(loyd_store_event_get(s, "acme", "deal.won:8", &o), -ENOENT);
    ck_assert_int_eq(loyd_store_member_get(s, "acme", "m2", &o), -ENOENT);
    ck_assert_int_eq(loyd_store_balance(s, "acme", "m2", &bal), 0);
    ck_assert_int_eq(bal, 0);
    ck_assert_int_eq(loyd_store_inbox_get(s, inbox3, &o), 0);
    ck_assert_str_eq(jstr(o, "status"), "new");
    json_decref(o);
    ck_assert_int_eq(loyd_store_outbox_pending(s, "acme", 1000000, 10, &o), 0);
    ck_assert_uint_eq(json_array_size(o), 1);
    json_decref(o);
    char *v = NULL;
    ck_assert_int_eq(loyd_store_kv_get(s, "acme", "after", &v), 0);
    ck_assert_str_eq(v, "1");
    free(v);

    /* Invalid JSON is refused by the schema, also atomically. */
    a3.n_ledger = 1;
    a3.trace_json = "{not json";
    ck_assert_int_eq(apply_sync(s, &a3), -EINVAL);
    ck_assert_int_eq(loyd_store_event_get(s, "acme", "deal.won:8", &o), -ENOENT);
    /* Fixed, the same event applies. */
    a3.trace_json = NULL;
    ck_assert_int_eq(apply_sync(s, &a3), 0);
    ck_assert_int_eq(loyd_store_balance(s, "acme", "m2", &bal), 0);
    ck_assert_int_eq(bal, 40);

    /* Argument checks before queueing: unknown kind, wrong sign, draw without a lot. */
    struct loyd_ledger_entry e = {.points = 5, .kind = "bonus"};
    struct loyd_apply a4 = {.tenant = "acme",
                            .event_key = "k4",
                            .event_type = "t",
                            .member_id = "m1",
                            .ledger = &e,
                            .n_ledger = 1};
    ck_assert_int_eq(loyd_store_apply(s, &a4, on_done, &r1), -EINVAL);
    e = (struct loyd_ledger_entry){.points = -5, .kind = "award"};
    ck_assert_int_eq(loyd_store_apply(s, &a4, on_done, &r1), -EINVAL);
    e = (struct loyd_ledger_entry){.points = -5, .kind = "redeem"};
    ck_assert_int_eq(loyd_store_apply(s, &a4, on_done, &r1), -EINVAL);
    close_store(s);
}
END_TEST

START_TEST(test_lots_and_balance)
{
    struct loyd_store *s = open_store();
    struct loyd_ledger_entry awards[3] = {
        {.points = 100, .kind = "award", .expires_ms = 3000, .ref = "deal-a"},
        {.points = 50, .kind = "award", .expires_ms = 2000, .ref = "deal-b"},
        {.points = 30, .kind = "award", .ref = "deal-c"}, /* never expires */
    };
    struct loyd_apply a = {.tenant = "acme",
                           .event_key = "e1",
                           .event_type = "deal.won",
                           .member_id = "m",
                           .ledger = awards,
                           .n_ledger = 3};
    ck_assert_int_eq(apply_sync(s, &a), 0);

    json_t *lots = NULL;
    ck_assert_int_eq(loyd_store_lots_open(s, "acme", "m", &lots), 0);
    ck_assert_uint_eq(json_array_size(lots), 3);
    /* Spending order: earliest expiry first, never-expiring last. */
    int64_t id_b = jint(json_array_get(lots, 0), "id");
    int64_t id_a = jint(json_array_get(lots, 1), "id");
    int64_t id_c = jint(json_array_get(lots, 2), "id");
    ck_assert_int_eq(jint(json_array_get(lots, 0), "remaining"), 50);
    ck_assert(json_is_null(json_object_get(json_array_get(lots, 2), "expires_ms")));
    json_decref(lots);

    struct loyd_ledger_entry draws[4] = {
        {.points = -40, .kind = "redeem", .lot_id = id_b, .ref = "order-1"},
        {.points = -10, .kind = "redeem", .lot_id = id_b, .ref = "order-1"},
        {.points = -20, .kind = "expire", .lot_id = id_a},
        {.points = 5, .kind = "adjust", .lot_id = id_a, .reason = "refund of part"},
    };
    struct loyd_apply d = {.tenant = "acme",
                           .event_key = "e2",
                           .event_type = "redeem",
                           .member_id = "m",
                           .ledger = draws,
                           .n_ledger = 4};
    ck_assert_int_eq(apply_sync(s, &d), 0);

    int64_t bal;
    ck_assert_int_eq(loyd_store_balance(s, "acme", "m", &bal), 0);
    ck_assert_int_eq(bal, 100 + 50 + 30 - 40 - 10 - 20 + 5);
    ck_assert_int_eq(loyd_store_lots_open(s, "acme", "m", &lots), 0);
    ck_assert_uint_eq(json_array_size(lots), 2); /* lot b is used up */
    ck_assert_int_eq(jint(json_array_get(lots, 0), "id"), id_a);
    ck_assert_int_eq(jint(json_array_get(lots, 0), "remaining"), 85);
    ck_assert_int_eq(jint(json_array_get(lots, 1), "id"), id_c);
    ck_assert_int_eq(jint(json_array_get(lots, 1), "remaining"), 30);
    json_decref(lots);

    /* A lot of another member cannot be drawn on. */
    struct loyd_ledger_entry steal = {.points = -1, .kind = "redeem", .lot_id = id_c};
    struct loyd_apply x = {.tenant = "acme",
                           .event_key = "e3",
                           .event_type = "redeem",
                           .member_id = "intruder",
                           .ledger = &steal,
                           .n_ledger = 1};
    ck_assert_int_eq(apply_sync(s, &x), -EINVAL);
    /* Deal reopened: reverse the award even though part was spent; balance may go below. */
    json_t *byref = NULL;
    ck_assert_int_eq(loyd_store_ledger_by_ref(s, "acme", "deal-b", &byref), 0);
    ck_assert_uint_eq(json_array_size(byref), 1);
    ck_assert_int_eq(jint(json_array_get(byref, 0), "id"), id_b);
    json_decref(byref);
    struct loyd_ledger_entry rev = {
        .points = -50, .kind = "reverse", .lot_id = id_b, .ref = "deal-b"};
    struct loyd_apply r = {.tenant = "acme",
                           .event_key = "e4",
                           .event_type = "deal.reopened",
                           .member_id = "m",
                           .ledger = &rev,
                           .n_ledger = 1};
    ck_assert_int_eq(apply_sync(s, &r), 0);
    ck_assert_int_eq(loyd_store_balance(s, "acme", "m", &bal), 0);
    ck_assert_int_eq(bal, 65);
    ck_assert_int_eq(loyd_store_ledger_by_ref(s, "acme", "deal-b", &byref), 0);
    ck_assert_uint_eq(json_array_size(byref), 2);
    json_decref(byref);
    ck_assert_int_eq(loyd_store_balance(s, "acme", "nobody", &bal), 0);
    ck_assert_int_eq(bal, 0);
    close_store(s);
    /* The ledger is append-only, enforced by the schema itself. */
    sqlite3 *db;
    ck_assert_int_eq(sqlite3_open(dbpath, &db), SQLITE_OK);
    ck_assert_int_ne(sqlite3_exec(db, "UPDATE ledger SET points = 1000000", NULL, NULL, NULL),
                     SQLITE_OK);
    ck_assert_int_ne(sqlite3_exec(db, "DELETE FROM ledger", NULL, NULL, NULL), SQLITE_OK);
    sqlite3_close(db);
}
END_TEST

/* ---- outbox -------------------------------------------------------------------------------- */

static void finish_outbox(struct loyd_store *s, int64_t id, const char *status, uint64_t at,
                          int expect)
{
    struct res r = {0};
    ck_assert_int_eq(loyd_store_outbox_finish(s, id, status, at, "err", on_done, &r), 0);
    wait_for(&r.done, 1);
    ck_assert_int_eq(r.err, expect);
}

START_TEST(test_outbox)
{
    struct loyd_store *s = open_store();
    struct loyd_outbox_item items[3] = {
        {.member_id = "A", .payload_json = "{\"n\":1}"},
        {.member_id = "A", .payload_json = "{\"n\":2}"},
        {.member_id = "B", .payload_json = "{\"n\":3}"},
    };
    struct loyd_apply a = {.tenant = "acme",
                           .event_key = "e1",
                           .event_type = "t",
                           .outbox = items,
                           .n_outbox = 3,
                           .applied_ms = 1000};
    ck_assert_int_eq(apply_sync(s, &a), 0);

    json_t *p = NULL;
    ck_assert_int_eq(loyd_store_outbox_pending(s, "acme", 999, 10, &p), 0);
    ck_assert_uint_eq(json_array_size(p), 0); /* not due yet */
    json_decref(p);
    ck_assert_int_eq(loyd_store_outbox_pending(s, "acme", 1000, 10, &p), 0);
    /* A1 and B1; A2 waits behind A1 (per-member order). */
    ck_assert_uint_eq(json_array_size(p), 2);
    int64_t a1 = jint(json_array_get(p, 0), "id");
    int64_t b1 = jint(json_array_get(p, 1), "id");
    ck_assert_int_eq(jint(json_object_get(json_array_get(p, 0), "payload"), "n"), 1);
    ck_assert_str_eq(jstr(json_array_get(p, 1), "member_id"), "B");
    ck_assert_str_eq(jstr(json_array_get(p, 0), "event_key"), "e1");
    json_decref(p);

    finish_outbox(s, a1, "retry", 5000, 0);
    ck_assert_int_eq(loyd_store_outbox_pending(s, NULL, 2000, 10, &p), 0);
    ck_assert_uint_eq(json_array_size(p), 1); /* A1 not due, A2 still behind it */
    ck_assert_int_eq(jint(json_array_get(p, 0), "id"), b1);
    json_decref(p);
    ck_assert_int_eq(loyd_store_outbox_pending(s, "acme", 5000, 10, &p), 0);
    ck_assert_uint_eq(json_array_size(p), 2);
    ck_assert_int_eq(jint(json_array_get(p, 0), "id"), a1);
    ck_assert_int_eq(jint(json_array_get(p, 0), "attempts"), 1);
    ck_assert_int_eq(jint(json_array_get(p, 0), "next_attempt_ms"), 5000);
    json_decref(p);

    finish_outbox(s, a1, "done", 0, 0);
    finish_outbox(s, b1, "done", 0, 0);
    ck_assert_int_eq(loyd_store_outbox_pending(s, "acme", 5000, 10, &p), 0);
    ck_assert_uint_eq(json_array_size(p), 1);
    int64_t a2 = jint(json_array_get(p, 0), "id");
    ck_assert_int_eq(jint(json_object_get(json_array_get(p, 0), "payload"), "n"), 2);
    json_decref(p);

    int64_t in, out, dead;
    ck_assert_int_eq(loyd_store_depths(s, &in, &out, &dead), 0);
    ck_assert_int_eq(out, 1);
    finish_outbox(s, a2, "dead", 0, 0);
    ck_assert_int_eq(loyd_store_depths(s, &in, &out, &dead), 0);
    ck_assert_int_eq(out, 0);
    ck_assert_int_eq(dead, 1);
    ck_assert_int_eq(loyd_store_outbox_pending(s, "acme", UINT64_MAX / 2, 10, &p), 0);
    ck_assert_uint_eq(json_array_size(p), 0);
    json_decref(p);

    finish_outbox(s, a2, "retry", 1, 0); /* finished items stay finished */
    finish_outbox(s, 9999, "done", 0, -ENOENT);
    struct res r = {0};
    ck_assert_int_eq(loyd_store_outbox_finish(s, a1, "later", 0, NULL, on_done, &r), -EINVAL);
    close_store(s);
}
END_TEST

START_TEST(test_apply_state_and_sending)
{
    struct loyd_store *s = open_store();
    struct loyd_outbox_item items[2] = {
        {.member_id = "A", .payload_json = "{\"n\":1}"},
        {.member_id = "B", .payload_json = "{\"n\":2}"},
    };
    struct loyd_apply a = {.tenant = "acme",
                           .event_key = "deal:1:won:1",
                           .event_type = "deal.won",
                           .member_id = "A",
                           .outbox = items,
                           .n_outbox = 2,
                           .applied_ms = 1000,
                           .state_key = "state:deal:1",
                           .state_json = "{\"won\":true}"};
    ck_assert_int_eq(apply_sync(s, &a), 0);
    char *v = NULL;
    ck_assert_int_eq(loyd_store_kv_get(s, "acme", "state:deal:1", &v), 0);
    ck_assert_str_eq(v, "{\"won\":true}");
    free(v);

    /* A second delivery changes nothing but still stores the newer state it carries. */
    a.state_json = "{\"won\":true,\"seen\":2}";
    ck_assert_int_eq(apply_sync(s, &a), LOYD_EDUP);
    ck_assert_int_eq(loyd_store_kv_get(s, "acme", "state:deal:1", &v), 0);
    ck_assert_str_eq(v, "{\"won\":true,\"seen\":2}");
    free(v);

    /* A failed apply stores no state either. */
    struct loyd_ledger_entry bad = {.points = -5, .kind = "redeem", .lot_id = 999};
    struct loyd_apply b = {.tenant = "acme",
                           .event_key = "deal:2:won:1",
                           .event_type = "deal.won",
                           .member_id = "A",
                           .ledger = &bad,
                           .n_ledger = 1,
                           .state_key = "state:deal:2",
                           .state_json = "{\"won\":true}"};
    ck_assert_int_eq(apply_sync(s, &b), -EINVAL);
    ck_assert_int_eq(loyd_store_kv_get(s, "acme", "state:deal:2", &v), 0);
    ck_assert_ptr_null(v);

    /* sending: durable, shown by outbox_pending, only for the ids given. */
    json_t *p = NULL;
    ck_assert_int_eq(loyd_store_outbox_pending(s, "acme", 1000, 10, &p), 0);
    ck_assert_uint_eq(json_array_size(p), 2);
    int64_t ida = jint(json_array_get(p, 0), "id");
    ck_assert_int_eq(jint(json_array_get(p, 0), "sending"), 0);
    json_decref(p);
    struct res r = {0};
    ck_assert_int_eq(loyd_store_outbox_sending(s, &ida, 1, on_done, &r), 0);
    wait_for(&r.done, 1);
    ck_assert_int_eq(r.err, 0);
    close_store(s);
    s = open_store();
    ck_assert_int_eq(loyd_store_outbox_pending(s, "acme", 1000, 10, &p), 0);
    ck_assert_int_eq(jint(json_array_get(p, 0), "sending"), 1);
    ck_assert_int_eq(jint(json_array_get(p, 1), "sending"), 0);
    json_decref(p);
    close_store(s);
}
END_TEST

START_TEST(test_members_list)
{
    struct loyd_store *s = open_store();
    char id[16], key[32];
    for (int i = 0; i < 5; i++) {
        snprintf(id, sizeof(id), "m%d", i);
        snprintf(key, sizeof(key), "e%d", i);
        struct loyd_apply a = {.tenant = i == 4 ? "other" : "acme",
                               .event_key = key,
                               .event_type = "t",
                               .member_id = id,
                               .member_json = "{\"birthday\":\"1990-05-17\"}"};
        ck_assert_int_eq(apply_sync(s, &a), 0);
    }
    json_t *p = NULL;
    ck_assert_int_eq(loyd_store_members_list(s, "acme", NULL, 3, &p), 0);
    ck_assert_uint_eq(json_array_size(p), 3);
    ck_assert_str_eq(jstr(json_array_get(p, 2), "member_id"), "m2");
    ck_assert_str_eq(jstr(json_object_get(json_array_get(p, 0), "profile"), "birthday"),
                     "1990-05-17");
    json_decref(p);
    ck_assert_int_eq(loyd_store_members_list(s, "acme", "m2", 3, &p), 0);
    ck_assert_uint_eq(json_array_size(p), 1); /* m3; m4 belongs to another tenant */
    ck_assert_str_eq(jstr(json_array_get(p, 0), "member_id"), "m3");
    json_decref(p);
    close_store(s);
}
END_TEST

/* ---- kv, close ----------------------------------------------------------------------------- */

START_TEST(test_kv)
{
    struct loyd_store *s = open_store();
    struct res r = {0};
    char *v = (char *)1;
    ck_assert_int_eq(loyd_store_kv_get(s, "acme", "refresh_token", &v), 0);
    ck_assert_ptr_null(v);
    ck_assert_int_eq(loyd_store_kv_put(s, "acme", "refresh_token", "r1", on_done, &r), 0);
    ck_assert_int_eq(loyd_store_kv_put(s, "acme", "refresh_token", "r2", on_done, &r), 0);
    ck_assert_int_eq(loyd_store_kv_put(s, "globex", "refresh_token", "g1", on_done, &r), 0);
    wait_for(&r.done, 3);
    ck_assert_int_eq(r.err, 0);
    ck_assert_int_eq(loyd_store_kv_get(s, "acme", "refresh_token", &v), 0);
    ck_assert_str_eq(v, "r2");
    free(v);
    ck_assert_int_eq(loyd_store_kv_get(s, "globex", "refresh_token", &v), 0);
    ck_assert_str_eq(v, "g1");
    free(v);
    r.done = 0;
    ck_assert_int_eq(loyd_store_kv_put(s, "acme", "refresh_token", NULL, on_done, &r), 0);
    wait_for(&r.done, 1);
    ck_assert_int_eq(loyd_store_kv_get(s, "acme", "refresh_token", &v), 0);
    ck_assert_ptr_null(v);
    ck_assert_int_eq(loyd_store_kv_put(s, "", "k", "v", on_done, &r), -EINVAL);
    r.done = 0;
    ck_assert_int_eq(loyd_store_tenant_ensure(s, "initech", on_done, &r), 0);
    ck_assert_int_eq(loyd_store_tenant_ensure(s, "initech", on_done, &r), 0);
    wait_for(&r.done, 2);
    ck_assert_int_eq(r.err, 0);
    close_store(s);
    ck_assert_int_eq(raw_int(dbpath, "SELECT COUNT(*) FROM tenants"), 3);
}
END_TEST

START_TEST(test_close_flushes)
{
    struct loyd_store *s = open_store();
    static struct many m;
    char key[32];
    memset(&m, 0, sizeof(m));
    for (int i = 0; i < 50; i++) {
        snprintf(key, sizeof(key), "k%d", i);
        struct loyd_inbox_row row = {.tenant = "acme", .idem_key = key, .body = "b", .body_len = 1};
        ck_assert_int_eq(loyd_store_inbox_append(s, &row, on_many, &m), 0);
    }
    /* Close at once, before the loop ran a single time. */
    int closed = 0;
    loyd_store_close(s, on_closed, &closed);
    struct loyd_inbox_row late = {.tenant = "acme", .idem_key = "late"};
    struct res r = {0};
    ck_assert_int_eq(loyd_store_inbox_append(s, &late, on_id, &r), -ECANCELED);
    wait_for(&closed, 1);
    ck_assert_int_eq(m.done, 50); /* every queued write completed before the close callback */
    ck_assert_int_eq(m.failed, 0);
    ck_assert_int_eq(r.done, 0);
    loyd_store_destroy(s);

    s = open_store();
    json_t *p = NULL;
    ck_assert_int_eq(loyd_store_inbox_pending(s, "acme", 100, &p), 0);
    ck_assert_uint_eq(json_array_size(p), 50);
    json_decref(p);
    /* destroy without close, when idle, closes synchronously and keeps what was committed. */
    append_sync(s, "acme", "k50", "b", 0);
    loyd_store_destroy(s);
    ck_assert_int_eq(raw_int(dbpath, "SELECT COUNT(*) FROM inbox"), 51);
}
END_TEST

/* ---- crash durability ---------------------------------------------------------------------- */

struct child {
    struct loyd_store *s;
    int fd, round, next, inflight;
};

static void child_submit(struct child *c);

static void child_on_id(void *arg, int err, int64_t id)
{
    struct child *c = arg;
    if (err != 0)
        _exit(3);
    /* Reported only now: the transaction holding this row has committed. */
    if (write(c->fd, &id, sizeof(id)) != (ssize_t)sizeof(id))
        _exit(4);
    c->inflight--;
    child_submit(c);
}

static void child_submit(struct child *c)
{
    while (c->inflight < 64 && c->next < 200000) {
        char key[48], body[64];
        snprintf(key, sizeof(key), "r%d-%d", c->round, c->next);
        snprintf(body, sizeof(body), "{\"round\":%d,\"n\":%d}", c->round, c->next);
        struct loyd_inbox_row row = {
            .tenant = "crash", .idem_key = key, .body = body, .body_len = strlen(body)};
        if (loyd_store_inbox_append(c->s, &row, child_on_id, c) != 0)
            _exit(5);
        c->next++;
        c->inflight++;
    }
}

static _Noreturn void child_main(int fd, int round)
{
    uv_loop_t l;
    struct child c = {.fd = fd, .round = round};
    if (uv_loop_init(&l) != 0 || loyd_store_open(&l, dbpath, &c.s) != 0)
        _exit(2);
    child_submit(&c);
    uv_run(&l, UV_RUN_DEFAULT);
    _exit(0);
}

START_TEST(test_crash_durability)
{
    unsigned seed = (unsigned)time(NULL) ^ (unsigned)getpid();
    size_t total = 0;

    for (int round = 0; round < 3; round++) {
        int fds[2];
        ck_assert_int_eq(pipe(fds), 0);
        pid_t pid = fork();
        ck_assert_int_ge(pid, 0);
        if (pid == 0) {
            close(fds[0]);
            child_main(fds[1], round);
        }
        close(fds[1]);

        size_t cap = 4096, n = 0;
        int64_t *ids = loyd_xmalloc(cap * sizeof(*ids));
        size_t target = 1 + (size_t)(rand_r(&seed) % 600);
        bool killed = false;
        for (;;) {
            int64_t id;
            ssize_t got = read(fds[0], &id, sizeof(id));
            if (got == 0)
                break; /* the child is gone: every id it reported is read */
            ck_assert_int_eq(got, (ssize_t)sizeof(id));
            if (n == cap)
                ids = loyd_xrealloc(ids, (cap *= 2) * sizeof(*ids));
            ids[n++] = id;
            if (n >= target && !killed) {
                ck_assert_int_eq(kill(pid, SIGKILL), 0); /* mid-flight: batches are running */
                killed = true;
            }
        }
        int status;
        ck_assert_int_eq(waitpid(pid, &status, 0), pid);
        ck_assert_msg(WIFSIGNALED(status) && WTERMSIG(status) == SIGKILL,
                      "child ended on its own (status %d) before %zu ids", status, target);
        close(fds[0]);

        struct loyd_store *s = open_store();
        for (size_t i = 0; i < n; i++) {
            json_t *o = NULL;
            ck_assert_msg(loyd_store_inbox_get(s, ids[i], &o) == 0,
                          "round %d: id %lld was acknowledged but is not stored", round,
                          (long long)ids[i]);
            ck_assert_str_eq(jstr(o, "tenant"), "crash");
            json_decref(o);
        }
        close_store(s);
        total += n;
        free(ids);
    }
    ck_assert_uint_gt(total, 0);
}
END_TEST

Suite *store_suite(void)
{
    Suite *s = suite_create("store");
    TCase *tc = tcase_create("core");
    tcase_add_checked_fixture(tc, setup, teardown);
    tcase_set_timeout(tc, 30);
    tcase_add_test(tc, test_open_migrates);
    tcase_add_test(tc, test_migration_v2_appends);
    tcase_add_test(tc, test_urls);
    tcase_add_test(tc, test_append_binary_body);
    tcase_add_test(tc, test_append_duplicate);
    tcase_add_test(tc, test_grouped_commits);
    tcase_add_test(tc, test_inbox_finish);
    tcase_add_test(tc, test_apply_atomic_idempotent);
    tcase_add_test(tc, test_lots_and_balance);
    tcase_add_test(tc, test_outbox);
    tcase_add_test(tc, test_apply_state_and_sending);
    tcase_add_test(tc, test_members_list);
    tcase_add_test(tc, test_kv);
    tcase_add_test(tc, test_close_flushes);
    tcase_add_test(tc, test_crash_durability);
    suite_add_tcase(s, tc);
    return s;
}
