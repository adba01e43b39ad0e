/* SPDX-License-Identifier: MIT */
/*
 * The Bitrix24 REST client of one tenant: every command goes through `batch` (at most 50 per
 * call), paced by the portal's leaky bucket (shared with every tenant on that portal,
 * portal.h), held per method while the portal's operating-time limit is exhausted, backed off
 * on 503 QUERY_LIMIT_EXCEEDED.  Commands queued during one loop turn share a call.
 * (Facts: /work/shared/crm/bitrix24.md sections 2 and 4.)
 *
 * Auth: an inbound-webhook URL, or an OAuth app (oauth.h): the access token rides in each
 * call; 401 expired_token refreshes it once (single-flight) and sends the refused commands
 * again; a command refused after that fails with LOYD_ETOKEN.  An inbound webhook's code does
 * not expire: a 401 there is logged as a wrong code (check crm.webhook_url) and its commands
 * fail with LOYD_ETOKEN, which makes them wait for the fix rather than count attempts.
 *
 * 429 OPERATION_TIME_LIMIT holds the refused method only (portal.h has how long).
 *
 * A 302 (the portal's domain changed) is followed with the POST intact by the host; the new
 * address is then used directly and remembered in kv "portal:moved".
 *
 * Retries: a command is retried by this layer only when it surely did not run (a 503/429
 * refusal of the whole call) or when it is idempotent (reads, updates with absolute values)
 * and the transfer failed.  A non-idempotent add that may have run is never re-sent here: its
 * callback gets LOYD_EHTTP and the caller decides (write.c looks for its marker first).
 *
 * b24_rest_close answers the queued commands with -ECANCELED (synchronously); a call in flight
 * is forgotten when it ends, and its commands' callbacks are not called.
 */
#ifndef LOYD_B24_REST_H
#define LOYD_B24_REST_H

#include <stdbool.h>
#include <stdint.h>

#include "loyd/plugin.h"
#include "portal.h"

struct b24_oauth;

struct b24_rest;

struct b24_rest_stats {
    uint64_t calls;        /* HTTP requests made (each one batch) */
    uint64_t commands;     /* commands those calls carried */
    uint64_t limit_errors; /* 503 QUERY_LIMIT_EXCEEDED and 429 OPERATION_TIME_LIMIT received */
    uint64_t transport_errors;
};

/*
 * One command's outcome: err 0 with the command's `result` (borrowed), or LOYD_ECRM with the
 * error object {"error","error_description"} (borrowed; the code may be ""), or LOYD_ERATE /
 * LOYD_EHTTP / LOYD_ETOKEN / -ECANCELED.
 */
typedef void (*b24_rest_cb)(void *arg, int err, const json_t *result, const json_t *error);

struct b24_rest_config {
    const char *webhook_url;     /* REST base ending in '/' (https://portal/rest/1/code/), or
                                    NULL: the OAuth app below */
    struct b24_oauth *oauth;     /* taken (closed with the client); used without webhook_url */
    struct b24_portals *portals; /* the plugin's registry, or NULL: private pacing */
    struct b24_rest_limits lim;  /* the portal's limits, when this client is its first */
    uint32_t timeout_ms;         /* one call, whole transfer; 0: the host's default */
};

struct b24_rest *b24_rest_create(const struct loyd_host_api *host, void *hctx,
                                 const struct b24_rest_config *cfg);
void b24_rest_close(struct b24_rest *r);

/**
 * Queues @p method with @p params (a JSON object encoded as PHP-style form parameters, may be
 * NULL).  @p cb is called exactly once (unless the client is closed first).
 */
void b24_rest_call(struct b24_rest *r, const char *method, const json_t *params, bool idempotent,
                   b24_rest_cb cb, void *arg);

void b24_rest_stats(const struct b24_rest *r, struct b24_rest_stats *out);

/** The pacing this client shares with the other callers of its portal. */
const struct b24_portal *b24_rest_portal(const struct b24_rest *r);

/** The OAuth tokens, or NULL for an inbound webhook (ONAPPINSTALL hands them over). */
struct b24_oauth *b24_rest_oauth(const struct b24_rest *r);

/** Appends @p v as form parameters named @p prefix (a[b][0]=x), percent-encoded. */
void b24_form_encode(char **buf, size_t *len, size_t *cap, const char *prefix, const json_t *v);
/** Appends @p s as it is. */
void b24_form_append(char **buf, size_t *len, size_t *cap, const char *s);

#endif
