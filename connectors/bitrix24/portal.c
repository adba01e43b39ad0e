/* SPDX-License-Identifier: MIT */
/* The pacing of one Bitrix24 portal, shared by its tenants (portal.h). */
#include "portal.h"

#include <ctype.h>
#include <stdbool.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#define BACKOFF_FIRST_MS 1000
#define BACKOFF_MAX_MS 30000
#define HOLD_DEFAULT_MS 60000
#define HOLD_MAX_MS 600000

/*
 * The bucket loyd keeps is one request smaller than the portal's: requests reach the portal a
 * little later than loyd sends them, by varying amounts, and a full bucket with no headroom
 * turns that jitter into 503s.
 */
static int64_t capacity(const struct b24_portal *p)
{
    return (int64_t)(p->lim.burst > 1 ? p->lim.burst - 1 : 1) * 1000;
}

struct b24_portals {
    struct b24_portal *head;
    bool freed; /* the plugin is gone; the last detach frees this */
};

struct b24_portals *b24_portals_new(void)
{
    struct b24_portals *reg = calloc(1, sizeof(*reg));
    if (reg == NULL)
        abort();
    return reg;
}

void b24_portals_free(struct b24_portals *reg)
{
    if (reg == NULL)
        return;
    if (reg->head == NULL)
        free(reg);
    else
        reg->freed = true;
}

void b24_url_origin(const char *url, char *out, size_t size)
{
    const char *p = strstr(url, "://");
    p = p != NULL ? p + 3 : url;
    size_t n = strcspn(p, "/?#");
    size_t scheme = (size_t)(p - url);
    snprintf(out, size, "%.*s", (int)(scheme + n), url);
    for (char *c = out + (scheme < size ? scheme : 0); *c; c++)
        *c = (char)tolower((unsigned char)*c);
}

struct b24_portal *b24_portal_attach(struct b24_portals *reg, const char *url,
                                     const struct b24_rest_limits *lim, uint64_t now_ms)
{
    char origin[512];
    struct b24_portal *p;

    b24_url_origin(url, origin, sizeof(origin));
    for (p = reg != NULL ? reg->head : NULL; p != NULL; p = p->next) {
        if (strcmp(p->origin, origin) == 0) {
            p->refs++;
            return p;
        }
    }
    p = calloc(1, sizeof(*p));
    if (p == NULL || (p->origin = strdup(origin)) == NULL)
        abort();
    p->reg = reg;
    p->refs = 1;
    p->lim = *lim;
    if (p->lim.drain_milli == 0)
        p->lim.drain_milli = 2000;
    if (p->lim.burst == 0)
        p->lim.burst = 50;
    p->tokens = capacity(p);
    p->refilled_ms = now_ms;
    p->held = json_object();
    if (reg != NULL) {
        p->next = reg->head;
        reg->head = p;
    }
    return p;
}

void b24_portal_detach(struct b24_portal *p)
{
    if (p == NULL || --p->refs > 0)
        return;
    struct b24_portals *reg = p->reg;
    if (reg != NULL) {
        struct b24_portal **pp = &reg->head;
        while (*pp != p)
            pp = &(*pp)->next;
        *pp = p->next;
        if (reg->freed && reg->head == NULL)
            free(reg);
    }
    json_decref(p->held);
    free(p->origin);
    free(p);
}

static void refill(struct b24_portal *p, uint64_t now)
{
    if (now > p->refilled_ms) {
        p->tokens += (int64_t)((now - p->refilled_ms) * p->lim.drain_milli / 1000);
        if (p->tokens > capacity(p))
            p->tokens = capacity(p);
    }
    p->refilled_ms = now;
}

uint64_t b24_portal_wait(struct b24_portal *p, uint64_t now_ms)
{
    if (now_ms < p->backoff_until)
        return p->backoff_until - now_ms;
    refill(p, now_ms);
    if (p->tokens >= 1000)
        return 0;
    return (uint64_t)(1000 - p->tokens) * 1000 / p->lim.drain_milli + 1;
}

void b24_portal_take(struct b24_portal *p)
{
    p->tokens -= 1000;
}

void b24_portal_backoff(struct b24_portal *p, uint64_t now_ms)
{
    p->backoff_ms = p->backoff_ms == 0 ? BACKOFF_FIRST_MS : p->backoff_ms * 2;
    if (p->backoff_ms > BACKOFF_MAX_MS)
        p->backoff_ms = BACKOFF_MAX_MS;
    p->backoff_until = now_ms + p->backoff_ms;
    p->tokens = 0; /* the portal says its bucket is full */
    p->refilled_ms = now_ms;
}

void b24_portal_ok(struct b24_portal *p)
{
    p->backoff_ms = 0;
}

void b24_portal_hold(struct b24_portal *p, const char *method, const json_t *time,
                     uint64_t now_ms)
{
    double reset = json_number_value(json_object_get(time, "operating_reset_at"));
    double finish = json_number_value(json_object_get(time, "finish"));
    uint64_t ms = reset > finish && finish > 0 ? (uint64_t)((reset - finish) * 1000)
                                               : HOLD_DEFAULT_MS;
    if (ms > HOLD_MAX_MS)
        ms = HOLD_MAX_MS;
    json_object_set_new(p->held, method, json_integer((json_int_t)(now_ms + ms + 100)));
}

uint64_t b24_portal_held_for(const struct b24_portal *p, const char *method, uint64_t now_ms)
{
    uint64_t until = (uint64_t)json_integer_value(json_object_get(p->held, method));
    return until > now_ms ? until - now_ms : 0;
}
