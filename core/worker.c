/* SPDX-License-Identifier: MIT */
/*
 * The per-tenant worker (worker.h): the processing lane (stored webhooks, sync, sweep, daily
 * jobs -> snapshots/events -> engine) and the write-back lane (outbox -> connector write).
 */
#include "worker.h"

#include <errno.h>
#include <inttypes.h>
#include <stdlib.h>
#include <string.h>
#include <strings.h>

#include "applied.h"
#include "civil_date.h"
#include "contact_match.h"
#include "derive.h"
#include "ledger.h"
#include "log.h"
#include "sha256.h"

#define FIRST_RETRY_MS 250
#define MEMBERS_PAGE 200
#define SWEEP_MARGIN_MS (5 * 60 * 1000) /* CRM clocks and commits lag: look a bit further back */
#define NEWS_SLACK_MS 5000 /* start-up sync: changes this close to its start are news */

/* A stored webhook being processed: its notices and what the connector read for each. */
struct row {
    int64_t id;
    int64_t attempts;
    json_t *notices; /* array */
    json_t **snaps;  /* per notice: array of snapshots, or NULL */
    int *errs;       /* per notice */
    size_t n;
};

struct batch {
    struct row *rows;
    size_t n, next;
    size_t waiting; /* enrich calls not answered yet */
};

struct enrich_req {
    struct loyd_worker *w;
    size_t row, notice;
};

/* What the processing lane is doing right now. */
enum lane_job { JOB_NONE, JOB_ROWS, JOB_SYNC, JOB_SCHEDULE };

/* A list of things to apply one after the other: {"snap": s, "contact": c} or {"event": e}. */
struct unit {
    json_t *items;
    size_t i;
    bool initial_sync;
    void (*done)(struct loyd_worker *w, int err);
};

struct loyd_worker {
    struct loyd_worker_env env;
    struct loyd_worker_opts opts;
    char *tenant;
    uv_timer_t timer;
    struct loyd_worker_observer observer;
    struct loyd_worker_stats stats;

    /* Processing lane. */
    enum lane_job job;
    bool busy;
    uint64_t retry_at;      /* no processing before this (after a failure) */
    uint64_t retry_wait_ms; /* the current wait; doubles per failure */
    struct batch batch;
    struct unit unit;
    /* Sync and sweep: which entity, from which id, since when. */
    bool sync_initial;
    const char *sync_entity; /* "contact", "deal" */
    char *sync_after;
    uint64_t sync_since;
    uint64_t sweep_started, next_sweep;
    bool sync_more;
    bool caught_up; /* the catch-up sweep after a start has begun (or is not needed) */
    /* Daily jobs. */
    char sched_day[11];
    char *sched_after;

    /* Write-back lane. */
    bool writing;
    size_t finishing; /* outbox finishes not committed yet */
    uint64_t write_retry_at, write_wait_ms;
    uint64_t write_linger_until; /* a short call waits this long for more items (0: none) */
    json_t *w_rows, *w_items; /* the rows being written, the connector items */
    int64_t *w_ids;
    size_t w_n;

    bool closing, timer_closed, destroy_pending;
    void (*close_cb)(void *arg);
    void *close_arg;
};

static void pump(struct loyd_worker *w);
static void wpump(struct loyd_worker *w);
static void write_release(struct loyd_worker *w);
static void unit_step(struct loyd_worker *w);

static uint64_t now_ms(struct loyd_worker *w)
{
    return loyd_host_now_ms(w->env.host);
}

static const char *sfield(const json_t *o, const char *k)
{
    return json_string_value(json_object_get(o, k));
}

static int64_t ifield(const json_t *o, const char *k)
{
    return (int64_t)json_integer_value(json_object_get(o, k));
}

static uint64_t next_wait(uint64_t cur, uint64_t max)
{
    uint64_t n = cur == 0 ? FIRST_RETRY_MS : cur * 2;
    return n > max ? max : n;
}

/* Transient CRM failures: worth another try later. */
/* The pack's point unit: what people type into and read from the CRM card. */
static const struct loyd_points_unit *unit_of(struct loyd_worker *w)
{
    return loyd_engine_points_unit(w->env.engine);
}

/*
 * Ledger units of a points value as the CRM card shows it (a number or a string: "455",
 * "12.5", "455.00").  @return false when it is not a number of points.
 */
static bool card_points(struct loyd_worker *w, const json_t *v, int64_t *out)
{
    char text[64];
    if (json_is_integer(v)) {
        snprintf(text, sizeof(text), "%" PRId64, (int64_t)json_integer_value(v));
    } else if (json_is_real(v)) {
        snprintf(text, sizeof(text), "%.*f", (int)unit_of(w)->decimals, json_real_value(v));
    } else if (json_is_string(v)) {
        return loyd_points_parse(json_string_value(v), unit_of(w), out);
    } else {
        return false;
    }
    return loyd_points_parse(text, unit_of(w), out);
}

/*
 * A snapshot with the points a person typed on the card turned into ledger units (a deal's
 * redeem_points), so that rules, derive and the stored state only ever see ledger units.
 * @return new reference.
 */
static json_t *snapshot_in_units(struct loyd_worker *w, const json_t *snap)
{
    json_t *s = json_deep_copy(snap);
    json_t *rv = json_object_get(s, "redeem_points");
    int64_t units;
    if (rv != NULL) {
        if (card_points(w, rv, &units) && units >= 0) {
            json_object_set_new(s, "redeem_points", json_integer(units));
        } else {
            loyd_log_warn(WORKER, "tenant=%s deal %s: the points to pay with are not a number of "
                          "%s; ignored", w->tenant, sfield(s, "id") ? sfield(s, "id") : "?",
                          unit_of(w)->unit);
            json_object_del(s, "redeem_points");
        }
    }
    return s;
}

static bool transient(int err)
{
    return err == LOYD_ERATE || err == LOYD_EHTTP || err == LOYD_ETOKEN || err == -ETIMEDOUT ||
           err == -ECANCELED || err == LOYD_EHTTPSTATUS || err == LOYD_ETOOBIG || err == -EAGAIN;
}

/* ---- closing ---------------------------------------------------------------------------- */

static void worker_free(struct loyd_worker *w);

/* Tells the closer once the timer is closed and no work is in flight. */
static void maybe_closed(struct loyd_worker *w)
{
    if (!w->closing || !w->timer_closed || w->busy || w->writing || w->finishing > 0 ||
        w->close_cb == NULL)
        return;
    void (*cb)(void *) = w->close_cb;
    w->close_cb = NULL;
    cb(w->close_arg);
}

static void timer_closed(uv_handle_t *h)
{
    struct loyd_worker *w = h->data;
    w->timer_closed = true;
    if (w->destroy_pending)
        worker_free(w);
    else
        maybe_closed(w);
}

/* The processing lane is free again; @p failed: wait before the next try. */
static void lane_release(struct loyd_worker *w, bool failed)
{
    w->busy = false;
    w->job = JOB_NONE;
    if (failed) {
        w->retry_wait_ms = next_wait(w->retry_wait_ms, w->opts.retry_max_ms);
        w->retry_at = now_ms(w) + w->retry_wait_ms;
    } else {
        w->retry_wait_ms = 0;
        w->retry_at = 0;
    }
    if (w->closing) {
        maybe_closed(w);
        return;
    }
    if (!failed)
        pump(w);
}

/* ---- applying snapshots and events (the unit) -------------------------------------------- */

static void unit_start(struct loyd_worker *w, json_t *items, bool initial_sync,
                       void (*done)(struct loyd_worker *w, int err))
{
    json_decref(w->unit.items);
    w->unit = (struct unit){.items = items, .initial_sync = initial_sync, .done = done};
    unit_step(w);
}

static void unit_finish(struct loyd_worker *w, int err)
{
    void (*done)(struct loyd_worker *, int) = w->unit.done;
    json_decref(w->unit.items);
    w->unit = (struct unit){0};
    done(w, err);
}

/* After an asynchronous item: the next one, or the end on a store failure. */
static void unit_continue(struct loyd_worker *w, int err)
{
    if (err != 0) {
        unit_finish(w, err);
        return;
    }
    w->unit.i++;
    unit_step(w);
}

static void on_state_stored(void *arg, int err)
{
    struct loyd_worker *w = arg;
    if (err != 0)
        loyd_log_err(WORKER, "tenant=%s CRM state not stored: %s", w->tenant, loyd_strerror(err));
    unit_continue(w, err);
}

static bool rule_failure(int err)
{
    return err == LOYD_ERULE || err == LOYD_EBUDGET || err == LOYD_ERULEMEM ||
           err == LOYD_EEFFECT;
}

/* The item being applied when an engine callback arrives (the event and its state). */
struct applying {
    struct loyd_worker *w;
    json_t *event;
    char *state_key, *state_text; /* stored anyway when a rule fails */
    bool engine; /* submitted through the engine: its -EINVAL comes with a dead letter */
};

/*
 * One info line per event the rules acted on, in the pack's display units, read back from the
 * stored trace: "tenant=shop event=deal:3:won deal.won member=7 deal=3: redeem 3,000 points of
 * 5,000 requested (cap 3,000); +140 points (cashback, deal 3); balance ...".  An event they
 * ignored (most daily ticks) is a debug line: a tenant's day would otherwise bury the rest.
 */
static void log_applied(struct loyd_worker *w, const json_t *ev)
{
    const char *key = sfield(ev, "key");
    json_t *row = NULL;

    if (loyd_log_max_level < LOYD_LOG_INFO || key == NULL ||
        loyd_store_event_get(w->env.store, w->tenant, key, &row) != 0)
        return;
    struct loyd_buf words = {0};
    bool acted = loyd_applied_words(ev, json_object_get(row, "trace"), unit_of(w), &words);
    if (acted)
        loyd_log_info(WORKER, "tenant=%s event=%s %s", w->tenant, key, words.data);
    else
        loyd_log_debug(WORKER, "tenant=%s event=%s %s", w->tenant, key, words.data);
    loyd_buf_free(&words);
    json_decref(row);
}

static void on_applied(void *arg, int err)
{
    struct applying *a = arg;
    struct loyd_worker *w = a->w;

    if (err == 0 && a->engine)
        log_applied(w, a->event);
    if (err == 0)
        w->stats.events_applied++;
    else if (err == LOYD_EDUP)
        w->stats.events_duplicate++;
    else if (rule_failure(err))
        w->stats.events_failed++;
    bool refused = err == -EINVAL && a->engine;
    if (refused)
        w->stats.events_refused++;
    if (w->observer.event != NULL)
        w->observer.event(w->observer.arg, w->tenant, a->event, err);
    if (rule_failure(err) || refused) {
        /* The event is a dead letter now; the entity did move on in the CRM.  A refused event
         * (-EINVAL) had its reason logged at error level by the engine. */
        if (!refused)
            loyd_log_warn(WORKER, "tenant=%s event %s failed in the rules (dead letter): %s",
                          w->tenant, sfield(a->event, "key"), loyd_strerror(err));
        err = 0;
        if (a->state_key != NULL) {
            int rc = loyd_store_kv_put(w->env.store, w->tenant, a->state_key, a->state_text,
                                       on_state_stored, w);
            if (rc == 0) {
                json_decref(a->event);
                free(a->state_key);
                free(a->state_text);
                free(a);
                return;
            }
            err = rc;
        }
    } else if (err == LOYD_EDUP) {
        err = 0;
    } else if (err != 0) {
        loyd_log_err(WORKER, "tenant=%s event %s not applied: %s", w->tenant,
                     sfield(a->event, "key"), loyd_strerror(err));
    }
    json_decref(a->event);
    free(a->state_key);
    free(a->state_text);
    free(a);
    if (err == 0)
        wpump(w); /* the event may have queued write-backs */
    unit_continue(w, err);
}

/* The dead letter of an event the engine refused is stored: its state moves on. */
static void on_refused_stored(void *arg, int err)
{
    struct applying *a = arg;
    struct loyd_worker *w = a->w;
    int rc = err;

    if (err == 0 && a->state_key != NULL) {
        rc = loyd_store_kv_put(w->env.store, w->tenant, a->state_key, a->state_text,
                               on_state_stored, w);
        if (rc == 0) {
            json_decref(a->event);
            free(a->state_key);
            free(a->state_text);
            free(a);
            return;
        }
    }
    json_decref(a->event);
    free(a->state_key);
    free(a->state_text);
    free(a);
    unit_continue(w, rc);
}

/*
 * Submits @p ev to the engine.  @return 1 when a callback will continue the unit, 0 when the
 * item is finished (nothing to apply), or a negative store error.
 */
static int apply_event(struct loyd_worker *w, const json_t *ev, const char *state_key,
                       const char *state_text)
{
    const char *type = sfield(ev, "type");
    struct applying *a;
    int rc;

    if (!loyd_engine_handles(w->env.engine, type)) {
        if (state_key == NULL)
            return 0;
        rc = loyd_store_kv_put(w->env.store, w->tenant, state_key, state_text, on_state_stored, w);
        return rc == 0 ? 1 : rc;
    }
    a = loyd_xcalloc(1, sizeof(*a));
    a->w = w;
    a->event = json_incref((json_t *)ev);
    a->state_key = state_key ? loyd_xstrdup(state_key) : NULL;
    a->state_text = state_text ? loyd_xstrdup(state_text) : NULL;
    a->engine = true;
    rc = loyd_engine_process_state(w->env.engine, w->env.store, ev, 0, state_key, state_text,
                                   on_applied, a);
    if (rc == 0)
        return 1;
    json_decref(a->event);
    free(a->state_key);
    free(a->state_text);
    free(a);
    if (rc == -EINVAL && loyd_engine_event_member(ev) == NULL) {
        /* A deal without a contact, say: nobody to apply it to.  The state still moves on. */
        w->stats.events_skipped++;
        loyd_log_info(WORKER, "tenant=%s event %s skipped: it names no member", w->tenant,
                      sfield(ev, "key"));
        if (state_key == NULL)
            return 0;
        rc = loyd_store_kv_put(w->env.store, w->tenant, state_key, state_text, on_state_stored, w);
        return rc == 0 ? 1 : rc;
    }
    if (rc == -EINVAL) {
        /* Not an event the engine takes (no key, a type it does not know): a dead letter, so
         * that it is seen, and the state moves on like after any other refusal. */
        const char *why = "the engine refused the event (no key, or not a canonical event type)";
        char *text = json_dumps(ev, JSON_COMPACT);
        w->stats.events_refused++;
        loyd_log_err(WORKER, "tenant=%s event %s refused (dead letter): %s", w->tenant,
                     sfield(ev, "key") ? sfield(ev, "key") : "(no key)", why);
        a = loyd_xcalloc(1, sizeof(*a));
        a->w = w;
        a->event = json_incref((json_t *)ev);
        a->state_key = state_key ? loyd_xstrdup(state_key) : NULL;
        a->state_text = state_text ? loyd_xstrdup(state_text) : NULL;
        rc = loyd_store_dead_letter(w->env.store, w->tenant, "event", sfield(ev, "key"), text, why,
                                    on_refused_stored, a);
        free(text);
        if (rc == 0)
            return 1;
        json_decref(a->event);
        free(a->state_key);
        free(a->state_text);
        free(a);
    }
    return rc;
}

/*
 * Applies an event the host itself makes about a contact (learned at sync, repaired), not the
 * rules: @p ap names its key, type, member and rows; the tenant, the event text and the time
 * are filled in here.  @return 0 when on_applied will continue the unit, or the store's error.
 */
static int host_event_apply(struct loyd_worker *w, struct loyd_apply *ap)
{
    struct applying *a = loyd_xcalloc(1, sizeof(*a));
    a->w = w;
    a->event = json_pack("{s:s, s:s, s:I, s:{s:s}}", "type", ap->event_type, "key", ap->event_key,
                         "at", (json_int_t)now_ms(w), "contact", "id", ap->member_id);
    char *event_text = json_dumps(a->event, JSON_COMPACT);
    ap->tenant = w->tenant;
    ap->event_json = event_text;
    ap->applied_ms = now_ms(w);
    int rc = loyd_store_apply(w->env.store, ap, on_applied, a);
    if (rc != 0) {
        json_decref(a->event);
        free(a);
    }
    free(event_text);
    return rc;
}

/*
 * A contact met at the start-up sync: the member learns the birthday and name the CRM shows,
 * and a balance already on the card (from an earlier loyalty system) becomes an opening lot,
 * unless loyd already has a ledger for the member.
 */
static int learn_contact(struct loyd_worker *w, const json_t *snap, const char *state_key,
                         const char *state_text)
{
    const char *id = sfield(snap, "id");
    json_t *stored = NULL, *rows = NULL, *profile;
    struct loyd_ledger_entry opening = {0};
    char *key, *member_text;
    int rc;

    if ((rc = loyd_store_member_get(w->env.store, w->tenant, id, &stored)) != 0 && rc != -ENOENT)
        return rc;
    if ((rc = loyd_store_ledger_list(w->env.store, w->tenant, id, &rows)) != 0) {
        json_decref(stored);
        return rc;
    }
    profile = json_object_get(stored, "profile");
    profile = json_is_object(profile) ? json_deep_copy(profile) : json_object();
    if (json_is_string(json_object_get(snap, "birthday")))
        json_object_set(profile, "birthday", json_object_get(snap, "birthday"));
    if (json_is_string(json_object_get(snap, "name")))
        json_object_set(profile, "name", json_object_get(snap, "name"));
    int64_t card = 0;
    if (!card_points(w, json_object_get(json_object_get(snap, "fields"), "balance"), &card))
        card = 0;
    bool open_lot = card > 0 && json_array_size(rows) == 0;
    if (open_lot)
        opening = (struct loyd_ledger_entry){.points = card,
                                             .kind = "adjust",
                                             .reason = "opening balance shown on the CRM card"};
    key = loyd_xasprintf("contact:%s:learned", id);
    member_text = json_dumps(profile, JSON_COMPACT);
    struct loyd_apply ap = {
        .event_key = key,
        .event_type = "contact.learned",
        .member_id = id,
        .member_json = member_text,
        .ledger = open_lot ? &opening : NULL,
        .n_ledger = open_lot ? 1 : 0,
        .state_key = state_key,
        .state_json = state_text,
    };
    rc = host_event_apply(w, &ap);
    w->stats.learned++;
    free(member_text);
    free(key);
    json_decref(profile);
    json_decref(rows);
    json_decref(stored);
    return rc == 0 ? 1 : rc;
}

static json_t *written_get(struct loyd_worker *w, const char *contact);

static char *written_key(const char *contact);

static void on_written_cleared(void *arg, int err)
{
    struct loyd_worker *w = arg;
    if (err != 0)
        loyd_log_err(WORKER, "tenant=%s CRM field record not stored: %s", w->tenant,
                     loyd_strerror(err));
    w->finishing--;
    if (w->writing)
        write_release(w);
    else if (w->closing)
        maybe_closed(w);
}

static void written_forget_repair(struct loyd_worker *w, const char *contact, json_t *written)
{
    json_object_del(written, "~repaired");
    char *key = written_key(contact), *text = json_dumps(written, JSON_COMPACT | JSON_SORT_KEYS);
    w->finishing++;
    if (loyd_store_kv_put(w->env.store, w->tenant, key, text, on_written_cleared, w) != 0)
        w->finishing--;
    free(text);
    free(key);
}

/* How many earlier values of each field loyd remembers having written (see written_store). */
#define WRITTEN_HISTORY 4

static bool same_on_card(struct loyd_worker *w, const char *field, const json_t *x,
                         const json_t *y)
{
    int64_t a, b;
    if (strcmp(field, "balance") == 0)
        return card_points(w, x, &a) && card_points(w, y, &b) && a == b;
    return json_equal(x, y);
}

/* Whether @p card (as the CRM shows it) is what loyd wrote into @p field last or lately: the
 * card waits for a write still queued, or a read raced loyd's newer write.  Not a hand edit. */
static bool written_lately(struct loyd_worker *w, const json_t *written, const char *field,
                           const json_t *card)
{
    const json_t *hist = json_object_get(json_object_get(written, "~hist"), field), *v;
    size_t i;
    if (same_on_card(w, field, json_object_get(written, field), card))
        return true;
    json_array_foreach(hist, i, v)
    {
        if (same_on_card(w, field, v, card))
            return true;
    }
    return false;
}

/*
 * The ledger is the truth: a loyd field on the card (balance, tier) that someone changed by
 * hand, or that drifted, is put back, with a note on the timeline that says so.  Only fields
 * loyd has written before are checked, a value loyd itself wrote lately is a stale read and
 * not an edit, and a value loyd already put back once is not fought over again (a field that
 * cannot hold it, say) but logged.
 * @return 1 when a repair was submitted (its callback continues the unit), 0 when the card is
 * right, or a negative store error.
 */
static int repair_fields(struct loyd_worker *w, const json_t *snap, const char *state_key,
                         const char *state_text)
{
    const char *id = sfield(snap, "id");
    const json_t *card = json_object_get(snap, "fields");
    json_t *written, *m = NULL, *fix, *outbox_fix, *note;
    struct loyd_buf what = {0};
    int64_t ledger = 0;
    int rc;

    if (id == NULL || !json_is_object(card))
        return 0;
    written = written_get(w, id);
    if (json_object_get(written, "balance") == NULL && json_object_get(written, "tier") == NULL) {
        json_decref(written);
        return 0; /* loyd never wrote this card: nothing of it is loyd's yet */
    }
    if ((rc = loyd_store_balance(w->env.store, w->tenant, id, &ledger)) != 0 ||
        ((rc = loyd_store_member_get(w->env.store, w->tenant, id, &m)) != 0 && rc != -ENOENT)) {
        json_decref(written);
        return rc;
    }
    const json_t *repaired = json_object_get(written, "~repaired");
    fix = json_object();
    /* Balance: the card against the ledger, in the pack's unit. */
    const json_t *cv = json_object_get(card, "balance");
    int64_t shown = 0;
    bool shown_ok = cv != NULL && card_points(w, cv, &shown);
    if (json_object_get(written, "balance") != NULL && cv != NULL &&
        (!shown_ok || shown != ledger) && !written_lately(w, written, "balance", cv)) {
        char was[64], now[64];
        json_t *truth = loyd_points_json(ledger, unit_of(w));
        if (json_equal(json_object_get(repaired, "balance"), truth)) {
            loyd_log_warn(WORKER, "tenant=%s contact %s: the balance field still shows %s after "
                          "loyd put it back; is the field a number field?", w->tenant, id,
                          json_is_string(cv) ? json_string_value(cv) : "a non-number");
            json_decref(truth);
        } else {
            loyd_points_format(ledger, unit_of(w), LOYD_POINTS_GROUP | LOYD_POINTS_UNIT, now,
                               sizeof(now));
            if (shown_ok)
                loyd_points_format(shown, unit_of(w), LOYD_POINTS_GROUP, was, sizeof(was));
            else
                snprintf(was, sizeof(was), "%s", json_is_string(cv) ? json_string_value(cv)
                                                                    : "something not a number");
            loyd_buf_printf(&what, "the balance was changed to %s; the ledger says %s", was, now);
            /* In ledger units, as every write-back: outbox_item shows them as points. */
            json_object_set_new(fix, "balance", json_integer(ledger));
            json_decref(truth);
        }
    }
    /* Tier: the card against the member's tier. */
    const json_t *tier = json_object_get(json_object_get(m, "profile"), "tier");
    const json_t *ct = json_object_get(card, "tier");
    if (json_is_string(tier) && json_object_get(written, "tier") != NULL &&
        !json_equal(ct, tier) && !(ct != NULL && written_lately(w, written, "tier", ct))) {
        if (json_equal(json_object_get(repaired, "tier"), tier)) {
            loyd_log_warn(WORKER, "tenant=%s contact %s: the tier field still differs after loyd "
                          "put it back", w->tenant, id);
        } else {
            loyd_buf_printf(&what, "%sthe tier was changed to \"%s\"; the ledger says \"%s\"",
                            what.len > 0 ? "; " : "",
                            json_is_string(ct) ? json_string_value(ct) : "",
                            json_string_value(tier));
            json_object_set(fix, "tier", (json_t *)tier);
        }
    }
    json_decref(m);
    if (json_object_size(fix) == 0) {
        /* The card shows again what loyd put back: a later edit may be repaired again. */
        if (json_object_get(written, "~repaired") != NULL && shown_ok && shown == ledger)
            written_forget_repair(w, id, written);
        json_decref(fix);
        json_decref(written);
        loyd_buf_free(&what);
        return 0;
    }
    size_t nfix = json_object_size(fix);
    char *text = loyd_xasprintf("Loyalty fields on this card were changed outside loyd: %s. "
                                "The ledger is what counts, so loyd put the card back.",
                                what.data);
    /* The key is the edit itself: its time and what the card showed, so an echo or a second
     * look at the same edit repairs nothing twice, while a later edit is repaired again. */
    char *card_text = json_dumps(card, JSON_COMPACT | JSON_SORT_KEYS);
    uint8_t digest[LOYD_SHA256_LEN];
    char hex[2 * LOYD_SHA256_LEN + 1];
    loyd_sha256(card_text, strlen(card_text), digest);
    loyd_hex(digest, 6, hex);
    char *key = loyd_xasprintf("contact:%s:repaired:%" PRId64 ":%s", id,
                               ifield(snap, "modified_at"), hex);
    outbox_fix = json_pack("{s:s, s:o, s:b}", "op", "contact.fields", "fields", fix, "repair", 1);
    note = json_pack("{s:s, s:s}", "op", "note", "text", text);
    char *fix_text = json_dumps(outbox_fix, JSON_COMPACT);
    char *note_text = json_dumps(note, JSON_COMPACT);
    struct loyd_outbox_item out[2] = {{.payload_json = fix_text}, {.payload_json = note_text}};
    struct loyd_apply ap = {
        .event_key = key,
        .event_type = "contact.repaired",
        .member_id = id,
        .outbox = out,
        .n_outbox = 2,
        .state_key = state_key,
        .state_json = state_text,
    };
    rc = host_event_apply(w, &ap);
    if (rc == 0) {
        w->stats.fields_repaired += nfix;
        loyd_log_notice(WORKER, "tenant=%s contact %s: %s; putting the card back", w->tenant, id,
                        what.data);
    }
    free(fix_text);
    free(note_text);
    json_decref(outbox_fix);
    json_decref(note);
    free(key);
    free(card_text);
    free(text);
    json_decref(written);
    loyd_buf_free(&what);
    return rc == 0 ? 1 : rc;
}

static bool birthday_on(const char *birthday, const char *today);

/*
 * A contact that appears, or whose birthday is set, on its birthday gets the offer that day:
 * the daily job may have run already.  The birthday event follows the contact's own event in
 * the unit (the member then exists); its key is the daily job's, so it is given once a year.
 */
static void birthday_follows(struct loyd_worker *w, const json_t *snap)
{
    char today[11];
    const char *id = sfield(snap, "id"), *birthday = sfield(snap, "birthday");
    if (id == NULL || birthday == NULL || !loyd_engine_handles(w->env.engine, "birthday"))
        return;
    loyd_date_format((int64_t)now_ms(w), loyd_engine_tz_offset_min(w->env.engine), today);
    if (!birthday_on(birthday, today))
        return;
    char *key = loyd_xasprintf("birthday:%s:%.4s", id, today);
    json_array_insert_new(w->unit.items, w->unit.i + 1,
                          json_pack("{s:{s:s, s:s, s:I, s:{s:s}}}", "event", "type", "birthday",
                                    "key", key, "at", (json_int_t)now_ms(w), "contact", "id", id));
    free(key);
}

/*
 * The contact's "referred by" CRM field (the snapshot's referred_by, loyd/plugin.h) as the
 * member id rules read in member.referrer, put into @p ev's contact as "referrer" while the
 * member has none (the engine keeps the first one: a referral is not moved later).  A value
 * that names nobody is a warning that says which kind of value it was and why, never the
 * phone or email itself.  @return 0 or a store error.
 */
static int referrer_fill(struct loyd_worker *w, json_t *ev)
{
    json_t *contact = json_object_get(ev, "contact"), *m = NULL;
    const json_t *rb = json_object_get(contact, "referred_by");
    const char *id = sfield(contact, "id");
    char *ref = NULL;
    struct loyd_buf why = {0};
    int rc;

    if (!json_is_object(rb) || id == NULL || json_object_get(contact, "referrer") != NULL)
        return 0;
    if ((rc = loyd_store_member_get(w->env.store, w->tenant, id, &m)) != 0 && rc != -ENOENT)
        return rc;
    bool known = json_is_string(json_object_get(json_object_get(m, "profile"), "referrer"));
    json_decref(m);
    if (known)
        return 0;
    rc = loyd_referrer_resolve(w->env.store, w->tenant, id, rb, &ref, &why);
    if (rc == 0) {
        json_object_set_new(contact, "referrer", json_string(ref));
        loyd_log_info(WORKER, "tenant=%s contact %s was referred by member %s", w->tenant, id,
                      ref);
    } else if (rc == -ENOENT || rc == -EINVAL) {
        const char *kind = "?";
        const char *k;
        json_t *v;
        json_object_foreach((json_t *)rb, k, v) kind = k;
        loyd_log_warn(WORKER,
                      "tenant=%s contact %s: its \"referred by\" field (a %s) names no referrer: "
                      "%s",
                      w->tenant, id, strcmp(kind, "contact_id") == 0 ? "contact id" : kind,
                      why.data != NULL ? why.data : "?");
        rc = 0;
    }
    free(ref);
    loyd_buf_free(&why);
    return rc;
}

/*
 * An offer code on a won deal (derive.h offer_use): when it is an open, valid offer of the
 * deal's member, the offer.redeemed event {offer, deal}, keyed per member and code so that it
 * is applied once.  It goes through the engine even when no rule handles it: the engine marks
 * the offer used.  @return 1 when a callback continues the unit, 0 when there is nothing to
 * apply, or a store error.
 */
static int offer_use_apply(struct loyd_worker *w, const json_t *use)
{
    const char *code = sfield(use, "code");
    const json_t *deal = json_object_get(use, "deal");
    const char *mid = sfield(deal, "contact_id"), *deal_id = sfield(deal, "id");
    json_t *m = NULL, *o, *offer = NULL;
    size_t i;
    char today[11];
    int rc;

    if (code == NULL || mid == NULL)
        return 0;
    if ((rc = loyd_store_member_get(w->env.store, w->tenant, mid, &m)) != 0 && rc != -ENOENT)
        return rc;
    json_array_foreach(json_object_get(json_object_get(m, "profile"), "offers"), i, o)
    {
        const char *st = sfield(o, "status"), *c = sfield(o, "code");
        if (c != NULL && strcasecmp(c, code) == 0 && st != NULL && strcmp(st, "open") == 0)
            offer = o;
    }
    loyd_date_format((int64_t)now_ms(w), loyd_engine_tz_offset_min(w->env.engine), today);
    const char *until = sfield(offer, "valid_until");
    if (offer == NULL || (until != NULL && strcmp(until, today) < 0)) {
        /* A code is no personal data: naming it lets the manager see the typo. */
        loyd_log_warn(WORKER, "tenant=%s deal %s: offer code '%.64s' is %s of contact %s",
                      w->tenant, deal_id != NULL ? deal_id : "?", code,
                      offer == NULL ? "not an open offer" : "an expired offer", mid);
        json_decref(m);
        return 0;
    }
    json_t *oc = json_deep_copy(offer);
    json_object_del(oc, "status");
    char *key = loyd_xasprintf("offer:%s:%s:redeemed", mid, sfield(offer, "code"));
    json_t *ev = json_pack("{s:s, s:s, s:I, s:o, s:O}", "type", "offer.redeemed", "key", key,
                           "at", (json_int_t)now_ms(w), "offer", oc, "deal", deal);
    free(key);
    json_decref(m);
    struct applying *a = loyd_xcalloc(1, sizeof(*a));
    a->w = w;
    a->event = ev;
    a->engine = true;
    rc = loyd_engine_process_state(w->env.engine, w->env.store, ev, 0, NULL, NULL, on_applied, a);
    if (rc == 0)
        return 1;
    json_decref(a->event);
    free(a);
    if (rc == -EINVAL) {
        loyd_log_err(WORKER, "tenant=%s deal %s: the engine refused the offer.redeemed event",
                     w->tenant, deal_id != NULL ? deal_id : "?");
        return 0;
    }
    return rc;
}

/* One snapshot: derive against the stored state, then apply or just store the state. */
static int apply_snapshot(struct loyd_worker *w, const json_t *snap, const json_t *contact)
{
    struct loyd_buf err = {0};
    struct loyd_derived d;
    json_t *prev = NULL;
    char *key, *prev_text = NULL, *state_text = NULL;
    int rc;

    w->stats.snapshots++;
    const char *kind = sfield(snap, "kind"), *id = sfield(snap, "id");
    if (kind == NULL || id == NULL) {
        loyd_log_warn(WORKER, "tenant=%s the connector returned a snapshot without kind/id",
                      w->tenant);
        return 0;
    }
    json_t *own = snapshot_in_units(w, snap);
    snap = own;
    key = loyd_derive_state_key(kind, id);
    rc = loyd_store_kv_get(w->env.store, w->tenant, key, &prev_text);
    free(key);
    if (rc != 0) {
        json_decref(own);
        return rc;
    }
    if (prev_text != NULL)
        prev = json_loads(prev_text, 0, NULL);
    free(prev_text);
    /* What changed after the start-up sync began is news, not history: derive it as such.
     * CRMs date changes to the second (Bitrix24's DATE_MODIFY), and their clock is not ours:
     * a change within NEWS_SLACK_MS before the start counts as news rather than be lost. */
    bool history = w->unit.initial_sync &&
                   ifield(snap, "modified_at") + NEWS_SLACK_MS < (int64_t)w->sweep_started;
    rc = loyd_derive(snap, prev, contact, now_ms(w), history, &d, &err);
    if (rc != 0) {
        loyd_log_warn(WORKER, "tenant=%s %s", w->tenant, err.data ? err.data : "bad snapshot");
        loyd_buf_free(&err);
        json_decref(prev);
        json_decref(own);
        return 0;
    }
    state_text = json_dumps(d.state, JSON_COMPACT | JSON_SORT_KEYS);
    if (strcmp(kind, "contact") == 0 && (d.learned || d.event != NULL))
        birthday_follows(w, snap);
    if (d.offer_use != NULL)
        json_array_insert_new(w->unit.items, w->unit.i + 1,
                              json_pack("{s:O}", "offer_use", d.offer_use));
    if (d.event != NULL && (rc = referrer_fill(w, d.event)) != 0) {
        free(state_text);
        loyd_derived_free(&d);
        json_decref(prev);
        json_decref(own);
        return rc;
    }
    if (d.learned && strcmp(kind, "contact") == 0) {
        rc = learn_contact(w, snap, d.state_key, state_text);
    } else if (d.event != NULL) {
        rc = apply_event(w, d.event, d.state_key, state_text);
    } else if (strcmp(kind, "contact") == 0 &&
               (rc = repair_fields(w, snap, d.state_key, state_text)) != 0) {
        /* submitted (1) or a store error */
    } else if (prev == NULL || !json_equal(prev, d.state)) {
        rc = loyd_store_kv_put(w->env.store, w->tenant, d.state_key, state_text, on_state_stored,
                               w);
        rc = rc == 0 ? 1 : rc;
    } else {
        rc = 0; /* seen exactly like this before: an echo or a duplicate */
    }
    free(state_text);
    loyd_derived_free(&d);
    json_decref(prev);
    json_decref(own);
    return rc;
}

static void unit_step(struct loyd_worker *w)
{
    while (w->unit.i < json_array_size(w->unit.items)) {
        json_t *item = json_array_get(w->unit.items, w->unit.i);
        json_t *snap = json_object_get(item, "snap");
        json_t *use = json_object_get(item, "offer_use");
        int rc = snap != NULL  ? apply_snapshot(w, snap, json_object_get(item, "contact"))
                 : use != NULL ? offer_use_apply(w, use)
                               : apply_event(w, json_object_get(item, "event"), NULL, NULL);
        if (rc == 1)
            return; /* a callback continues */
        if (rc < 0) {
            loyd_log_err(WORKER, "tenant=%s cannot apply: %s", w->tenant, loyd_strerror(rc));
            unit_finish(w, rc);
            return;
        }
        w->unit.i++;
    }
    unit_finish(w, 0);
}

/*
 * Snapshots of one read, as unit items: contacts first (a contact.created is due before the
 * deal.won of the same contact), each deal with its contact's snapshot when it was read too.
 */
static json_t *snapshot_items(json_t *const *lists, size_t n)
{
    json_t *items = json_array();
    for (int pass = 0; pass < 2; pass++) {
        for (size_t l = 0; l < n; l++) {
            json_t *s;
            size_t i;
            json_array_foreach(lists[l], i, s)
            {
                const char *kind = sfield(s, "kind");
                bool contact = kind != NULL && strcmp(kind, "contact") == 0;
                if ((pass == 0) != contact)
                    continue;
                json_t *it = json_pack("{s:O}", "snap", s);
                const char *cid = sfield(s, "contact_id");
                json_t *c;
                size_t j;
                json_array_foreach(lists[l], j, c)
                {
                    if (cid != NULL && sfield(c, "kind") != NULL &&
                        strcmp(sfield(c, "kind"), "contact") == 0 && sfield(c, "id") != NULL &&
                        strcmp(sfield(c, "id"), cid) == 0)
                        json_object_set(it, "contact", c);
                }
                json_array_append_new(items, it);
            }
        }
    }
    return items;
}

/* ---- stored webhooks --------------------------------------------------------------------- */

static void batch_free(struct batch *b)
{
    for (size_t i = 0; i < b->n; i++) {
        struct row *r = &b->rows[i];
        for (size_t j = 0; j < r->n; j++)
            json_decref(r->snaps[j]);
        free(r->snaps);
        free(r->errs);
        json_decref(r->notices);
    }
    free(b->rows);
    memset(b, 0, sizeof(*b));
}

static void rows_next(struct loyd_worker *w);

static void on_row_finished(void *arg, int err)
{
    struct loyd_worker *w = arg;
    if (err != 0 && err != -ENOENT) {
        loyd_log_err(WORKER, "tenant=%s inbox row not finished: %s", w->tenant,
                     loyd_strerror(err));
        batch_free(&w->batch);
        lane_release(w, true);
        return;
    }
    w->batch.next++;
    rows_next(w);
}

static void row_unit_done(struct loyd_worker *w, int err)
{
    struct row *r = &w->batch.rows[w->batch.next];
    if (err != 0) {
        /* The store failed: the row stays new and is replayed (nothing is applied twice). */
        batch_free(&w->batch);
        lane_release(w, true);
        return;
    }
    w->stats.rows_done++;
    int rc = loyd_store_inbox_finish(w->env.store, r->id, "done", NULL, on_row_finished, w);
    if (rc != 0)
        on_row_finished(w, rc);
}

/* A row whose read failed: try again later, or give up after max_attempts. */
static void row_failed(struct loyd_worker *w, struct row *r, int err)
{
    /* No REST access configured, or the app's token is revoked: the webhooks wait for the
     * operator (a config fix, a reinstall), they are not lost. */
    bool waits = err == LOYD_ERATE || err == LOYD_ECONFIG || err == LOYD_ETOKEN;
    bool dead = !waits && (!transient(err) || r->attempts + 1 >= w->opts.max_attempts);
    char msg[160];
    int rc;

    snprintf(msg, sizeof(msg), "CRM read failed: %s", loyd_strerror(err));
    if (dead) {
        w->stats.rows_dead++;
        loyd_log_warn(WORKER, "tenant=%s inbox row %" PRId64 " is a dead letter after %" PRId64
                              " tries: %s",
                      w->tenant, r->id, r->attempts + 1, msg);
        rc = loyd_store_inbox_finish(w->env.store, r->id, "dead", msg, on_row_finished, w);
        if (rc != 0)
            on_row_finished(w, rc);
        return;
    }
    w->stats.rows_retried++;
    if (err == LOYD_ECONFIG) /* the connector named the missing setting once */
        loyd_log_debug(WORKER, "tenant=%s inbox row %" PRId64 " waits: %s", w->tenant, r->id,
                       msg);
    else
        loyd_log_info(WORKER, "tenant=%s inbox row %" PRId64 " will be retried: %s", w->tenant,
                      r->id, msg);
    /* Rate limits and missing settings are not the row's fault: they are not attempts. */
    if (!waits &&
        loyd_store_inbox_finish(w->env.store, r->id, "retry", msg, NULL, NULL) != 0)
        loyd_log_warn(WORKER, "tenant=%s inbox row %" PRId64 ": attempt not counted", w->tenant,
                      r->id);
    batch_free(&w->batch);
    lane_release(w, true);
}

static void rows_next(struct loyd_worker *w)
{
    struct batch *b = &w->batch;

    if (b->next >= b->n || w->closing) {
        batch_free(b);
        lane_release(w, false);
        return;
    }
    struct row *r = &b->rows[b->next];
    for (size_t j = 0; j < r->n; j++) {
        if (r->errs[j] != 0) {
            row_failed(w, r, r->errs[j]);
            return;
        }
    }
    unit_start(w, snapshot_items(r->snaps, r->n), false, row_unit_done);
}

static void on_enriched(void *arg, int err, json_t *snapshots)
{
    struct enrich_req *q = arg;
    struct loyd_worker *w = q->w;
    struct row *r = &w->batch.rows[q->row];

    if (err == 0 && !json_is_array(snapshots))
        err = LOYD_EPLUGIN;
    r->errs[q->notice] = err;
    if (err == 0)
        r->snaps[q->notice] = snapshots;
    else
        json_decref(snapshots);
    free(q);
    if (--w->batch.waiting == 0)
        rows_next(w);
}

/* Reads the oldest stored webhooks and asks the connector for all their notices at once. */
static bool rows_start(struct loyd_worker *w)
{
    json_t *pending = NULL, *p;
    size_t i;
    int rc;

    if (w->env.ops->enrich == NULL || w->env.conn == NULL)
        return false;
    rc = loyd_store_inbox_pending(w->env.store, w->tenant, w->opts.batch, &pending);
    if (rc != 0 || json_array_size(pending) == 0) {
        json_decref(pending);
        return false;
    }
    struct batch *b = &w->batch;
    b->n = json_array_size(pending);
    b->rows = loyd_xcalloc(b->n, sizeof(*b->rows));
    json_array_foreach(pending, i, p)
    {
        struct row *r = &b->rows[i];
        json_t *n = json_object_get(p, "notices");
        r->id = ifield(p, "id");
        r->attempts = ifield(p, "attempts");
        r->notices = json_is_array(n) ? json_incref(n) : json_array();
        r->n = json_array_size(r->notices);
        r->snaps = loyd_xcalloc(r->n + 1, sizeof(*r->snaps));
        r->errs = loyd_xcalloc(r->n + 1, sizeof(*r->errs));
        b->waiting += r->n;
    }
    json_decref(pending);
    w->busy = true;
    w->job = JOB_ROWS;
    b->waiting++; /* held while starting, so a synchronous answer cannot finish the batch */
    for (i = 0; i < b->n; i++) {
        struct row *r = &b->rows[i];
        for (size_t j = 0; j < r->n; j++) {
            struct enrich_req *q = loyd_xmalloc(sizeof(*q));
            *q = (struct enrich_req){w, i, j};
            rc = w->env.ops->enrich(w->env.conn, json_array_get(r->notices, j), on_enriched, q);
            if (rc != 0) {
                free(q);
                r->errs[j] = rc;
                b->waiting--;
            }
        }
    }
    if (--b->waiting == 0)
        rows_next(w);
    return true;
}

/* ---- start-up sync and sweep ------------------------------------------------------------- */

static void sync_page(struct loyd_worker *w);

static void sync_finished(void *arg, int err)
{
    struct loyd_worker *w = arg;
    if (err != 0) {
        lane_release(w, true);
        return;
    }
    if (w->sync_more) {
        sync_page(w);
        return;
    }
    /* This entity is done: the next one, or the end of this sync. */
    if (strcmp(w->sync_entity, "contact") == 0) {
        w->sync_entity = "deal";
        free(w->sync_after);
        w->sync_after = NULL;
        sync_page(w);
        return;
    }
    free(w->sync_after);
    w->sync_after = NULL;
    w->sync_entity = NULL;
    if (w->sync_initial)
        loyd_log_notice(WORKER, "tenant=%s start-up sync done", w->tenant);
    else
        w->stats.sweeps++;
    w->sync_initial = false;
    lane_release(w, false);
}

/* Remembers how far the sync got, so a restart resumes rather than starts over. */
static void sync_unit_done(struct loyd_worker *w, int err)
{
    if (err != 0) {
        lane_release(w, true);
        return;
    }
    char *text = NULL;
    const char *key = w->sync_initial ? "sync:initial" : "sync:sweep";
    bool last = !w->sync_more && strcmp(w->sync_entity, "deal") == 0;
    if (last) {
        /* A sweep covers changes from its start on; the first one starts after the sync. */
        text = loyd_xasprintf(w->sync_initial ? "{\"done\":true,\"at\":%" PRIu64 "}"
                                              : "{\"since\":%" PRIu64 "}",
                              w->sweep_started);
    } else if (w->sync_initial) {
        json_t *pos = w->sync_more ? json_pack("{s:s, s:s}", "entity", w->sync_entity, "after",
                                               w->sync_after ? w->sync_after : "")
                                   : json_pack("{s:s, s:s}", "entity", "deal", "after", "");
        text = json_dumps(pos, JSON_COMPACT);
        json_decref(pos);
    }
    if (text == NULL) {
        sync_finished(w, 0);
        return;
    }
    int rc = loyd_store_kv_put(w->env.store, w->tenant, key, text, sync_finished, w);
    free(text);
    if (rc != 0)
        sync_finished(w, rc);
}

static void on_sync_page(void *arg, int err, json_t *snapshots, bool more)
{
    struct loyd_worker *w = arg;
    size_t n = json_array_size(snapshots);

    if (err != 0 || !json_is_array(snapshots)) {
        json_decref(snapshots);
        /* Missing CRM settings were named once by the connector when the tenant opened; each
         * retry saying "invalid configuration" again would only bury that line. */
        if (err == LOYD_ECONFIG)
            loyd_log_debug(WORKER, "tenant=%s %s of %ss waits for the CRM settings", w->tenant,
                           w->sync_initial ? "start-up sync" : "sweep", w->sync_entity);
        else
            loyd_log_warn(WORKER, "tenant=%s %s of %ss failed: %s", w->tenant,
                          w->sync_initial ? "start-up sync" : "sweep", w->sync_entity,
                          loyd_strerror(err != 0 ? err : LOYD_EPLUGIN));
        lane_release(w, true);
        return;
    }
    w->stats.sync_pages++;
    w->sync_more = more && n > 0 && !w->closing;
    if (n > 0) {
        free(w->sync_after);
        w->sync_after = loyd_xstrdup(sfield(json_array_get(snapshots, n - 1), "id")
                                         ? sfield(json_array_get(snapshots, n - 1), "id")
                                         : "");
    }
    if (w->sync_initial && n > 0)
        loyd_log_info(WORKER, "tenant=%s start-up sync: %zu %ss up to id %s", w->tenant, n,
                      w->sync_entity, w->sync_after);
    json_t *lists[1] = {snapshots};
    json_t *items = snapshot_items(lists, 1);
    json_decref(snapshots);
    unit_start(w, items, w->sync_initial, sync_unit_done);
}

static void sync_page(struct loyd_worker *w)
{
    struct loyd_sync_request req = {
        .entity = w->sync_entity,
        .after_id = w->sync_after,
        .modified_since_ms = w->sync_initial ? 0 : w->sync_since,
    };
    if (w->closing) {
        lane_release(w, false);
        return;
    }
    int rc = w->env.ops->sync(w->env.conn, &req, on_sync_page, w);
    if (rc != 0)
        on_sync_page(w, rc, NULL, false);
}

/* The start-up sync if it never finished, else the sweep when due. */
static bool sync_start(struct loyd_worker *w)
{
    char *text = NULL;
    json_t *st;
    uint64_t now = now_ms(w);

    if (w->env.ops->sync == NULL || w->env.conn == NULL)
        return false;
    if (loyd_store_kv_get(w->env.store, w->tenant, "sync:initial", &text) != 0)
        return false;
    st = text != NULL ? json_loads(text, 0, NULL) : NULL;
    free(text);
    bool initial_done = json_is_true(json_object_get(st, "done"));
    if (!initial_done && w->opts.sync_on_start) {
        w->sync_initial = true;
        w->caught_up = true; /* the sync reads everything: nothing to catch up on after it */
        w->sync_entity = sfield(st, "entity") && strcmp(sfield(st, "entity"), "deal") == 0
                             ? "deal"
                             : "contact";
        free(w->sync_after);
        w->sync_after = sfield(st, "after") ? loyd_xstrdup(sfield(st, "after")) : NULL;
        w->sweep_started = now;
        json_decref(st);
        if (w->retry_wait_ms == 0) /* not again on each retry after a failure */
            loyd_log_notice(WORKER, "tenant=%s start-up sync: reading %ss", w->tenant,
                            w->sync_entity);
    } else {
        uint64_t since = (uint64_t)ifield(st, "at");
        json_decref(st);
        /* After any stop, clean or not, the CRM's webhooks of the downtime are lost (Bitrix24
         * never retries one): read what changed since the last sweep at once instead of at
         * the next interval, so a restart costs seconds, not minutes. */
        bool catch_up = !w->caught_up && initial_done;
        w->caught_up = true;
        if (!catch_up && (w->opts.sweep_interval_ms == 0 || now < w->next_sweep))
            return false;
        text = NULL;
        if (loyd_store_kv_get(w->env.store, w->tenant, "sync:sweep", &text) != 0)
            return false;
        st = text != NULL ? json_loads(text, 0, NULL) : NULL;
        free(text);
        if (json_is_integer(json_object_get(st, "since")))
            since = (uint64_t)ifield(st, "since");
        json_decref(st);
        /* Never swept nor synced: look back one interval. */
        if (since == 0)
            since = now > w->opts.sweep_interval_ms ? now - w->opts.sweep_interval_ms : 0;
        if (!catch_up && now < since + w->opts.sweep_interval_ms) {
            w->next_sweep = since + w->opts.sweep_interval_ms;
            return false;
        }
        w->next_sweep = now + w->opts.sweep_interval_ms;
        w->sync_initial = false;
        w->sync_entity = "contact";
        free(w->sync_after);
        w->sync_after = NULL;
        w->sync_since = since > SWEEP_MARGIN_MS ? since - SWEEP_MARGIN_MS : 0;
        w->sweep_started = now;
        char when[40];
        loyd_time_format((int64_t)w->sync_since, loyd_engine_tz_offset_min(w->env.engine), when);
        w->stats.catchups += catch_up;
        if (catch_up)
            loyd_log_notice(WORKER, "tenant=%s catching up after the start: CRM changes since %s",
                            w->tenant, when);
        else
            loyd_log_info(WORKER, "tenant=%s sweep: CRM changes since %s", w->tenant, when);
    }
    w->busy = true;
    w->job = JOB_SYNC;
    sync_page(w);
    return true;
}

/* ---- daily jobs ----------------------------------------------------------------------------- */

/* Whether a member born on @p birthday ("YYYY-MM-DD") has a birthday on @p today. */
static bool birthday_on(const char *birthday, const char *today)
{
    if (birthday == NULL || strlen(birthday) != 10)
        return false;
    if (strcmp(birthday + 5, today + 5) == 0)
        return true;
    /* 29 February birthdays are celebrated on 28 February in common years. */
    int year = atoi(today);
    bool leap = (year % 4 == 0 && year % 100 != 0) || year % 400 == 0;
    return !leap && strcmp(birthday + 5, "02-29") == 0 && strcmp(today + 5, "02-28") == 0;
}

static void sched_page(struct loyd_worker *w);

static void on_sched_day_stored(void *arg, int err)
{
    struct loyd_worker *w = arg;
    if (err == 0) {
        w->stats.scheduler_days++;
        loyd_log_info(WORKER, "tenant=%s daily jobs of %s done", w->tenant, w->sched_day);
    }
    lane_release(w, err != 0);
}

static void sched_unit_done(struct loyd_worker *w, int err)
{
    if (err != 0) {
        lane_release(w, true);
        return;
    }
    sched_page(w);
}

static void sched_page(struct loyd_worker *w)
{
    json_t *members = NULL, *m;
    size_t i;
    int rc;
    bool bday = loyd_engine_handles(w->env.engine, "birthday");
    bool tick = loyd_engine_handles(w->env.engine, "tick");
    uint64_t at = now_ms(w);

    if (w->closing) {
        lane_release(w, false);
        return;
    }
    rc = loyd_store_members_list(w->env.store, w->tenant, w->sched_after, MEMBERS_PAGE, &members);
    if (rc != 0) {
        lane_release(w, true);
        return;
    }
    if (json_array_size(members) == 0 || (!bday && !tick)) {
        json_decref(members);
        char *text = loyd_xasprintf("\"%s\"", w->sched_day);
        rc = loyd_store_kv_put(w->env.store, w->tenant, "sched:day", text, on_sched_day_stored, w);
        free(text);
        if (rc != 0)
            lane_release(w, true);
        return;
    }
    json_t *items = json_array();
    json_array_foreach(members, i, m)
    {
        const char *id = sfield(m, "member_id");
        const char *birthday = sfield(json_object_get(m, "profile"), "birthday");
        if (bday && birthday_on(birthday, w->sched_day)) {
            char *key = loyd_xasprintf("birthday:%s:%.4s", id, w->sched_day);
            json_array_append_new(
                items, json_pack("{s:{s:s, s:s, s:I, s:{s:s}}}", "event", "type", "birthday",
                                 "key", key, "at", (json_int_t)at, "contact", "id", id));
            free(key);
        }
        if (tick) {
            char *key = loyd_xasprintf("tick:%s:%s", id, w->sched_day);
            json_array_append_new(items,
                                  json_pack("{s:{s:s, s:s, s:I, s:s}}", "event", "type", "tick",
                                            "key", key, "at", (json_int_t)at, "member_id", id));
            free(key);
        }
    }
    free(w->sched_after);
    w->sched_after = loyd_xstrdup(sfield(json_array_get(members, json_array_size(members) - 1),
                                         "member_id"));
    json_decref(members);
    unit_start(w, items, false, sched_unit_done);
}

/* Starts the day's birthday and tick events once per day of the tenant's calendar. */
static bool sched_start(struct loyd_worker *w)
{
    char today[11], *done = NULL;
    json_t *d;

    loyd_date_format((int64_t)now_ms(w), loyd_engine_tz_offset_min(w->env.engine), today);
    if (strcmp(today, w->sched_day) == 0)
        return false;
    if (loyd_store_kv_get(w->env.store, w->tenant, "sched:day", &done) != 0)
        return false;
    d = done != NULL ? json_loads(done, JSON_DECODE_ANY, NULL) : NULL;
    free(done);
    bool already = json_is_string(d) && strcmp(json_string_value(d), today) >= 0;
    json_decref(d);
    if (already) {
        memcpy(w->sched_day, today, sizeof(today));
        return false;
    }
    memcpy(w->sched_day, today, sizeof(today));
    free(w->sched_after);
    w->sched_after = NULL;
    w->busy = true;
    w->job = JOB_SCHEDULE;
    loyd_log_info(WORKER, "tenant=%s daily jobs of %s", w->tenant, today);
    sched_page(w);
    return true;
}

/* ---- the processing lane ------------------------------------------------------------------ */

static void pump(struct loyd_worker *w)
{
    if (w->busy || w->closing || now_ms(w) < w->retry_at)
        return;
    /* The first sync before webhooks: they are judged against what the CRM already had. */
    if (sync_start(w) || rows_start(w) || sched_start(w))
        return;
}

/* ---- the write-back lane ------------------------------------------------------------------ */

static void write_release(struct loyd_worker *w)
{
    if (w->finishing > 0 || !w->writing)
        return;
    json_decref(w->w_rows);
    json_decref(w->w_items);
    free(w->w_ids);
    w->w_rows = w->w_items = NULL;
    w->w_ids = NULL;
    w->w_n = 0;
    w->writing = false;
    if (w->closing)
        maybe_closed(w);
    else
        wpump(w);
}

static void on_outbox_finished(void *arg, int err)
{
    struct loyd_worker *w = arg;
    if (err != 0 && err != -ENOENT)
        loyd_log_err(WORKER, "tenant=%s write-back not finished: %s", w->tenant,
                     loyd_strerror(err));
    w->finishing--;
    write_release(w);
}

static void outbox_finish(struct loyd_worker *w, int64_t id, const char *status, uint64_t at,
                          const char *error)
{
    w->finishing++;
    if (loyd_store_outbox_finish(w->env.store, id, status, at, error, on_outbox_finished, w) != 0)
        w->finishing--;
}

/* kv key of what loyd last wrote into a contact's own fields ("changed fields only"). */
static char *written_key(const char *contact)
{
    return loyd_xasprintf("written:contact:%s", contact);
}

static json_t *written_get(struct loyd_worker *w, const char *contact)
{
    char *key = written_key(contact), *text = NULL;
    json_t *o = NULL;
    if (loyd_store_kv_get(w->env.store, w->tenant, key, &text) == 0 && text != NULL)
        o = json_loads(text, 0, NULL);
    free(text);
    free(key);
    return json_is_object(o) ? o : (json_decref(o), json_object());
}

static json_t *task_item(struct loyd_worker *w, const json_t *p, const char *member)
{
    int64_t day = 0;
    const char *due = sfield(p, "due_on");
    int tz = loyd_engine_tz_offset_min(w->env.engine);
    uint64_t deadline = now_ms(w) + 24 * 3600 * 1000ULL;
    if (due != NULL && loyd_date_parse(due, tz, &day) == 0)
        deadline = (uint64_t)day + 18 * 3600 * 1000ULL; /* the end of that working day */
    json_t *o = json_pack("{s:s, s:s, s:s, s:O, s:I}", "op", "task", "entity", "contact", "id",
                          member, "title", json_object_get(p, "title"), "deadline_ms",
                          (json_int_t)deadline);
    if (json_object_get(p, "text") != NULL)
        json_object_set(o, "text", json_object_get(p, "text"));
    return o;
}

static json_t *offer_note(const json_t *p, const char *member)
{
    char what[64];
    if (json_is_integer(json_object_get(p, "discount_pct")))
        snprintf(what, sizeof(what), "%" PRId64 "%% off", ifield(p, "discount_pct"));
    else
        snprintf(what, sizeof(what), "%" PRId64 " off (minor units)",
                 ifield(p, "discount_amount"));
    const char *reason = sfield(p, "reason");
    char *text = loyd_xasprintf("Personal offer %s: %s, valid until %s%s%s%s.",
                                sfield(p, "code") ? sfield(p, "code") : "", what,
                                sfield(p, "valid_until") ? sfield(p, "valid_until") : "?",
                                reason ? " (" : "", reason ? reason : "", reason ? ")" : "");
    json_t *o = json_pack("{s:s, s:s, s:s, s:s}", "op", "note", "entity", "contact", "id", member,
                          "text", text);
    free(text);
    return o;
}

/*
 * The connector item for one outbox row, or NULL when there is nothing to write (the fields
 * already show these values) or the row cannot be written (*why set).
 */
static json_t *outbox_item(struct loyd_worker *w, const json_t *row, const char **why)
{
    const json_t *p = json_object_get(row, "payload");
    const char *op = sfield(p, "op"), *member = sfield(row, "member_id");
    json_t *item = NULL;

    *why = NULL;
    if (op == NULL) {
        *why = "write-back without an op";
        return NULL;
    }
    if (strcmp(op, "deal.mark") == 0) {
        if (!json_is_string(json_object_get(p, "deal_id")) ||
            !json_is_integer(json_object_get(p, "awarded"))) {
            *why = "deal.mark without a deal id and points";
            return NULL;
        }
        json_t *mark = json_pack("{s:s, s:O, s:o}", "op", "deal.mark", "deal_id",
                                 json_object_get(p, "deal_id"), "awarded",
                                 loyd_points_json(ifield(p, "awarded"), unit_of(w)));
        /* Items queued before "redeemed" existed carry the net in "awarded" only. */
        if (json_is_integer(json_object_get(p, "redeemed")))
            json_object_set_new(mark, "redeemed",
                                loyd_points_json(ifield(p, "redeemed"), unit_of(w)));
        return mark;
    }
    if (member == NULL) {
        *why = "write-back without a member";
        return NULL;
    }
    if (strcmp(op, "contact.fields") == 0 || strcmp(op, "member.refresh") == 0) {
        json_t *fields;
        if (strcmp(op, "member.refresh") == 0) {
            /* The referrer's card: the values now, not when the event was applied. */
            int64_t bal = 0;
            json_t *m = NULL;
            if (loyd_store_balance(w->env.store, w->tenant, member, &bal) != 0) {
                *why = "cannot read the balance";
                return NULL;
            }
            fields = json_pack("{s:I}", "balance", (json_int_t)bal);
            if (loyd_store_member_get(w->env.store, w->tenant, member, &m) == 0) {
                json_t *tier = json_object_get(json_object_get(m, "profile"), "tier");
                if (json_is_string(tier))
                    json_object_set(fields, "tier", tier);
            }
            json_decref(m);
        } else {
            fields = json_deep_copy(json_object_get(p, "fields"));
        }
        bool repair = json_is_true(json_object_get(p, "repair"));
        /* The card shows points as people count them; the ledger's units stay inside. */
        if (json_is_integer(json_object_get(fields, "balance")))
            json_object_set_new(fields, "balance",
                                loyd_points_json(ifield(fields, "balance"), unit_of(w)));
        /* Changed fields only: what loyd wrote last is what the card shows. */
        json_t *written = written_get(w, member);
        const char *k;
        json_t *v, *tmp;
        json_object_foreach_safe(fields, tmp, k, v)
        {
            /* A repair is sent anyway: the card no longer shows what loyd wrote. */
            if (!repair && json_equal(json_object_get(written, k), v))
                json_object_del(fields, k);
        }
        json_decref(written);
        if (json_object_size(fields) == 0) {
            json_decref(fields);
            return NULL;
        }
        item = json_pack("{s:s, s:s, s:o}", "op", "contact.fields", "contact_id", member,
                         "fields", fields);
        if (repair)
            json_object_set_new(item, "repair", json_true());
    } else if (strcmp(op, "note") == 0) {
        item = json_pack("{s:s, s:s, s:s, s:O}", "op", "note", "entity", "contact", "id", member,
                         "text", json_object_get(p, "text"));
    } else if (strcmp(op, "task") == 0) {
        item = task_item(w, p, member);
    } else if (strcmp(op, "offer") == 0) {
        item = offer_note(p, member);
    } else {
        *why = "unknown write-back op";
    }
    return item;
}

/*
 * Records what the card shows now that a write landed: the values, the few values each field
 * held before (so a read that raced this write is not taken for a hand edit) and, for a
 * repair, what was put back (so a field that cannot hold a value is not fought over).
 */
static void written_store(struct loyd_worker *w, const json_t *item)
{
    const char *member = sfield(item, "contact_id");
    json_t *written = written_get(w, member), *fields = json_object_get(item, "fields");
    json_t *hist = json_object_get(written, "~hist"), *v;
    const char *k;
    if (!json_is_object(hist)) {
        hist = json_object();
        json_object_set_new(written, "~hist", hist);
    }
    json_object_foreach(fields, k, v)
    {
        json_t *old = json_object_get(written, k), *h = json_object_get(hist, k);
        if (old == NULL || json_equal(old, v))
            continue;
        if (!json_is_array(h)) {
            h = json_array();
            json_object_set_new(hist, k, h);
        }
        json_array_append(h, old);
        while (json_array_size(h) > WRITTEN_HISTORY)
            json_array_remove(h, 0);
    }
    if (json_is_true(json_object_get(item, "repair"))) {
        json_t *rep = json_object_get(written, "~repaired");
        if (!json_is_object(rep)) {
            rep = json_object();
            json_object_set_new(written, "~repaired", rep);
        }
        json_object_update(rep, fields);
    } else {
        json_object_del(written, "~repaired"); /* a new value: it may be put back again */
    }
    json_object_update(written, fields);
    char *key = written_key(member), *text = json_dumps(written, JSON_COMPACT | JSON_SORT_KEYS);
    w->finishing++;
    if (loyd_store_kv_put(w->env.store, w->tenant, key, text, on_outbox_finished, w) != 0)
        w->finishing--;
    free(text);
    free(key);
    json_decref(written);
}

static void on_written(void *arg, const int *results, size_t n)
{
    struct loyd_worker *w = arg;
    uint64_t now = now_ms(w);
    bool rate = false;

    if (w->observer.write != NULL)
        w->observer.write(w->observer.arg, w->tenant, w->w_items, results, n);
    for (size_t i = 0; i < w->w_n; i++) {
        json_t *row = json_array_get(w->w_rows, i), *item = json_array_get(w->w_items, i);
        int r = i < n ? results[i] : LOYD_EPLUGIN;
        int64_t attempts = ifield(row, "attempts") + 1;
        if (r == 0) {
            w->stats.writes_done++;
            if (strcmp(sfield(item, "op"), "contact.fields") == 0)
                written_store(w, item);
            outbox_finish(w, w->w_ids[i], "done", 0, NULL);
        } else if (transient(r) &&
                   (r == LOYD_ERATE || r == LOYD_ETOKEN || attempts < w->opts.max_attempts)) {
            /* A limit or a revoked token is the portal's state, not the item's fault. */
            uint64_t wait = FIRST_RETRY_MS;
            for (int64_t a = 1; a < attempts && wait < w->opts.retry_max_ms; a++)
                wait *= 2;
            if (wait > w->opts.retry_max_ms)
                wait = w->opts.retry_max_ms;
            rate = rate || r == LOYD_ERATE;
            w->stats.writes_retried++;
            outbox_finish(w, w->w_ids[i], "retry", now + wait, loyd_strerror(r));
        } else {
            w->stats.writes_dead++;
            loyd_log_warn(WORKER, "tenant=%s write-back %" PRId64 " (%s) is a dead letter: %s",
                          w->tenant, w->w_ids[i], sfield(item, "op"), loyd_strerror(r));
            outbox_finish(w, w->w_ids[i], "dead", 0, loyd_strerror(r));
        }
    }
    if (rate) {
        w->write_wait_ms = next_wait(w->write_wait_ms, w->opts.retry_max_ms);
        w->write_retry_at = now + w->write_wait_ms;
    } else {
        w->write_wait_ms = 0;
    }
    write_release(w);
}

static void on_marked_sending(void *arg, int err)
{
    struct loyd_worker *w = arg;
    int rc;

    w->finishing--;
    if (err != 0 || w->closing) {
        /* Not marked (or stopping): nothing was sent; the items stay pending. */
        write_release(w);
        return;
    }
    w->stats.write_calls++;
    rc = w->env.ops->write(w->env.conn, w->w_items, on_written, w);
    if (rc != 0) {
        int *res = loyd_xcalloc(w->w_n, sizeof(*res));
        for (size_t i = 0; i < w->w_n; i++)
            res[i] = rc;
        on_written(w, res, w->w_n);
        free(res);
    }
}

static void wpump(struct loyd_worker *w)
{
    struct loyd_rate_policy rp = {.max_batch = 50};
    json_t *rows = NULL, *row;
    size_t i;

    if (w->writing || w->closing || w->env.ops->write == NULL || w->env.conn == NULL ||
        now_ms(w) < w->write_retry_at)
        return;
    if (w->env.ops->rate_policy != NULL)
        w->env.ops->rate_policy(w->env.conn, &rp);
    if (rp.max_batch == 0)
        rp.max_batch = 1;
    if (loyd_store_outbox_pending(w->env.store, w->tenant, now_ms(w), rp.max_batch, &rows) != 0 ||
        json_array_size(rows) == 0) {
        json_decref(rows);
        return;
    }
    /*
     * A call that is not full waits up to one request interval of the CRM's limit for more
     * items: under a backlog the calls fill up (the limit counts calls, not updates), and an
     * idle tenant's single update is late by that interval (and a poll tick) at most.
     */
    uint64_t now = now_ms(w);
    if (json_array_size(rows) < rp.max_batch && rp.per_sec_milli > 0) {
        if (w->write_linger_until == 0) {
            uint64_t interval = 1000000 / rp.per_sec_milli;
            /* Checked again on the next kick or poll tick (worker.poll_ms). */
            w->write_linger_until = now + (interval > 1000 ? 1000 : interval);
        }
        if (now < w->write_linger_until) {
            json_decref(rows);
            return;
        }
    }
    w->write_linger_until = 0;
    w->writing = true;
    w->w_rows = json_array();
    w->w_items = json_array();
    w->w_ids = loyd_xcalloc(json_array_size(rows), sizeof(*w->w_ids));
    json_array_foreach(rows, i, row)
    {
        const char *why;
        int64_t id = ifield(row, "id");
        json_t *item = outbox_item(w, row, &why);
        if (item == NULL) {
            if (why != NULL) {
                w->stats.writes_dead++;
                loyd_log_warn(WORKER, "tenant=%s write-back %" PRId64 " is a dead letter: %s",
                              w->tenant, id, why);
                outbox_finish(w, id, "dead", 0, why);
            } else {
                w->stats.writes_skipped++;
                outbox_finish(w, id, "done", 0, "the CRM already shows these values");
            }
            continue;
        }
        char uid[96];
        snprintf(uid, sizeof(uid), "%s-%" PRId64, w->tenant, id);
        json_object_set_new(item, "uid", json_string(uid));
        if (ifield(row, "sending") != 0)
            json_object_set_new(item, "uncertain", json_true());
        json_array_append(w->w_rows, row);
        json_array_append_new(w->w_items, item);
        w->w_ids[w->w_n++] = id;
    }
    json_decref(rows);
    if (w->w_n == 0) {
        write_release(w);
        return;
    }
    /* Durably "may have been sent" before it is: after a crash it is re-sent with care. */
    w->finishing++;
    if (loyd_store_outbox_sending(w->env.store, w->w_ids, w->w_n, on_marked_sending, w) != 0) {
        w->finishing--;
        write_release(w);
    }
}

/* ---- life cycle ---------------------------------------------------------------------------- */

static void on_timer(uv_timer_t *t)
{
    struct loyd_worker *w = t->data;
    pump(w);
    wpump(w);
}

struct loyd_worker *loyd_worker_create(const struct loyd_worker_env *env,
                                       const struct loyd_worker_opts *opts)
{
    struct loyd_worker *w = loyd_xcalloc(1, sizeof(*w));
    w->env = *env;
    w->opts = *opts;
    w->tenant = loyd_xstrdup(env->tenant);
    w->env.tenant = w->tenant;
    if (w->opts.batch == 0)
        w->opts.batch = 1;
    if (w->opts.max_attempts == 0)
        w->opts.max_attempts = 1;
    if (w->opts.poll_ms == 0)
        w->opts.poll_ms = 1000;
    uv_timer_init(env->loop, &w->timer);
    w->timer.data = w;
    uv_timer_start(&w->timer, on_timer, 0, w->opts.poll_ms);
    return w;
}

void loyd_worker_kick(struct loyd_worker *w)
{
    if (w == NULL || w->closing)
        return;
    pump(w);
    wpump(w);
}

void loyd_worker_set_observer(struct loyd_worker *w, const struct loyd_worker_observer *o)
{
    w->observer = o != NULL ? *o : (struct loyd_worker_observer){0};
}

bool loyd_worker_writing(const struct loyd_worker *w)
{
    return w->writing || w->finishing > 0;
}

bool loyd_worker_idle(const struct loyd_worker *w)
{
    return !w->busy && !w->writing && w->finishing == 0;
}

void loyd_worker_stats(const struct loyd_worker *w, struct loyd_worker_stats *out)
{
    *out = w->stats;
}

void loyd_worker_close(struct loyd_worker *w, void (*cb)(void *arg), void *arg)
{
    w->closing = true;
    w->close_cb = cb;
    w->close_arg = arg;
    uv_timer_stop(&w->timer);
    if (!uv_is_closing((uv_handle_t *)&w->timer))
        uv_close((uv_handle_t *)&w->timer, timer_closed);
    maybe_closed(w);
}

static void worker_free(struct loyd_worker *w)
{
    batch_free(&w->batch);
    json_decref(w->unit.items);
    json_decref(w->w_rows);
    json_decref(w->w_items);
    free(w->w_ids);
    free(w->sync_after);
    free(w->sched_after);
    free(w->tenant);
    free(w);
}

void loyd_worker_destroy(struct loyd_worker *w)
{
    if (w == NULL)
        return;
    if (w->timer_closed) {
        worker_free(w);
        return;
    }
    /* The timer's close callback still has to run: free from there. */
    w->close_cb = NULL;
    w->closing = true;
    w->destroy_pending = true;
    if (!uv_is_closing((uv_handle_t *)&w->timer))
        uv_close((uv_handle_t *)&w->timer, timer_closed);
}
