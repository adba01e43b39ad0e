/* SPDX-License-Identifier: MIT */
/*
 * The emulator's reads of timeline comments and activities: crm.timeline.comment.list
 * (filter ENTITY_ID, ENTITY_TYPE) and crm.activity.list (filter OWNER_TYPE_ID, OWNER_ID), in
 * the documented upper-case shapes.  One page of 50, oldest first.
 */
#include <stdio.h>
#include <string.h>

#include "emu_int.h"

#define PAGE 50

/* Whether @p have (a stored value) matches the filter value @p want (string or number). */
static bool matches(const json_t *have, const json_t *want)
{
    char a[64], b[64];
    if (want == NULL)
        return true;
    return b24_scalar(have, a, sizeof(a)) && b24_scalar(want, b, sizeof(b)) &&
           strcasecmp(a, b) == 0;
}

static void page(struct b24_call *c, json_t *all /* owned */)
{
    size_t n = json_array_size(all);
    c->total = (long long)n;
    if (n > PAGE) {
        json_t *first = json_array();
        for (size_t i = 0; i < PAGE; i++)
            json_array_append(first, json_array_get(all, i));
        json_decref(all);
        all = first;
        c->next = PAGE;
    }
    b24_ok(c, all);
}

void b24_m_timeline_comment_list(struct b24_call *c, const json_t *p)
{
    const json_t *f = json_object_get(p, "filter");
    json_t *out = json_array(), *x;
    size_t i;
    json_array_foreach(c->e->comments, i, x)
    {
        if (matches(json_object_get(x, "ENTITY_ID"), json_object_get(f, "ENTITY_ID")) &&
            matches(json_object_get(x, "ENTITY_TYPE"), json_object_get(f, "ENTITY_TYPE")))
            json_array_append(out, x);
    }
    page(c, out);
}

void b24_m_activity_list(struct b24_call *c, const json_t *p)
{
    const json_t *f = json_object_get(p, "filter");
    json_t *out = json_array(), *x;
    size_t i;
    json_array_foreach(c->e->activities, i, x)
    {
        if (!matches(json_object_get(x, "ownerTypeId"), json_object_get(f, "OWNER_TYPE_ID")) ||
            !matches(json_object_get(x, "ownerId"), json_object_get(f, "OWNER_ID")))
            continue;
        char id[24], ot[24], oid[24];
        b24_scalar(json_object_get(x, "id"), id, sizeof(id));
        b24_scalar(json_object_get(x, "ownerTypeId"), ot, sizeof(ot));
        b24_scalar(json_object_get(x, "ownerId"), oid, sizeof(oid));
        json_t *a = json_pack("{s:s, s:s, s:s, s:s, s:s}", "ID", id, "OWNER_TYPE_ID", ot,
                              "OWNER_ID", oid, "PROVIDER_ID", "CRM_TODO", "DEADLINE",
                              json_string_value(json_object_get(x, "deadline"))
                                  ? json_string_value(json_object_get(x, "deadline"))
                                  : "");
        json_object_set(a, "SUBJECT", json_object_get(x, "title"));
        json_object_set(a, "DESCRIPTION", json_object_get(x, "description"));
        json_array_append_new(out, a);
    }
    page(c, out);
}
