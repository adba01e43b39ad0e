/* SPDX-License-Identifier: MIT */
/* The host step: one canonical event -> rules -> one store transaction (engine.h). */
#include "engine.h"

#include <errno.h>
#include <stdlib.h>
#include <string.h>

#include "ledger.h"
#include "log.h"
#include "pack.h"
#include "rules.h"

struct loyd_engine {
    char *tenant;
    struct loyd_pack *pack;
    struct loyd_rules *rules;
    json_t *settings;
    int tz_offset_min;
};

int loyd_engine_create(const char *tenant, const char *pack_dir, const char *search_path,
                       const json_t *settings_overrides, int tz_offset_min,
                       const struct loyd_sandbox_limits *lim, struct loyd_engine **out,
                       struct loyd_buf *err)
{
    *out = NULL;
    if (tenant == NULL || tenant[0] == '\0' || pack_dir == NULL) {
        loyd_buf_printf(err, "engine: a tenant and a pack directory are required");
        return -EINVAL;
    }
    struct loyd_engine *e = loyd_xcalloc(1, sizeof(*e));
    e->tenant = loyd_xstrdup(tenant);
    e->tz_offset_min = tz_offset_min;
    int rc = loyd_pack_load(pack_dir, search_path, &e->pack, err);
    if (rc == 0)
        rc = loyd_pack_settings(e->pack, settings_overrides, tenant, &e->settings, err);
    if (rc == 0)
        rc = loyd_rules_create(e->pack, lim, &e->rules, err);
    if (rc != 0) {
        loyd_engine_destroy(e);
        return rc;
    }
    *out = e;
    return 0;
}

void loyd_engine_destroy(struct loyd_engine *e)
{
    if (e == NULL)
        return;
    loyd_rules_destroy(e->rules);
    loyd_pack_destroy(e->pack);
    json_decref(e->settings);
    free(e->tenant);
    free(e);
}

bool loyd_engine_handles(const struct loyd_engine *e, const char *type)
{
    return loyd_rules_handles(e->rules, type);
}

int loyd_engine_tz_offset_min(const struct loyd_engine *e)
{
    return e->tz_offset_min;
}

const char *loyd_engine_tenant(const struct loyd_engine *e)
{
    return e->tenant;
}

const json_t *loyd_engine_settings(const struct loyd_engine *e)
{
    return e->settings;
}

const char *loyd_engine_pack_version(const struct loyd_engine *e)
{
    return e->pack->version;
}

const struct loyd_points_unit *loyd_engine_points_unit(const struct loyd_engine *e)
{
    return &e->pack->points;
}

static const char *sfield(const json_t *o, const char *k)
{
    return json_string_value(json_object_get(o, k));
}

static int64_t ifield(const json_t *o, const char *k)
{
    return (int64_t)json_integer_value(json_object_get(o, k));
}

/* The member an event is about: contact.id, deal.contact_id, member_id. */
static const char *event_member(const json_t *ev)
{
    const char *m = sfield(json_object_get(ev, "contact"), "id");
    if (m == NULL)
        m = sfield(json_object_get(ev, "deal"), "contact_id");
    if (m == NULL)
        m = sfield(ev, "member_id");
    return m != NULL && m[0] != '\0' ? m : NULL;
}

const char *loyd_engine_event_member(const json_t *event)
{
    return json_is_object(event) ? event_member(event) : NULL;
}

int loyd_engine_ledger_entries(const json_t *rows, const char *member_id,
                               struct loyd_ledger_entry **out, size_t *n, struct loyd_buf *err)
{
    size_t nl = json_array_size(rows), i;
    struct loyd_ledger_entry *lent = loyd_xcalloc(nl > 0 ? nl : 1, sizeof(*lent));
    const json_t *x;

    json_array_foreach(rows, i, x)
    {
        const char *rm = sfield(x, "member_id");
        lent[i] = (struct loyd_ledger_entry){
            .member_id = rm != NULL && member_id != NULL && strcmp(rm, member_id) != 0 ? rm : NULL,
            .points = ifield(x, "points"),
            .kind = sfield(x, "kind"),
            .reason = sfield(x, "reason"),
            .expires_ms = ifield(x, "expires_ms") > 0 ? (uint64_t)ifield(x, "expires_ms") : 0,
            .lot_id = ifield(x, "lot_id"),
            .ref = sfield(x, "ref"),
            .provisional_id = ifield(x, "id"),
            .campaign = sfield(x, "campaign"),
        };
        /* The store's own rules (it checks them again, for every other writer). */
        const char *why = loyd_ledger_entry_check(lent[i].kind, lent[i].points, lent[i].lot_id);
        if (why == NULL && lent[i].member_id == NULL && member_id == NULL)
            why = "it names no member";
        if (why != NULL) {
            loyd_buf_printf(err, "ledger row %zu (%s, %lld points, lot %lld) would be refused by "
                            "the store: %s", i, lent[i].kind != NULL ? lent[i].kind : "no kind",
                            (long long)lent[i].points, (long long)lent[i].lot_id, why);
            free(lent);
            *out = NULL;
            *n = 0;
            return -EINVAL;
        }
    }
    *out = lent;
    *n = nl;
    return 0;
}

/* Store rows -> the ledger.h shape (null -> 0, created_ms -> at). */
static json_t *ledger_rows(const json_t *stored)
{
    json_t *rows = json_array(), *r;
    size_t i;
    json_array_foreach(stored, i, r)
    {
        json_t *o =
            json_pack("{s:I, s:s?, s:s?, s:I, s:I, s:I, s:I}", "id", (json_int_t)ifield(r, "id"),
                      "member_id", sfield(r, "member_id"), "kind", sfield(r, "kind"), "points",
                      (json_int_t)ifield(r, "points"), "at", (json_int_t)ifield(r, "created_ms"),
                      "expires_ms", (json_int_t)ifield(r, "expires_ms"), "lot_id",
                      (json_int_t)ifield(r, "lot_id"));
        if (o == NULL) {
            json_decref(rows);
            return NULL;
        }
        if (sfield(r, "reason") != NULL)
            json_object_set(o, "reason", json_object_get(r, "reason"));
        if (sfield(r, "ref") != NULL)
            json_object_set(o, "ref", json_object_get(r, "ref"));
        if (sfield(r, "campaign") != NULL)
            json_object_set(o, "campaign", json_object_get(r, "campaign"));
        json_array_append_new(rows, o);
    }
    return rows;
}

/* The rules' member input from the stored profile (and the event's contact). */
static json_t *member_input(const char *mid, const json_t *profile, const json_t *ev)
{
    static const char *const keys[] = {
        "tier",   "birthday", "referrer",   "attributes", "last_birthday_offer_year",
        "offers", "counters", "counter_log"};
    json_t *m = json_pack("{s:s}", "id", mid);
    const json_t *contact = json_object_get(ev, "contact");
    for (size_t i = 0; i < sizeof(keys) / sizeof(keys[0]); i++) {
        json_t *v = json_object_get(profile, keys[i]);
        json_t *cv = json_object_get(contact, keys[i]);
        /* The CRM owns the birthday; the referrer is kept once known. */
        if ((i == 1 && cv != NULL && !json_is_null(cv)) ||
            ((v == NULL || json_is_null(v)) && i == 2))
            v = cv;
        if (v != NULL && !json_is_null(v))
            json_object_set(m, keys[i], v);
    }
    return m;
}

/* The new profile: the old one with the rules' member updates and the purchase applied. */
static json_t *member_profile(const json_t *old, const json_t *member_in, const json_t *res)
{
    json_t *p = json_is_object(old) ? json_deep_copy(old) : json_object();
    const char *k;
    json_t *v;
    /* Keep what the event told us about the contact (the birthday as the CRM has it now). */
    json_object_foreach((json_t *)member_in, k, v)
    {
        if (strcmp(k, "id") != 0 && (json_object_get(p, k) == NULL || strcmp(k, "birthday") == 0))
            json_object_set(p, k, v);
    }
    json_object_foreach(json_object_get(res, "member"), k, v)
    {
        if (strcmp(k, "attributes") == 0 && json_is_object(v)) {
            json_t *a = json_object_get(p, "attributes");
            if (!json_is_object(a)) {
                a = json_object();
                json_object_set_new(p, "attributes", a);
            }
            json_object_update(a, v);
        } else {
            json_object_set(p, k, v);
        }
    }
    json_t *pu = json_object_get(res, "purchase");
    if (json_is_object(pu)) {
        json_t *list = json_object_get(p, "purchases");
        if (!json_is_array(list)) {
            list = json_array();
            json_object_set_new(p, "purchases", list);
        }
        json_t *deal = json_object_get(pu, "deal_id");
        for (size_t j = json_array_size(list); j-- > 0;)
            if (json_equal(json_object_get(json_array_get(list, j), "deal_id"), deal))
                json_array_remove(list, j);
        if (sfield(pu, "op") != NULL && strcmp(sfield(pu, "op"), "add") == 0) {
            json_t *np = json_deep_copy(pu);
            json_object_del(np, "op");
            json_array_append_new(list, np);
        }
    }
    return p;
}

/* What reverse{ref} reaches beyond the event's member (rules.h loyd_rules_ref_ledgers_fn). */
struct ref_ctx {
    struct loyd_engine *e;
    struct loyd_store *s;
    const char *self;
};

static int ref_ledgers(void *arg, const char *ref, json_t **out)
{
    struct ref_ctx *c = arg;
    json_t *byref = NULL, *r;
    size_t i;
    int rc = loyd_store_ledger_by_ref(c->s, c->e->tenant, ref, &byref);

    *out = json_object();
    json_array_foreach(byref, i, r)
    {
        const char *mid = sfield(r, "member_id");
        json_t *stored = NULL, *rows;
        if (rc != 0 || mid == NULL || strcmp(mid, c->self) == 0 ||
            json_object_get(*out, mid) != NULL)
            continue;
        if ((rc = loyd_store_ledger_list(c->s, c->e->tenant, mid, &stored)) != 0)
            break;
        rows = ledger_rows(stored);
        json_decref(stored);
        if (rows == NULL) {
            rc = -EINVAL;
            break;
        }
        json_object_set_new(*out, mid, rows);
    }
    json_decref(byref);
    if (rc != 0) {
        json_decref(*out);
        *out = NULL;
    }
    return rc;
}

struct fail_ctx {
    loyd_store_cb cb;
    void *arg;
    int rc;
};

static void on_dead_letter(void *arg, int err)
{
    struct fail_ctx *f = arg;
    if (f->cb != NULL)
        f->cb(f->arg, err != 0 ? err : f->rc);
    free(f);
}

/*
 * An event the rules evaluated but that cannot be applied as it is (bad stored data, a ledger
 * row the store would refuse, the store refused it): nothing of it is applied, so it must not
 * vanish either.  Logs @p why at error level and stores it as a dead letter (kind "event",
 * ref = the event key); @p cb gets -EINVAL once that is stored.  @return 0 or the dead letter's
 * submit error (then cb is not called).
 */
static int refuse(struct loyd_engine *e, struct loyd_store *s, const char *key,
                  const char *event_text, const char *why, loyd_store_cb cb, void *arg)
{
    loyd_log_err(CORE, "tenant=%s event %s refused (dead letter): %s", e->tenant, key, why);
    struct fail_ctx *f = loyd_xmalloc(sizeof(*f));
    *f = (struct fail_ctx){cb, arg, -EINVAL};
    int rc = loyd_store_dead_letter(s, e->tenant, "event", key, event_text, why, on_dead_letter, f);
    if (rc != 0)
        free(f);
    return rc;
}

/* One apply in flight: what a refusal by the store's transaction needs for its dead letter. */
struct apply_ctx {
    struct loyd_engine *e;
    struct loyd_store *s;
    char *key, *event_text;
    loyd_store_cb cb;
    void *arg;
};

static void on_apply_done(void *arg, int err)
{
    struct apply_ctx *c = arg;

    if (err == -EINVAL) {
        /* The database refused the values (a CHECK or a foreign key; the store logged which). */
        if (refuse(c->e, c->s, c->key, c->event_text,
                   "the store refused the event's rows (a database constraint; see its log)",
                   c->cb, c->arg) != 0 &&
            c->cb != NULL)
            c->cb(c->arg, err);
    } else if (c->cb != NULL) {
        c->cb(c->arg, err);
    }
    free(c->key);
    free(c->event_text);
    free(c);
}

static uint64_t seed_of(const char *key)
{
    uint64_t h = 1469598103934665603ULL;
    for (const unsigned char *p = (const unsigned char *)key; *p; p++)
        h = (h ^ *p) * 1099511628211ULL;
    return h;
}

/* Adds one row of the deal to what it earned and what was paid with points (ledger.c's kinds:
 * award and reverse rows are the deal's points, redeem and adjust rows the points spent on it
 * and given back by a reversal). */
static void deal_row(const json_t *r, int64_t *earned, int64_t *redeemed)
{
    const char *kind = sfield(r, "kind");
    if (kind != NULL && (strcmp(kind, "redeem") == 0 || strcmp(kind, "adjust") == 0))
        *redeemed -= ifield(r, "points");
    else
        *earned += ifield(r, "points");
}

/*
 * What the deal's card shows after this event, from its stored rows plus the new ones with its
 * ref: the points it earned and the points it was paid with, apart (a net of the two would show
 * -1,360 on a deal that earned 140 and was paid 1,500).
 */
static json_t *deal_mark(const json_t *ev, const char *mid, const json_t *stored,
                         const json_t *new_rows)
{
    const char *type = sfield(ev, "type");
    const char *deal = sfield(json_object_get(ev, "deal"), "id");
    int64_t earned = 0, redeemed = 0;
    const json_t *r;
    size_t i;

    if (deal == NULL || (strcmp(type, "deal.won") != 0 && strcmp(type, "deal.reopened") != 0))
        return NULL;
    /* A deleted deal has no card to mark: the write would only fail, and deleting a deal is
     * an ordinary CRM action, not an error. */
    if (sfield(ev, "reason") != NULL && strcmp(sfield(ev, "reason"), "deleted") == 0)
        return NULL;
    json_array_foreach(stored, i, r)
        if (sfield(r, "ref") != NULL && strcmp(sfield(r, "ref"), deal) == 0)
            deal_row(r, &earned, &redeemed);
    json_array_foreach(new_rows, i, r)
        if (sfield(r, "ref") != NULL && strcmp(sfield(r, "ref"), deal) == 0 &&
            (sfield(r, "member_id") == NULL || strcmp(sfield(r, "member_id"), mid) == 0))
            deal_row(r, &earned, &redeemed);
    return json_pack("{s:s, s:s, s:I, s:I}", "op", "deal.mark", "deal_id", deal, "awarded",
                     (json_int_t)earned, "redeemed", (json_int_t)redeemed);
}

int loyd_engine_process(struct loyd_engine *e, struct loyd_store *s, const json_t *event,
                        int64_t inbox_id, loyd_store_cb cb, void *arg)
{
    return loyd_engine_process_state(e, s, event, inbox_id, NULL, NULL, cb, arg);
}

int loyd_engine_process_state(struct loyd_engine *e, struct loyd_store *s, const json_t *event,
                              int64_t inbox_id, const char *state_key, const char *state_json,
                              loyd_store_cb cb, void *arg)
{
    if (e == NULL || s == NULL || !json_is_object(event))
        return -EINVAL;
    const char *type = sfield(event, "type"), *key = sfield(event, "key");
    const char *mid = event_member(event);
    if (type == NULL || key == NULL || key[0] == '\0' || mid == NULL ||
        !loyd_rules_event_known(type))
        return -EINVAL;

    json_t *ev = json_deep_copy(event), *stored_member = NULL, *stored_rows = NULL;
    json_t *rows = NULL, *min = NULL, *res = NULL, *profile = NULL, *trace = NULL;
    json_t *campaigns = NULL;
    char *event_text = NULL, *member_text = NULL, *trace_text = NULL;
    struct loyd_ledger_entry *lent = NULL;
    struct loyd_outbox_item *oitems = NULL;
    char **otexts = NULL;
    size_t nl = 0, no = 0;
    if (!json_is_integer(json_object_get(ev, "at")))
        json_object_set_new(ev, "at", json_integer((json_int_t)loyd_wall_ms()));

    int rc = loyd_store_member_get(s, e->tenant, mid, &stored_member);
    if (rc == -ENOENT)
        rc = 0;
    if (rc != 0)
        goto out;
    const json_t *old_profile = json_object_get(stored_member, "profile");
    if ((rc = loyd_store_ledger_list(s, e->tenant, mid, &stored_rows)) != 0)
        goto out;
    if ((rows = ledger_rows(stored_rows)) == NULL) {
        rc = -EINVAL;
        goto out;
    }
    /* Budgets are tenant-wide: what every member's awards drew from each campaign so far. */
    if ((rc = loyd_store_campaign_totals(s, e->tenant, &campaigns)) != 0)
        goto out;
    min = member_input(mid, old_profile, ev);
    json_t *purchases = json_object_get(old_profile, "purchases");
    struct ref_ctx rctx = {e, s, mid};
    struct loyd_rules_input in = {
        .event = ev,
        .member = min,
        .ledger = rows,
        .purchases = json_is_array(purchases) ? purchases : NULL,
        .settings = e->settings,
        .settings_stable = true, /* e->settings lives and dies with e->rules */
        .campaign_totals = campaigns,
        .tz_offset_min = e->tz_offset_min,
        .seed = seed_of(key),
        .ref_ledgers = ref_ledgers,
        .ref_arg = &rctx,
    };
    rc = loyd_rules_eval(e->rules, &in, &res);
    event_text = json_dumps(ev, JSON_COMPACT);
    if (rc == LOYD_ERULE || rc == LOYD_EBUDGET || rc == LOYD_ERULEMEM || rc == LOYD_EEFFECT) {
        struct fail_ctx *f = loyd_xmalloc(sizeof(*f));
        *f = (struct fail_ctx){cb, arg, rc};
        const char *msg = sfield(res, "error");
        char *ref = loyd_xasprintf("%s", key);
        int drc = loyd_store_dead_letter(s, e->tenant, "event", ref, event_text,
                                         msg != NULL ? msg : loyd_strerror(rc), on_dead_letter, f);
        free(ref);
        if (drc != 0) {
            free(f);
            rc = drc;
        } else {
            rc = 0;
        }
        goto out;
    }
    if (rc == -EINVAL) {
        /* The member's stored data or the event's fields are not what the rules take. */
        const char *msg = sfield(res, "error");
        rc = refuse(e, s, key, event_text, msg != NULL ? msg : "the rules refused the input", cb,
                    arg);
        goto out;
    }
    if (rc != 0)
        goto out;

    /* Ledger rows, checked as the store will check them. */
    json_t *lrows = json_object_get(res, "ledger"), *x;
    size_t i;
    struct loyd_buf why = {0};
    if (loyd_engine_ledger_entries(lrows, mid, &lent, &nl, &why) != 0) {
        rc = refuse(e, s, key, event_text, why.data, cb, arg);
        loyd_buf_free(&why);
        goto out;
    }
    /* Write-backs. */
    json_t *ob = json_object_get(res, "outbox");
    json_t *mark = deal_mark(ev, mid, stored_rows, lrows);
    if (mark != NULL)
        json_array_append_new(ob, mark);
    no = json_array_size(ob);
    oitems = loyd_xcalloc(no > 0 ? no : 1, sizeof(*oitems));
    otexts = loyd_xcalloc(no > 0 ? no : 1, sizeof(*otexts));
    json_array_foreach(ob, i, x)
    {
        otexts[i] = json_dumps(x, JSON_COMPACT);
        oitems[i].member_id = sfield(x, "member_id");
        oitems[i].payload_json = otexts[i];
    }
    profile = member_profile(old_profile, min, res);
    member_text = json_dumps(profile, JSON_COMPACT);
    trace = json_deep_copy(json_object_get(res, "trace"));
    if (!json_is_object(trace)) {
        json_decref(trace);
        trace = json_object();
    }
    json_object_set(trace, "accepted", json_object_get(res, "accepted"));
    json_object_set(trace, "rejected", json_object_get(res, "rejected"));
    json_object_set(trace, "balance_before", json_object_get(res, "balance_before"));
    json_object_set(trace, "balance", json_object_get(res, "balance"));
    trace_text = json_dumps(trace, JSON_COMPACT);

    struct loyd_apply a = {
        .tenant = e->tenant,
        .event_key = key,
        .event_type = type,
        .event_json = event_text,
        .inbox_id = inbox_id,
        .member_id = mid,
        .member_json = member_text,
        .ledger = lent,
        .n_ledger = nl,
        .outbox = oitems,
        .n_outbox = no,
        .trace_json = trace_text,
        .pack_version = e->pack->version,
        .applied_ms = (uint64_t)ifield(ev, "at"),
        .state_key = state_key,
        .state_json = state_json,
    };
    struct apply_ctx *ac = loyd_xmalloc(sizeof(*ac));
    *ac = (struct apply_ctx){e, s, loyd_xstrdup(key), event_text, cb, arg};
    event_text = NULL; /* the context owns it now */
    rc = loyd_store_apply(s, &a, on_apply_done, ac);
    if (rc != 0) {
        event_text = ac->event_text;
        free(ac->key);
        free(ac);
    }
    if (rc == -EINVAL) /* the store logged which row and why */
        rc = refuse(e, s, key, event_text,
                    "the store refused the event's rows (kind, sign, lot or member; see its log)",
                    cb, arg);

out:
    for (size_t j = 0; otexts != NULL && j < no; j++)
        free(otexts[j]);
    free(otexts);
    free(oitems);
    free(lent);
    free(event_text);
    free(member_text);
    free(trace_text);
    json_decref(trace);
    json_decref(profile);
    json_decref(res);
    json_decref(min);
    json_decref(rows);
    json_decref(stored_rows);
    json_decref(stored_member);
    json_decref(campaigns);
    json_decref(ev);
    return rc;
}
