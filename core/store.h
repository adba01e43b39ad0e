/* SPDX-License-Identifier: MIT */
/*
 * The durable store: inbox of received webhooks, applied events, the points ledger, member rows,
 * the write-back outbox, per-tenant key/value and dead letters.  Callers see only the opaque
 * `struct loyd_store` and the functions below; which database sits behind it is chosen from the
 * URL given to loyd_store_open() and hidden behind `struct loyd_store_backend` (end of file).
 *
 * Threading: every function here is called on the loop thread.  Reads are synchronous (a separate
 * read connection; they never wait for a commit in progress).  Writes are asynchronous: each one
 * is copied, queued, and executed by ONE writer (one batch in flight at a time) that groups every
 * write queued while the previous commit was running into the next single transaction.  The
 * completion callback runs on the loop thread after the transaction is durable (fsync'd), or with
 * an error.  A submit function that returns 0 calls its callback exactly once; one that returns
 * a negative code never calls it.  Callbacks may be NULL.
 *
 * Callback error codes: 0; LOYD_EDUP (see the function); -EINVAL (the database refused the values,
 * e.g. a CHECK or foreign key, logged); -ENOENT (the id does not exist); LOYD_EDB (the
 * transaction failed: nothing of it is stored); -ECANCELED (the store was destroyed before the
 * write ran).
 */
#ifndef LOYD_STORE_H
#define LOYD_STORE_H

#include <jansson.h>
#include <stdbool.h>
#include <stddef.h>
#include <stdint.h>
#include <uv.h>

#include "loyd/error.h"

struct loyd_store;

typedef void (*loyd_store_cb)(void *arg, int err);
typedef void (*loyd_store_id_cb)(void *arg, int err, int64_t id);

/**
 * Opens (creating if needed) and migrates the store named by @url: "sqlite:PATH",
 * "sqlite://PATH" or a plain file path.  "postgresql://..." is recognised and refused with
 * -ENOTSUP (no such backend yet); any other "scheme://" is -EINVAL.  Blocks (startup only).
 * @return 0 and *out (new, release with close then destroy); -EINVAL, -ENOTSUP, LOYD_EDB.
 */
LOYD_MUST_CHECK int loyd_store_open(uv_loop_t *loop, const char *url, struct loyd_store **out);

/**
 * Stops accepting writes (later submits return -ECANCELED), runs every write already queued
 * (flush), closes the connections and then calls @cb(@arg) on the loop thread.  Reads keep
 * working until the flush is over.  Call loyd_store_destroy() afterwards (it may be called from
 * @cb).  Calling close twice is a bug.
 */
void loyd_store_close(struct loyd_store *s, void (*cb)(void *arg), void *arg);

/**
 * Frees the store.  Accepts NULL.  After close's callback this only frees memory; on a store
 * that was never closed it cancels queued writes (their callbacks get -ECANCELED) and closes
 * synchronously.  Never call it while a write batch is running (use close) or from inside a
 * store callback of a store that is not closed: that aborts.
 */
void loyd_store_destroy(struct loyd_store *s);

/** Counters of the writer, for tests and /metrics.  All since open. */
struct loyd_store_stats {
    uint64_t commits;    /* transactions committed by the writer */
    uint64_t batches;    /* transactions attempted (commits + failed) */
    uint64_t ops;        /* write operations executed */
    uint64_t ops_failed; /* of which completed with an error other than LOYD_EDUP */
    uint64_t max_batch;  /* most operations grouped into one transaction */
    uint64_t queued;     /* operations waiting for the next transaction now */
};
void loyd_store_stats(struct loyd_store *s, struct loyd_store_stats *out);

/* ---- Inbox ------------------------------------------------------------------------------- */

struct loyd_inbox_row {
    const char *tenant;       /* required */
    const char *idem_key;     /* required; unique per tenant */
    const char *content_type; /* may be NULL ("") */
    const char *body;         /* body_len bytes, any bytes (binary-safe); NULL only if len 0 */
    size_t body_len;
    const char *notices_json; /* JSON text or NULL */
    uint64_t received_ms;
};

/**
 * Appends a received webhook.  Copies @row.  @cb gets the row id after the commit; a duplicate
 * (tenant, idem_key) completes with LOYD_EDUP and the existing row's id (it is stored: the
 * caller still answers 200).  Creates the tenant row if needed.
 * @return 0, -EINVAL (missing tenant/idem_key), -ENOMEM (body copy), -ECANCELED (closing).
 */
LOYD_MUST_CHECK int loyd_store_inbox_append(struct loyd_store *s, const struct loyd_inbox_row *row,
                                            loyd_store_id_cb cb, void *arg);

/**
 * Pending inbox rows (status 'new'), oldest first, at most @max, of @tenant or of all tenants
 * (NULL).  *out is a new json array of objects {"id","tenant","idem_key","content_type","body",
 * "notices","received_ms","attempts"}.  "body" holds the exact stored bytes as a jansson string
 * that is NOT checked for UTF-8 (use json_string_value + json_string_length; don't json_dumps it
 * blindly); "notices" is the parsed JSON or null.
 */
LOYD_MUST_CHECK int loyd_store_inbox_pending(struct loyd_store *s, const char *tenant, size_t max,
                                             json_t **out);

/** One inbox row as above plus "status" and "error".  @return 0, -ENOENT, LOYD_EDB. */
LOYD_MUST_CHECK int loyd_store_inbox_get(struct loyd_store *s, int64_t id, json_t **out);

/**
 * Finishes an inbox row that is still 'new': @status "done" or "dead" sets it (and counts the
 * attempt), "retry" only counts the attempt and records @error (the row stays pending).  "dead"
 * also writes a dead_letters row (kind "inbox", ref = the id, payload = the body) in the same
 * transaction: don't add one yourself.  A row already done/dead is left as it is (0).
 * Completes with 0 or -ENOENT.  @return 0, -EINVAL (bad status), -ECANCELED.
 */
LOYD_MUST_CHECK int loyd_store_inbox_finish(struct loyd_store *s, int64_t id, const char *status,
                                            const char *error, loyd_store_cb cb, void *arg);

/* ---- Tenants, key/value, dead letters -------------------------------------------------------- */

/** Creates the tenant row if missing (writes that name a tenant also do this themselves). */
LOYD_MUST_CHECK int loyd_store_tenant_ensure(struct loyd_store *s, const char *tenant,
                                             loyd_store_cb cb, void *arg);

/** *out = new copy of the value, or NULL when absent (still 0).  @return 0, -EINVAL, LOYD_EDB. */
LOYD_MUST_CHECK int loyd_store_kv_get(struct loyd_store *s, const char *tenant, const char *key,
                                      char **out);

/** Sets (or with @value NULL deletes) a per-tenant value; @cb after the commit. */
LOYD_MUST_CHECK int loyd_store_kv_put(struct loyd_store *s, const char *tenant, const char *key,
                                      const char *value, loyd_store_cb cb, void *arg);

/** Records an event that failed for good.  @tenant may be NULL (tenant unknown). */
LOYD_MUST_CHECK int loyd_store_dead_letter(struct loyd_store *s, const char *tenant,
                                           const char *kind, const char *ref, const char *payload,
                                           const char *error, loyd_store_cb cb, void *arg);

/* ---- Applying one processed event ---------------------------------------------------------- */

/*
 * Ledger model: a row with points > 0 and no lot_id ("award", or a positive "adjust") is a LOT.
 * "redeem", "expire" and "reverse" rows have points < 0 and MUST name the lot they draw from
 * (lot_id: an existing lot of the same tenant and member).  An "adjust" may draw from a lot
 * (negative, lot_id set), give back to a lot (positive, lot_id set, e.g. a cancelled
 * redemption) or stand alone.  Ledger rows are immutable (the schema refuses UPDATE/DELETE).
 * loyd_store_apply() checks these rules with loyd_ledger_entry_check() (ledger.h), the one
 * definition the rule engine and `loyd test` use as well.
 */
struct loyd_ledger_entry {
    const char *member_id; /* NULL: the apply's member_id */
    int64_t points;        /* non-zero */
    const char *kind;      /* "award","redeem","expire","reverse","adjust" */
    const char *reason;    /* may be NULL */
    uint64_t expires_ms;   /* 0: never */
    int64_t lot_id;        /* 0 for awards; required for redeem/expire/reverse */
    const char *ref;       /* e.g. the deal id; may be NULL */
    /* 0: none.  The rule engine numbers new rows provisionally (ledger.h); when lot_id equals
     * the provisional_id of an EARLIER entry of the same apply, the writer draws on that row's
     * real id (assigned in the same transaction) instead of an existing lot. */
    int64_t provisional_id;
    const char *campaign;  /* the campaign an award counts against (budgets); may be NULL */
};

struct loyd_outbox_item {
    const char *member_id;    /* NULL: the apply's member_id (may stay NULL) */
    const char *payload_json; /* required, JSON text */
};

struct loyd_apply {
    const char *tenant;      /* required */
    const char *event_key;   /* required; unique per tenant */
    const char *event_type;  /* required */
    const char *event_json;  /* JSON text or NULL */
    int64_t inbox_id;        /* 0 when the event came from the scheduler */
    const char *member_id;   /* NULL: no member row upsert */
    const char *member_json; /* new profile JSON; NULL keeps the stored one (row created as {}) */
    const struct loyd_ledger_entry *ledger;
    size_t n_ledger;
    const struct loyd_outbox_item *outbox;
    size_t n_outbox;
    const char *trace_json;   /* JSON text or NULL */
    const char *pack_version; /* may be NULL */
    uint64_t applied_ms;      /* 0: now; stamps the event, ledger and outbox rows */
    /* The CRM state this event was derived from, stored (kv of the tenant) in the same
     * transaction, also when the event was applied before: NULL key = none, NULL json with a
     * key = delete it.  So an event and the state it moved away from can never disagree. */
    const char *state_key;
    const char *state_json;
};

/**
 * Applies one processed event in ONE transaction: the event row (tenant, event_key) UNIQUE, the
 * ledger rows, the member upsert, the outbox rows (due at once), and the inbox row marked done.
 * If the event already exists nothing is written except that the inbox row (if any) is marked
 * done, since its event is applied; @cb gets LOYD_EDUP.  Any failure (bad lot, invalid JSON)
 * writes nothing at all (-EINVAL or LOYD_EDB).  Copies @a.
 * @return 0, -EINVAL (missing fields, bad kind or sign), -ECANCELED.
 */
LOYD_MUST_CHECK int loyd_store_apply(struct loyd_store *s, const struct loyd_apply *a,
                                     loyd_store_cb cb, void *arg);

/* ---- Reads for the rule engine ------------------------------------------------------------- */

/** {"tenant","member_id","profile":<json>,"updated_ms"}.  @return 0, -ENOENT, LOYD_EDB. */
LOYD_MUST_CHECK int loyd_store_member_get(struct loyd_store *s, const char *tenant,
                                          const char *member_id, json_t **out);

/*
 * Ledger rows are objects {"id","member_id","event_key","kind","points","reason","expires_ms",
 * "lot_id","ref","created_ms","pack_version"}; absent values (no expiry, no lot) are null.
 */

/** A member's ledger rows, oldest first (new json array, maybe empty). */
LOYD_MUST_CHECK int loyd_store_ledger_list(struct loyd_store *s, const char *tenant,
                                           const char *member_id, json_t **out);

/** Every ledger row of the tenant with this @ref (e.g. a deal's award and its reversals). */
LOYD_MUST_CHECK int loyd_store_ledger_by_ref(struct loyd_store *s, const char *tenant,
                                             const char *ref, json_t **out);

/**
 * Open lots of a member: lots whose remaining points (their points plus every row drawing on
 * them) are > 0, in spending order: earliest expiry first, lots that never expire last, then by
 * id.  Expired lots are included (the expiry job needs them).  Each element is a ledger row
 * object plus "remaining".
 */
LOYD_MUST_CHECK int loyd_store_lots_open(struct loyd_store *s, const char *tenant,
                                         const char *member_id, json_t **out);

/** SUM(points) of the member's ledger (derived, never stored).  0 for an unknown member. */
LOYD_MUST_CHECK int loyd_store_balance(struct loyd_store *s, const char *tenant,
                                       const char *member_id, int64_t *out);

/**
 * Points each campaign has awarded so far across all the tenant's members, net of reversals:
 * a new object {campaign: points}.  Campaign budgets are checked against it.
 */
LOYD_MUST_CHECK int loyd_store_campaign_totals(struct loyd_store *s, const char *tenant,
                                               json_t **out);

/** {"tenant","event_key","type","inbox_id","event","trace","pack_version","applied_ms"}. */
LOYD_MUST_CHECK int loyd_store_event_get(struct loyd_store *s, const char *tenant,
                                         const char *event_key, json_t **out);

/* ---- Outbox -------------------------------------------------------------------------------- */

/**
 * Pending write-backs due at @now_ms, oldest first, at most @max, of @tenant or all (NULL):
 * objects {"id","tenant","member_id","event_key","payload","attempts","next_attempt_ms",
 * "created_ms","sending"} ("payload" parsed; "sending" 1 when it was handed to the CRM before
 * and not finished: it may have landed).  Per member order is kept: an item is held back while an
 * older pending item of the same member exists (e.g. waiting for its retry), so a stale value
 * is never written after a newer one.  Items stay pending until finished: don't fetch again
 * before finishing what was fetched, or skip the ids already in flight.
 */
LOYD_MUST_CHECK int loyd_store_outbox_pending(struct loyd_store *s, const char *tenant,
                                              uint64_t now_ms, size_t max, json_t **out);

/**
 * @status "done"; "retry": count the attempt, due again at @retry_at_ms; "dead": give up, also
 * recorded in dead_letters (kind "outbox").  Only pending items change (others: 0, unchanged).
 * Completes with 0 or -ENOENT.
 */
LOYD_MUST_CHECK int loyd_store_outbox_finish(struct loyd_store *s, int64_t id, const char *status,
                                             uint64_t retry_at_ms, const char *error,
                                             loyd_store_cb cb, void *arg);

/**
 * Marks pending items as handed to the CRM (durably, before they are sent): after a crash,
 * outbox_pending shows them with "sending": 1.  Finishing an item does not clear it.
 */
LOYD_MUST_CHECK int loyd_store_outbox_sending(struct loyd_store *s, const int64_t *ids, size_t n,
                                              loyd_store_cb cb, void *arg);

/**
 * Members of @tenant with a member_id greater than @after_member_id (NULL or "": from the
 * start), ordered by member_id, at most @max: a new array of {"member_id","profile"}.  The
 * daily scheduler pages through it.
 */
LOYD_MUST_CHECK int loyd_store_members_list(struct loyd_store *s, const char *tenant,
                                            const char *after_member_id, size_t max,
                                            json_t **out);

/** Depth gauges for /metrics: inbox 'new' rows, outbox 'pending' items, dead letter rows. */
LOYD_MUST_CHECK int loyd_store_depths(struct loyd_store *s, int64_t *inbox_pending,
                                      int64_t *outbox_pending, int64_t *dead_letters);

struct loyd_ledger_query; /* below: reads for the command line */

/* ---- Backend interface (store backends only; callers never look here) ---------------------- */

/*
 * A backend embeds `struct loyd_store` as the FIRST member of its own state and fills this
 * table.  The front end (loyd_store_* above) validates arguments and then calls the backend
 * with them borrowed; the backend copies what it keeps.  The contracts are the ones documented
 * above.  To add one (e.g. PostgreSQL): implement the table in core/store_<name>.c, export
 * `const struct loyd_store_backend loyd_store_backend_<name>`, and add its URL prefixes to the
 * table in the front end.
 */
struct loyd_store_backend {
    const char *name;
    int (*open)(uv_loop_t *loop, const char *target, struct loyd_store **out);
    void (*close)(struct loyd_store *s, void (*cb)(void *arg), void *arg);
    void (*destroy)(struct loyd_store *s);
    void (*stats)(struct loyd_store *s, struct loyd_store_stats *out);

    int (*inbox_append)(struct loyd_store *s, const struct loyd_inbox_row *row, loyd_store_id_cb cb,
                        void *arg);
    int (*inbox_pending)(struct loyd_store *s, const char *tenant, size_t max, json_t **out);
    int (*inbox_get)(struct loyd_store *s, int64_t id, json_t **out);
    int (*inbox_finish)(struct loyd_store *s, int64_t id, const char *status, const char *error,
                        loyd_store_cb cb, void *arg);
    int (*tenant_ensure)(struct loyd_store *s, const char *tenant, loyd_store_cb cb, void *arg);
    int (*kv_get)(struct loyd_store *s, const char *tenant, const char *key, char **out);
    int (*kv_put)(struct loyd_store *s, const char *tenant, const char *key, const char *value,
                  loyd_store_cb cb, void *arg);
    int (*dead_letter)(struct loyd_store *s, const char *tenant, const char *kind, const char *ref,
                       const char *payload, const char *error, loyd_store_cb cb, void *arg);
    int (*apply)(struct loyd_store *s, const struct loyd_apply *a, loyd_store_cb cb, void *arg);
    int (*member_get)(struct loyd_store *s, const char *tenant, const char *member_id,
                      json_t **out);
    int (*ledger_list)(struct loyd_store *s, const char *tenant, const char *member_id,
                       json_t **out);
    int (*ledger_by_ref)(struct loyd_store *s, const char *tenant, const char *ref, json_t **out);
    int (*lots_open)(struct loyd_store *s, const char *tenant, const char *member_id, json_t **out);
    int (*balance)(struct loyd_store *s, const char *tenant, const char *member_id, int64_t *out);
    int (*campaign_totals)(struct loyd_store *s, const char *tenant, json_t **out);
    int (*event_get)(struct loyd_store *s, const char *tenant, const char *event_key, json_t **out);
    int (*outbox_pending)(struct loyd_store *s, const char *tenant, uint64_t now_ms, size_t max,
                          json_t **out);
    int (*outbox_finish)(struct loyd_store *s, int64_t id, const char *status, uint64_t retry_at_ms,
                         const char *error, loyd_store_cb cb, void *arg);
    int (*depths)(struct loyd_store *s, int64_t *inbox_pending, int64_t *outbox_pending,
                  int64_t *dead_letters);
    int (*outbox_sending)(struct loyd_store *s, const int64_t *ids, size_t n, loyd_store_cb cb,
                          void *arg);
    int (*members_list)(struct loyd_store *s, const char *tenant, const char *after, size_t max,
                        json_t **out);
    /* Read-only access for the command line (end of file). */
    int (*open_readonly)(const char *target, struct loyd_store **out);
    int (*kv_scan)(struct loyd_store *s, const char *tenant, const char *prefix,
                   const char *after_key, size_t max, json_t **out);
    int (*ledger_query)(struct loyd_store *s, const char *tenant, const struct loyd_ledger_query *q,
                        size_t max, json_t **out);
};

struct loyd_store {
    const struct loyd_store_backend *be;
};

extern const struct loyd_store_backend loyd_store_backend_sqlite;

/*
 * Internal, for tests: opens a SQLite store migrated with @schema_sql instead of the compiled-in
 * schema (to prove that a later "-- migration N" section applies on top of an existing file).
 */
LOYD_MUST_CHECK int loyd__store_sqlite_open_schema(uv_loop_t *loop, const char *path,
                                                   const char *schema_sql, struct loyd_store **out);

/* ---- Read-only access for the command line (`loyd member`, `loyd ledger`) -------------------- */

/*
 * These run beside a daemon that may be writing the same store: WAL readers see the last
 * committed state and never block the writer, or get blocked by it.
 */

/**
 * Opens an EXISTING store named by @url (same forms as loyd_store_open) for reading only: no
 * writer, no migration, the connection opened read-only and query_only.  Every write submit on
 * it returns -ECANCELED; loyd_store_close() must not be called: release it with
 * loyd_store_destroy() alone.  Blocks.
 * @return 0 and *out; -ENOENT (no such file: nothing is created); -EINVAL, -ENOTSUP (URL);
 *         LOYD_EDB (not a loyd store, or its schema version is not the one this loyd writes:
 *         logged with both versions).
 */
LOYD_MUST_CHECK int loyd_store_open_readonly(const char *url, struct loyd_store **out);

/**
 * Key/value rows of @tenant whose key starts with @prefix and is greater than @after_key (NULL
 * or "": from the start of the prefix), ordered by key, at most @max: a new array of
 * {"key","value"} (value as stored text).  Callers page with the last key they got.
 */
LOYD_MUST_CHECK int loyd_store_kv_scan(struct loyd_store *s, const char *tenant, const char *prefix,
                                       const char *after_key, size_t max, json_t **out);

/** Which ledger rows loyd_store_ledger_query() returns. */
struct loyd_ledger_query {
    const char *member_id; /* NULL: every member of the tenant */
    uint64_t since_ms;     /* created_ms >= this (0: any) */
    int64_t after_id;      /* id > this (0: any) */
    int64_t before_id;     /* id < this (0: any) */
    bool newest_first;     /* descending id order: the newest @max rows */
};

/**
 * Ledger rows of @tenant (row objects as for loyd_store_ledger_list, plus "campaign") matching
 * @q, in ascending id order (descending with newest_first), at most @max (capped by the
 * backend; page with after_id / before_id).
 */
LOYD_MUST_CHECK int loyd_store_ledger_query(struct loyd_store *s, const char *tenant,
                                            const struct loyd_ledger_query *q, size_t max,
                                            json_t **out);

#endif
