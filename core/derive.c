/* SPDX-License-Identifier: MIT */
/* Snapshots to canonical events by comparison with the stored state (derive.h). */
#include "derive.h"

#include <errno.h>
#include <inttypes.h>
#include <stdlib.h>
#include <string.h>

#include "sha256.h"

/* What a rule may see of a contact, and what a change of makes contact.updated. */
static const char *const contact_keys[] = {"name",       "phone",      "email",
                                           "birthday",   "attributes", "referred_by"};
/* What a change of makes deal.updated (won/stage changes are deal.won/deal.reopened). */
static const char *const deal_keys[] = {"amount",        "currency",  "contact_id", "stage",
                                        "redeem_points", "offer_code"};

char *loyd_derive_state_key(const char *kind, const char *id)
{
    return loyd_xasprintf("crm:%s:%s", kind, id);
}

void loyd_derived_free(struct loyd_derived *d)
{
    free(d->state_key);
    json_decref(d->state);
    json_decref(d->event);
    json_decref(d->offer_use);
    memset(d, 0, sizeof(*d));
}

static json_t *pick(const json_t *from, const char *const *keys, size_t n)
{
    json_t *o = json_object();
    for (size_t i = 0; i < n; i++) {
        json_t *v = json_object_get(from, keys[i]);
        if (v != NULL && !json_is_null(v))
            json_object_set(o, keys[i], v);
    }
    return o;
}

/* Whether any of @p keys differs between two objects (absent and null are the same). */
static bool differs(const json_t *a, const json_t *b, const char *const *keys, size_t n)
{
    for (size_t i = 0; i < n; i++) {
        json_t *x = json_object_get(a, keys[i]), *y = json_object_get(b, keys[i]);
        bool xn = x == NULL || json_is_null(x), yn = y == NULL || json_is_null(y);
        if (xn != yn || (!xn && !json_equal(x, y)))
            return true;
    }
    return false;
}

/* A key for one update: the CRM's modification time plus a digest of what it looks like now,
 * so two real changes in the same second are two events and a re-read of one is not. */
static char *update_key(const char *kind, const char *id, const json_t *snap, const json_t *sig)
{
    char *text = json_dumps(sig, JSON_COMPACT | JSON_SORT_KEYS);
    uint8_t digest[LOYD_SHA256_LEN];
    char hex[2 * LOYD_SHA256_LEN + 1];
    loyd_sha256(text, text != NULL ? strlen(text) : 0, digest);
    loyd_hex(digest, 6, hex);
    free(text);
    return loyd_xasprintf("%s:%s:updated:%" PRId64 ":%s", kind, id,
                          (int64_t)json_integer_value(json_object_get(snap, "modified_at")), hex);
}

static json_t *contact_view(const json_t *snap)
{
    json_t *c = pick(snap, contact_keys, LOYD_ARRAY_SIZE(contact_keys));
    json_object_set(c, "id", json_object_get(snap, "id"));
    return c;
}

static json_t *event_new(const char *type, const char *key, uint64_t at)
{
    return json_pack("{s:s, s:s, s:I}", "type", type, "key", key, "at", (json_int_t)at);
}

static void derive_contact(const json_t *snap, const json_t *prev, const char *id, uint64_t at,
                           bool initial_sync, struct loyd_derived *out)
{
    bool deleted = json_is_true(json_object_get(snap, "deleted"));
    bool known = prev != NULL && !json_is_true(json_object_get(prev, "deleted"));

    if (deleted) {
        out->state = json_pack("{s:b}", "deleted", 1);
        return;
    }
    out->state = pick(snap, contact_keys, LOYD_ARRAY_SIZE(contact_keys));
    if (json_is_object(json_object_get(snap, "fields")))
        json_object_set(out->state, "fields", json_object_get(snap, "fields"));
    if (!known && initial_sync) {
        out->learned = true;
        return;
    }
    char *key = NULL;
    const char *type = NULL;
    if (!known) {
        type = "contact.created";
        key = loyd_xasprintf("contact:%s:created", id);
    } else if (differs(snap, prev, contact_keys, LOYD_ARRAY_SIZE(contact_keys))) {
        type = "contact.updated";
        key = update_key("contact", id, snap, out->state);
    }
    if (type != NULL) {
        out->event = event_new(type, key, at);
        json_object_set_new(out->event, "contact", contact_view(snap));
    }
    free(key);
}

static void derive_deal(const json_t *snap, const json_t *prev, const char *id,
                        const json_t *contact, uint64_t at, bool initial_sync,
                        struct loyd_derived *out)
{
    bool deleted = json_is_true(json_object_get(snap, "deleted"));
    bool was_won = json_is_true(json_object_get(prev, "won"));
    int64_t epoch = (int64_t)json_integer_value(json_object_get(prev, "epoch"));
    const char *cid = json_string_value(json_object_get(snap, "contact_id"));
    /* Points need a member: a won deal without a contact is not won for loyd until it gets
     * one, so attaching the contact later still awards. */
    bool won = !deleted && json_is_true(json_object_get(snap, "won")) &&
               (was_won || (cid != NULL && cid[0] != '\0'));
    char *key = NULL;
    const char *type = NULL;

    if (won && !was_won) {
        epoch++;
        type = "deal.won";
        key = loyd_xasprintf("deal:%s:won:%" PRId64, id, epoch);
    } else if (!won && was_won) {
        type = "deal.reopened";
        key = loyd_xasprintf("deal:%s:reopened:%" PRId64, id, epoch);
    }
    if (deleted) {
        out->state = json_pack("{s:b, s:b, s:I}", "deleted", 1, "won", 0, "epoch",
                               (json_int_t)epoch);
        /* What the deal was is what a reversal needs to name its member. */
        if (prev != NULL)
            json_object_set(out->state, "contact_id", json_object_get(prev, "contact_id"));
    } else {
        out->state = pick(snap, deal_keys, LOYD_ARRAY_SIZE(deal_keys));
        json_object_set_new(out->state, "won", json_boolean(won));
        json_object_set_new(out->state, "epoch", json_integer(epoch));
        if (type == NULL && prev != NULL && !json_is_true(json_object_get(prev, "deleted")) &&
            differs(snap, prev, deal_keys, LOYD_ARRAY_SIZE(deal_keys))) {
            type = "deal.updated";
            key = update_key("deal", id, snap, out->state);
        }
    }
    if (initial_sync && prev == NULL) {
        /* Won before loyd knew the portal: remembered as won, never awarded. */
        out->learned = true;
        free(key);
        return;
    }
    /* An offer code on a won deal: typed with the deal, or added to it after it was won. */
    const json_t *code = json_object_get(snap, "offer_code");
    if (won && json_is_string(code) && json_string_length(code) > 0 &&
        (!was_won || !json_equal(code, json_object_get(prev, "offer_code")))) {
        json_t *deal = pick(snap, deal_keys, LOYD_ARRAY_SIZE(deal_keys));
        json_object_set(deal, "id", json_object_get(snap, "id"));
        json_object_del(deal, "offer_code");
        out->offer_use = json_pack("{s:O, s:o}", "code", code, "deal", deal);
    }
    if (type == NULL)
        return;
    out->event = event_new(type, key, at);
    free(key);
    json_t *deal = deleted ? json_object() : pick(snap, deal_keys, LOYD_ARRAY_SIZE(deal_keys));
    json_object_set(deal, "id", json_object_get(snap, "id"));
    if (json_object_get(deal, "contact_id") == NULL && prev != NULL &&
        json_is_string(json_object_get(prev, "contact_id")))
        json_object_set(deal, "contact_id", json_object_get(prev, "contact_id"));
    json_object_set_new(out->event, "deal", deal);
    if (strcmp(type, "deal.reopened") == 0) {
        /* Words matter on the card: a lost or deleted deal was not "reopened". */
        const char *why = deleted                                      ? "deleted"
                          : json_is_true(json_object_get(snap, "lost")) ? "lost"
                                                                        : "reopened";
        json_object_set_new(out->event, "reason", json_string(why));
    }
    const char *member = json_string_value(json_object_get(deal, "contact_id"));
    if (contact != NULL && member != NULL && !json_is_true(json_object_get(contact, "deleted")) &&
        json_equal(json_object_get(contact, "id"), json_object_get(deal, "contact_id")))
        json_object_set_new(out->event, "contact", contact_view(contact));
}

int loyd_derive(const json_t *snapshot, const json_t *prev_state, const json_t *contact,
                uint64_t at, bool initial_sync, struct loyd_derived *out, struct loyd_buf *err)
{
    const char *kind = json_string_value(json_object_get(snapshot, "kind"));
    const char *id = json_string_value(json_object_get(snapshot, "id"));

    memset(out, 0, sizeof(*out));
    if (!json_is_object(snapshot) || kind == NULL || id == NULL || id[0] == '\0') {
        loyd_buf_printf(err, "snapshot without a kind and an id");
        return -EINVAL;
    }
    if (!json_is_object(prev_state))
        prev_state = NULL;
    if (strcmp(kind, "contact") == 0) {
        derive_contact(snapshot, prev_state, id, at, initial_sync, out);
    } else if (strcmp(kind, "deal") == 0) {
        derive_deal(snapshot, prev_state, id, contact, at, initial_sync, out);
    } else {
        loyd_buf_printf(err, "snapshot of unknown kind '%s'", kind);
        return -EINVAL;
    }
    out->state_key = loyd_derive_state_key(kind, id);
    return 0;
}
