/* SPDX-License-Identifier: MIT */
/*
 * The worker: everything that happens to a tenant after its webhooks are stored.  One per
 * tenant, on the loop thread, with two independent lanes:
 *
 *   processing  stored webhooks (inbox rows, oldest first) -> the connector reads what their
 *               notices name (enrich; the reads of up to `batch` rows go out together, so the
 *               connector can share batch calls) -> snapshots -> derive.h -> canonical events
 *               -> the engine (rules, ledger, write-backs, state: one transaction per event)
 *               -> the inbox row is finished.  The same lane runs the start-up sync and the
 *               periodic sweep (connector sync pages -> the same snapshot path) and the daily
 *               scheduler (birthday and tick events per member).  One thing at a time: each
 *               event is evaluated against the store as the previous one left it.
 *   write-back  pending outbox items -> connector items -> marked "sending" (durably) ->
 *               connector write() -> each item finished done / retry later / dead.  Items of a
 *               member stay in order (the store holds later ones back).
 *
 * Crash safety: an inbox row is finished only after every event it produced is committed (and
 * each event commits with the CRM state it was derived from), so a crash at any point replays
 * the row and derives nothing twice.  A write-back that may have reached the CRM before a
 * crash is sent again as "uncertain" (the connector checks before adding twice).
 *
 * Failures: a CRM read that fails for a transient reason (rate limit, transport, token) is
 * retried with a doubling wait up to `retry_max_ms`; `max_attempts` failed tries (rate limits
 * do not count) make the row a dead letter.  A rule failure dead-letters the event (engine.h)
 * and processing goes on.
 */
#ifndef LOYD_WORKER_H
#define LOYD_WORKER_H

#include <jansson.h>
#include <stdbool.h>
#include <stdint.h>
#include <uv.h>

#include "engine.h"
#include "host.h"
#include "store.h"

struct loyd_worker;

struct loyd_worker_opts {
    uint32_t batch;             /* inbox rows read and enriched together */
    uint32_t max_attempts;      /* failed tries before a dead letter */
    uint64_t retry_max_ms;      /* longest wait between tries */
    uint64_t poll_ms;           /* idle re-check period (retries due, daily jobs, sweep) */
    uint64_t sweep_interval_ms; /* 0: no sweep */
    bool sync_on_start;         /* read every contact and deal once, first time only */
};

/* Called after each event is applied (err: 0, LOYD_EDUP, a rule failure code, a store error)
 * and after each connector write (results as the connector gave them).  For the demo and
 * tests; borrowed arguments. */
struct loyd_worker_observer {
    void (*event)(void *arg, const char *tenant, const json_t *event, int err);
    void (*write)(void *arg, const char *tenant, const json_t *items, const int *results,
                  size_t n);
    void *arg;
};

struct loyd_worker_stats {
    uint64_t rows_done, rows_retried, rows_dead;     /* inbox rows */
    uint64_t snapshots, learned;                     /* snapshots seen, learned at sync */
    uint64_t events_applied, events_duplicate, events_failed;
    uint64_t events_refused; /* not applicable as they are: dead letters with the reason */
    uint64_t events_skipped; /* name no member: nothing to apply */
    uint64_t writes_done, writes_retried, writes_dead, writes_skipped; /* outbox items */
    uint64_t write_calls;                            /* connector write() calls */
    uint64_t sync_pages, sweeps, scheduler_days;
    uint64_t catchups;                               /* sweeps at once after a start */
    uint64_t fields_repaired;                        /* loyd's CRM fields put back */
};

struct loyd_worker_env {
    uv_loop_t *loop;
    struct loyd_host *host; /* the clock (now_ms) */
    struct loyd_store *store;
    struct loyd_engine *engine;
    const char *tenant;                   /* copied */
    const struct loyd_connector_ops *ops; /* borrowed; enrich/write/sync may be NULL */
    void *conn;                           /* the connector's tenant state, may be NULL */
};

/** Starts the worker (it begins with the start-up sync if due, then stored webhooks). */
struct loyd_worker *loyd_worker_create(const struct loyd_worker_env *env,
                                       const struct loyd_worker_opts *opts);
/**
 * New webhooks were stored, write-backs queued or the clock moved: look now rather than at
 * the next poll (daily jobs run when the tenant's day, by the daemon's clock, has changed).
 */
void loyd_worker_kick(struct loyd_worker *w);
void loyd_worker_set_observer(struct loyd_worker *w, const struct loyd_worker_observer *o);
/** A write-back call is in flight, or its results are not stored yet. */
bool loyd_worker_writing(const struct loyd_worker *w);
/** No work in flight in either lane (stored work may still wait). */
bool loyd_worker_idle(const struct loyd_worker *w);
void loyd_worker_stats(const struct loyd_worker *w, struct loyd_worker_stats *out);
/**
 * Starts nothing new; @p cb(@p arg) (may be NULL) runs once work in flight has ended (a
 * cancelled CRM call ends it) and the worker's timer is closed.
 */
void loyd_worker_close(struct loyd_worker *w, void (*cb)(void *arg), void *arg);
/**
 * Frees the worker; callbacks of its work in flight must not come any more (close the
 * connector's tenant first).  If the timer is still closing, the memory goes when it has.
 * Accepts NULL.
 */
void loyd_worker_destroy(struct loyd_worker *w);

#endif
