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

struct b24_portal {
    struct b24_portal *next;
    struct b24_portals *reg; /* NULL for a private portal */
    char *origin;
    int refs;
    struct b24_rest_limits lim;
    int64_t tokens; /* thousandths of a request */
    uint64_t refilled_ms;
    uint64_t backoff_until, backoff_ms;
    json_t *held; /* method -> ms until which the operating limit holds it */
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
/** Holds @p method until operating_reset_at of the answer's `time` block. */
void b24_portal_hold(struct b24_portal *p, const char *method, const json_t *time,
                     uint64_t now_ms);
/** ms for which @p method is still held; 0 when it is free. */
uint64_t b24_portal_held_for(const struct b24_portal *p, const char *method, uint64_t now_ms);

/** "https://host:port/rest/..." -> "https://host:port" in @p out (lower-cased host). */
void b24_url_origin(const char *url, char *out, size_t size);

#endif
