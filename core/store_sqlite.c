/* SPDX-License-Identifier: MIT */
/*
 * The SQLite backend of the durable store (see store.h), and the thin front end that picks a
 * backend from the URL and validates arguments before any backend sees them.
 *
 * This file owns two connections to one database file in WAL mode:
 *  - the WRITER connection, used only by the writer job.  Writes are copied into `struct op`,
 *    queued on the loop thread, and run by at most one uv_queue_work job at a time: the job
 *    takes everything queued so far (up to a cap) and runs it in ONE transaction
 *    (BEGIN IMMEDIATE ... COMMIT).  A batch holding anything that is acknowledged or acted on
 *    outside the process (a webhook's 200, a token, an outbox item about to be sent) commits
 *    with synchronous=FULL, so COMMIT returns after fsync; a batch of only applies and finish
 *    marks commits with synchronous=NORMAL (no fsync: safe against a crash of the process, and
 *    on power loss only a tail of them is lost, whose webhooks are still stored and are applied
 *    again).  WAL commits are ordered, so the next FULL commit makes every earlier one durable
 *    too: before an outbox item leaves for the CRM, the apply that made it is on disk.
 *    Each op runs inside its own SAVEPOINT, so one op refused by a constraint does not take the
 *    others down.  While a commit is in progress new writes pile up in the queue and become the
 *    next single transaction: the fsync cost is shared by everything that arrived meanwhile.
 *    Completion callbacks run on the loop thread in the after-work callback, strictly after
 *    COMMIT returned.  Being the only writer, it never meets lock contention.
 *  - the READER connection, used synchronously on the loop thread for every read.  WAL readers
 *    see the last committed state and never wait for the writer.
 *
 * The front end (end of file) lives here while SQLite is the only backend; when a second one
 * arrives it moves, unchanged, to core/store.c.
 */
#include "store.h"

#include <errno.h>
#include <fcntl.h>
#include <inttypes.h>
#include <sqlite3.h>
#include <stdbool.h>
#include <stddef.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <unistd.h>

#include "ledger.h"
#include "log.h"
#include "util.h"

extern const char loyd_db_schema_sql[];

/* One transaction holds at most this many ops or bytes of copied input (then the next one). */
#define BATCH_MAX_OPS 1024
#define BATCH_MAX_BYTES (8u << 20)
/* Reads return at most this many rows whatever the caller asks. */
#define READ_MAX_ROWS 10000
/* Rows one apply may carry (ledger + outbox); a rule pack produces a handful. */
#define APPLY_MAX_ROWS 10000
/* The writer waits this long for a lock held by another process (an operator's sqlite3 shell). */
#define WRITER_BUSY_MS 5000
/* The reader runs on the loop thread: it may wait only briefly (WAL recovery by a peer). */
#define READER_BUSY_MS 100

/* ---- Write operations ---------------------------------------------------------------------- */

enum op_kind {
    OP_APPEND,
    OP_INBOX_FINISH,
    OP_TENANT,
    OP_KV_PUT,
    OP_DEAD,
    OP_APPLY,
    OP_OUTBOX_FINISH,
    OP_OUTBOX_SENDING
};

/* Copies of the caller's strings live in chunks owned by the op (freed with it). */
struct chunk {
    struct chunk *next;
    size_t used, cap;
    max_align_t data[];
};

struct op {
    struct op *next;
    enum op_kind kind;
    loyd_store_cb cb;
    loyd_store_id_cb id_cb;
    void *arg;
    int err;         /* result, set by the writer */
    int64_t id;      /* inbox id for appends, set by the writer */
    uint64_t now_ms; /* wall clock at submission: stamps created/updated columns */
    struct chunk *mem;
    void *body;   /* inbox body copy: size from outside, so allocated fallibly */
    size_t bytes; /* size of the copies, for the batch cap */
    union {
        struct {
            const char *tenant, *idem_key, *content_type, *notices;
            size_t body_len;
            uint64_t received_ms;
        } append;
        struct {
            int64_t id;
            const char *status, *error;
            uint64_t retry_at_ms;
        } finish; /* inbox and outbox */
        struct {
            const char *tenant, *key, *value;
        } kv; /* also OP_TENANT (tenant only) */
        struct {
            const char *tenant, *kind, *ref, *payload, *error;
        } dead;
        struct loyd_apply apply;
        struct {
            const int64_t *ids;
            size_t n;
        } sending;
    } u;
};

static void *op_alloc(struct op *op, size_t n)
{
    n = (n + sizeof(max_align_t) - 1) / sizeof(max_align_t) * sizeof(max_align_t);
    struct chunk *c = op->mem;
    if (c == NULL || c->cap - c->used < n) {
        size_t cap = n > 1024 ? n : 1024;
        c = loyd_xmalloc(sizeof(*c) + cap);
        c->cap = cap;
        c->used = 0;
        c->next = op->mem;
        op->mem = c;
    }
    void *p = (char *)c->data + c->used;
    c->used += n;
    op->bytes += n;
    return p;
}

static const char *op_str(struct op *op, const char *s)
{
    if (s == NULL)
        return NULL;
    size_t n = strlen(s) + 1;
    char *p = op_alloc(op, n);
    memcpy(p, s, n);
    return p;
}

static struct op *op_new(enum op_kind kind)
{
    struct op *op = loyd_xcalloc(1, sizeof(*op));
    op->kind = kind;
    op->now_ms = loyd_wall_ms();
    op->bytes = sizeof(*op);
    return op;
}

static void op_free(struct op *op)
{
    while (op->mem != NULL) {
        struct chunk *c = op->mem;
        op->mem = c->next;
        free(c);
    }
    free(op->body);
    free(op);
}

static void op_complete(struct op *op)
{
    if (op->kind == OP_APPEND) {
        if (op->id_cb != NULL)
            op->id_cb(op->arg, op->err, op->err == 0 || op->err == LOYD_EDUP ? op->id : 0);
    } else if (op->cb != NULL) {
        op->cb(op->arg, op->err);
    }
}

/* ---- The store ----------------------------------------------------------------------------- */

/* Writer statements, prepared on first use on the writer connection. */
enum wstmt {
    W_BEGIN,
    W_COMMIT,
    W_ROLLBACK,
    W_SAVEPOINT,
    W_RELEASE,
    W_ROLLBACK_TO,
    W_TENANT,
    W_INBOX_INSERT,
    W_INBOX_FIND,
    W_INBOX_FINISH,
    W_INBOX_EXISTS,
    W_INBOX_DEAD,
    W_INBOX_DONE,
    W_KV_PUT,
    W_KV_DEL,
    W_DEAD,
    W_EVENT_INSERT,
    W_MEMBER_UPSERT,
    W_LOT_CHECK,
    W_LEDGER_INSERT,
    W_OUTBOX_INSERT,
    W_OUTBOX_FINISH,
    W_OUTBOX_EXISTS,
    W_OUTBOX_DEAD,
    W_OUTBOX_SENDING,
    W_COUNT
};

static const char *const wsql[W_COUNT] = {
    [W_BEGIN] = "BEGIN IMMEDIATE",
    [W_COMMIT] = "COMMIT",
    [W_ROLLBACK] = "ROLLBACK",
    [W_SAVEPOINT] = "SAVEPOINT op",
    [W_RELEASE] = "RELEASE op",
    [W_ROLLBACK_TO] = "ROLLBACK TO op",
    [W_TENANT] = "INSERT INTO tenants (tenant, created_ms) VALUES (?1, ?2) ON CONFLICT DO NOTHING",
    [W_INBOX_INSERT] = "INSERT INTO inbox (tenant, idem_key, received_ms, content_type, body, "
                       "notices) VALUES (?1, ?2, ?3, ?4, ?5, ?6) "
                       "ON CONFLICT (tenant, idem_key) DO NOTHING RETURNING id",
    [W_INBOX_FIND] = "SELECT id FROM inbox WHERE tenant = ?1 AND idem_key = ?2",
    /* A finished row frees its key: a webhook that only names a record ("deal 7 changed") and
     * arrives again after it was read says the record may have changed since, so it is news
     * again.  Redeliveries while the row waits are still merged. */
    [W_INBOX_FINISH] = "UPDATE inbox SET status = CASE WHEN ?2 = 'retry' THEN status ELSE ?2 END, "
                       "idem_key = CASE WHEN ?2 = 'retry' THEN idem_key "
                       "ELSE idem_key || ':' || id END, "
                       "attempts = attempts + 1, error = ?3, "
                       "finished_ms = CASE WHEN ?2 = 'retry' THEN NULL ELSE ?4 END "
                       "WHERE id = ?1 AND status = 'new' RETURNING id",
    [W_INBOX_EXISTS] = "SELECT id FROM inbox WHERE id = ?1",
    [W_INBOX_DEAD] = "INSERT INTO dead_letters (tenant, kind, ref, payload, error, created_ms) "
                     "SELECT tenant, 'inbox', CAST(id AS TEXT), body, ?2, ?3 FROM inbox "
                     "WHERE id = ?1",
    [W_INBOX_DONE] = "UPDATE inbox SET status = 'done', attempts = attempts + 1, finished_ms = ?2 "
                     "WHERE id = ?1 AND status = 'new'",
    [W_KV_PUT] = "INSERT INTO kv (tenant, key, value, updated_ms) VALUES (?1, ?2, ?3, ?4) "
                 "ON CONFLICT (tenant, key) DO UPDATE SET value = excluded.value, "
                 "updated_ms = excluded.updated_ms",
    [W_KV_DEL] = "DELETE FROM kv WHERE tenant = ?1 AND key = ?2",
    [W_DEAD] = "INSERT INTO dead_letters (tenant, kind, ref, payload, error, created_ms) "
               "VALUES (?1, ?2, ?3, ?4, ?5, ?6)",
    [W_EVENT_INSERT] = "INSERT INTO events (tenant, event_key, type, inbox_id, json, trace, "
                       "pack_version, applied_ms) VALUES (?1, ?2, ?3, ?4, ?5, ?6, ?7, ?8) "
                       "ON CONFLICT (tenant, event_key) DO NOTHING RETURNING id",
    [W_MEMBER_UPSERT] = "INSERT INTO members (tenant, member_id, json, updated_ms) "
                        "VALUES (?1, ?2, COALESCE(?3, '{}'), ?4) "
                        "ON CONFLICT (tenant, member_id) DO UPDATE SET json = COALESCE(?3, json), "
                        "updated_ms = CASE WHEN ?3 IS NULL THEN updated_ms ELSE ?4 END",
    [W_LOT_CHECK] = "SELECT id FROM ledger WHERE id = ?1 AND tenant = ?2 AND member_id = ?3 "
                    "AND lot_id IS NULL AND points > 0",
    [W_LEDGER_INSERT] = "INSERT INTO ledger (tenant, member_id, event_key, kind, points, reason, "
                        "expires_ms, lot_id, ref, created_ms, pack_version, campaign) "
                        "VALUES (?1, ?2, ?3, ?4, ?5, ?6, ?7, ?8, ?9, ?10, ?11, ?12)",
    [W_OUTBOX_INSERT] = "INSERT INTO outbox (tenant, member_id, event_key, payload, "
                        "next_attempt_ms, created_ms, updated_ms) "
                        "VALUES (?1, ?2, ?3, ?4, ?5, ?5, ?5)",
    [W_OUTBOX_FINISH] =
        "UPDATE outbox SET status = CASE WHEN ?2 = 'retry' THEN status ELSE ?2 END, "
        "attempts = attempts + 1, "
        "next_attempt_ms = CASE WHEN ?2 = 'retry' THEN ?3 ELSE next_attempt_ms END, "
        "error = ?4, updated_ms = ?5 "
        "WHERE id = ?1 AND status = 'pending' RETURNING id",
    [W_OUTBOX_EXISTS] = "SELECT id FROM outbox WHERE id = ?1",
    [W_OUTBOX_DEAD] = "INSERT INTO dead_letters (tenant, kind, ref, payload, error, created_ms) "
                      "SELECT tenant, 'outbox', CAST(id AS TEXT), payload, ?2, ?3 FROM outbox "
                      "WHERE id = ?1",
    [W_OUTBOX_SENDING] = "UPDATE outbox SET sending = 1 WHERE id = ?1 AND status = 'pending'",
};

#define LEDGER_COLS                                                                                \
    "id, member_id, event_key, kind, points, reason, expires_ms, lot_id, ref, created_ms, "        \
    "pack_version, campaign"
#define OUTBOX_SELECT                                                                              \
    "SELECT o.id, o.tenant, o.member_id, o.event_key, o.payload, o.attempts, o.next_attempt_ms, "  \
    "o.created_ms, o.sending FROM outbox o WHERE o.status = 'pending' AND o.next_attempt_ms <= ?1 "           \
    "AND NOT EXISTS (SELECT 1 FROM outbox p WHERE p.status = 'pending' "                           \
    "AND p.tenant = o.tenant AND p.member_id = o.member_id AND p.id < o.id) "

/* Reader statements, prepared on first use on the reader connection (loop thread). */
enum rstmt {
    R_INBOX_PENDING,
    R_INBOX_PENDING_T,
    R_INBOX_GET,
    R_KV_GET,
    R_MEMBER,
    R_LEDGER_LIST,
    R_LEDGER_REF,
    R_LOTS,
    R_BALANCE,
    R_CAMPAIGNS,
    R_EVENT,
    R_OUTBOX_PENDING,
    R_OUTBOX_PENDING_T,
    R_DEPTHS,
    R_MEMBERS,
    R_COUNT
};

static const char *const rsql[R_COUNT] = {
    [R_INBOX_PENDING] = "SELECT id, tenant, idem_key, content_type, body, notices, received_ms, "
                        "attempts FROM inbox WHERE status = 'new' ORDER BY id LIMIT ?1",
    [R_INBOX_PENDING_T] = "SELECT id, tenant, idem_key, content_type, body, notices, received_ms, "
                          "attempts FROM inbox WHERE status = 'new' AND tenant = ?2 "
                          "ORDER BY id LIMIT ?1",
    [R_INBOX_GET] = "SELECT id, tenant, idem_key, content_type, body, notices, received_ms, "
                    "attempts, status, error FROM inbox WHERE id = ?1",
    [R_KV_GET] = "SELECT value FROM kv WHERE tenant = ?1 AND key = ?2",
    [R_MEMBER] = "SELECT tenant, member_id, json, updated_ms FROM members "
                 "WHERE tenant = ?1 AND member_id = ?2",
    [R_LEDGER_LIST] = "SELECT " LEDGER_COLS " FROM ledger WHERE tenant = ?1 AND member_id = ?2 "
                      "ORDER BY id",
    [R_LEDGER_REF] = "SELECT " LEDGER_COLS " FROM ledger WHERE tenant = ?1 AND ref = ?2 "
                     "ORDER BY id",
    [R_LOTS] = "SELECT " LEDGER_COLS ", points + COALESCE((SELECT SUM(d.points) FROM ledger d "
               "WHERE d.lot_id = l.id), 0) AS remaining FROM ledger l "
               "WHERE tenant = ?1 AND member_id = ?2 AND lot_id IS NULL AND points > 0 "
               "AND remaining > 0 ORDER BY expires_ms IS NULL, expires_ms, id",
    [R_BALANCE] =
        "SELECT COALESCE(SUM(points), 0) FROM ledger WHERE tenant = ?1 AND member_id = ?2",
    [R_CAMPAIGNS] = "SELECT campaign, SUM(points) FROM ledger WHERE tenant = ?1 "
                    "AND campaign IS NOT NULL AND kind IN ('award', 'reverse') GROUP BY campaign",
    [R_EVENT] = "SELECT tenant, event_key, type, inbox_id, json, trace, pack_version, applied_ms "
                "FROM events WHERE tenant = ?1 AND event_key = ?2",
    [R_OUTBOX_PENDING] = OUTBOX_SELECT "ORDER BY o.id LIMIT ?2",
    [R_OUTBOX_PENDING_T] = OUTBOX_SELECT "AND o.tenant = ?3 ORDER BY o.id LIMIT ?2",
    [R_DEPTHS] = "SELECT (SELECT COUNT(*) FROM inbox WHERE status = 'new'), "
                 "(SELECT COUNT(*) FROM outbox WHERE status = 'pending'), "
                 "(SELECT COUNT(*) FROM dead_letters)",
    [R_MEMBERS] = "SELECT member_id, json FROM members WHERE tenant = ?1 AND member_id > ?2 "
                  "ORDER BY member_id LIMIT ?3",
};

enum sq_state { SQ_OPEN, SQ_CLOSING, SQ_CLOSED };
enum sq_job { JOB_BATCH, JOB_CLOSE };

struct sq_store {
    struct loyd_store base; /* first: the front end hands us &base */
    uv_loop_t *loop;
    char *path;
    sqlite3 *wdb; /* writer: touched only by the writer job once open returned */
    sqlite3 *rdb; /* reader: loop thread */
    sqlite3_stmt *wst[W_COUNT];
    sqlite3_stmt *rst[R_COUNT];

    /* Loop thread only. */
    struct op *q_head, **q_tail;
    size_t q_len;
    enum sq_state state;
    bool in_flight;    /* a job is queued or running: s->work, s->batch belong to it */
    bool in_callbacks; /* completing a batch: destroy() from a callback is a bug */
    void (*close_cb)(void *arg);
    void *close_arg;
    struct loyd_store_stats stats;

    /* Handed to the writer job and back (uv_queue_work orders the accesses). */
    uv_work_t work;
    enum sq_job job;
    struct op *batch;
    bool batch_committed;
    bool synced_full; /* the writer connection's synchronous level is FULL */
};

#define SQ(p) ((struct sq_store *)(p))

/* ---- SQLite helpers ------------------------------------------------------------------------ */

/* Translates a SQLite failure once, where it enters our code; constraints are the caller's data. */
static int db_error(sqlite3 *db, int rc, const char *what)
{
    if ((rc & 0xff) == SQLITE_CONSTRAINT) {
        loyd_log_warn(DB, "refused: %s (in: %.80s)", sqlite3_errmsg(db), what);
        return -EINVAL;
    }
    loyd_log_err(DB, "%s (%s, code %d) in: %.80s", sqlite3_errmsg(db), sqlite3_errstr(rc), rc,
                 what);
    return LOYD_EDB;
}

static int prep(sqlite3 *db, sqlite3_stmt **cache, const char *sql, sqlite3_stmt **out)
{
    if (*cache == NULL) {
        int rc = sqlite3_prepare_v3(db, sql, -1, SQLITE_PREPARE_PERSISTENT, cache, NULL);
        if (rc != SQLITE_OK) {
            *cache = NULL;
            return db_error(db, rc, sql);
        }
    }
    *out = *cache;
    return 0;
}

static int wprep(struct sq_store *s, enum wstmt w, sqlite3_stmt **out)
{
    return prep(s->wdb, &s->wst[w], wsql[w], out);
}

static int rprep(struct sq_store *s, enum rstmt r, sqlite3_stmt **out)
{
    return prep(s->rdb, &s->rst[r], rsql[r], out);
}

static void st_done(sqlite3_stmt *st)
{
    sqlite3_reset(st);
    sqlite3_clear_bindings(st);
}

/*
 * Binding uses SQLITE_STATIC: every bound buffer (the op's copies, or the caller's arguments of a
 * synchronous read) outlives the step, and each statement is reset before its buffers go away.
 */
static void bind_text(sqlite3_stmt *st, int i, const char *v)
{
    if (v == NULL)
        sqlite3_bind_null(st, i);
    else
        sqlite3_bind_text(st, i, v, -1, SQLITE_STATIC);
}

static void bind_i64(sqlite3_stmt *st, int i, int64_t v)
{
    sqlite3_bind_int64(st, i, v);
}

static void bind_ms(sqlite3_stmt *st, int i, uint64_t ms)
{
    sqlite3_bind_int64(st, i, ms > INT64_MAX ? INT64_MAX : (int64_t)ms);
}

/* An optional quantity: 0 means "none" and is stored as NULL. */
static void bind_opt(sqlite3_stmt *st, int i, int64_t v)
{
    if (v == 0)
        sqlite3_bind_null(st, i);
    else
        sqlite3_bind_int64(st, i, v);
}

/* Runs @st to the end, ignoring rows. */
static int st_exec(sqlite3 *db, sqlite3_stmt *st)
{
    int rc;
    while ((rc = sqlite3_step(st)) == SQLITE_ROW)
        ;
    int err = rc == SQLITE_DONE ? 0 : db_error(db, rc, sqlite3_sql(st));
    st_done(st);
    return err;
}

/* First column of the first row into *out; -ENOENT when there is no row. */
static int st_int(sqlite3 *db, sqlite3_stmt *st, int64_t *out)
{
    int rc = sqlite3_step(st), err;
    if (rc == SQLITE_ROW) {
        *out = sqlite3_column_int64(st, 0);
        err = 0;
    } else if (rc == SQLITE_DONE) {
        err = -ENOENT;
    } else {
        err = db_error(db, rc, sqlite3_sql(st));
    }
    st_done(st);
    return err;
}

static int wrun(struct sq_store *s, enum wstmt w)
{
    sqlite3_stmt *st = NULL;
    int rc = wprep(s, w, &st);
    return rc != 0 ? rc : st_exec(s->wdb, st);
}

/* Runs a PRAGMA (or any one-row query) and copies column 0 as text into @buf. */
static int pragma_text(sqlite3 *db, const char *sql, char *buf, size_t len)
{
    sqlite3_stmt *st = NULL;
    int rc = sqlite3_prepare_v2(db, sql, -1, &st, NULL), err = 0;
    buf[0] = '\0';
    if (rc != SQLITE_OK)
        return db_error(db, rc, sql);
    rc = sqlite3_step(st);
    if (rc == SQLITE_ROW) {
        const unsigned char *t = sqlite3_column_text(st, 0);
        snprintf(buf, len, "%s", t != NULL ? (const char *)t : "");
    } else if (rc != SQLITE_DONE) {
        err = db_error(db, rc, sql);
    }
    sqlite3_finalize(st);
    return err;
}

static int exec_sql(sqlite3 *db, const char *sql)
{
    char *msg = NULL;
    int rc = sqlite3_exec(db, sql, NULL, NULL, &msg);
    if (rc != SQLITE_OK) {
        loyd_log_err(DB, "%s (code %d) in: %.80s", msg != NULL ? msg : sqlite3_errstr(rc), rc, sql);
        sqlite3_free(msg);
        return LOYD_EDB;
    }
    return 0;
}

/* ---- Opening and migrations ---------------------------------------------------------------- */

struct section {
    int n;
    const char *text;
    size_t len;
};

/* A line "-- migration N" (trailing blanks allowed) starts section N. */
static bool parse_marker(const char *line, size_t len, int *n)
{
    static const char tag[] = "-- migration ";
    size_t i = sizeof(tag) - 1;
    long v = 0;

    if (len <= i || strncmp(line, tag, i) != 0)
        return false;
    if (line[i] < '0' || line[i] > '9')
        return false;
    for (; i < len && line[i] >= '0' && line[i] <= '9'; i++) {
        v = v * 10 + (line[i] - '0');
        if (v > 1000000)
            return false;
    }
    for (; i < len; i++)
        if (line[i] != ' ' && line[i] != '\t' && line[i] != '\r')
            return false;
    *n = (int)v;
    return true;
}

static int migrate(sqlite3 *db, const char *path, const char *schema)
{
    struct section *secs = NULL;
    size_t nsecs = 0;
    int err = 0;
    const char *p = schema;

    /* First pass: find the sections and check they are numbered 1, 2, 3, ... */
    while (*p != '\0') {
        const char *eol = strchr(p, '\n');
        size_t len = eol != NULL ? (size_t)(eol - p) : strlen(p);
        const char *next = eol != NULL ? eol + 1 : p + len;
        int n;
        if (parse_marker(p, len, &n)) {
            if (n != (int)nsecs + 1) {
                loyd_log_err(DB, "schema: \"-- migration %d\" found where %zu was expected", n,
                             nsecs + 1);
                err = LOYD_EDB;
                goto out;
            }
            if (nsecs > 0)
                secs[nsecs - 1].len = (size_t)(p - secs[nsecs - 1].text);
            secs = loyd_xrealloc(secs, (nsecs + 1) * sizeof(*secs));
            secs[nsecs++] = (struct section){.n = n, .text = next, .len = 0};
        }
        p = next;
    }
    if (nsecs == 0) {
        loyd_log_err(DB, "schema: no \"-- migration N\" section");
        err = LOYD_EDB;
        goto out;
    }
    secs[nsecs - 1].len = (size_t)(p - secs[nsecs - 1].text);

    char buf[32];
    if ((err = pragma_text(db, "PRAGMA user_version", buf, sizeof(buf))) != 0)
        goto out;
    long have = strtol(buf, NULL, 10);
    if (have < 0 || have > (long)nsecs) {
        loyd_log_err(DB,
                     "%s: schema version %ld is newer than this loyd knows (%zu); refusing to "
                     "open it",
                     path, have, nsecs);
        err = LOYD_EDB;
        goto out;
    }
    /* Second pass: apply what is missing, each section in its own transaction. */
    for (size_t i = (size_t)have; i < nsecs; i++) {
        char *sql = loyd_xstrndup(secs[i].text, secs[i].len);
        char *ver = loyd_xasprintf("PRAGMA user_version = %d", secs[i].n);
        err = exec_sql(db, "BEGIN IMMEDIATE");
        if (err == 0)
            err = exec_sql(db, sql);
        if (err == 0)
            err = exec_sql(db, ver);
        if (err == 0)
            err = exec_sql(db, "COMMIT");
        if (err != 0 && !sqlite3_get_autocommit(db))
            (void)exec_sql(db, "ROLLBACK");
        free(sql);
        free(ver);
        if (err != 0) {
            loyd_log_err(DB, "%s: migration %d failed; the file stays at version %d", path,
                         secs[i].n, secs[i].n - 1);
            goto out;
        }
        loyd_log_notice(DB, "%s: migrated to schema version %d", path, secs[i].n);
    }
out:
    free(secs);
    return err;
}

static int conn_open(const char *path, int busy_ms, sqlite3 **out)
{
    sqlite3 *db = NULL;
    int flags = SQLITE_OPEN_READWRITE | SQLITE_OPEN_CREATE | SQLITE_OPEN_NOMUTEX;
#ifdef SQLITE_OPEN_EXRESCODE
    flags |= SQLITE_OPEN_EXRESCODE;
#endif
    int rc = sqlite3_open_v2(path, &db, flags, NULL);
    if (rc != SQLITE_OK) {
        loyd_log_err(DB, "open %s: %s", path, db != NULL ? sqlite3_errmsg(db) : sqlite3_errstr(rc));
        sqlite3_close(db);
        return LOYD_EDB;
    }
    sqlite3_extended_result_codes(db, 1);
    sqlite3_busy_timeout(db, busy_ms);
    /* No writable-schema tricks.  trusted_schema stays on: the file is ours, and SQLite 3.40
     * does not mark json_valid() innocuous, which the schema's CHECKs need. */
    sqlite3_db_config(db, SQLITE_DBCONFIG_DEFENSIVE, 1, NULL);
    *out = db;
    return 0;
}

/* Durability is the point of this module: refuse to run if SQLite did not take the settings. */
static int writer_setup(sqlite3 *db, const char *path)
{
    char buf[32];
    int err;

    if ((err = pragma_text(db, "PRAGMA journal_mode = WAL", buf, sizeof(buf))) != 0)
        return err;
    if (strcmp(buf, "wal") != 0) {
        loyd_log_err(DB, "%s: cannot switch to WAL mode (journal_mode=%s)", path, buf);
        return LOYD_EDB;
    }
    if ((err = exec_sql(db, "PRAGMA synchronous = FULL; PRAGMA foreign_keys = ON; "
                            "PRAGMA journal_size_limit = 67108864; "
                            /* 64 MiB of page cache (used as needed): the inbox's key index
                             * takes random inserts, and a 2 MiB cache thrashed on it
                             * (docs/BENCHMARKS.md). */
                            "PRAGMA cache_size = -65536")) != 0)
        return err;
    if ((err = pragma_text(db, "PRAGMA synchronous", buf, sizeof(buf))) != 0)
        return err;
    if (strcmp(buf, "2") != 0) {
        loyd_log_err(DB, "%s: synchronous=FULL not in effect (%s)", path, buf);
        return LOYD_EDB;
    }
    if ((err = pragma_text(db, "PRAGMA foreign_keys", buf, sizeof(buf))) != 0)
        return err;
    if (strcmp(buf, "1") != 0) {
        loyd_log_err(DB, "%s: this SQLite has no foreign key support", path);
        return LOYD_EDB;
    }
    return 0;
}

static void sq_destroy(struct loyd_store *base);

int loyd__store_sqlite_open_schema(uv_loop_t *loop, const char *path, const char *schema_sql,
                                   struct loyd_store **out)
{
    struct sq_store *s = NULL;
    int err;

    *out = NULL;
    if (path[0] == '\0' || strcmp(path, ":memory:") == 0) {
        loyd_log_err(DB, "store path \"%s\": a file is needed (two connections share it)", path);
        return -EINVAL;
    }
    if (sqlite3_threadsafe() == 0) {
        loyd_log_err(DB, "this SQLite is built without thread support; the writer needs it");
        return LOYD_EDB;
    }
    s = loyd_xcalloc(1, sizeof(*s));
    s->base.be = &loyd_store_backend_sqlite;
    s->loop = loop;
    s->path = loyd_xstrdup(path);
    s->q_tail = &s->q_head;

    /* Tokens live in here: create the file private before SQLite creates it world-readable.
     * SQLite gives the -wal and -shm files the same mode as the database. */
    int fd = open(path, O_RDWR | O_CREAT | O_CLOEXEC, 0600);
    if (fd < 0) {
        err = -errno;
        loyd_log_err(DB, "open %s: %s", path, strerror(-err));
        goto fail;
    }
    close(fd);

    if ((err = conn_open(path, WRITER_BUSY_MS, &s->wdb)) != 0)
        goto fail;
    s->synced_full = true;
    if ((err = writer_setup(s->wdb, path)) != 0)
        goto fail;
    if ((err = migrate(s->wdb, path, schema_sql)) != 0)
        goto fail;
    if ((err = conn_open(path, READER_BUSY_MS, &s->rdb)) != 0)
        goto fail;
    if ((err = exec_sql(s->rdb, "PRAGMA query_only = ON")) != 0)
        goto fail;
    loyd_log_info(DB, "store %s open (WAL, grouped commits, fsync'd before anything leaves)",
                  path);
    *out = &s->base;
    return 0;
fail:
    sq_destroy(&s->base);
    return err;
}

static int sq_open(uv_loop_t *loop, const char *target, struct loyd_store **out)
{
    return loyd__store_sqlite_open_schema(loop, target, loyd_db_schema_sql, out);
}

/* ---- The writer (runs on a libuv pool thread; touches only wdb, wst and the batch) ---------- */

static int w_tenant(struct sq_store *s, const char *tenant, uint64_t now)
{
    sqlite3_stmt *st = NULL;
    int err;
    if (tenant == NULL)
        return 0;
    if ((err = wprep(s, W_TENANT, &st)) != 0)
        return err;
    bind_text(st, 1, tenant);
    bind_ms(st, 2, now);
    return st_exec(s->wdb, st);
}

static int w_append(struct sq_store *s, struct op *op)
{
    sqlite3_stmt *st = NULL;
    int err;

    if ((err = w_tenant(s, op->u.append.tenant, op->now_ms)) != 0)
        return err;
    if ((err = wprep(s, W_INBOX_INSERT, &st)) != 0)
        return err;
    bind_text(st, 1, op->u.append.tenant);
    bind_text(st, 2, op->u.append.idem_key);
    bind_ms(st, 3, op->u.append.received_ms);
    bind_text(st, 4, op->u.append.content_type != NULL ? op->u.append.content_type : "");
    /* A NULL pointer would bind SQL NULL; an empty body is a zero-length blob. */
    int rc = sqlite3_bind_blob64(st, 5, op->body != NULL ? op->body : "", op->u.append.body_len,
                                 SQLITE_STATIC);
    if (rc != SQLITE_OK) {
        err = db_error(s->wdb, rc, "bind inbox body");
        st_done(st);
        return err;
    }
    bind_text(st, 6, op->u.append.notices);
    err = st_int(s->wdb, st, &op->id);
    if (err != -ENOENT)
        return err;
    /* Nothing inserted: the (tenant, idem_key) is already stored. */
    if ((err = wprep(s, W_INBOX_FIND, &st)) != 0)
        return err;
    bind_text(st, 1, op->u.append.tenant);
    bind_text(st, 2, op->u.append.idem_key);
    if ((err = st_int(s->wdb, st, &op->id)) != 0)
        return err == -ENOENT ? LOYD_EDB : err;
    return LOYD_EDUP;
}

/* Inbox and outbox finish share the shape: update if still pending, else tell missing apart. */
static int w_finish(struct sq_store *s, struct op *op, bool outbox)
{
    sqlite3_stmt *st = NULL;
    int64_t id;
    int err;

    if ((err = wprep(s, outbox ? W_OUTBOX_FINISH : W_INBOX_FINISH, &st)) != 0)
        return err;
    bind_i64(st, 1, op->u.finish.id);
    bind_text(st, 2, op->u.finish.status);
    if (outbox) {
        bind_ms(st, 3, op->u.finish.retry_at_ms);
        bind_text(st, 4, op->u.finish.error);
        bind_ms(st, 5, op->now_ms);
    } else {
        bind_text(st, 3, op->u.finish.error);
        bind_ms(st, 4, op->now_ms);
    }
    err = st_int(s->wdb, st, &id);
    if (err == -ENOENT) {
        /* Not pending: an unknown id is an error, a finished one is left as it is. */
        if ((err = wprep(s, outbox ? W_OUTBOX_EXISTS : W_INBOX_EXISTS, &st)) != 0)
            return err;
        bind_i64(st, 1, op->u.finish.id);
        return st_int(s->wdb, st, &id);
    }
    if (err != 0 || strcmp(op->u.finish.status, "dead") != 0)
        return err;
    if ((err = wprep(s, outbox ? W_OUTBOX_DEAD : W_INBOX_DEAD, &st)) != 0)
        return err;
    bind_i64(st, 1, op->u.finish.id);
    bind_text(st, 2, op->u.finish.error);
    bind_ms(st, 3, op->now_ms);
    return st_exec(s->wdb, st);
}

static int w_kv(struct sq_store *s, struct op *op)
{
    sqlite3_stmt *st = NULL;
    int err;

    if ((err = w_tenant(s, op->u.kv.tenant, op->now_ms)) != 0)
        return err;
    if ((err = wprep(s, op->u.kv.value != NULL ? W_KV_PUT : W_KV_DEL, &st)) != 0)
        return err;
    bind_text(st, 1, op->u.kv.tenant);
    bind_text(st, 2, op->u.kv.key);
    if (op->u.kv.value != NULL) {
        bind_text(st, 3, op->u.kv.value);
        bind_ms(st, 4, op->now_ms);
    }
    return st_exec(s->wdb, st);
}

static int w_dead(struct sq_store *s, struct op *op)
{
    sqlite3_stmt *st = NULL;
    int err;

    if ((err = w_tenant(s, op->u.dead.tenant, op->now_ms)) != 0)
        return err;
    if ((err = wprep(s, W_DEAD, &st)) != 0)
        return err;
    bind_text(st, 1, op->u.dead.tenant);
    bind_text(st, 2, op->u.dead.kind);
    bind_text(st, 3, op->u.dead.ref);
    bind_text(st, 4, op->u.dead.payload);
    bind_text(st, 5, op->u.dead.error);
    bind_ms(st, 6, op->now_ms);
    return st_exec(s->wdb, st);
}

static int w_inbox_done(struct sq_store *s, int64_t inbox_id, uint64_t now)
{
    sqlite3_stmt *st = NULL;
    int err;
    if (inbox_id == 0)
        return 0;
    if ((err = wprep(s, W_INBOX_DONE, &st)) != 0)
        return err;
    bind_i64(st, 1, inbox_id);
    bind_ms(st, 2, now);
    return st_exec(s->wdb, st);
}

/* The CRM state the event was derived from, stored with it (struct loyd_apply.state_key). */
static int w_apply_state(struct sq_store *s, const struct loyd_apply *a, uint64_t now)
{
    sqlite3_stmt *st = NULL;
    int err;

    if (a->state_key == NULL)
        return 0;
    if ((err = wprep(s, a->state_json != NULL ? W_KV_PUT : W_KV_DEL, &st)) != 0)
        return err;
    bind_text(st, 1, a->tenant);
    bind_text(st, 2, a->state_key);
    if (a->state_json != NULL) {
        bind_text(st, 3, a->state_json);
        bind_ms(st, 4, now);
    }
    return st_exec(s->wdb, st);
}

static int w_outbox_sending(struct sq_store *s, struct op *op)
{
    sqlite3_stmt *st = NULL;
    int err;

    for (size_t i = 0; i < op->u.sending.n; i++) {
        if ((err = wprep(s, W_OUTBOX_SENDING, &st)) != 0)
            return err;
        bind_i64(st, 1, op->u.sending.ids[i]);
        if ((err = st_exec(s->wdb, st)) != 0)
            return err;
    }
    return 0;
}

static int w_apply_ids(struct sq_store *s, struct op *op, int64_t *real_ids)
{
    const struct loyd_apply *a = &op->u.apply;
    uint64_t now = a->applied_ms;
    sqlite3_stmt *st = NULL;
    int64_t id;
    int err;

    if ((err = w_tenant(s, a->tenant, op->now_ms)) != 0)
        return err;
    if ((err = wprep(s, W_EVENT_INSERT, &st)) != 0)
        return err;
    bind_text(st, 1, a->tenant);
    bind_text(st, 2, a->event_key);
    bind_text(st, 3, a->event_type);
    bind_opt(st, 4, a->inbox_id);
    bind_text(st, 5, a->event_json);
    bind_text(st, 6, a->trace_json);
    bind_text(st, 7, a->pack_version);
    bind_ms(st, 8, now);
    err = st_int(s->wdb, st, &id);
    if (err == -ENOENT) {
        /* Applied before (a duplicate or echoed webhook): its inbox row has nothing left to do. */
        if ((err = w_apply_state(s, a, now)) == 0)
            err = w_inbox_done(s, a->inbox_id, now);
        return err != 0 ? err : LOYD_EDUP;
    }
    if (err != 0)
        return err;
    if ((err = w_apply_state(s, a, now)) != 0)
        return err;

    if (a->member_id != NULL) {
        if ((err = wprep(s, W_MEMBER_UPSERT, &st)) != 0)
            return err;
        bind_text(st, 1, a->tenant);
        bind_text(st, 2, a->member_id);
        bind_text(st, 3, a->member_json);
        bind_ms(st, 4, now);
        if ((err = st_exec(s->wdb, st)) != 0)
            return err;
    }
    for (size_t i = 0; i < a->n_ledger; i++) {
        const struct loyd_ledger_entry *e = &a->ledger[i];
        const char *member = e->member_id != NULL ? e->member_id : a->member_id;
        int64_t lot_id = e->lot_id;
        for (size_t j = 0; lot_id != 0 && j < i; j++) {
            /* Provisional ids count per member (each member's ledger numbers its own new
             * rows), and a row only ever draws on a lot of its own member. */
            const char *mj = a->ledger[j].member_id != NULL ? a->ledger[j].member_id
                                                            : a->member_id;
            if (a->ledger[j].provisional_id != 0 && a->ledger[j].provisional_id == e->lot_id &&
                mj != NULL && member != NULL && strcmp(mj, member) == 0) {
                lot_id = real_ids[j];
                break;
            }
        }
        if (lot_id != 0) {
            if ((err = wprep(s, W_LOT_CHECK, &st)) != 0)
                return err;
            bind_i64(st, 1, lot_id);
            bind_text(st, 2, a->tenant);
            bind_text(st, 3, member);
            if ((err = st_int(s->wdb, st, &id)) == -ENOENT) {
                loyd_log_warn(DB,
                              "apply %s: ledger row %zu draws on lot %" PRId64
                              ", which is not a lot of that member",
                              a->event_key, i, e->lot_id);
                return -EINVAL;
            }
            if (err != 0)
                return err;
        }
        if ((err = wprep(s, W_LEDGER_INSERT, &st)) != 0)
            return err;
        bind_text(st, 1, a->tenant);
        bind_text(st, 2, member);
        bind_text(st, 3, a->event_key);
        bind_text(st, 4, e->kind);
        bind_i64(st, 5, e->points);
        bind_text(st, 6, e->reason);
        bind_opt(st, 7, e->expires_ms > INT64_MAX ? INT64_MAX : (int64_t)e->expires_ms);
        bind_opt(st, 8, lot_id);
        bind_text(st, 9, e->ref);
        bind_ms(st, 10, now);
        bind_text(st, 11, a->pack_version);
        bind_text(st, 12, e->campaign);
        if ((err = st_exec(s->wdb, st)) != 0)
            return err;
        real_ids[i] = (int64_t)sqlite3_last_insert_rowid(s->wdb);
    }
    for (size_t i = 0; i < a->n_outbox; i++) {
        const struct loyd_outbox_item *o = &a->outbox[i];
        if ((err = wprep(s, W_OUTBOX_INSERT, &st)) != 0)
            return err;
        bind_text(st, 1, a->tenant);
        bind_text(st, 2, o->member_id != NULL ? o->member_id : a->member_id);
        bind_text(st, 3, a->event_key);
        bind_text(st, 4, o->payload_json);
        bind_ms(st, 5, now);
        if ((err = st_exec(s->wdb, st)) != 0)
            return err;
    }
    return w_inbox_done(s, a->inbox_id, now);
}

/* Real ids of the rows inserted so far, for entries that draw on a lot of the same apply. */
static int w_apply(struct sq_store *s, struct op *op)
{
    size_t n = op->u.apply.n_ledger;
    int64_t *ids = calloc(n > 0 ? n : 1, sizeof(*ids));
    if (ids == NULL)
        return -ENOMEM;
    int err = w_apply_ids(s, op, ids);
    free(ids);
    return err;
}

static int w_op(struct sq_store *s, struct op *op)
{
    switch (op->kind) {
    case OP_APPEND:
        return w_append(s, op);
    case OP_INBOX_FINISH:
        return w_finish(s, op, false);
    case OP_OUTBOX_FINISH:
        return w_finish(s, op, true);
    case OP_TENANT:
        return w_tenant(s, op->u.kv.tenant, op->now_ms);
    case OP_KV_PUT:
        return w_kv(s, op);
    case OP_DEAD:
        return w_dead(s, op);
    case OP_APPLY:
        return w_apply(s, op);
    case OP_OUTBOX_SENDING:
        return w_outbox_sending(s, op);
    }
    return -EINVAL;
}

/*
 * One transaction for the whole batch; each op inside its own savepoint so that an op refused by
 * the database (constraint, bad lot) is undone alone.  If SQLite itself rolled the transaction
 * back (I/O error, disk full) or COMMIT fails, nothing of the batch is stored.
 */
/* Whether the effect of @p op is seen outside the process once its callback runs. */
static bool needs_fsync(const struct op *op)
{
    return op->kind != OP_APPLY && op->kind != OP_INBOX_FINISH && op->kind != OP_OUTBOX_FINISH;
}

static void batch_run(struct sq_store *s)
{
    bool full = false;
    for (struct op *op = s->batch; op != NULL && !full; op = op->next)
        full = needs_fsync(op);
    s->batch_committed = false;
    if (full != s->synced_full) {
        if (exec_sql(s->wdb, full ? "PRAGMA synchronous = FULL" : "PRAGMA synchronous = NORMAL") !=
            0)
            return; /* nothing of the batch is stored: its callbacks get LOYD_EDB */
        s->synced_full = full;
    }
    if (wrun(s, W_BEGIN) != 0)
        return;
    for (struct op *op = s->batch; op != NULL; op = op->next) {
        if (wrun(s, W_SAVEPOINT) != 0)
            goto abort;
        op->err = w_op(s, op);
        if (sqlite3_get_autocommit(s->wdb))
            return; /* the whole transaction is gone already */
        if (op->err != 0 && op->err != LOYD_EDUP && wrun(s, W_ROLLBACK_TO) != 0)
            goto abort;
        if (wrun(s, W_RELEASE) != 0)
            goto abort;
    }
    if (wrun(s, W_COMMIT) == 0) {
        s->batch_committed = true;
        return;
    }
abort:
    if (!sqlite3_get_autocommit(s->wdb))
        (void)wrun(s, W_ROLLBACK);
}

static void finalize_all(sqlite3_stmt **st, size_t n)
{
    for (size_t i = 0; i < n; i++) {
        sqlite3_finalize(st[i]);
        st[i] = NULL;
    }
}

static void conn_close(sqlite3 **db)
{
    if (*db == NULL)
        return;
    int rc = sqlite3_close(*db);
    if (rc != SQLITE_OK)
        loyd_log_err(DB, "close: %s", sqlite3_errstr(rc));
    *db = NULL;
}

static void writer_work(uv_work_t *w)
{
    struct sq_store *s = LOYD_CONTAINER_OF(w, struct sq_store, work);

    if (s->job == JOB_CLOSE) {
        /* The last connection to close checkpoints the WAL: blocking I/O, so here. */
        finalize_all(s->wst, W_COUNT);
        conn_close(&s->wdb);
        return;
    }
    batch_run(s);
}

static void writer_kick(struct sq_store *s);

static void writer_done(uv_work_t *w, int status)
{
    struct sq_store *s = LOYD_CONTAINER_OF(w, struct sq_store, work);

    LOYD_REQUIRE(status == 0); /* we never uv_cancel() the writer */
    if (s->job == JOB_CLOSE) {
        s->in_flight = false;
        s->state = SQ_CLOSED;
        loyd_log_info(DB, "store %s closed", s->path);
        if (s->close_cb != NULL)
            s->close_cb(s->close_arg);
        return;
    }

    struct op *batch = s->batch;
    s->batch = NULL;
    s->stats.batches++;
    if (s->batch_committed)
        s->stats.commits++;
    s->in_callbacks = true;
    while (batch != NULL) {
        struct op *op = batch;
        batch = op->next;
        if (!s->batch_committed && (op->err == 0 || op->err == LOYD_EDUP))
            op->err = LOYD_EDB;
        s->stats.ops++;
        if (op->err != 0 && op->err != LOYD_EDUP)
            s->stats.ops_failed++;
        op_complete(op);
        op_free(op);
    }
    s->in_callbacks = false;
    s->in_flight = false;
    writer_kick(s);
}

/* Starts the next job if none is running: the next batch, or the close once drained. */
static void writer_kick(struct sq_store *s)
{
    if (s->in_flight || s->state == SQ_CLOSED)
        return;
    if (s->q_head != NULL) {
        struct op *last = NULL, *op = s->q_head;
        size_t n = 0, bytes = 0;
        while (op != NULL && n < BATCH_MAX_OPS &&
               (n == 0 || bytes + op->bytes <= BATCH_MAX_BYTES)) {
            bytes += op->bytes;
            n++;
            last = op;
            op = op->next;
        }
        s->batch = s->q_head;
        last->next = NULL;
        s->q_head = op;
        if (op == NULL)
            s->q_tail = &s->q_head;
        s->q_len -= n;
        if (n > s->stats.max_batch)
            s->stats.max_batch = n;
        s->job = JOB_BATCH;
    } else if (s->state == SQ_CLOSING) {
        /* Drained: the reader goes first so the writer, closing last, checkpoints the WAL. */
        finalize_all(s->rst, R_COUNT);
        conn_close(&s->rdb);
        s->job = JOB_CLOSE;
    } else {
        return;
    }
    s->in_flight = true;
    int rc = uv_queue_work(s->loop, &s->work, writer_work, writer_done);
    LOYD_REQUIRE(rc == 0); /* fails only for a NULL work callback */
}

static int enqueue(struct sq_store *s, struct op *op)
{
    if (s->state != SQ_OPEN) {
        op_free(op);
        return -ECANCELED;
    }
    *s->q_tail = op;
    s->q_tail = &op->next;
    s->q_len++;
    writer_kick(s);
    return 0;
}

static void sq_close(struct loyd_store *base, void (*cb)(void *arg), void *arg)
{
    struct sq_store *s = SQ(base);

    LOYD_REQUIRE(s->state == SQ_OPEN); /* closing twice is a bug */
    s->state = SQ_CLOSING;
    s->close_cb = cb;
    s->close_arg = arg;
    writer_kick(s);
}

static void sq_destroy(struct loyd_store *base)
{
    struct sq_store *s = SQ(base);

    if (s == NULL)
        return;
    /* The writer job still owns wdb and the batch; only close() can wait for it. */
    LOYD_REQUIRE(!s->in_flight);
    LOYD_REQUIRE(!s->in_callbacks);
    if (s->state == SQ_OPEN)
        s->state = SQ_CLOSING; /* callbacks below that submit get -ECANCELED */
    while (s->q_head != NULL) {
        struct op *op = s->q_head;
        s->q_head = op->next;
        op->err = -ECANCELED;
        op_complete(op);
        op_free(op);
    }
    finalize_all(s->rst, R_COUNT);
    finalize_all(s->wst, W_COUNT);
    conn_close(&s->rdb);
    conn_close(&s->wdb);
    free(s->path);
    free(s);
}

static void sq_stats(struct loyd_store *base, struct loyd_store_stats *out)
{
    struct sq_store *s = SQ(base);
    *out = s->stats;
    out->queued = s->q_len;
}

/* ---- Submitting writes (loop thread) ------------------------------------------------------- */

static int sq_inbox_append(struct loyd_store *base, const struct loyd_inbox_row *row,
                           loyd_store_id_cb cb, void *arg)
{
    struct op *op = op_new(OP_APPEND);

    if (row->body_len > 0) {
        op->body = malloc(row->body_len);
        if (op->body == NULL) {
            op_free(op);
            return -ENOMEM;
        }
        memcpy(op->body, row->body, row->body_len);
        op->bytes += row->body_len;
    }
    op->id_cb = cb;
    op->arg = arg;
    op->u.append.tenant = op_str(op, row->tenant);
    op->u.append.idem_key = op_str(op, row->idem_key);
    op->u.append.content_type = op_str(op, row->content_type);
    op->u.append.notices = op_str(op, row->notices_json);
    op->u.append.body_len = row->body_len;
    op->u.append.received_ms = row->received_ms != 0 ? row->received_ms : op->now_ms;
    return enqueue(SQ(base), op);
}

static int finish_submit(struct sq_store *s, enum op_kind kind, int64_t id, const char *status,
                         uint64_t retry_at_ms, const char *error, loyd_store_cb cb, void *arg)
{
    struct op *op = op_new(kind);
    op->cb = cb;
    op->arg = arg;
    op->u.finish.id = id;
    op->u.finish.status = op_str(op, status);
    op->u.finish.error = op_str(op, error);
    op->u.finish.retry_at_ms = retry_at_ms;
    return enqueue(s, op);
}

static int sq_inbox_finish(struct loyd_store *base, int64_t id, const char *status,
                           const char *error, loyd_store_cb cb, void *arg)
{
    return finish_submit(SQ(base), OP_INBOX_FINISH, id, status, 0, error, cb, arg);
}

static int sq_outbox_finish(struct loyd_store *base, int64_t id, const char *status,
                            uint64_t retry_at_ms, const char *error, loyd_store_cb cb, void *arg)
{
    return finish_submit(SQ(base), OP_OUTBOX_FINISH, id, status, retry_at_ms, error, cb, arg);
}

static int sq_outbox_sending(struct loyd_store *base, const int64_t *ids, size_t n,
                             loyd_store_cb cb, void *arg)
{
    struct op *op = op_new(OP_OUTBOX_SENDING);
    int64_t *copy = op_alloc(op, (n > 0 ? n : 1) * sizeof(*copy));

    op->cb = cb;
    op->arg = arg;
    if (n > 0)
        memcpy(copy, ids, n * sizeof(*copy));
    op->u.sending.ids = copy;
    op->u.sending.n = n;
    return enqueue(SQ(base), op);
}

static int sq_tenant_ensure(struct loyd_store *base, const char *tenant, loyd_store_cb cb,
                            void *arg)
{
    struct op *op = op_new(OP_TENANT);
    op->cb = cb;
    op->arg = arg;
    op->u.kv.tenant = op_str(op, tenant);
    return enqueue(SQ(base), op);
}

static int sq_kv_put(struct loyd_store *base, const char *tenant, const char *key,
                     const char *value, loyd_store_cb cb, void *arg)
{
    struct op *op = op_new(OP_KV_PUT);
    op->cb = cb;
    op->arg = arg;
    op->u.kv.tenant = op_str(op, tenant);
    op->u.kv.key = op_str(op, key);
    op->u.kv.value = op_str(op, value);
    return enqueue(SQ(base), op);
}

static int sq_dead_letter(struct loyd_store *base, const char *tenant, const char *kind,
                          const char *ref, const char *payload, const char *error, loyd_store_cb cb,
                          void *arg)
{
    struct op *op = op_new(OP_DEAD);
    op->cb = cb;
    op->arg = arg;
    op->u.dead.tenant = op_str(op, tenant);
    op->u.dead.kind = op_str(op, kind);
    op->u.dead.ref = op_str(op, ref);
    op->u.dead.payload = op_str(op, payload);
    op->u.dead.error = op_str(op, error);
    return enqueue(SQ(base), op);
}

static int sq_apply(struct loyd_store *base, const struct loyd_apply *src, loyd_store_cb cb,
                    void *arg)
{
    struct op *op = op_new(OP_APPLY);
    struct loyd_apply *a = &op->u.apply;

    op->cb = cb;
    op->arg = arg;
    *a = *src;
    a->tenant = op_str(op, src->tenant);
    a->event_key = op_str(op, src->event_key);
    a->event_type = op_str(op, src->event_type);
    a->event_json = op_str(op, src->event_json);
    a->member_id = op_str(op, src->member_id);
    a->member_json = op_str(op, src->member_json);
    a->trace_json = op_str(op, src->trace_json);
    a->pack_version = op_str(op, src->pack_version);
    a->state_key = op_str(op, src->state_key);
    a->state_json = op_str(op, src->state_json);
    if (a->applied_ms == 0)
        a->applied_ms = op->now_ms;
    a->ledger = NULL;
    a->outbox = NULL;
    if (src->n_ledger > 0) {
        struct loyd_ledger_entry *l = op_alloc(op, src->n_ledger * sizeof(*l));
        for (size_t i = 0; i < src->n_ledger; i++) {
            l[i] = src->ledger[i];
            l[i].member_id = op_str(op, src->ledger[i].member_id);
            l[i].kind = op_str(op, src->ledger[i].kind);
            l[i].reason = op_str(op, src->ledger[i].reason);
            l[i].ref = op_str(op, src->ledger[i].ref);
            l[i].campaign = op_str(op, src->ledger[i].campaign);
        }
        a->ledger = l;
    }
    if (src->n_outbox > 0) {
        struct loyd_outbox_item *o = op_alloc(op, src->n_outbox * sizeof(*o));
        for (size_t i = 0; i < src->n_outbox; i++) {
            o[i].member_id = op_str(op, src->outbox[i].member_id);
            o[i].payload_json = op_str(op, src->outbox[i].payload_json);
        }
        a->outbox = o;
    }
    return enqueue(SQ(base), op);
}

/* ---- Reads (loop thread, reader connection) ------------------------------------------------ */

enum col_type { C_INT, C_TEXT, C_JSON, C_BYTES };
struct col {
    const char *name;
    enum col_type type;
};

static const struct col inbox_cols[] = {
    {"id", C_INT},      {"tenant", C_TEXT},  {"idem_key", C_TEXT},   {"content_type", C_TEXT},
    {"body", C_BYTES},  {"notices", C_JSON}, {"received_ms", C_INT}, {"attempts", C_INT},
    {"status", C_TEXT}, {"error", C_TEXT},
};
#define INBOX_PENDING_COLS 8
static const struct col ledger_cols[] = {
    {"id", C_INT},     {"member_id", C_TEXT}, {"event_key", C_TEXT},    {"kind", C_TEXT},
    {"points", C_INT}, {"reason", C_TEXT},    {"expires_ms", C_INT},    {"lot_id", C_INT},
    {"ref", C_TEXT},   {"created_ms", C_INT}, {"pack_version", C_TEXT}, {"campaign", C_TEXT},
    {"remaining", C_INT},
};
#define LEDGER_ROW_COLS 12
static const struct col member_cols[] = {
    {"tenant", C_TEXT},
    {"member_id", C_TEXT},
    {"profile", C_JSON},
    {"updated_ms", C_INT},
};
static const struct col event_cols[] = {
    {"tenant", C_TEXT}, {"event_key", C_TEXT}, {"type", C_TEXT},         {"inbox_id", C_INT},
    {"event", C_JSON},  {"trace", C_JSON},     {"pack_version", C_TEXT}, {"applied_ms", C_INT},
};
static const struct col outbox_cols[] = {
    {"id", C_INT},       {"tenant", C_TEXT},  {"member_id", C_TEXT},      {"event_key", C_TEXT},
    {"payload", C_JSON}, {"attempts", C_INT}, {"next_attempt_ms", C_INT}, {"created_ms", C_INT},
    {"sending", C_INT},
};
static const struct col member_list_cols[] = {
    {"member_id", C_TEXT},
    {"profile", C_JSON},
};

static json_t *col_value(sqlite3_stmt *st, int i, enum col_type type)
{
    if (sqlite3_column_type(st, i) == SQLITE_NULL)
        return json_null();
    if (type == C_INT)
        return json_integer(sqlite3_column_int64(st, i));

    const char *p =
        type == C_BYTES ? sqlite3_column_blob(st, i) : (const char *)sqlite3_column_text(st, i);
    size_t n = (size_t)sqlite3_column_bytes(st, i);
    if (p == NULL)
        p = "";
    if (type == C_JSON) {
        /* Stored by us after json_valid(); fall through to a string if it ever does not parse. */
        json_t *v = json_loadb(p, n, JSON_DECODE_ANY, NULL);
        if (v != NULL)
            return v;
    }
    json_t *v = type == C_BYTES ? NULL : json_stringn(p, n);
    /* Exact bytes, whatever they are: the body of a webhook is not ours to judge here. */
    return v != NULL ? v : json_stringn_nocheck(p, n);
}

static json_t *row_object(sqlite3_stmt *st, const struct col *cols, size_t n)
{
    json_t *o = json_object();
    if (o == NULL)
        return NULL;
    for (size_t i = 0; i < n; i++) {
        if (json_object_set_new(o, cols[i].name, col_value(st, (int)i, cols[i].type)) != 0) {
            json_decref(o);
            return NULL;
        }
    }
    return o;
}

/* Steps @st to the end, one object per row, into a new array. */
static int read_rows(struct sq_store *s, sqlite3_stmt *st, const struct col *cols, size_t n,
                     json_t **out)
{
    json_t *arr = json_array();
    int rc, err = 0;

    if (arr == NULL) {
        st_done(st);
        return -ENOMEM;
    }
    while ((rc = sqlite3_step(st)) == SQLITE_ROW) {
        json_t *o = row_object(st, cols, n);
        if (o == NULL || json_array_append_new(arr, o) != 0) {
            err = -ENOMEM;
            break;
        }
    }
    if (err == 0 && rc != SQLITE_DONE)
        err = db_error(s->rdb, rc, sqlite3_sql(st));
    st_done(st);
    if (err != 0) {
        json_decref(arr);
        return err;
    }
    *out = arr;
    return 0;
}

/* The first row as an object; -ENOENT when there is none. */
static int read_one(struct sq_store *s, sqlite3_stmt *st, const struct col *cols, size_t n,
                    json_t **out)
{
    int rc = sqlite3_step(st), err = 0;
    if (rc == SQLITE_ROW) {
        *out = row_object(st, cols, n);
        if (*out == NULL)
            err = -ENOMEM;
    } else {
        err = rc == SQLITE_DONE ? -ENOENT : db_error(s->rdb, rc, sqlite3_sql(st));
    }
    st_done(st);
    return err;
}

/* Reads are served until the flush of close() is over. */
static int reader(struct sq_store *s, enum rstmt r, sqlite3_stmt **st)
{
    if (s->rdb == NULL)
        return -ECANCELED;
    return rprep(s, r, st);
}

static int64_t clamp_max(size_t max)
{
    return (int64_t)(max > READ_MAX_ROWS ? READ_MAX_ROWS : max);
}

static int sq_inbox_pending(struct loyd_store *base, const char *tenant, size_t max, json_t **out)
{
    struct sq_store *s = SQ(base);
    sqlite3_stmt *st = NULL;
    int err = reader(s, tenant != NULL ? R_INBOX_PENDING_T : R_INBOX_PENDING, &st);
    if (err != 0)
        return err;
    bind_i64(st, 1, clamp_max(max));
    if (tenant != NULL)
        bind_text(st, 2, tenant);
    return read_rows(s, st, inbox_cols, INBOX_PENDING_COLS, out);
}

static int sq_inbox_get(struct loyd_store *base, int64_t id, json_t **out)
{
    struct sq_store *s = SQ(base);
    sqlite3_stmt *st = NULL;
    int err = reader(s, R_INBOX_GET, &st);
    if (err != 0)
        return err;
    bind_i64(st, 1, id);
    return read_one(s, st, inbox_cols, LOYD_ARRAY_SIZE(inbox_cols), out);
}

static int sq_kv_get(struct loyd_store *base, const char *tenant, const char *key, char **out)
{
    struct sq_store *s = SQ(base);
    sqlite3_stmt *st = NULL;
    int err = reader(s, R_KV_GET, &st);
    if (err != 0)
        return err;
    bind_text(st, 1, tenant);
    bind_text(st, 2, key);
    int rc = sqlite3_step(st);
    if (rc == SQLITE_ROW) {
        const char *v = (const char *)sqlite3_column_text(st, 0);
        *out = loyd_xstrdup(v != NULL ? v : "");
    } else if (rc == SQLITE_DONE) {
        *out = NULL;
    } else {
        err = db_error(s->rdb, rc, sqlite3_sql(st));
    }
    st_done(st);
    return err;
}

static int sq_member_get(struct loyd_store *base, const char *tenant, const char *member_id,
                         json_t **out)
{
    struct sq_store *s = SQ(base);
    sqlite3_stmt *st = NULL;
    int err = reader(s, R_MEMBER, &st);
    if (err != 0)
        return err;
    bind_text(st, 1, tenant);
    bind_text(st, 2, member_id);
    return read_one(s, st, member_cols, LOYD_ARRAY_SIZE(member_cols), out);
}

static int ledger_read(struct sq_store *s, enum rstmt r, const char *tenant, const char *arg,
                       size_t ncols, json_t **out)
{
    sqlite3_stmt *st = NULL;
    int err = reader(s, r, &st);
    if (err != 0)
        return err;
    bind_text(st, 1, tenant);
    bind_text(st, 2, arg);
    return read_rows(s, st, ledger_cols, ncols, out);
}

static int sq_ledger_list(struct loyd_store *base, const char *tenant, const char *member_id,
                          json_t **out)
{
    return ledger_read(SQ(base), R_LEDGER_LIST, tenant, member_id, LEDGER_ROW_COLS, out);
}

static int sq_ledger_by_ref(struct loyd_store *base, const char *tenant, const char *ref,
                            json_t **out)
{
    return ledger_read(SQ(base), R_LEDGER_REF, tenant, ref, LEDGER_ROW_COLS, out);
}

static int sq_lots_open(struct loyd_store *base, const char *tenant, const char *member_id,
                        json_t **out)
{
    return ledger_read(SQ(base), R_LOTS, tenant, member_id, LOYD_ARRAY_SIZE(ledger_cols), out);
}

static int sq_balance(struct loyd_store *base, const char *tenant, const char *member_id,
                      int64_t *out)
{
    struct sq_store *s = SQ(base);
    sqlite3_stmt *st = NULL;
    int err = reader(s, R_BALANCE, &st);
    if (err != 0)
        return err;
    bind_text(st, 1, tenant);
    bind_text(st, 2, member_id);
    /* SUM() of integers raises "integer overflow" instead of wrapping: LOYD_EDB, never a lie. */
    err = st_int(s->rdb, st, out);
    return err == -ENOENT ? LOYD_EDB : err;
}

static int sq_campaign_totals(struct loyd_store *base, const char *tenant, json_t **out)
{
    struct sq_store *s = SQ(base);
    sqlite3_stmt *st = NULL;
    json_t *totals;
    int rc, err = reader(s, R_CAMPAIGNS, &st);

    if (err != 0)
        return err;
    bind_text(st, 1, tenant);
    if ((totals = json_object()) == NULL) {
        st_done(st);
        return -ENOMEM;
    }
    while ((rc = sqlite3_step(st)) == SQLITE_ROW) {
        const char *name = (const char *)sqlite3_column_text(st, 0);
        if (name != NULL)
            json_object_set_new(totals, name, json_integer(sqlite3_column_int64(st, 1)));
    }
    if (rc != SQLITE_DONE)
        err = db_error(s->rdb, rc, sqlite3_sql(st));
    st_done(st);
    if (err != 0) {
        json_decref(totals);
        return err;
    }
    *out = totals;
    return 0;
}

static int sq_event_get(struct loyd_store *base, const char *tenant, const char *event_key,
                        json_t **out)
{
    struct sq_store *s = SQ(base);
    sqlite3_stmt *st = NULL;
    int err = reader(s, R_EVENT, &st);
    if (err != 0)
        return err;
    bind_text(st, 1, tenant);
    bind_text(st, 2, event_key);
    return read_one(s, st, event_cols, LOYD_ARRAY_SIZE(event_cols), out);
}

static int sq_outbox_pending(struct loyd_store *base, const char *tenant, uint64_t now_ms,
                             size_t max, json_t **out)
{
    struct sq_store *s = SQ(base);
    sqlite3_stmt *st = NULL;
    int err = reader(s, tenant != NULL ? R_OUTBOX_PENDING_T : R_OUTBOX_PENDING, &st);
    if (err != 0)
        return err;
    bind_ms(st, 1, now_ms);
    bind_i64(st, 2, clamp_max(max));
    if (tenant != NULL)
        bind_text(st, 3, tenant);
    return read_rows(s, st, outbox_cols, LOYD_ARRAY_SIZE(outbox_cols), out);
}

static int sq_members_list(struct loyd_store *base, const char *tenant, const char *after,
                           size_t max, json_t **out)
{
    struct sq_store *s = SQ(base);
    sqlite3_stmt *st = NULL;
    int err = reader(s, R_MEMBERS, &st);
    if (err != 0)
        return err;
    bind_text(st, 1, tenant);
    bind_text(st, 2, after != NULL ? after : "");
    bind_i64(st, 3, clamp_max(max));
    return read_rows(s, st, member_list_cols, LOYD_ARRAY_SIZE(member_list_cols), out);
}

static int sq_depths(struct loyd_store *base, int64_t *inbox_pending, int64_t *outbox_pending,
                     int64_t *dead_letters)
{
    struct sq_store *s = SQ(base);
    sqlite3_stmt *st = NULL;
    int err = reader(s, R_DEPTHS, &st);
    if (err != 0)
        return err;
    int rc = sqlite3_step(st);
    if (rc == SQLITE_ROW) {
        *inbox_pending = sqlite3_column_int64(st, 0);
        *outbox_pending = sqlite3_column_int64(st, 1);
        *dead_letters = sqlite3_column_int64(st, 2);
    } else {
        err = db_error(s->rdb, rc, sqlite3_sql(st));
    }
    st_done(st);
    return err;
}

/* ---- Read-only access for the command line (see the end of store.h) ------------------------- */

/* An operator's command may wait a while for a peer's WAL recovery; it is not the loop thread. */
#define READONLY_BUSY_MS 5000

/* The schema version this loyd writes: the last "-- migration N" section of @schema. */
static int schema_version_of(const char *schema)
{
    int n = 0, v;
    for (const char *p = schema; *p != '\0';) {
        const char *eol = strchr(p, '\n');
        size_t len = eol != NULL ? (size_t)(eol - p) : strlen(p);
        if (parse_marker(p, len, &v))
            n = v;
        p = eol != NULL ? eol + 1 : p + len;
    }
    return n;
}

static int sq_open_readonly(const char *path, struct loyd_store **out)
{
    struct sq_store *s;
    char buf[32];
    int err, rc, flags = SQLITE_OPEN_READONLY | SQLITE_OPEN_NOMUTEX;
#ifdef SQLITE_OPEN_EXRESCODE
    flags |= SQLITE_OPEN_EXRESCODE;
#endif

    *out = NULL;
    if (path[0] == '\0' || strcmp(path, ":memory:") == 0)
        return -EINVAL;
    /* SQLite would only say "unable to open": the caller wants to tell a missing file apart. */
    if (access(path, F_OK) != 0)
        return -errno;
    s = loyd_xcalloc(1, sizeof(*s));
    s->base.be = &loyd_store_backend_sqlite;
    s->path = loyd_xstrdup(path);
    s->q_tail = &s->q_head;
    s->state = SQ_CLOSED; /* no writer: every submit is refused (enqueue) */

    /* Read-only, not read-write + query_only alone: this process can change nothing in the
     * file, whatever is called on it.  WAL readers still share the -shm index with the daemon. */
    rc = sqlite3_open_v2(path, &s->rdb, flags, NULL);
    if (rc != SQLITE_OK) {
        loyd_log_err(DB, "open %s: %s", path,
                     s->rdb != NULL ? sqlite3_errmsg(s->rdb) : sqlite3_errstr(rc));
        err = LOYD_EDB;
        goto fail;
    }
    sqlite3_extended_result_codes(s->rdb, 1);
    sqlite3_busy_timeout(s->rdb, READONLY_BUSY_MS);
    sqlite3_db_config(s->rdb, SQLITE_DBCONFIG_DEFENSIVE, 1, NULL);
    if ((err = exec_sql(s->rdb, "PRAGMA query_only = ON")) != 0)
        goto fail;
    if ((err = pragma_text(s->rdb, "PRAGMA user_version", buf, sizeof(buf))) != 0)
        goto fail;
    long have = strtol(buf, NULL, 10);
    int want = schema_version_of(loyd_db_schema_sql);
    if (have != want) {
        /* Reading it anyway could show a half-migrated picture or fail on a missing column. */
        if (have == 0)
            loyd_log_err(DB, "%s: not a loyd store (no schema version)", path);
        else if (have < want)
            loyd_log_err(DB,
                         "%s: schema version %ld is older than this loyd's (%d); run this "
                         "loyd's `loyd serve` once to migrate it",
                         path, have, want);
        else
            loyd_log_err(DB,
                         "%s: schema version %ld is newer than this loyd knows (%d); use the "
                         "loyd that wrote it",
                         path, have, want);
        err = LOYD_EDB;
        goto fail;
    }
    *out = &s->base;
    return 0;
fail:
    sq_destroy(&s->base);
    return err;
}

/* The smallest string greater than every string starting with @prefix, or NULL (none). */
static char *prefix_end(const char *prefix)
{
    size_t n = strlen(prefix);
    while (n > 0 && (unsigned char)prefix[n - 1] == 0xff)
        n--;
    if (n == 0)
        return NULL;
    char *end = loyd_xstrndup(prefix, n);
    end[n - 1] = (char)((unsigned char)end[n - 1] + 1);
    return end;
}

static int sq_kv_scan(struct loyd_store *base, const char *tenant, const char *prefix,
                      const char *after_key, size_t max, json_t **out)
{
    static const struct col cols[] = {{"key", C_TEXT}, {"value", C_TEXT}};
    static const char sql[] = "SELECT key, value FROM kv WHERE tenant = ?1 AND key >= ?2 "
                              "AND key > ?3 AND (?4 IS NULL OR key < ?4) ORDER BY key LIMIT ?5";
    struct sq_store *s = SQ(base);
    sqlite3_stmt *st = NULL;
    char *end;
    int rc;

    if (s->rdb == NULL)
        return -ECANCELED;
    /* Not cached: the command line runs it a few times per process. */
    if ((rc = sqlite3_prepare_v2(s->rdb, sql, -1, &st, NULL)) != SQLITE_OK)
        return db_error(s->rdb, rc, sql);
    end = prefix_end(prefix);
    bind_text(st, 1, tenant);
    bind_text(st, 2, prefix);
    bind_text(st, 3, after_key != NULL ? after_key : "");
    bind_text(st, 4, end);
    bind_i64(st, 5, clamp_max(max));
    int err = read_rows(s, st, cols, LOYD_ARRAY_SIZE(cols), out);
    sqlite3_finalize(st);
    free(end);
    return err;
}

static int sq_ledger_query(struct loyd_store *base, const char *tenant,
                           const struct loyd_ledger_query *q, size_t max, json_t **out)
{
    struct sq_store *s = SQ(base);
    sqlite3_stmt *st = NULL;
    int rc;

    if (s->rdb == NULL)
        return -ECANCELED;
    /* Four shapes, so that a member's rows come from the (tenant, member_id, id) index. */
    char *sql = loyd_xasprintf("SELECT " LEDGER_COLS " FROM ledger WHERE tenant = ?1 "
                               "AND created_ms >= ?2 AND id > ?3 AND id < ?4%s "
                               "ORDER BY id%s LIMIT ?6",
                               q->member_id != NULL ? " AND member_id = ?5" : "",
                               q->newest_first ? " DESC" : "");
    if ((rc = sqlite3_prepare_v2(s->rdb, sql, -1, &st, NULL)) != SQLITE_OK) {
        int err = db_error(s->rdb, rc, sql);
        free(sql);
        return err;
    }
    free(sql);
    bind_text(st, 1, tenant);
    bind_ms(st, 2, q->since_ms);
    bind_i64(st, 3, q->after_id > 0 ? q->after_id : 0);
    bind_i64(st, 4, q->before_id > 0 ? q->before_id : INT64_MAX);
    if (q->member_id != NULL)
        bind_text(st, 5, q->member_id);
    bind_i64(st, 6, clamp_max(max));
    int err = read_rows(s, st, ledger_cols, LEDGER_ROW_COLS, out);
    sqlite3_finalize(st);
    return err;
}

const struct loyd_store_backend loyd_store_backend_sqlite = {
    .name = "sqlite",
    .open = sq_open,
    .close = sq_close,
    .destroy = sq_destroy,
    .stats = sq_stats,
    .inbox_append = sq_inbox_append,
    .inbox_pending = sq_inbox_pending,
    .inbox_get = sq_inbox_get,
    .inbox_finish = sq_inbox_finish,
    .tenant_ensure = sq_tenant_ensure,
    .kv_get = sq_kv_get,
    .kv_put = sq_kv_put,
    .dead_letter = sq_dead_letter,
    .apply = sq_apply,
    .member_get = sq_member_get,
    .ledger_list = sq_ledger_list,
    .ledger_by_ref = sq_ledger_by_ref,
    .lots_open = sq_lots_open,
    .balance = sq_balance,
    .campaign_totals = sq_campaign_totals,
    .event_get = sq_event_get,
    .outbox_pending = sq_outbox_pending,
    .outbox_sending = sq_outbox_sending,
    .members_list = sq_members_list,
    .outbox_finish = sq_outbox_finish,
    .depths = sq_depths,
    .open_readonly = sq_open_readonly,
    .kv_scan = sq_kv_scan,
    .ledger_query = sq_ledger_query,
};

/* ---- Front end: backend selection and argument checks (backend-neutral) --------------------- */

static const struct {
    const char *prefix;
    const struct loyd_store_backend *be; /* NULL: known scheme, backend not built */
} store_schemes[] = {
    {"sqlite://", &loyd_store_backend_sqlite},
    {"sqlite:", &loyd_store_backend_sqlite},
    {"postgresql://", NULL},
    {"postgres://", NULL},
};

int loyd_store_open(uv_loop_t *loop, const char *url, struct loyd_store **out)
{
    if (out == NULL)
        return -EINVAL;
    *out = NULL;
    if (loop == NULL || url == NULL)
        return -EINVAL;
    for (size_t i = 0; i < LOYD_ARRAY_SIZE(store_schemes); i++) {
        size_t n = strlen(store_schemes[i].prefix);
        if (strncmp(url, store_schemes[i].prefix, n) != 0)
            continue;
        if (store_schemes[i].be == NULL) {
            /* The URL may carry a password: name only the scheme. */
            loyd_log_err(DB,
                         "store URL %.*s...: the PostgreSQL backend is not available in this "
                         "build; use sqlite:PATH",
                         (int)n, url);
            return -ENOTSUP;
        }
        return store_schemes[i].be->open(loop, url + n, out);
    }
    const char *sep = strstr(url, "://");
    if (sep != NULL) {
        loyd_log_err(DB, "store URL: unknown scheme \"%.*s\" (sqlite:PATH or a file path)",
                     (int)(sep - url > 32 ? 32 : sep - url), url);
        return -EINVAL;
    }
    return loyd_store_backend_sqlite.open(loop, url, out);
}

void loyd_store_close(struct loyd_store *s, void (*cb)(void *arg), void *arg)
{
    s->be->close(s, cb, arg);
}

void loyd_store_destroy(struct loyd_store *s)
{
    if (s != NULL)
        s->be->destroy(s);
}

void loyd_store_stats(struct loyd_store *s, struct loyd_store_stats *out)
{
    s->be->stats(s, out);
}

static bool nonempty(const char *v)
{
    return v != NULL && v[0] != '\0';
}

static bool one_of(const char *v, const char *const *set)
{
    for (; v != NULL && *set != NULL; set++)
        if (strcmp(v, *set) == 0)
            return true;
    return false;
}

int loyd_store_inbox_append(struct loyd_store *s, const struct loyd_inbox_row *row,
                            loyd_store_id_cb cb, void *arg)
{
    if (row == NULL || !nonempty(row->tenant) || !nonempty(row->idem_key) ||
        (row->body == NULL && row->body_len > 0))
        return -EINVAL;
    return s->be->inbox_append(s, row, cb, arg);
}

int loyd_store_inbox_pending(struct loyd_store *s, const char *tenant, size_t max, json_t **out)
{
    return s->be->inbox_pending(s, tenant, max, out);
}

int loyd_store_inbox_get(struct loyd_store *s, int64_t id, json_t **out)
{
    return s->be->inbox_get(s, id, out);
}

int loyd_store_inbox_finish(struct loyd_store *s, int64_t id, const char *status, const char *error,
                            loyd_store_cb cb, void *arg)
{
    static const char *const ok[] = {"done", "dead", "retry", NULL};
    if (!one_of(status, ok))
        return -EINVAL;
    return s->be->inbox_finish(s, id, status, error, cb, arg);
}

int loyd_store_tenant_ensure(struct loyd_store *s, const char *tenant, loyd_store_cb cb, void *arg)
{
    if (!nonempty(tenant))
        return -EINVAL;
    return s->be->tenant_ensure(s, tenant, cb, arg);
}

int loyd_store_kv_get(struct loyd_store *s, const char *tenant, const char *key, char **out)
{
    *out = NULL;
    if (!nonempty(tenant) || !nonempty(key))
        return -EINVAL;
    return s->be->kv_get(s, tenant, key, out);
}

int loyd_store_kv_put(struct loyd_store *s, const char *tenant, const char *key, const char *value,
                      loyd_store_cb cb, void *arg)
{
    if (!nonempty(tenant) || !nonempty(key))
        return -EINVAL;
    return s->be->kv_put(s, tenant, key, value, cb, arg);
}

int loyd_store_dead_letter(struct loyd_store *s, const char *tenant, const char *kind,
                           const char *ref, const char *payload, const char *error,
                           loyd_store_cb cb, void *arg)
{
    if (!nonempty(kind) || (tenant != NULL && tenant[0] == '\0'))
        return -EINVAL;
    return s->be->dead_letter(s, tenant, kind, ref, payload, error, cb, arg);
}

/* The kind, sign and lot rules of ledger rows (one definition, ledger.h) and a member, checked
 * before anything is queued.  @return NULL or what is wrong. */
static const char *ledger_entry_refusal(const struct loyd_apply *a,
                                        const struct loyd_ledger_entry *e)
{
    if (!nonempty(e->member_id) && !nonempty(a->member_id))
        return "it names no member (neither the row nor the apply)";
    return loyd_ledger_entry_check(e->kind, e->points, e->lot_id);
}

int loyd_store_apply(struct loyd_store *s, const struct loyd_apply *a, loyd_store_cb cb, void *arg)
{
    if (a == NULL || !nonempty(a->tenant) || !nonempty(a->event_key) || !nonempty(a->event_type) ||
        a->inbox_id < 0 || a->n_ledger > APPLY_MAX_ROWS || a->n_outbox > APPLY_MAX_ROWS ||
        (a->n_ledger > 0 && a->ledger == NULL) || (a->n_outbox > 0 && a->outbox == NULL) ||
        (a->member_id != NULL && a->member_id[0] == '\0'))
        return -EINVAL;
    for (size_t i = 0; i < a->n_ledger; i++) {
        const struct loyd_ledger_entry *e = &a->ledger[i];
        const char *why = ledger_entry_refusal(a, e);
        if (why != NULL) {
            loyd_log_err(DB, "tenant=%s apply %s: ledger entry %zu (%s, %" PRId64 " points, lot %"
                         PRId64 ") refused: %s", a->tenant, a->event_key, i,
                         e->kind != NULL ? e->kind : "no kind", e->points, e->lot_id, why);
            return -EINVAL;
        }
    }
    for (size_t i = 0; i < a->n_outbox; i++)
        if (a->outbox[i].payload_json == NULL)
            return -EINVAL;
    return s->be->apply(s, a, cb, arg);
}

int loyd_store_member_get(struct loyd_store *s, const char *tenant, const char *member_id,
                          json_t **out)
{
    if (!nonempty(tenant) || !nonempty(member_id))
        return -EINVAL;
    return s->be->member_get(s, tenant, member_id, out);
}

int loyd_store_ledger_list(struct loyd_store *s, const char *tenant, const char *member_id,
                           json_t **out)
{
    if (!nonempty(tenant) || !nonempty(member_id))
        return -EINVAL;
    return s->be->ledger_list(s, tenant, member_id, out);
}

int loyd_store_ledger_by_ref(struct loyd_store *s, const char *tenant, const char *ref,
                             json_t **out)
{
    if (!nonempty(tenant) || !nonempty(ref))
        return -EINVAL;
    return s->be->ledger_by_ref(s, tenant, ref, out);
}

int loyd_store_lots_open(struct loyd_store *s, const char *tenant, const char *member_id,
                         json_t **out)
{
    if (!nonempty(tenant) || !nonempty(member_id))
        return -EINVAL;
    return s->be->lots_open(s, tenant, member_id, out);
}

int loyd_store_balance(struct loyd_store *s, const char *tenant, const char *member_id,
                       int64_t *out)
{
    if (!nonempty(tenant) || !nonempty(member_id))
        return -EINVAL;
    return s->be->balance(s, tenant, member_id, out);
}

int loyd_store_campaign_totals(struct loyd_store *s, const char *tenant, json_t **out)
{
    if (!nonempty(tenant))
        return -EINVAL;
    return s->be->campaign_totals(s, tenant, out);
}

int loyd_store_event_get(struct loyd_store *s, const char *tenant, const char *event_key,
                         json_t **out)
{
    if (!nonempty(tenant) || !nonempty(event_key))
        return -EINVAL;
    return s->be->event_get(s, tenant, event_key, out);
}

int loyd_store_outbox_pending(struct loyd_store *s, const char *tenant, uint64_t now_ms, size_t max,
                              json_t **out)
{
    return s->be->outbox_pending(s, tenant, now_ms, max, out);
}

int loyd_store_outbox_finish(struct loyd_store *s, int64_t id, const char *status,
                             uint64_t retry_at_ms, const char *error, loyd_store_cb cb, void *arg)
{
    static const char *const ok[] = {"done", "retry", "dead", NULL};
    if (!one_of(status, ok))
        return -EINVAL;
    return s->be->outbox_finish(s, id, status, retry_at_ms, error, cb, arg);
}

int loyd_store_outbox_sending(struct loyd_store *s, const int64_t *ids, size_t n,
                              loyd_store_cb cb, void *arg)
{
    if (ids == NULL && n > 0)
        return -EINVAL;
    return s->be->outbox_sending(s, ids, n, cb, arg);
}

int loyd_store_members_list(struct loyd_store *s, const char *tenant, const char *after_member_id,
                            size_t max, json_t **out)
{
    *out = NULL;
    if (tenant == NULL)
        return -EINVAL;
    return s->be->members_list(s, tenant, after_member_id, max, out);
}

int loyd_store_depths(struct loyd_store *s, int64_t *inbox_pending, int64_t *outbox_pending,
                      int64_t *dead_letters)
{
    return s->be->depths(s, inbox_pending, outbox_pending, dead_letters);
}

/* ---- Front end: read-only access for the command line ------------------------------------- */

int loyd_store_open_readonly(const char *url, struct loyd_store **out)
{
    const struct loyd_store_backend *be = &loyd_store_backend_sqlite;
    const char *target = url;

    if (out == NULL)
        return -EINVAL;
    *out = NULL;
    if (url == NULL)
        return -EINVAL;
    /* The same URL forms as loyd_store_open(). */
    for (size_t i = 0; i < LOYD_ARRAY_SIZE(store_schemes); i++) {
        size_t n = strlen(store_schemes[i].prefix);
        if (strncmp(url, store_schemes[i].prefix, n) != 0)
            continue;
        if (store_schemes[i].be == NULL) {
            loyd_log_err(DB,
                         "store URL %.*s...: the PostgreSQL backend is not available in this "
                         "build; use sqlite:PATH",
                         (int)n, url);
            return -ENOTSUP;
        }
        be = store_schemes[i].be;
        target = url + n;
        break;
    }
    if (target == url && strstr(url, "://") != NULL) {
        const char *sep = strstr(url, "://");
        loyd_log_err(DB, "store URL: unknown scheme \"%.*s\" (sqlite:PATH or a file path)",
                     (int)(sep - url > 32 ? 32 : sep - url), url);
        return -EINVAL;
    }
    if (be->open_readonly == NULL)
        return -ENOTSUP;
    return be->open_readonly(target, out);
}

int loyd_store_kv_scan(struct loyd_store *s, const char *tenant, const char *prefix,
                       const char *after_key, size_t max, json_t **out)
{
    *out = NULL;
    if (!nonempty(tenant) || prefix == NULL)
        return -EINVAL;
    if (s->be->kv_scan == NULL)
        return -ENOTSUP;
    return s->be->kv_scan(s, tenant, prefix, after_key, max, out);
}

int loyd_store_ledger_query(struct loyd_store *s, const char *tenant,
                            const struct loyd_ledger_query *q, size_t max, json_t **out)
{
    *out = NULL;
    if (!nonempty(tenant) || q == NULL || (q->member_id != NULL && q->member_id[0] == '\0'))
        return -EINVAL;
    if (s->be->ledger_query == NULL)
        return -ENOTSUP;
    return s->be->ledger_query(s, tenant, q, max, out);
}
