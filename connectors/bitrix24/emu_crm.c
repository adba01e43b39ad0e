/* SPDX-License-Identifier: MIT */
/*
 * The CRM methods of the Bitrix24 emulator: contacts and deals (add, get, update, delete,
 * list), deal-contact bindings, user fields, timeline comments and to-do activities.
 *
 * Entities are JSON objects holding what crm.*.get returns: every value a string (IDs, money
 * "1250.50", Y/N flags, dates as ISO datetimes in the portal's zone) or null, multi-fields
 * (PHONE, EMAIL) arrays of {ID, VALUE_TYPE, VALUE, TYPE_ID}, user fields under their
 * UF_CRM_* names.  Writes that change an entity queue the matching ONCRM* event.
 */
#include "emu_int.h"

#include <ctype.h>
#include <math.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#define MAX_MULTI 50      /* PHONE/EMAIL values per entity */
#define MAX_LIST_ITEMS 500 /* select, order, @-filter and enumeration items considered */

enum ftype { F_STR, F_INT, F_DATE, F_MONEY, F_YN, F_MULTI, F_RO };

struct fdef {
    const char *name;
    enum ftype type;
};

static const struct fdef contact_fields[] = {
    {"ID", F_RO},          {"NAME", F_STR},          {"SECOND_NAME", F_STR},
    {"LAST_NAME", F_STR},  {"POST", F_STR},          {"COMMENTS", F_STR},
    {"BIRTHDATE", F_DATE}, {"TYPE_ID", F_STR},       {"SOURCE_ID", F_STR},
    {"COMPANY_ID", F_INT}, {"ASSIGNED_BY_ID", F_INT}, {"CREATED_BY_ID", F_RO},
    {"MODIFY_BY_ID", F_RO}, {"OPENED", F_YN},        {"EXPORT", F_YN},
    {"HAS_PHONE", F_RO},   {"HAS_EMAIL", F_RO},      {"DATE_CREATE", F_RO},
    {"DATE_MODIFY", F_RO}, {"PHONE", F_MULTI},       {"EMAIL", F_MULTI},
    {NULL, F_RO},
};

static const struct fdef deal_fields[] = {
    {"ID", F_RO},
    {"TITLE", F_STR},
    {"TYPE_ID", F_STR},
    {"CATEGORY_ID", F_INT},
    {"STAGE_ID", F_STR},
    {"STAGE_SEMANTIC_ID", F_RO},
    {"IS_NEW", F_RO},
    {"IS_RETURN_CUSTOMER", F_YN},
    {"CURRENCY_ID", F_STR},
    {"OPPORTUNITY", F_MONEY},
    {"IS_MANUAL_OPPORTUNITY", F_YN},
    {"COMPANY_ID", F_INT},
    {"CONTACT_ID", F_INT},
    {"BEGINDATE", F_DATE},
    {"CLOSEDATE", F_DATE},
    {"OPENED", F_YN},
    {"CLOSED", F_RO},
    {"COMMENTS", F_STR},
    {"SOURCE_ID", F_STR},
    {"ASSIGNED_BY_ID", F_INT},
    {"CREATED_BY_ID", F_RO},
    {"MODIFY_BY_ID", F_RO},
    {"DATE_CREATE", F_RO},
    {"DATE_MODIFY", F_RO},
    {NULL, F_RO},
};

static const struct kind_info {
    const char *event;     /* ONCRMCONTACT / ONCRMDEAL */
    const char *uf_entity; /* ENTITY_ID of its user fields */
    const char *update_missing;
    const struct fdef *fields;
    int owner_type; /* crm.activity.todo.add ownerTypeId */
} kinds[2] = {
    [B24_CONTACT] = {"ONCRMCONTACT", "CRM_CONTACT", "Contact is not found", contact_fields, 3},
    [B24_DEAL] = {"ONCRMDEAL", "CRM_DEAL", "Deal is not found", deal_fields, 2},
};

static json_t *store(struct b24emu *e, enum b24_kind k)
{
    return k == B24_CONTACT ? e->contacts : e->deals;
}

static const struct fdef *field_def(enum b24_kind k, const char *name)
{
    for (const struct fdef *f = kinds[k].fields; f->name != NULL; f++)
        if (strcmp(f->name, name) == 0)
            return f;
    return NULL;
}

static const json_t *uf_def(struct b24emu *e, enum b24_kind k, const char *name)
{
    size_t i;
    json_t *u;
    json_array_foreach(e->uf[k], i, u) {
        if (strcmp(json_string_value(json_object_get(u, "FIELD_NAME")), name) == 0)
            return u;
    }
    return NULL;
}

static bool is_date_field(const char *name)
{
    return strcmp(name, "DATE_CREATE") == 0 || strcmp(name, "DATE_MODIFY") == 0 ||
           strcmp(name, "BIRTHDATE") == 0 || strcmp(name, "BEGINDATE") == 0 ||
           strcmp(name, "CLOSEDATE") == 0;
}

static json_t *now_str(const struct b24_call *c)
{
    char t[32];
    b24_fmt_time(b24_wall_s(c), c->e->tz_min, t);
    return json_string(t);
}

/* ---- value normalisation -------------------------------------------------------------- */

/* Money as integer minor units: "1250.5", "1250.50", 1250.5, 1250.  Rounds half away. */
static bool parse_money(const json_t *v, long long *minor)
{
    char buf[64];

    if (json_is_integer(v)) {
        *minor = json_integer_value(v) * 100;
        return true;
    }
    if (json_is_real(v)) {
        double d = json_real_value(v);
        if (!isfinite(d) || fabs(d) > 9e13)
            return false;
        *minor = llround(d * 100.0);
        return true;
    }
    if (!json_is_string(v) || json_string_length(v) >= sizeof(buf))
        return false;
    snprintf(buf, sizeof(buf), "%s", json_string_value(v));
    const char *p = buf;
    bool neg = *p == '-';
    long long whole = 0, frac = 0;
    int fd = 0, digits = 0;
    if (neg)
        p++;
    for (; isdigit((unsigned char)*p); p++, digits++) {
        if (digits > 13)
            return false;
        whole = whole * 10 + (*p - '0');
    }
    if (*p == '.') {
        for (p++; isdigit((unsigned char)*p); p++, fd++) {
            if (fd < 3)
                frac = frac * 10 + (*p - '0');
        }
    }
    if (*p != '\0' || (digits == 0 && fd == 0))
        return false;
    if (fd == 1)
        frac *= 100;
    else if (fd == 2)
        frac *= 10;
    frac = (frac + 5) / 10; /* three digits kept: round to two */
    *minor = (whole * 100 + frac) * (neg ? -1 : 1);
    return true;
}

static json_t *money_str(long long minor)
{
    char buf[48];
    unsigned long long a = minor < 0 ? 0ull - (unsigned long long)minor : (unsigned long long)minor;
    snprintf(buf, sizeof(buf), "%s%llu.%02llu", minor < 0 ? "-" : "", a / 100, a % 100);
    return json_string(buf);
}

/*
 * A date field as the portal returns it: CRestUtil::ConvertDate prints the date's midnight
 * plus the server's offset, so 1990-02-28 reads back as 1990-02-28T03:00:00+03:00.
 */
static json_t *date_str(const struct b24emu *e, const char *in)
{
    long long epoch;
    bool date_only;
    char out[32];

    if (in[0] == '\0' || !b24_parse_time(in, e->tz_min, &epoch, &date_only))
        return json_string(""); /* strtotime() fails: the field is emptied */
    long long local = epoch + (long long)e->tz_min * 60;
    long long days = local >= 0 ? local / 86400 : -((-local + 86399) / 86400);
    b24_fmt_time(days * 86400, e->tz_min, out);
    return json_string(out);
}

static json_t *multi_apply(struct b24emu *e, const json_t *old, const json_t *in,
                           const char *type_id)
{
    json_t *arr = json_is_array(old) ? json_deep_copy(old) : json_array();
    const json_t *items[MAX_MULTI];
    size_t n = b24_list(in, items, MAX_MULTI);
    char val[512], vt[64], id[32];

    for (size_t i = 0; i < n; i++) {
        const json_t *it = items[i];
        if (!json_is_object(it))
            continue;
        if (!b24_scalar(json_object_get(it, "VALUE"), val, sizeof(val)))
            val[0] = '\0';
        if (!b24_scalar(json_object_get(it, "VALUE_TYPE"), vt, sizeof(vt)))
            snprintf(vt, sizeof(vt), "WORK");
        if (b24_scalar(json_object_get(it, "ID"), id, sizeof(id))) {
            /* An ID overwrites that value; an empty VALUE deletes it. */
            for (size_t k = 0; k < json_array_size(arr); k++) {
                json_t *cur = json_array_get(arr, k);
                if (strcmp(json_string_value(json_object_get(cur, "ID")), id) != 0)
                    continue;
                if (val[0] == '\0') {
                    json_array_remove(arr, k);
                } else {
                    json_object_set_new(cur, "VALUE", json_string(val));
                    json_object_set_new(cur, "VALUE_TYPE", json_string(vt));
                }
                break;
            }
            continue;
        }
        if (val[0] == '\0' || json_array_size(arr) >= MAX_MULTI)
            continue;
        snprintf(id, sizeof(id), "%lld", e->next_multi++);
        json_array_append_new(arr, json_pack("{s:s,s:s,s:s,s:s}", "ID", id, "VALUE_TYPE", vt,
                                             "VALUE", val, "TYPE_ID", type_id));
    }
    return arr;
}

static json_t *uf_value(const json_t *def, const json_t *in)
{
    const char *type = json_string_value(json_object_get(def, "USER_TYPE_ID"));
    bool multiple = strcmp(json_string_value(json_object_get(def, "MULTIPLE")), "Y") == 0;
    char buf[4096];

    if (multiple) {
        const json_t *items[MAX_LIST_ITEMS];
        size_t n = b24_list(in, items, MAX_LIST_ITEMS);
        json_t *arr = json_array();
        for (size_t i = 0; i < n; i++)
            if (b24_scalar(items[i], buf, sizeof(buf)) && buf[0] != '\0')
                json_array_append_new(arr, json_string(buf));
        return arr;
    }
    if (in == NULL || json_is_null(in))
        return json_null();
    if (strcmp(type, "boolean") == 0) /* [I] stored and returned as "1" / "0" */
        return json_string(b24_truthy(in) ? "1" : "0");
    if (!b24_scalar(in, buf, sizeof(buf)))
        return NULL;
    return json_string(buf);
}

/* ---- entities ------------------------------------------------------------------------- */

static void id_str(long long id, char buf[24])
{
    snprintf(buf, 24, "%lld", id);
}

/* The `id` parameter: a positive integer, as a number or a string. */
static bool param_id(struct b24_call *c, const json_t *p, long long *id)
{
    if (!b24_int(b24_param(p, "id"), id) || *id <= 0) {
        b24_fail(c, 400, "", "ID is not defined or invalid.");
        return false;
    }
    return true;
}

static const char *stage_semantic(const char *stage)
{
    const char *s = strchr(stage, ':');
    s = s != NULL ? s + 1 : stage;
    if (strcmp(s, "WON") == 0)
        return "S";
    if (strcmp(s, "LOSE") == 0 || strcmp(s, "APOLOGY") == 0)
        return "F";
    return "P";
}

static json_t *new_entity(struct b24_call *c, enum b24_kind k, long long id)
{
    struct b24emu *e = c->e;
    char ids[24];
    json_t *o = json_object();

    id_str(id, ids);
    for (const struct fdef *f = kinds[k].fields; f->name != NULL; f++)
        json_object_set_new(o, f->name, f->type == F_MULTI ? json_array() : json_null());
    json_object_set_new(o, "ID", json_string(ids));
    json_object_set_new(o, "DATE_CREATE", now_str(c));
    json_object_set_new(o, "DATE_MODIFY", now_str(c));
    json_object_set_new(o, "ASSIGNED_BY_ID", json_string(e->webhook_user));
    json_object_set_new(o, "CREATED_BY_ID", json_string(e->webhook_user));
    json_object_set_new(o, "MODIFY_BY_ID", json_string(e->webhook_user));
    json_object_set_new(o, "OPENED", json_string("Y"));
    if (k == B24_CONTACT) {
        json_object_set_new(o, "EXPORT", json_string("Y"));
        json_object_set_new(o, "TYPE_ID", json_string("CLIENT"));
    } else {
        json_object_set_new(o, "TITLE", json_string(""));
        json_object_set_new(o, "CATEGORY_ID", json_string("0"));
        json_object_set_new(o, "STAGE_ID", json_string("NEW"));
        json_object_set_new(o, "IS_NEW", json_string("Y"));
        json_object_set_new(o, "IS_RETURN_CUSTOMER", json_string("N"));
        json_object_set_new(o, "CURRENCY_ID", json_string(e->currency));
        json_object_set_new(o, "OPPORTUNITY", json_string("0.00"));
        json_object_set_new(o, "IS_MANUAL_OPPORTUNITY", json_string("N"));
        json_object_set_new(o, "COMPANY_ID", json_string("0"));
    }
    size_t i;
    json_t *u;
    json_array_foreach(e->uf[k], i, u) {
        bool multiple = strcmp(json_string_value(json_object_get(u, "MULTIPLE")), "Y") == 0;
        json_object_set_new(o, json_string_value(json_object_get(u, "FIELD_NAME")),
                            multiple ? json_array() : json_null());
    }
    return o;
}

/* Fields every write recomputes from the others. */
static void derive(struct b24emu *e, enum b24_kind k, json_t *o, const char *id)
{
    if (k == B24_CONTACT) {
        json_object_set_new(o, "HAS_PHONE",
                            json_string(json_array_size(json_object_get(o, "PHONE")) ? "Y" : "N"));
        json_object_set_new(o, "HAS_EMAIL",
                            json_string(json_array_size(json_object_get(o, "EMAIL")) ? "Y" : "N"));
        return;
    }
    const char *stage = json_string_value(json_object_get(o, "STAGE_ID"));
    const char *sem = stage_semantic(stage != NULL ? stage : "NEW");
    json_object_set_new(o, "STAGE_SEMANTIC_ID", json_string(sem));
    json_object_set_new(o, "CLOSED", json_string(strcmp(sem, "P") == 0 ? "N" : "Y"));
    /* CONTACT_ID is the first bound contact (docs: deprecated, holds only the first). */
    json_t *bound = json_object_get(e->deal_contacts, id);
    if (json_array_size(bound) > 0) {
        char buf[24];
        id_str(json_integer_value(json_array_get(bound, 0)), buf);
        json_object_set_new(o, "CONTACT_ID", json_string(buf));
    } else {
        json_object_set_new(o, "CONTACT_ID", json_null());
    }
}

/* Applies `fields` to o.  Unknown fields are silently ignored, as on a portal. */
static void apply_fields(struct b24_call *c, enum b24_kind k, json_t *o, const json_t *fields,
                         bool is_add)
{
    struct b24emu *e = c->e;
    const char *key;
    json_t *v;
    char buf[4096];
    const char *id = json_string_value(json_object_get(o, "ID"));

    json_object_foreach((json_t *)fields, key, v) {
        const struct fdef *f = field_def(k, key);
        if (f == NULL) {
            const json_t *ud = strncmp(key, "UF_", 3) == 0 ? uf_def(e, k, key) : NULL;
            if (ud != NULL) {
                json_t *nv = uf_value(ud, v);
                if (nv != NULL)
                    json_object_set_new(o, key, nv);
            } else if (k == B24_DEAL && strcmp(key, "CONTACT_IDS") == 0) {
                const json_t *items[MAX_LIST_ITEMS];
                size_t n = b24_list(v, items, MAX_LIST_ITEMS);
                json_t *arr = json_array();
                long long cid;
                for (size_t i = 0; i < n; i++)
                    if (b24_int(items[i], &cid) && cid > 0)
                        json_array_append_new(arr, json_integer(cid));
                json_object_set_new(e->deal_contacts, id, arr);
            }
            continue;
        }
        switch (f->type) {
        case F_RO:
            break;
        case F_STR:
            if (json_is_null(v))
                json_object_set_new(o, key, json_null());
            else if (b24_scalar(v, buf, sizeof(buf)))
                json_object_set_new(o, key, json_string(buf));
            break;
        case F_INT: {
            long long x;
            if (strcmp(key, "CATEGORY_ID") == 0 && !is_add)
                break; /* moving pipelines is not an update on a portal */
            if (b24_int(v, &x) && x >= 0) {
                if (k == B24_DEAL && strcmp(key, "CONTACT_ID") == 0) {
                    /* The single legacy field replaces the bindings with one contact. */
                    json_object_set_new(e->deal_contacts, id,
                                        x > 0 ? json_pack("[I]", (json_int_t)x) : json_array());
                    break;
                }
                id_str(x, buf);
                json_object_set_new(o, key, json_string(buf));
            }
            break;
        }
        case F_DATE:
            if (json_is_null(v))
                json_object_set_new(o, key, json_string(""));
            else if (b24_scalar(v, buf, sizeof(buf)))
                json_object_set_new(o, key, date_str(e, buf));
            break;
        case F_MONEY: {
            long long minor;
            if (parse_money(v, &minor))
                json_object_set_new(o, key, money_str(minor));
            break;
        }
        case F_YN:
            if (b24_scalar(v, buf, sizeof(buf)))
                json_object_set_new(o, key, json_string(b24_truthy(v) ? "Y" : "N"));
            break;
        case F_MULTI:
            json_object_set_new(o, key, multi_apply(e, json_object_get(o, key), v, key));
            break;
        }
    }
    if (k == B24_DEAL && is_add) {
        /* A new deal in pipeline N starts at C<N>:NEW unless a stage is given. */
        long long cat = 0;
        b24_int(json_object_get(o, "CATEGORY_ID"), &cat);
        if (cat > 0 && json_object_get(fields, "STAGE_ID") == NULL) {
            snprintf(buf, sizeof(buf), "C%lld:NEW", cat);
            json_object_set_new(o, "STAGE_ID", json_string(buf));
        }
    }
}

static const json_t *fields_param(struct b24_call *c, const json_t *p)
{
    const json_t *f = b24_param(p, "fields");
    if (!json_is_object(f)) {
        b24_fail(c, 400, "", "Parameter 'fields' must be array.");
        return NULL;
    }
    return f;
}

static void entity_add(struct b24_call *c, enum b24_kind k, const json_t *p)
{
    struct b24emu *e = c->e;
    const json_t *fields = fields_param(c, p);
    char ids[24];
    char ev[48];

    if (fields == NULL)
        return;
    long long id = e->next_id[k]++;
    id_str(id, ids);
    json_t *o = new_entity(c, k, id);
    apply_fields(c, k, o, fields, true);
    derive(e, k, o, ids);
    json_object_set_new(store(e, k), ids, o);
    e->updates++;
    snprintf(ev, sizeof(ev), "%sADD", kinds[k].event);
    b24_queue_event(c, ev, ids);
    b24_ok(c, json_integer(id));
}

static void entity_get(struct b24_call *c, enum b24_kind k, const json_t *p)
{
    long long id;
    char ids[24];

    if (!param_id(c, p, &id))
        return;
    id_str(id, ids);
    json_t *o = json_object_get(store(c->e, k), ids);
    if (o == NULL) {
        b24_fail(c, 400, "", "Not found");
        return;
    }
    b24_ok(c, json_deep_copy(o));
}

static void entity_update(struct b24_call *c, enum b24_kind k, const json_t *p)
{
    struct b24emu *e = c->e;
    long long id;
    char ids[24], ev[48];

    if (!param_id(c, p, &id))
        return;
    id_str(id, ids);
    json_t *o = json_object_get(store(e, k), ids);
    if (o == NULL) {
        b24_fail(c, 400, "", "%s", kinds[k].update_missing);
        return;
    }
    const json_t *fields = fields_param(c, p);
    if (fields == NULL)
        return;
    apply_fields(c, k, o, fields, false);
    if (k == B24_DEAL)
        json_object_set_new(o, "IS_NEW", json_string("N"));
    derive(e, k, o, ids);
    /* Every save is a modification and an event, even when nothing changed (docs 1.6). */
    json_object_set_new(o, "DATE_MODIFY", now_str(c));
    e->updates++;
    snprintf(ev, sizeof(ev), "%sUPDATE", kinds[k].event);
    b24_queue_event(c, ev, ids);
    b24_ok(c, json_true());
}

static void entity_delete(struct b24_call *c, enum b24_kind k, const json_t *p)
{
    struct b24emu *e = c->e;
    long long id;
    char ids[24], ev[48];

    if (!param_id(c, p, &id))
        return;
    id_str(id, ids);
    if (json_object_get(store(e, k), ids) == NULL) {
        b24_fail(c, 400, "", "Not found");
        return;
    }
    json_object_del(store(e, k), ids);
    if (k == B24_DEAL)
        json_object_del(e->deal_contacts, ids);
    e->updates++;
    snprintf(ev, sizeof(ev), "%sDELETE", kinds[k].event);
    b24_queue_event(c, ev, ids);
    b24_ok(c, json_true());
}

/* ---- list ----------------------------------------------------------------------------- */

/* Compares an entity value with a filter or another entity's value, typed by the field. */
static int cmp_field(const char *field, const json_t *a, const json_t *b, int tz)
{
    char x[512], y[512];

    if (!b24_scalar(a, x, sizeof(x)))
        x[0] = '\0';
    if (!b24_scalar(b, y, sizeof(y)))
        y[0] = '\0';
    if (is_date_field(field)) {
        long long ex, ey;
        bool d;
        bool okx = b24_parse_time(x, tz, &ex, &d), oky = b24_parse_time(y, tz, &ey, &d);
        if (okx && oky)
            return ex < ey ? -1 : ex > ey;
        if (okx != oky)
            return okx ? 1 : -1; /* empty dates sort first */
    }
    char *ex, *ey;
    double dx = strtod(x, &ex), dy = strtod(y, &ey);
    if (x[0] != '\0' && y[0] != '\0' && *ex == '\0' && *ey == '\0')
        return dx < dy ? -1 : dx > dy;
    return strcasecmp(x, y);
}

static bool contains_ci(const char *hay, const char *needle)
{
    size_t n = strlen(needle);
    for (const char *p = hay; *p; p++)
        if (strncasecmp(p, needle, n) == 0)
            return true;
    return n == 0;
}

static bool match_one(const char *op, const char *field, const json_t *have, const json_t *want,
                      int tz)
{
    if (json_is_array(have)) {
        /* Multi-fields match exactly on any VALUE (docs 3.3: PHONE/EMAIL exact only). */
        size_t i;
        json_t *it;
        bool any = false;
        json_array_foreach(have, i, it) {
            const json_t *v = json_is_object(it) ? json_object_get(it, "VALUE") : it;
            if (cmp_field("", v, want, tz) == 0)
                any = true;
        }
        return strcmp(op, "!") == 0 || strcmp(op, "!=") == 0 ? !any : any;
    }
    if (strcmp(op, "@") == 0 || strcmp(op, "!@") == 0) {
        const json_t *items[MAX_LIST_ITEMS];
        size_t n = b24_list(want, items, MAX_LIST_ITEMS);
        bool in = false;
        for (size_t i = 0; i < n && !in; i++)
            in = cmp_field(field, have, items[i], tz) == 0;
        return op[0] == '@' ? in : !in;
    }
    if (strcmp(op, "%") == 0 || strcmp(op, "=%") == 0 || strcmp(op, "%=") == 0) {
        char x[512], y[512], lit[512];
        size_t n = 0;
        if (!b24_scalar(have, x, sizeof(x)) || !b24_scalar(want, y, sizeof(y)))
            return false;
        /* LIKE: the literal part (wildcards dropped) must occur, case-insensitively. */
        for (const char *q = y; *q; q++)
            if (*q != '%')
                lit[n++] = *q;
        lit[n] = '\0';
        return contains_ci(x, lit);
    }
    if (json_is_null(have))
        return op[0] == '!' ? true : (json_is_null(want) || (json_is_string(want) &&
                                                             json_string_length(want) == 0));
    int r = cmp_field(field, have, want, tz);
    if (strcmp(op, ">") == 0)
        return r > 0;
    if (strcmp(op, ">=") == 0)
        return r >= 0;
    if (strcmp(op, "<") == 0)
        return r < 0;
    if (strcmp(op, "<=") == 0)
        return r <= 0;
    if (strcmp(op, "!") == 0 || strcmp(op, "!=") == 0)
        return r != 0;
    return r == 0;
}

static bool matches(const json_t *o, const json_t *filter, int tz)
{
    static const char *const ops[] = {"!@", "!=", ">=", "<=", "=%", "%=", "@", ">", "<",
                                      "!",  "%",  "="};
    const char *key;
    json_t *want;

    json_object_foreach((json_t *)filter, key, want) {
        const char *op = "=", *field = key; /* `key` itself drives the iteration */
        for (size_t i = 0; i < sizeof(ops) / sizeof(ops[0]); i++) {
            if (strncmp(key, ops[i], strlen(ops[i])) == 0) {
                op = ops[i];
                field = key + strlen(ops[i]);
                break;
            }
        }
        const json_t *have = json_object_get(o, field);
        if (have == NULL && json_object_get(o, "ID") != NULL)
            continue; /* a field this portal does not have: the condition is ignored */
        if (!match_one(op, field, have, want, tz))
            return false;
    }
    return true;
}

struct order_ctx {
    const char *fields[16];
    bool desc[16];
    size_t n;
    int tz;
};

static int order_cmp(const void *pa, const void *pb, void *arg)
{
    const json_t *a = *(const json_t *const *)pa, *b = *(const json_t *const *)pb;
    const struct order_ctx *oc = arg;

    for (size_t i = 0; i < oc->n; i++) {
        int r = cmp_field(oc->fields[i], json_object_get(a, oc->fields[i]),
                          json_object_get(b, oc->fields[i]), oc->tz);
        if (r != 0)
            return oc->desc[i] ? -r : r;
    }
    return cmp_field("ID", json_object_get(a, "ID"), json_object_get(b, "ID"), oc->tz);
}

static json_t *project(struct b24emu *e, enum b24_kind k, const json_t *o, const json_t *select)
{
    const json_t *items[MAX_LIST_ITEMS];
    size_t n = b24_list(select, items, MAX_LIST_ITEMS);
    bool star = n == 0, uf = n == 0;
    json_t *r = json_object();

    for (size_t i = 0; i < n; i++) {
        const char *s = json_string_value(items[i]);
        if (s != NULL && strcmp(s, "*") == 0)
            star = true;
        else if (s != NULL && strcmp(s, "UF_*") == 0)
            uf = true;
    }
    json_object_set(r, "ID", json_object_get(o, "ID"));
    for (const struct fdef *f = kinds[k].fields; star && f->name != NULL; f++)
        if (f->type != F_MULTI) /* multi-fields only when named (docs 3.3) */
            json_object_set(r, f->name, json_object_get(o, f->name));
    size_t i;
    json_t *u;
    json_array_foreach(e->uf[k], i, u) {
        const char *name = json_string_value(json_object_get(u, "FIELD_NAME"));
        if (uf)
            json_object_set(r, name, json_object_get(o, name));
    }
    for (i = 0; i < n; i++) {
        const char *s = json_string_value(items[i]);
        json_t *v = s != NULL ? json_object_get(o, s) : NULL;
        if (v != NULL)
            json_object_set(r, s, v);
    }
    return r;
}

static void entity_list(struct b24_call *c, enum b24_kind k, const json_t *p)
{
    struct b24emu *e = c->e;
    const json_t *filter = b24_param(p, "filter"), *order = b24_param(p, "order");
    const json_t *select = b24_param(p, "select");
    json_t *st = store(e, k);
    size_t n = 0, cap = json_object_size(st);
    const json_t **rows = malloc((cap ? cap : 1) * sizeof(*rows));
    long long start = 0;
    struct order_ctx oc = {.tz = e->tz_min};
    const char *key;
    json_t *o;

    if (rows == NULL)
        abort();
    json_object_foreach(st, key, o) {
        if (filter == NULL || !json_is_object(filter) || matches(o, filter, e->tz_min))
            rows[n++] = o;
    }
    json_object_foreach((json_t *)order, key, o) {
        if (oc.n < 16) {
            oc.fields[oc.n] = key;
            oc.desc[oc.n++] = json_is_string(o) && strcasecmp(json_string_value(o), "DESC") == 0;
        }
    }
    qsort_r(rows, n, sizeof(*rows), order_cmp, &oc);
    if (!b24_int(b24_param(p, "start"), &start))
        start = 0;
    /* start=-1: no COUNT, no `total`, no `next`; the caller pages by >ID (docs 3.3). */
    bool count = start >= 0;
    size_t from = count ? (size_t)start : 0;
    json_t *result = json_array();
    for (size_t i = from; i < n && i < from + B24EMU_PAGE; i++)
        json_array_append_new(result, project(e, k, rows[i], select));
    free(rows);
    b24_ok(c, result);
    if (count) {
        c->total = (long long)n;
        if (from + B24EMU_PAGE < n)
            c->next = (long long)(from + B24EMU_PAGE);
    }
}

void b24_m_contact_add(struct b24_call *c, const json_t *p) { entity_add(c, B24_CONTACT, p); }
void b24_m_contact_get(struct b24_call *c, const json_t *p) { entity_get(c, B24_CONTACT, p); }
void b24_m_contact_update(struct b24_call *c, const json_t *p)
{
    entity_update(c, B24_CONTACT, p);
}
void b24_m_contact_delete(struct b24_call *c, const json_t *p)
{
    entity_delete(c, B24_CONTACT, p);
}
void b24_m_contact_list(struct b24_call *c, const json_t *p) { entity_list(c, B24_CONTACT, p); }
void b24_m_deal_add(struct b24_call *c, const json_t *p) { entity_add(c, B24_DEAL, p); }
void b24_m_deal_get(struct b24_call *c, const json_t *p) { entity_get(c, B24_DEAL, p); }
void b24_m_deal_update(struct b24_call *c, const json_t *p) { entity_update(c, B24_DEAL, p); }
void b24_m_deal_delete(struct b24_call *c, const json_t *p) { entity_delete(c, B24_DEAL, p); }
void b24_m_deal_list(struct b24_call *c, const json_t *p) { entity_list(c, B24_DEAL, p); }

void b24_m_deal_contact_items_get(struct b24_call *c, const json_t *p)
{
    long long id;
    char ids[24];

    if (!param_id(c, p, &id))
        return;
    id_str(id, ids);
    if (json_object_get(c->e->deals, ids) == NULL) {
        b24_fail(c, 400, "", "Not found");
        return;
    }
    json_t *res = json_array();
    size_t i;
    json_t *cid;
    json_array_foreach(json_object_get(c->e->deal_contacts, ids), i, cid) {
        json_array_append_new(res, json_pack("{s:I,s:I,s:i,s:s}", "CONTACT_ID",
                                             json_integer_value(cid), "SORT",
                                             (json_int_t)(10 * (i + 1)), "ROLE_ID", 0,
                                             "IS_PRIMARY", i == 0 ? "Y" : "N"));
    }
    b24_ok(c, res);
}

/* ---- user fields ---------------------------------------------------------------------- */

static const char *const uf_types[] = {
    "string",   "integer",     "double",   "boolean",        "datetime",      "date",
    "money",    "url",         "address",  "enumeration",    "file",          "employee",
    "crm_status", "iblock_section", "iblock_element", "crm", NULL,
};

/* The labels a field has, one per portal language (lang_map, as crm.*.userfield.get shows). */
static const char *const uf_labels[] = {"EDIT_FORM_LABEL", "LIST_COLUMN_LABEL",
                                        "LIST_FILTER_LABEL", "ERROR_MESSAGE", "HELP_MESSAGE",
                                        NULL};

/* The languages this portal has (a Russian-region portal: Russian, English, German). */
static const char *const portal_langs[] = {"ru", "en", "de", NULL};

/*
 * One label as Bitrix24 stores it: a lang_map over the portal's languages.  A string is every
 * language's label; a map gives some languages and LABEL the rest; languages the portal does
 * not have are dropped.  A language with neither has no label (null in a LANG list).
 */
static json_t *label_map(const json_t *given, const json_t *fallback)
{
    char buf[1024];
    json_t *m = json_object();
    for (size_t i = 0; portal_langs[i] != NULL; i++) {
        const json_t *v = json_is_object(given) ? json_object_get(given, portal_langs[i]) : given;
        if (v == NULL || json_is_object(v) || json_is_array(v) || json_is_null(v))
            v = fallback;
        if (b24_scalar(v, buf, sizeof(buf)))
            json_object_set_new(m, portal_langs[i], json_string(buf));
    }
    return m;
}

static void uf_add(struct b24_call *c, enum b24_kind k, const json_t *p)
{
    struct b24emu *e = c->e;
    const json_t *f = fields_param(c, p);
    char type[64], raw[256], name[300], buf[256];

    if (f == NULL)
        return;
    if (!b24_scalar(json_object_get(f, "USER_TYPE_ID"), type, sizeof(type)) || type[0] == '\0') {
        b24_fail(c, 400, "", "USER_TYPE_ID is not defined.");
        return;
    }
    bool known = false;
    for (size_t i = 0; uf_types[i] != NULL; i++)
        known |= strcmp(uf_types[i], type) == 0;
    if (!known) {
        b24_fail(c, 400, "", "Invalid USER_TYPE_ID: %s", type);
        return;
    }
    if (!b24_scalar(json_object_get(f, "FIELD_NAME"), raw, sizeof(raw)) || raw[0] == '\0') {
        b24_fail(c, 400, "", "FIELD_NAME is not defined.");
        return;
    }
    /* MANAGER_NOTE, UF_MANAGER_NOTE and UF_CRM_MANAGER_NOTE all become UF_CRM_MANAGER_NOTE. */
    for (char *q = raw; *q; q++)
        *q = (char)toupper((unsigned char)*q);
    const char *code = raw;
    if (strncmp(code, "UF_CRM_", 7) == 0)
        code += 7;
    else if (strncmp(code, "UF_", 3) == 0)
        code += 3;
    for (const char *q = code; *q; q++) {
        if (!((*q >= 'A' && *q <= 'Z') || (*q >= '0' && *q <= '9') || *q == '_')) {
            b24_fail(c, 400, "ERROR_CORE",
                     "Invalid field name: only the characters A-Z, 0-9 and _ are allowed");
            return;
        }
    }
    snprintf(name, sizeof(name), "UF_CRM_%s", code);
    if (code[0] == '\0' || strlen(name) > 50) {
        b24_fail(c, 400, "ERROR_CORE",
                 "Invalid field name: it must be 1 to 50 characters long with the prefix");
        return;
    }
    if (uf_def(e, k, name) != NULL) {
        b24_fail(c, 400, "", "A field with the code %s already exists.", name);
        return;
    }
    long long id = e->next_uf++;
    char ids[24];
    id_str(id, ids);
    json_t *d = json_pack("{s:s,s:s,s:s,s:s}", "ID", ids, "ENTITY_ID", kinds[k].uf_entity,
                          "FIELD_NAME", name, "USER_TYPE_ID", type);
    json_object_set_new(d, "XML_ID", b24_scalar(json_object_get(f, "XML_ID"), buf, sizeof(buf))
                                         ? json_string(buf)
                                         : json_null());
    json_object_set_new(d, "SORT", json_string(b24_scalar(json_object_get(f, "SORT"), buf,
                                                           sizeof(buf)) ? buf : "100"));
    static const char *const flags[][2] = {{"MULTIPLE", "N"},     {"MANDATORY", "N"},
                                           {"SHOW_FILTER", "N"},  {"SHOW_IN_LIST", "Y"},
                                           {"EDIT_IN_LIST", "Y"}, {"IS_SEARCHABLE", "N"}};
    for (size_t i = 0; i < sizeof(flags) / sizeof(flags[0]); i++) {
        const json_t *v = json_object_get(f, flags[i][0]);
        json_object_set_new(d, flags[i][0],
                            json_string(v == NULL ? flags[i][1] : b24_truthy(v) ? "Y" : "N"));
    }
    const json_t *settings = json_object_get(f, "SETTINGS");
    json_t *s = json_is_object(settings) ? json_deep_copy(settings) : json_object();
    if (strcmp(type, "double") == 0) {
        /* As the double type prepares its settings: an integer 0..12, 2 when not given (a
         * batch command's "2" arrives as text). */
        long long prec = 2;
        if (json_object_get(s, "PRECISION") != NULL &&
            !b24_int(json_object_get(s, "PRECISION"), &prec))
            prec = 0;
        json_object_set_new(s, "PRECISION", json_integer(prec < 0 ? 0 : prec > 12 ? 12 : prec));
    }
    json_object_set_new(d, "SETTINGS", s);
    for (size_t i = 0; uf_labels[i] != NULL; i++)
        json_object_set_new(d, uf_labels[i], label_map(json_object_get(f, uf_labels[i]),
                                                       json_object_get(f, "LABEL")));
    if (strcmp(type, "enumeration") == 0) {
        const json_t *items[MAX_LIST_ITEMS];
        size_t n = b24_list(json_object_get(f, "LIST"), items, MAX_LIST_ITEMS);
        json_t *list = json_array();
        for (size_t i = 0; i < n; i++) {
            char val[256], ix[24], sort[24], xml[128];
            if (!json_is_object(items[i]) ||
                !b24_scalar(json_object_get(items[i], "VALUE"), val, sizeof(val)))
                continue;
            id_str(e->next_enum++, ix);
            if (!b24_scalar(json_object_get(items[i], "SORT"), sort, sizeof(sort)))
                snprintf(sort, sizeof(sort), "%zu", (i + 1) * 10);
            if (!b24_scalar(json_object_get(items[i], "XML_ID"), xml, sizeof(xml)))
                snprintf(xml, sizeof(xml), "%s", ix);
            const json_t *def = json_object_get(items[i], "DEF");
            json_array_append_new(list, json_pack("{s:s,s:s,s:s,s:s,s:s}", "ID", ix, "SORT",
                                                  sort, "VALUE", val, "DEF",
                                                  def != NULL && b24_truthy(def) ? "Y" : "N",
                                                  "XML_ID", xml));
        }
        json_object_set_new(d, "LIST", list);
    }
    json_array_append_new(e->uf[k], d);
    /* Existing entities gain the empty field, as a new column does. */
    bool multiple = strcmp(json_string_value(json_object_get(d, "MULTIPLE")), "Y") == 0;
    const char *key;
    json_t *o;
    json_object_foreach(store(e, k), key, o) {
        json_object_set_new(o, name, multiple ? json_array() : json_null());
    }
    e->updates++;
    b24_ok(c, json_integer(id));
}

static void uf_list(struct b24_call *c, enum b24_kind k, const json_t *p)
{
    const json_t *filter = b24_param(p, "filter");
    json_t *res = json_array();
    size_t i;
    json_t *u;
    char lang[16];

    if (!b24_scalar(json_object_get(filter, "LANG"), lang, sizeof(lang)))
        lang[0] = '\0';
    for (char *q = lang; *q; q++)
        *q = (char)tolower((unsigned char)*q);
    json_array_foreach(c->e->uf[k], i, u) {
        const char *key;
        json_t *want;
        bool ok = true;
        json_object_foreach((json_t *)filter, key, want) {
            char a[256], b[256];
            const json_t *have = json_object_get(u, key);
            if (strcmp(key, "LANG") == 0)
                continue; /* only chooses the label language */
            if (!b24_scalar(have, a, sizeof(a)) || !b24_scalar(want, b, sizeof(b)) ||
                strcmp(a, b) != 0)
                ok = false;
        }
        if (!ok)
            continue;
        /* The labels come only in the language asked for, as text; without LANG, not at all. */
        json_t *item = json_deep_copy(u);
        for (size_t j = 0; uf_labels[j] != NULL; j++) {
            if (lang[0] == '\0') {
                json_object_del(item, uf_labels[j]);
            } else {
                const json_t *t = json_object_get(json_object_get(u, uf_labels[j]), lang);
                json_object_set_new(item, uf_labels[j], t ? json_deep_copy(t) : json_null());
            }
        }
        json_array_append_new(res, item);
    }
    c->total = (long long)json_array_size(res);
    b24_ok(c, res);
}

void b24_m_contact_uf_add(struct b24_call *c, const json_t *p) { uf_add(c, B24_CONTACT, p); }
void b24_m_contact_uf_list(struct b24_call *c, const json_t *p) { uf_list(c, B24_CONTACT, p); }
void b24_m_deal_uf_add(struct b24_call *c, const json_t *p) { uf_add(c, B24_DEAL, p); }
void b24_m_deal_uf_list(struct b24_call *c, const json_t *p) { uf_list(c, B24_DEAL, p); }

/* ---- timeline and activities ---------------------------------------------------------- */

void b24_m_timeline_comment_add(struct b24_call *c, const json_t *p)
{
    struct b24emu *e = c->e;
    /* Since crm 23.100.0 only lowercase `fields` is accepted (FIELDS, Fields are not). */
    const json_t *f = json_object_get(p, "fields");
    char type[64], comment[8192], ids[24];
    long long eid;

    if (!json_is_object(f)) {
        b24_fail(c, 400, "INVALID_ARG_VALUE", "Parameter 'fields' is required.");
        return;
    }
    if (!b24_int(json_object_get(f, "ENTITY_ID"), &eid) || eid <= 0) {
        b24_fail(c, 400, "INVALID_ARG_VALUE", "ENTITY_ID is not defined or invalid.");
        return;
    }
    if (!b24_scalar(json_object_get(f, "ENTITY_TYPE"), type, sizeof(type)))
        type[0] = '\0';
    for (char *q = type; *q; q++)
        *q = (char)tolower((unsigned char)*q);
    enum b24_kind k;
    if (strcmp(type, "contact") == 0) {
        k = B24_CONTACT;
    } else if (strcmp(type, "deal") == 0) {
        k = B24_DEAL;
    } else if (strcmp(type, "lead") == 0 || strcmp(type, "company") == 0 ||
               strcmp(type, "order") == 0 || strncmp(type, "dynamic_", 8) == 0) {
        /* Valid types this portal holds nothing of: the owner cannot exist. */
        b24_fail(c, 400, "OWNER_NOT_FOUND", "Owner entity is not found.");
        return;
    } else {
        b24_fail(c, 400, "NOT_FOUND", "Entity type '%s' is not supported.", type);
        return;
    }
    id_str(eid, ids);
    if (json_object_get(store(e, k), ids) == NULL) {
        b24_fail(c, 400, "OWNER_NOT_FOUND", "Owner entity is not found.");
        return;
    }
    if (!b24_scalar(json_object_get(f, "COMMENT"), comment, sizeof(comment)) ||
        comment[0] == '\0') {
        b24_fail(c, 400, "INVALID_ARG_VALUE", "Comment is empty.");
        return;
    }
    long long id = e->next_comment++;
    char cid[24];
    id_str(id, cid);
    json_array_append_new(e->comments, json_pack("{s:s,s:s,s:s,s:s,s:s,s:o}", "ID", cid,
                                                 "ENTITY_ID", ids, "ENTITY_TYPE", type,
                                                 "COMMENT", comment, "AUTHOR_ID",
                                                 e->webhook_user, "CREATED", now_str(c)));
    e->updates++;
    b24_ok(c, json_integer(id));
}

void b24_m_activity_todo_add(struct b24_call *c, const json_t *p)
{
    struct b24emu *e = c->e;
    long long otype, oid, epoch;
    char ids[24], deadline[64], buf[4096];
    bool date_only;

    if (!b24_int(json_object_get(p, "ownerTypeId"), &otype) ||
        !b24_int(json_object_get(p, "ownerId"), &oid) || oid <= 0) {
        b24_fail(c, 400, "OWNER_NOT_FOUND", "Owner entity is not found.");
        return;
    }
    enum b24_kind k;
    if (otype == kinds[B24_CONTACT].owner_type) {
        k = B24_CONTACT;
    } else if (otype == kinds[B24_DEAL].owner_type) {
        k = B24_DEAL;
    } else {
        b24_fail(c, 400, "OWNER_NOT_FOUND", "Owner entity is not found.");
        return;
    }
    id_str(oid, ids);
    if (json_object_get(store(e, k), ids) == NULL) {
        b24_fail(c, 400, "OWNER_NOT_FOUND", "Owner entity is not found.");
        return;
    }
    if (!b24_scalar(json_object_get(p, "deadline"), deadline, sizeof(deadline)) ||
        !b24_parse_time(deadline, e->tz_min, &epoch, &date_only)) {
        b24_fail(c, 400, "WRONG_DATETIME_FORMAT", "Wrong datetime format of parameter deadline");
        return;
    }
    char iso[32];
    b24_fmt_time(epoch, e->tz_min, iso);
    long long id = e->next_activity++;
    json_t *a = json_pack("{s:I,s:I,s:I,s:s,s:o}", "id", (json_int_t)id, "ownerTypeId",
                          (json_int_t)otype, "ownerId", (json_int_t)oid, "deadline", iso,
                          "created", now_str(c));
    static const char *const opt[] = {"title", "description", "responsibleId", "colorId"};
    for (size_t i = 0; i < sizeof(opt) / sizeof(opt[0]); i++)
        if (b24_scalar(json_object_get(p, opt[i]), buf, sizeof(buf)))
            json_object_set_new(a, opt[i], json_string(buf));
    const json_t *ping = json_object_get(p, "pingOffsets");
    if (ping != NULL)
        json_object_set_new(a, "pingOffsets", json_deep_copy(ping));
    json_array_append_new(e->activities, a);
    e->updates++;
    b24_ok(c, json_pack("{s:I}", "id", (json_int_t)id));
}
