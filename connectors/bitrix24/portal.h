/* SPDX-License-Identifier: MIT */
/*
 * The pacing of one Bitrix24 portal, shared by every tenant that calls it: the portal's leaky
 * bucket (its request limit is per portal, not per caller), the back-off after 503
 * QUERY_LIMIT_EXCEEDED, and the per-method holds of the operating-time limit (429).
 * (Facts: /work/shared/crm/bitrix24.md section 4.)
 *
 * A registry owned by the plugin maps a portal's origin ("https://shop.bitrix24.ru") to its
 * pacing; REST clients attach at open and detach when they are freed.  The registry may be
 * freed before the last client detaches (shutdown order): it then goes with that client.
 * Loop thread only.
 */
#ifndef LOYD_B24_PORTAL_H
#define LOYD_B24_PORTAL_H

#include <stdint.h>

#include <jansson.h>

struct b24_portals;

/* The pacing of one portal: drain_milli requests/s x 1000 (2000 = 2/s) and burst. */
struct b24_rest_limits {
    uint32_t drain_milli, burst;
};

/*
 * What loyd knows of one method's operating-time limit on a portal ("batch" for the batch call
 * itself).  Bitrix24 keeps each method's execution time in 10 one-minute baskets; a method whose
 * sum is over the limit answers 429 OPERATION_TIME_LIMIT until enough baskets drop out.
 */
struct b24_hold {
    struct b24_hold *next;
    char *method;
    uint64_t until;    /* held until this ms (0: not held) */
    uint64_t hold_ms;  /* the length of the latest hold */
    uint32_t strikes;  /* 429s in a row since the method last went through */
    uint64_t reset_at; /* the operating_reset_at of its latest good answer, in our ms; 0: none */
};

struct b24_portal {
    struct b24_portal *next;
    struct b24_portals *reg; /* NULL for a private portal */
    char *origin;
    int refs;
    struct b24_rest_limits lim;
    int64_t tokens; /* thousandths of a request */
    uint64_t refilled_ms;
    uint64_t backoff_until, backoff_ms;
    struct b24_hold *holds; /* per method, created at its first answer that matters */
};

struct b24_portals *b24_portals_new(void);
void b24_portals_free(struct b24_portals *reg);

/**
 * The pacing of the portal @p url belongs to (created with @p lim when new; an existing one
 * keeps its limits).  @p reg NULL gives a private one.
 */
struct b24_portal *b24_portal_attach(struct b24_portals *reg, const char *url,
                                     const struct b24_rest_limits *lim, uint64_t now_ms);
void b24_portal_detach(struct b24_portal *p);

/** ms to wait before a request may be sent now (back-off or an empty bucket); 0: go. */
uint64_t b24_portal_wait(struct b24_portal *p, uint64_t now_ms);
/** Takes one request from the bucket (after b24_portal_wait said 0). */
void b24_portal_take(struct b24_portal *p);
/** The portal refused for load (503): back off exponentially, and the bucket is full. */
void b24_portal_backoff(struct b24_portal *p, uint64_t now_ms);
/** A call went through: the back-off starts over. */
void b24_portal_ok(struct b24_portal *p);
/**
 * @p method was refused with 429 OPERATION_TIME_LIMIT (@p time: the refusal's `time` block, may
 * be NULL): holds that method only, until the operating_reset_at the refusal gives; without
 * one, until the one its latest good answer gave, and at least one basket (60 s) doubling on
 * each refusal in a row, at most the 10-minute window.  @return the hold in ms.
 */
uint64_t b24_portal_hold(struct b24_portal *p, const char *method, const json_t *time,
                         uint64_t now_ms);
/**
 * @p method went through (any answer but a limit refusal): its refusals in a row start over,
 * and the operating_reset_at of @p time (may be NULL) is kept for its next refusal.
 */
void b24_portal_went(struct b24_portal *p, const char *method, const json_t *time, uint64_t now_ms);
/** ms for which @p method is still held; 0 when it is free. */
uint64_t b24_portal_held_for(const struct b24_portal *p, const char *method, uint64_t now_ms);
/** What is known of @p method's limit, or NULL (nothing yet). */
const struct b24_hold *b24_portal_hold_of(const struct b24_portal *p, const char *method);

/** "https://host:port/rest/..." -> "https://host:port" in @p out (lower-cased host). */
void b24_url_origin(const char *url, char *out, size_t size);

#endif
