/* SPDX-License-Identifier: MIT */
/*
 * Internals shared by the emulator core's two files: emu.c (config, auth, limits, batch,
 * events, dispatch) and emu_crm.c (the CRM methods).  Not for use outside the emulator.
 */
#ifndef LOYD_B24EMU_INT_H
#define LOYD_B24EMU_INT_H

#include "emu.h"

enum b24_kind { B24_CONTACT = 0, B24_DEAL = 1 };

struct b24_handler {
    char *url, *id;
    json_t *events; /* array of event names it wants, or NULL for all */
};

struct b24_token {
    char access[40], refresh[40];
    uint64_t access_exp_ms, refresh_exp_ms; /* portal clock */
    bool access_ok, refresh_ok;
};

/* Operating time of one (auth kind, method): 10 one-minute baskets. */
struct b24_op {
    char *key;
    uint64_t minute[10];
    uint64_t ms[10];
};

struct b24emu {
    /* configuration */
    char *portal, *member_id, *app_token, *webhook_user, *webhook_code, *client_id,
        *client_secret, *currency, *server_endpoint;
    int tz_min;
    uint32_t drain, burst;
    uint64_t op_limit_ms, op_cost_ms;
    json_t *op_cost_by_method;
    bool op_charge_batch;
    uint64_t token_ttl_ms, refresh_ttl_ms;
    size_t max_events;
    struct b24_handler *handlers;
    size_t n_handlers;
    b24emu_form_parse_fn form_parse;
    void *form_ctx;

    /* data: entities are objects keyed by ID in creation (= ID) order */
    json_t *contacts, *deals;
    json_t *deal_contacts; /* deal ID -> array of contact IDs (integers) */
    json_t *uf[2];         /* user field definitions per kind */
    json_t *comments, *activities;
    long long next_id[2], next_uf, next_enum, next_multi, next_comment, next_activity;

    /* credentials */
    struct b24_token *tokens;
    size_t n_tokens, cap_tokens;

    /* limits and faults */
    uint64_t bucket_milli, bucket_ms;
    struct b24_op *ops;
    size_t n_ops;
    uint64_t fault_503_until;
    char fault_503_auth[16]; /* "webhook" or "oauth": only those calls; "": all */
    uint32_t slow_ms;
    char *moved_to; /* the "moved" fault: /rest/ answers 302 to this base */
    double drop_ratio;
    char fault_429_method[128]; /* the "429" fault: this method is refused ... */
    uint32_t fault_429_left;    /* ... this many more times */
    uint64_t rng;
    long long clock_offset_ms;

    /* outbound events: array of {url, payload} */
    json_t *events;

    /* counters */
    json_t *calls;
    uint64_t requests, updates, ev_queued, ev_dropped, ev_delivered, ev_failed, redirects;
    uint64_t refused; /* requests answered 503 QUERY_LIMIT_EXCEEDED */
};

/* One method call in progress. */
struct b24_call {
    struct b24emu *e;
    uint64_t now_ms;   /* real time (limits) */
    int status;        /* HTTP status */
    json_t *result;    /* owned, on success */
    long long total, next; /* -1: absent */
    char err_code[64], err_desc[300];
    char auth_kind[16];
    bool in_batch;
    uint64_t cost_ms;  /* operating time charged */
};

char *b24_strdup(const char *s);
/* params[lower] or params[LOWER] (Bitrix accepts both `id` and `ID`). */
const json_t *b24_param(const json_t *p, const char *lower);
/* A string, number or boolean as text; false for objects, arrays, null, NULL. */
bool b24_scalar(const json_t *v, char *buf, size_t size);
bool b24_int(const json_t *v, long long *out);
bool b24_truthy(const json_t *v);
/* Items of a list given as an array, a form-style object {"0":..,"1":..} or one scalar. */
size_t b24_list(const json_t *v, const json_t **items, size_t max);
/* (owned in, owned out) {} -> [], {"0":a,"1":b} -> [a,b], as PHP's json_encode. */
json_t *b24_php_map(json_t *obj);
bool b24_streq(const char *a, const char *b);
/* ISO 8601 with the portal's offset: 2024-08-30T14:29:00+03:00. */
void b24_fmt_time(long long epoch_s, int tz_min, char out[32]);
/* YYYY-MM-DD or DD.MM.YYYY, optional [T ]hh:mm[:ss][Z|±hh:mm]; no zone: the portal's. */
bool b24_parse_time(const char *s, int tz_min, long long *epoch, bool *date_only);

void b24_fail(struct b24_call *c, int status, const char *code, const char *fmt, ...)
    LOYD_PRINTF(4, 5);
void b24_ok(struct b24_call *c, json_t *result /* owned */);
long long b24_wall_s(const struct b24_call *c);
void b24_queue_event(struct b24_call *c, const char *event, const char *id);

/* emu_crm.c */
void b24_m_contact_add(struct b24_call *c, const json_t *p);
void b24_m_contact_get(struct b24_call *c, const json_t *p);
void b24_m_contact_update(struct b24_call *c, const json_t *p);
void b24_m_contact_delete(struct b24_call *c, const json_t *p);
void b24_m_contact_list(struct b24_call *c, const json_t *p);
void b24_m_deal_add(struct b24_call *c, const json_t *p);
void b24_m_deal_get(struct b24_call *c, const json_t *p);
void b24_m_deal_update(struct b24_call *c, const json_t *p);
void b24_m_deal_delete(struct b24_call *c, const json_t *p);
void b24_m_deal_list(struct b24_call *c, const json_t *p);
void b24_m_deal_contact_items_get(struct b24_call *c, const json_t *p);
void b24_m_contact_uf_add(struct b24_call *c, const json_t *p);
void b24_m_contact_uf_list(struct b24_call *c, const json_t *p);
void b24_m_deal_uf_add(struct b24_call *c, const json_t *p);
void b24_m_deal_uf_list(struct b24_call *c, const json_t *p);
void b24_m_timeline_comment_add(struct b24_call *c, const json_t *p);
void b24_m_activity_todo_add(struct b24_call *c, const json_t *p);

/* emu_timeline.c */
void b24_m_timeline_comment_list(struct b24_call *c, const json_t *p);
void b24_m_activity_list(struct b24_call *c, const json_t *p);

/* emu_events.c */
void b24_m_event_bind(struct b24_call *c, const json_t *p);
void b24_m_event_unbind(struct b24_call *c, const json_t *p);
void b24_m_event_get(struct b24_call *c, const json_t *p);

#endif
