/* SPDX-License-Identifier: MIT */
/*
 * write: loyd's changes onto the portal.  contact.fields -> crm.contact.update of loyd's own
 * UF_CRM_LOYD_* fields; note -> crm.timeline.comment.add; task -> crm.activity.todo.add;
 * deal.mark -> crm.deal.update of UF_CRM_LOYD_AWARDED (the points the deal earned) and
 * UF_CRM_LOYD_REDEEMED (the points it was paid with).  All commands of one write share batch
 * calls (rest.c).
 *
 * Fields are provisioned once per tenant and idempotently: crm.contact.userfield.list (and
 * crm.deal.userfield.list) first, .add only for what is missing; what exists is remembered in
 * kv "uf:known", so a restart does not list again.
 *
 * A note or task is an add: if an earlier attempt may have reached the portal (the item is
 * "uncertain", or the transfer of this attempt failed), the entity's comments or activities
 * are searched for the item's uid marker first, and the add is made only if it is missing.
 */
#include <errno.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include "b24.h"
#include "loyd/referral.h"
#include "rest.h"

#define REFERRAL_CODE "UF_CRM_LOYD_REFERRAL_CODE"

struct wjob {
    struct wjob *next;
    struct b24_tenant *t;
    json_t *items;
    int *results;
    size_t n, pending;
    loyd_write_cb cb;
    void *arg;
};

/* One item's command chain (an add may look for its marker first). */
struct witem {
    struct wjob *job;
    size_t i;
};

static void job_done(struct wjob *j)
{
    j->cb(j->arg, j->results, j->n);
    json_decref(j->items);
    free(j->results);
    free(j);
}

static void item_done(struct witem *w, int err)
{
    struct wjob *j = w->job;
    j->results[w->i] = err;
    free(w);
    if (--j->pending == 0)
        job_done(j);
}

/* REST outcomes as write results: rate and transport errors are worth a retry. */
static int result_of(struct b24_tenant *t, const json_t *item, int err, const json_t *error)
{
    if (err == LOYD_ECRM)
        t->host->log(t->hctx, LOYD_LOG_WARN, "write %s refused by the portal: %s %s",
                     json_string_value(json_object_get(item, "op")),
                     json_string_value(json_object_get(error, "error")),
                     json_string_value(json_object_get(error, "error_description")));
    return err;
}

static void uf_name(const char *field, char out[64])
{
    size_t n = (size_t)snprintf(out, 64, "UF_CRM_LOYD_");
    for (const char *p = field; *p && n + 1 < 64; p++)
        out[n++] = (char)(*p >= 'a' && *p <= 'z' ? *p - 'a' + 'A' : *p);
    out[n] = '\0';
}

/* The marker must end where the uid does: "loyd shop-1" is not in "... loyd shop-12". */
static bool marker_in(const char *text, const char *uid)
{
    char m[128];
    size_t n = (size_t)snprintf(m, sizeof(m), "loyd %s", uid);
    for (const char *p = text; p != NULL && (p = strstr(p, m)) != NULL; p++) {
        char end = p[n];
        if (end == '\0' || end == '\n' || end == '\r' || end == ' ' || end == '<')
            return true;
    }
    return false;
}

static char *with_marker(const char *text, const char *uid)
{
    size_t n = strlen(text) + strlen(uid) + 16;
    char *s = malloc(n);
    if (s == NULL)
        abort();
    snprintf(s, n, "%s\n— loyd %s", text, uid);
    return s;
}

/* ---- the adds -------------------------------------------------------------------------- */

static void add(struct witem *w);

static void on_added(void *arg, int err, const json_t *result, const json_t *error)
{
    struct witem *w = arg;
    json_t *item = json_array_get(w->job->items, w->i);
    (void)result;
    if (err == LOYD_EHTTP) {
        /* It may have landed: the next attempt looks for it before adding. */
        json_object_set_new(item, "uncertain", json_true());
    }
    item_done(w, result_of(w->job->t, item, err, error));
}

static void add(struct witem *w)
{
    struct b24_tenant *t = w->job->t;
    json_t *item = json_array_get(w->job->items, w->i), *p;
    const char *op = json_string_value(json_object_get(item, "op"));
    const char *uid = json_string_value(json_object_get(item, "uid"));
    const char *id = json_string_value(json_object_get(item, "id"));
    char *text = with_marker(json_string_value(json_object_get(item, "text"))
                                 ? json_string_value(json_object_get(item, "text"))
                                 : "",
                             uid ? uid : "");
    if (strcmp(op, "note") == 0) {
        p = json_pack("{s:{s:s, s:s, s:s}}", "fields", "ENTITY_ID", id, "ENTITY_TYPE", "contact",
                      "COMMENT", text);
        b24_rest_call(t->rest, "crm.timeline.comment.add", p, false, on_added, w);
    } else {
        char deadline[40];
        int64_t ms = json_integer_value(json_object_get(item, "deadline_ms"));
        b24_format_iso(ms, deadline);
        const char *title = json_string_value(json_object_get(item, "title"));
        p = json_pack("{s:i, s:s, s:s, s:s, s:s}", "ownerTypeId", 3, "ownerId", id, "deadline",
                      deadline, "title", title ? title : "loyd", "description", text);
        b24_rest_call(t->rest, "crm.activity.todo.add", p, false, on_added, w);
    }
    json_decref(p);
    free(text);
}

static void on_listed(void *arg, int err, const json_t *result, const json_t *error)
{
    struct witem *w = arg;
    json_t *item = json_array_get(w->job->items, w->i);
    const char *uid = json_string_value(json_object_get(item, "uid"));
    bool note = strcmp(json_string_value(json_object_get(item, "op")), "note") == 0;
    size_t i;
    json_t *x;

    if (err != 0) {
        item_done(w, result_of(w->job->t, item, err, error));
        return;
    }
    json_array_foreach(result, i, x)
    {
        const char *text = json_string_value(json_object_get(x, note ? "COMMENT" : "DESCRIPTION"));
        if (marker_in(text, uid)) {
            item_done(w, 0); /* it landed before */
            return;
        }
    }
    add(w);
}

static void add_checked(struct witem *w)
{
    struct b24_tenant *t = w->job->t;
    json_t *item = json_array_get(w->job->items, w->i), *p;
    const char *id = json_string_value(json_object_get(item, "id"));

    if (!json_is_true(json_object_get(item, "uncertain"))) {
        add(w);
        return;
    }
    if (strcmp(json_string_value(json_object_get(item, "op")), "note") == 0) {
        p = json_pack("{s:{s:s, s:s}}", "filter", "ENTITY_ID", id, "ENTITY_TYPE", "contact");
        b24_rest_call(t->rest, "crm.timeline.comment.list", p, true, on_listed, w);
    } else {
        p = json_pack("{s:{s:i, s:s}}", "filter", "OWNER_TYPE_ID", 3, "OWNER_ID", id);
        b24_rest_call(t->rest, "crm.activity.list", p, true, on_listed, w);
    }
    json_decref(p);
}

/* ---- updates --------------------------------------------------------------------------- */

static void on_updated(void *arg, int err, const json_t *result, const json_t *error)
{
    struct witem *w = arg;
    (void)result;
    item_done(w, result_of(w->job->t, json_array_get(w->job->items, w->i), err, error));
}

static void job_run(struct wjob *j)
{
    struct b24_tenant *t = j->t;
    size_t i;
    json_t *item;

    j->pending = j->n + 1; /* held until every item is started */
    json_array_foreach(j->items, i, item)
    {
        const char *op = json_string_value(json_object_get(item, "op"));
        struct witem *w = malloc(sizeof(*w));
        if (w == NULL)
            abort();
        *w = (struct witem){j, i};
        if (op != NULL && strcmp(op, "contact.fields") == 0) {
            json_t *f = json_object(), *v;
            const char *k;
            char name[64];
            json_object_foreach(json_object_get(item, "fields"), k, v)
            {
                uf_name(k, name);
                json_object_set(f, name, v);
            }
            /* The code the customer hands on (it never changes: written with the fields). */
            char code[LOYD_REFERRAL_CODE_MAX];
            if (t->referrer_match == B24_REF_CODE &&
                loyd_referral_code(json_string_value(json_object_get(item, "contact_id")), code))
                json_object_set_new(f, REFERRAL_CODE, json_string(code));
            json_t *p = json_pack("{s:O, s:o}", "id", json_object_get(item, "contact_id"),
                                  "fields", f);
            b24_rest_call(t->rest, "crm.contact.update", p, true, on_updated, w);
            json_decref(p);
        } else if (op != NULL && strcmp(op, "deal.mark") == 0) {
            json_t *p = json_pack("{s:O, s:{s:O}}", "id", json_object_get(item, "deal_id"),
                                  "fields", "UF_CRM_LOYD_AWARDED",
                                  json_object_get(item, "awarded"));
            if (json_object_get(item, "redeemed") != NULL)
                json_object_set(json_object_get(p, "fields"), "UF_CRM_LOYD_REDEEMED",
                                json_object_get(item, "redeemed"));
            b24_rest_call(t->rest, "crm.deal.update", p, true, on_updated, w);
            json_decref(p);
        } else if (op != NULL && (strcmp(op, "note") == 0 || strcmp(op, "task") == 0) &&
                   json_is_string(json_object_get(item, "id"))) {
            add_checked(w);
        } else {
            t->host->log(t->hctx, LOYD_LOG_WARN, "write: cannot write an item with op '%s'",
                         op ? op : "(none)");
            j->results[i] = -EINVAL;
            j->pending--;
            free(w);
        }
    }
    if (--j->pending == 0)
        job_done(j);
}

/* ---- provisioning ------------------------------------------------------------------------ */

static void provision(struct b24_tenant *t);

/* ---- what a field is called ------------------------------------------------------------- */

/*
 * Bitrix24 keeps a label per portal language and shows each manager the one of their language;
 * LABEL fills the languages a map leaves out, so it is English (the portal default abroad).
 */
struct uf_label {
    char en[160], ru[200];
};

/*
 * The balance label names the point unit.  NULL or "points" (what a pack that declares no unit
 * has, points.h) read as loyd's own words in each language; a pack's own unit name is a word in
 * the pack's language, so it goes into both labels as is.
 */
static void balance_label(const char *unit, struct uf_label *l)
{
    bool own = unit == NULL || strcmp(unit, "points") == 0;
    snprintf(l->en, sizeof(l->en), "Loyalty: balance (%s)", own ? "points" : unit);
    snprintf(l->ru, sizeof(l->ru), "Лояльность: баланс (%s)", own ? "баллы" : unit);
}

/* A set_field attribute's field: "review_bonus_paid" is "Loyalty: review bonus paid". */
static void attribute_label(const char *attr, struct uf_label *l)
{
    char words[96];
    size_t n = 0;
    for (const char *p = attr; *p && n + 1 < sizeof(words); p++)
        words[n++] = *p == '_' ? ' ' : *p;
    words[n] = '\0';
    snprintf(l->en, sizeof(l->en), "Loyalty: %s", words);
    snprintf(l->ru, sizeof(l->ru), "Лояльность: %s", words);
}

/* The fields of a userfield.add for @p name (the code after UF_CRM_ goes in FIELD_NAME). */
static json_t *uf_spec(const char *name, const char *type, const struct uf_label *l)
{
    json_t *f = json_pack("{s:s, s:s, s:s}", "FIELD_NAME", name + 7, "USER_TYPE_ID", type,
                          "LABEL", l->en);
    static const char *const keys[] = {"EDIT_FORM_LABEL", "LIST_COLUMN_LABEL",
                                       "LIST_FILTER_LABEL"};
    for (size_t i = 0; i < sizeof(keys) / sizeof(keys[0]); i++)
        json_object_set_new(f, keys[i], json_pack("{s:s, s:s}", "ru", l->ru, "en", l->en));
    /* Points are shown as people count them (455, 3.5): a number with two decimals. */
    if (strcmp(type, "double") == 0)
        json_object_set_new(f, "SETTINGS", json_pack("{s:i}", "PRECISION", 2));
    return f;
}

#define BALANCE "UF_CRM_LOYD_BALANCE"
#define TIER "UF_CRM_LOYD_TIER"
#define AWARDED "UF_CRM_LOYD_AWARDED"
#define REDEEMED "UF_CRM_LOYD_REDEEMED"

/* The UF names a job writes that the portal may not have yet, each with its userfield.add. */
static void needed(struct b24_tenant *t, const json_t *items, json_t *contact, json_t *deal)
{
    size_t i;
    json_t *item;
    char name[64];
    struct uf_label l;

    balance_label(NULL, &l);
    json_object_set_new(contact, BALANCE, uf_spec(BALANCE, "double", &l));
    l = (struct uf_label){"Loyalty: tier", "Лояльность: уровень"};
    json_object_set_new(contact, TIER, uf_spec(TIER, "string", &l));
    l = (struct uf_label){"Loyalty: points for this deal", "Лояльность: баллы за сделку"};
    json_object_set_new(deal, AWARDED, uf_spec(AWARDED, "double", &l));
    l = (struct uf_label){"Loyalty: points paid with", "Лояльность: оплачено баллами"};
    json_object_set_new(deal, REDEEMED, uf_spec(REDEEMED, "double", &l));
    /* The fields a manager types into, when the tenant uses loyd's own (the defaults). */
    if (t->referrer_field != NULL && strncmp(t->referrer_field, "UF_CRM_LOYD_", 12) == 0) {
        l = (struct uf_label){"Loyalty: referred by", "Лояльность: кто пригласил"};
        json_object_set_new(contact, t->referrer_field, uf_spec(t->referrer_field, "string", &l));
    }
    if (t->referrer_match == B24_REF_CODE) {
        l = (struct uf_label){"Loyalty: referral code", "Лояльность: код приглашения"};
        json_object_set_new(contact, REFERRAL_CODE, uf_spec(REFERRAL_CODE, "string", &l));
    }
    if (t->offer_code_field != NULL && strncmp(t->offer_code_field, "UF_CRM_LOYD_", 12) == 0) {
        l = (struct uf_label){"Loyalty: offer code used", "Лояльность: использованный код"};
        json_object_set_new(deal, t->offer_code_field,
                            uf_spec(t->offer_code_field, "string", &l));
    }
    json_array_foreach(items, i, item)
    {
        const char *k;
        json_t *v;
        json_object_foreach(json_object_get(item, "fields"), k, v)
        {
            uf_name(k, name);
            if (json_object_get(contact, name) != NULL)
                continue;
            attribute_label(k, &l);
            json_object_set_new(contact, name,
                                uf_spec(name,
                                        json_is_boolean(v)   ? "boolean"
                                        : json_is_integer(v) ? "integer"
                                                             : "string",
                                        &l));
        }
    }
    const char *k;
    json_t *v, *tmp;
    json_object_foreach_safe(contact, tmp, k, v)
        if (json_object_get(t->uf_known, k) != NULL)
            json_object_del(contact, k);
    json_object_foreach_safe(deal, tmp, k, v)
    {
        char key[80];
        snprintf(key, sizeof(key), "deal:%s", k);
        if (json_object_get(t->uf_known, key) != NULL)
            json_object_del(deal, k);
    }
}

int b24_write(void *tenant, const json_t *items, loyd_write_cb cb, void *arg)
{
    struct b24_tenant *t = tenant;
    if (t->rest == NULL)
        return LOYD_ECONFIG;
    if (!json_is_array(items))
        return -EINVAL;
    struct wjob *j = calloc(1, sizeof(*j));
    if (j == NULL)
        return -ENOMEM;
    j->t = t;
    j->items = json_deep_copy(items);
    j->n = json_array_size(items);
    j->results = calloc(j->n + 1, sizeof(*j->results));
    j->cb = cb;
    j->arg = arg;
    if (j->results == NULL)
        abort();
    json_t *c = json_object(), *d = json_object();
    needed(t, items, c, d);
    bool ready = json_object_size(c) == 0 && json_object_size(d) == 0;
    json_decref(c);
    json_decref(d);
    if (ready && t->prov_waiting == NULL) {
        job_run(j);
        return 0;
    }
    j->next = t->prov_waiting;
    t->prov_waiting = j;
    if (!t->prov_busy)
        provision(t);
    return 0;
}

struct prov {
    struct b24_tenant *t;
    json_t *contact, *deal; /* name -> its userfield.add fields, still to make sure of */
    int pending, err;
};

static void prov_finish(struct prov *pv);

static void on_kv_stored(void *arg, int err)
{
    struct prov *pv = arg;
    if (err != 0 && pv->err == 0)
        pv->err = err;
    struct b24_tenant *t = pv->t;
    struct wjob *waiting = t->prov_waiting;
    t->prov_waiting = NULL;
    t->prov_busy = false;
    int perr = pv->err;
    json_decref(pv->contact);
    json_decref(pv->deal);
    free(pv);
    /* Oldest first: the list was built by pushing at the head. */
    struct wjob *rev = NULL;
    while (waiting != NULL) {
        struct wjob *n = waiting->next;
        waiting->next = rev;
        rev = waiting;
        waiting = n;
    }
    while (rev != NULL) {
        struct wjob *n = rev->next;
        if (perr != 0) {
            for (size_t i = 0; i < rev->n; i++)
                rev->results[i] = perr;
            job_done(rev);
        } else {
            job_run(rev);
        }
        rev = n;
    }
}

static void prov_finish(struct prov *pv)
{
    struct b24_tenant *t = pv->t;
    char *text = json_dumps(t->uf_known, JSON_COMPACT | JSON_SORT_KEYS);
    int rc = t->host->kv_put(t->hctx, "uf:known", text, on_kv_stored, pv);
    free(text);
    if (rc != 0)
        on_kv_stored(pv, rc);
}

struct prov_add {
    struct prov *pv;
    char key[80];
};

static void on_uf_added(void *arg, int err, const json_t *result, const json_t *error)
{
    struct prov_add *a = arg;
    struct prov *pv = a->pv;
    const char *desc = json_string_value(json_object_get(error, "error_description"));
    (void)result;
    if (err == 0 || (err == LOYD_ECRM && desc != NULL && strstr(desc, "already exists") != NULL))
        json_object_set_new(pv->t->uf_known, a->key, json_true());
    else if (pv->err == 0)
        pv->err = err;
    free(a);
    if (--pv->pending == 0)
        prov_finish(pv);
}

static void on_uf_listed(struct prov *pv, bool deal, int err, const json_t *result)
{
    struct b24_tenant *t = pv->t;
    json_t *want = deal ? pv->deal : pv->contact, *x;
    size_t i;
    const char *k;

    if (err != 0) {
        if (pv->err == 0)
            pv->err = err;
    } else {
        json_array_foreach(result, i, x)
        {
            const char *name = json_string_value(json_object_get(x, "FIELD_NAME"));
            if (name == NULL || json_object_get(want, name) == NULL)
                continue;
            char key[80];
            snprintf(key, sizeof(key), deal ? "deal:%s" : "%s", name);
            json_object_set_new(t->uf_known, key, json_true());
            json_object_del(want, name);
        }
        json_object_foreach(want, k, x)
        {
            struct prov_add *a = calloc(1, sizeof(*a));
            if (a == NULL)
                abort();
            a->pv = pv;
            snprintf(a->key, sizeof(a->key), deal ? "deal:%s" : "%s", k);
            json_t *p = json_pack("{s:O}", "fields", x);
            pv->pending++;
            b24_rest_call(t->rest, deal ? "crm.deal.userfield.add" : "crm.contact.userfield.add",
                          p, false, on_uf_added, a);
            json_decref(p);
        }
    }
    if (--pv->pending == 0)
        prov_finish(pv);
}

static void on_contact_ufs(void *arg, int err, const json_t *result, const json_t *error)
{
    (void)error;
    on_uf_listed(arg, false, err, result);
}

static void on_deal_ufs(void *arg, int err, const json_t *result, const json_t *error)
{
    (void)error;
    on_uf_listed(arg, true, err, result);
}

static void provision(struct b24_tenant *t)
{
    struct prov *pv = calloc(1, sizeof(*pv));
    if (pv == NULL)
        abort();
    pv->t = t;
    pv->contact = json_object();
    pv->deal = json_object();
    for (struct wjob *j = t->prov_waiting; j != NULL; j = j->next)
        needed(t, j->items, pv->contact, pv->deal);
    t->prov_busy = true;
    pv->pending = 3; /* two lists + this function */
    t->host->log(t->hctx, LOYD_LOG_INFO, "provisioning loyd's fields on the portal");
    b24_rest_call(t->rest, "crm.contact.userfield.list", NULL, true, on_contact_ufs, pv);
    b24_rest_call(t->rest, "crm.deal.userfield.list", NULL, true, on_deal_ufs, pv);
    if (--pv->pending == 0)
        prov_finish(pv);
}

/* ---- the redeem field ------------------------------------------------------------------- */

/*
 * crm.redeem_field names a deal field a manager types the points to pay with into.  A name the
 * portal does not have is read as "nothing to redeem" on every deal, silently: so it is checked
 * once per start, and a missing one said once, with the name.
 */
static void on_redeem_added(void *arg, int err, const json_t *result, const json_t *error)
{
    struct b24_tenant *t = arg;
    const char *desc = json_string_value(json_object_get(error, "error_description"));
    (void)result;
    if (err == -ECANCELED)
        return;
    if (err == 0 || (err == LOYD_ECRM && desc != NULL && strstr(desc, "already exists") != NULL)) {
        char key[80];
        snprintf(key, sizeof(key), "deal:%s", t->redeem_field);
        json_object_set_new(t->uf_known, key, json_true());
        t->host->log(t->hctx, LOYD_LOG_NOTICE,
                     "crm.redeem_field: created the deal field %s (\"Loyalty: pay with points\"): "
                     "the points a manager types there are redeemed when the deal is won",
                     t->redeem_field);
        return;
    }
    t->host->log(t->hctx, LOYD_LOG_WARN,
                 "crm.redeem_field: cannot create the deal field %s (%s%s%s): redemptions on "
                 "deals are not read until it exists",
                 t->redeem_field, loyd_strerror(err), desc != NULL ? ": " : "",
                 desc != NULL ? desc : "");
}

static void on_redeem_listed(void *arg, int err, const json_t *result, const json_t *error)
{
    struct b24_tenant *t = arg;
    const json_t *x;
    size_t i;
    (void)error;

    if (err == -ECANCELED)
        return;
    if (err != 0) {
        t->host->log(t->hctx, LOYD_LOG_WARN,
                     "crm.redeem_field: cannot check that the portal has the deal field %s "
                     "(crm.deal.userfield.list: %s)",
                     t->redeem_field, loyd_strerror(err));
        return;
    }
    json_array_foreach(result, i, x)
    {
        const char *name = json_string_value(json_object_get(x, "FIELD_NAME"));
        if (name != NULL && strcmp(name, t->redeem_field) == 0) {
            char key[80];
            snprintf(key, sizeof(key), "deal:%s", name);
            json_object_set_new(t->uf_known, key, json_true());
            return;
        }
    }
    if (strncmp(t->redeem_field, "UF_CRM_LOYD_", 12) == 0) {
        struct uf_label l = {"Loyalty: pay with points", "Лояльность: оплатить баллами"};
        json_t *p = json_pack("{s:o}", "fields", uf_spec(t->redeem_field, "double", &l));
        b24_rest_call(t->rest, "crm.deal.userfield.add", p, false, on_redeem_added, t);
        json_decref(p);
        return;
    }
    t->host->log(t->hctx, LOYD_LOG_WARN,
                 "crm.redeem_field: the portal has no deal field %s, so no deal is paid with "
                 "points: create it (CRM settings > custom fields > deals, type Number, code %s), "
                 "set crm.redeem_field to the code of an existing deal field, or to "
                 "UF_CRM_LOYD_PAY_WITH_POINTS for loyd to create its own",
                 t->redeem_field,
                 strncmp(t->redeem_field, "UF_CRM_", 7) == 0 ? t->redeem_field + 7
                                                             : t->redeem_field);
}

void b24_redeem_field_check(struct b24_tenant *t)
{
    if (t->rest == NULL || t->redeem_field == NULL)
        return;
    b24_rest_call(t->rest, "crm.deal.userfield.list", NULL, true, on_redeem_listed, t);
}
