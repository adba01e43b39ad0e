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

/*
 * The operating-time limit (Bitrix24 REST docs, "REST API Limits", settings/performance/
 * limits.md): a method's execution time is "accounted for in 10 one-minute baskets", and
 * operating_reset_at is "when the oldest minute basket is excluded from the calculation".
 * For OPERATION_TIME_LIMIT the docs say: "Suspend calls to the blocked method ... For the first
 * retry, refer to operating_reset_at from the last successful response. If the error persists,
 * wait for the next bucket reset."  The refusal itself often carries no operating figures
 * (b24jssdk, core/http/limiters/manager.ts: the errors do not bring the timings, so it reads
 * the previous answer's).
 *
 * So a refusal with no reset time holds the method until the reset its latest good answer
 * gave, and at least one basket: the minute is the shortest span the docs give for this limit,
 * and a retry sooner mostly spends a request to be refused again (b24jssdk's floor of 10 s is
 * the SDK's own choice, not a documented time).  Each further refusal in a row doubles that,
 * up to the window (10 minutes: by then every basket that counted when the first refusal came
 * has dropped out).  A reset time in the refusal is used as it is.
 */
#define HOLD_BASKET_MS 60000
#define HOLD_WINDOW_MS 600000
/* operating_reset_at is in whole seconds and the clocks differ a little: do not come early. */
#define HOLD_MARGIN_MS 1000

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
    while (p->holds != NULL) {
        struct b24_hold *h = p->holds;
        p->holds = h->next;
        free(h->method);
        free(h);
    }
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

const struct b24_hold *b24_portal_hold_of(const struct b24_portal *p, const char *method)
{
    for (const struct b24_hold *h = p->holds; h != NULL; h = h->next)
        if (strcmp(h->method, method) == 0)
            return h;
    return NULL;
}

static struct b24_hold *hold_get(struct b24_portal *p, const char *method)
{
    struct b24_hold *h = (struct b24_hold *)b24_portal_hold_of(p, method);
    if (h != NULL)
        return h;
    h = calloc(1, sizeof(*h));
    if (h == NULL || (h->method = strdup(method)) == NULL)
        abort();
    h->next = p->holds;
    p->holds = h;
    return h;
}

/*
 * ms from the answer until operating_reset_at, or 0 when the block has none.  Both times are
 * the portal's, so the difference holds whatever our clock says.
 */
static uint64_t reset_in(const json_t *time)
{
    double reset = json_number_value(json_object_get(time, "operating_reset_at"));
    double finish = json_number_value(json_object_get(time, "finish"));
    if (!(finish > 0 && reset > finish))
        return 0;
    double ms = (reset - finish) * 1000 + HOLD_MARGIN_MS;
    return ms < HOLD_WINDOW_MS ? (uint64_t)ms : HOLD_WINDOW_MS;
}

uint64_t b24_portal_hold(struct b24_portal *p, const char *method, const json_t *time,
                         uint64_t now_ms)
{
    struct b24_hold *h = hold_get(p, method);
    uint64_t ms = reset_in(time);

    if (h->strikes < 32)
        h->strikes++;
    if (ms == 0) {
        ms = HOLD_BASKET_MS;
        for (uint32_t i = 1; i < h->strikes && ms < HOLD_WINDOW_MS; i++)
            ms *= 2;
        if (h->reset_at > now_ms && h->reset_at - now_ms > ms)
            ms = h->reset_at - now_ms;
        if (ms > HOLD_WINDOW_MS)
            ms = HOLD_WINDOW_MS;
    }
    h->hold_ms = ms;
    h->until = now_ms + ms;
    return ms;
}

void b24_portal_went(struct b24_portal *p, const char *method, const json_t *time, uint64_t now_ms)
{
    uint64_t ms = reset_in(time);
    struct b24_hold *h =
        ms > 0 ? hold_get(p, method) : (struct b24_hold *)b24_portal_hold_of(p, method);
    if (h == NULL)
        return;
    h->strikes = 0;
    if (ms > 0)
        h->reset_at = now_ms + ms;
}

uint64_t b24_portal_held_for(const struct b24_portal *p, const char *method, uint64_t now_ms)
{
    const struct b24_hold *h = b24_portal_hold_of(p, method);
    return h != NULL && h->until > now_ms ? h->until - now_ms : 0;
}
