/* SPDX-License-Identifier: MIT */
/*
 * sync: one page of contacts or deals as snapshots, ordered by ID, for the start-up sync and
 * the sweep.  Pages by ">ID" with start=-1 (no COUNT query: the fast way the docs advise for
 * large portals); the sweep adds a ">=DATE_MODIFY" filter.
 */
#include <errno.h>
#include <stdlib.h>
#include <string.h>

#include "b24.h"
#include "rest.h"

#define PAGE 50

struct sync_q {
    struct b24_tenant *t;
    bool deal;
    loyd_sync_cb cb;
    void *arg;
};

static void on_page(void *arg, int err, const json_t *result, const json_t *error)
{
    struct sync_q *q = arg;
    json_t *out = NULL, *x;
    size_t i;

    if (err == 0 && !json_is_array(result))
        err = LOYD_ECRM;
    if (err == LOYD_ECRM)
        q->t->host->log(q->t->hctx, LOYD_LOG_WARN, "sync of %ss refused: %s",
                        q->deal ? "deal" : "contact",
                        json_string_value(json_object_get(error, "error_description")));
    if (err == 0) {
        out = json_array();
        json_array_foreach(result, i, x)
        {
            json_t *s = q->deal ? b24_snapshot_deal(q->t, x, NULL) : b24_snapshot_contact(q->t, x);
            if (s != NULL)
                json_array_append_new(out, s);
        }
    }
    q->cb(q->arg, err, out, err == 0 && json_array_size(result) >= PAGE);
    free(q);
}

int b24_sync(void *tenant, const struct loyd_sync_request *req, loyd_sync_cb cb, void *arg)
{
    struct b24_tenant *t = tenant;
    bool deal = req->entity != NULL && strcmp(req->entity, "deal") == 0;

    if (req->entity == NULL || (!deal && strcmp(req->entity, "contact") != 0))
        return -EINVAL;
    if (t->rest == NULL)
        return LOYD_ECONFIG;
    struct sync_q *q = calloc(1, sizeof(*q));
    if (q == NULL)
        return -ENOMEM;
    *q = (struct sync_q){t, deal, cb, arg};
    json_t *filter = json_pack("{s:s}", ">ID",
                               req->after_id != NULL && req->after_id[0] ? req->after_id : "0");
    if (req->modified_since_ms > 0) {
        char since[40];
        b24_format_iso((int64_t)req->modified_since_ms, since);
        json_object_set_new(filter, ">=DATE_MODIFY", json_string(since));
    }
    json_t *select = deal ? json_pack("[s, s, s, s, s, s, s, s]", "ID", "STAGE_ID",
                                      "STAGE_SEMANTIC_ID", "OPPORTUNITY", "CURRENCY_ID",
                                      "CONTACT_ID", "DATE_MODIFY", "UF_*")
                          : json_pack("[s, s, s, s, s, s, s, s]", "ID", "NAME", "LAST_NAME",
                                      "BIRTHDATE", "PHONE", "EMAIL", "DATE_MODIFY", "UF_*");
    json_t *p = json_pack("{s:{s:s}, s:o, s:o, s:i}", "order", "ID", "ASC", "filter", filter,
                          "select", select, "start", -1);
    b24_rest_call(t->rest, deal ? "crm.deal.list" : "crm.contact.list", p, true, on_page, q);
    json_decref(p);
    return 0;
}
