/* SPDX-License-Identifier: MIT */
/*
 * enrich: a notice names a deal or a contact by id; this reads it (crm.deal.get with
 * crm.deal.contact.items.get, then crm.contact.get of the deal's primary contact) and answers
 * with canonical snapshots.  Reads of all pending notices share batch calls (rest.c).
 */
#include <errno.h>
#include <stdlib.h>
#include <string.h>

#include "b24.h"
#include "rest.h"

struct enrich {
    struct b24_tenant *t;
    char id[32];
    char cid[32]; /* the deal's primary contact, "" when none */
    bool is_deal;
    int pending; /* reads not answered yet in the current step */
    int err;
    json_t *deal_raw, *items, *contact_raw;
    bool deal_gone, contact_gone;
    loyd_enrich_cb cb;
    void *arg;
};

/* "Not found" comes back as a 400 error with an empty or an explicit code. */
static bool not_found(const json_t *error)
{
    const char *d = json_string_value(json_object_get(error, "error_description"));
    const char *c = json_string_value(json_object_get(error, "error"));
    return (d != NULL && strstr(d, "ot found") != NULL) ||
           (c != NULL && strcmp(c, "NOT_FOUND") == 0);
}

static int read_error(struct b24_tenant *t, const char *what, const char *id, int err,
                      const json_t *error)
{
    if (err == LOYD_ECRM)
        t->host->log(t->hctx, LOYD_LOG_WARN, "%s %s: the portal answered %s: %s", what, id,
                     json_string_value(json_object_get(error, "error")),
                     json_string_value(json_object_get(error, "error_description")));
    return err;
}

static void done(struct enrich *q)
{
    json_t *out = json_array();
    int err = q->err;

    if (err == 0 && q->is_deal) {
        if (q->deal_gone) {
            json_array_append_new(out, json_pack("{s:s, s:s, s:b}", "kind", "deal", "id", q->id,
                                                 "deleted", 1));
        } else {
            json_t *d = b24_snapshot_deal(q->t, q->deal_raw, q->cid[0] ? q->cid : NULL);
            if (d != NULL)
                json_array_append_new(out, d);
        }
    }
    if (err == 0 && q->contact_raw != NULL) {
        json_t *c = b24_snapshot_contact(q->t, q->contact_raw);
        if (c != NULL)
            json_array_append_new(out, c);
    } else if (err == 0 && q->contact_gone && !q->is_deal) {
        json_array_append_new(out, json_pack("{s:s, s:s, s:b}", "kind", "contact", "id", q->id,
                                             "deleted", 1));
    }
    if (err != 0) {
        json_decref(out);
        out = NULL;
    }
    q->cb(q->arg, err, out);
    json_decref(q->deal_raw);
    json_decref(q->items);
    json_decref(q->contact_raw);
    free(q);
}

static void on_contact(void *arg, int err, const json_t *result, const json_t *error)
{
    struct enrich *q = arg;
    if (err == LOYD_ECRM && not_found(error))
        q->contact_gone = true;
    else if (err != 0)
        q->err = read_error(q->t, "contact", q->id, err, error);
    else if (json_is_object(result))
        q->contact_raw = json_incref((json_t *)result);
    done(q);
}

static void read_contact(struct enrich *q, const char *id)
{
    json_t *p = json_pack("{s:s}", "id", id);
    b24_rest_call(q->t->rest, "crm.contact.get", p, true, on_contact, q);
    json_decref(p);
}

/* Both deal reads are in: read its contact, or answer. */
static void deal_step(struct enrich *q)
{
    if (--q->pending > 0)
        return;
    if (q->err != 0 || q->deal_gone) {
        done(q);
        return;
    }
    /* The primary bound contact; else the first; else the deal's CONTACT_ID. */
    size_t i;
    json_t *it;
    json_array_foreach(q->items, i, it)
    {
        json_t *v = json_object_get(it, "CONTACT_ID");
        const char *prim = json_string_value(json_object_get(it, "IS_PRIMARY"));
        if (q->cid[0] != '\0' && (prim == NULL || strcmp(prim, "Y") != 0))
            continue;
        if (json_is_integer(v))
            snprintf(q->cid, sizeof(q->cid), "%" JSON_INTEGER_FORMAT, json_integer_value(v));
        else if (json_is_string(v))
            snprintf(q->cid, sizeof(q->cid), "%s", json_string_value(v));
    }
    if (q->cid[0] == '\0') {
        json_t *snap = b24_snapshot_deal(q->t, q->deal_raw, NULL);
        const char *c = json_string_value(json_object_get(snap, "contact_id"));
        if (c != NULL)
            snprintf(q->cid, sizeof(q->cid), "%s", c);
        json_decref(snap);
    }
    if (q->cid[0] != '\0')
        read_contact(q, q->cid);
    else
        done(q);
}

static void on_deal(void *arg, int err, const json_t *result, const json_t *error)
{
    struct enrich *q = arg;
    if (err == LOYD_ECRM && not_found(error))
        q->deal_gone = true;
    else if (err != 0)
        q->err = read_error(q->t, "deal", q->id, err, error);
    else if (json_is_object(result))
        q->deal_raw = json_incref((json_t *)result);
    else
        q->err = LOYD_ECRM; /* [] or a scalar where the deal should be */
    deal_step(q);
}

static void on_items(void *arg, int err, const json_t *result, const json_t *error)
{
    struct enrich *q = arg;
    if (err == 0 && json_is_array(result))
        q->items = json_incref((json_t *)result);
    else if (err != 0 && !(err == LOYD_ECRM && not_found(error)) && q->err == 0)
        q->err = read_error(q->t, "deal contacts", q->id, err, error);
    deal_step(q);
}

int b24_enrich(void *tenant, const json_t *notice, loyd_enrich_cb cb, void *arg)
{
    struct b24_tenant *t = tenant;
    const char *entity = json_string_value(json_object_get(notice, "entity"));
    const char *id = json_string_value(json_object_get(notice, "id"));
    const char *action = json_string_value(json_object_get(notice, "action"));

    if (action != NULL && strcmp(action, "install") == 0) {
        cb(arg, 0, json_array());
        return 0;
    }
    if (entity == NULL || id == NULL || id[0] == '\0' || strlen(id) >= 32)
        return -EINVAL;
    bool deal = strcmp(entity, "deal") == 0;
    if (!deal && strcmp(entity, "contact") != 0)
        return -EINVAL;
    if (action != NULL && strcmp(action, "delete") == 0) {
        cb(arg, 0, json_pack("[{s:s, s:s, s:b}]", "kind", entity, "id", id, "deleted", 1));
        return 0;
    }
    if (t->rest == NULL)
        return LOYD_ECONFIG; /* no REST access configured */
    struct enrich *q = calloc(1, sizeof(*q));
    if (q == NULL)
        return -ENOMEM;
    q->t = t;
    q->is_deal = deal;
    q->cb = cb;
    q->arg = arg;
    snprintf(q->id, sizeof(q->id), "%s", id);
    json_t *p = json_pack("{s:s}", "id", id);
    if (deal) {
        q->pending = 2;
        b24_rest_call(t->rest, "crm.deal.get", p, true, on_deal, q);
        b24_rest_call(t->rest, "crm.deal.contact.items.get", p, true, on_items, q);
    } else {
        b24_rest_call(t->rest, "crm.contact.get", p, true, on_contact, q);
    }
    json_decref(p);
    return 0;
}
