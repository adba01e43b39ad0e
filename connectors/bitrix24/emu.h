/* SPDX-License-Identifier: MIT */
/*
 * The Bitrix24 emulator core: an in-memory portal that answers REST calls the way a cloud
 * portal does (facts in /work/shared/crm/bitrix24.md), without any transport.
 *
 * It owns the portal's data (contacts, deals, their user fields, timeline comments, to-do
 * activities), its credentials (one inbound-webhook code; OAuth access tokens with an expiry
 * and single-use rotating refresh tokens), both rate limits (the per-portal leaky bucket and
 * the per-method operating-time tracker), the switchable faults, the call counters, and the
 * queue of outbound events (ONCRM*ADD/UPDATE/DELETE, ONAPPINSTALL) waiting to be posted to
 * the configured handler URLs.  Time never comes from the system: every entry point takes
 * now_ms, so tests drive the limits without sleeping.  emu_http.c puts it on the wire.
 *
 * Loop thread only; nothing here blocks or does I/O.
 *
 * Method names (`method` of b24emu_call) are the URL path after "/rest/", with or without
 * ".json", case-insensitive:
 *   "crm.deal.get"                 OAuth: the access token is params.auth (the transport puts
 *                                  an `Authorization: Bearer` header there too);
 *   "<user>/<code>/crm.deal.get"   inbound webhook: user and code must match the options;
 *   "event.bind" / "event.unbind" / "event.get"  subscribe a handler URL to events, as an app
 *                                  does at install (also through the inbound webhook here);
 *   "loyd.emu.*"                   emulator control, no auth, never rate limited, not counted:
 *     loyd.emu.state    everything as JSON (data, tokens' state, faults, counters, clock)
 *     loyd.emu.calls    {calls:{method:n}, requests, updates, redirects, refused (503s),
 *                        events_queued, events_dropped, events_delivered, events_failed,
 *                        events_pending}
 *     loyd.emu.seed     {contacts:N, deals:K, amount:"1000.00"}: N contacts with K won deals
 *                       each, outside the limits and without events (benchmarks)
 *     loyd.emu.fault    {mode:"503_burst", seconds:N, only?:"webhook"|"oauth"} | {mode:"slow", ms:N} |
 *                       {mode:"drop_events", ratio:0..1} | {mode:"expire_tokens"} |
 *                       {mode:"429", method:"crm.contact.update", count:N}: the next N calls
 *                       of that method ("batch": the batch call itself) answer 429
 *                       OPERATION_TIME_LIMIT with no operating figures, as the cloud does |
 *                       {mode:"moved", to:"http://host:port/new"}: the portal changed its
 *                       address; /rest/... answers 302 Location <to>/rest/..., and any
 *                       <prefix>/rest/... is served | {mode:"none"} (clears all)
 *     loyd.emu.clock    {now_ms:N} sets the portal clock, {advance_ms:N} moves it; the result
 *                       is the portal time.  It dates DATE_CREATE/DATE_MODIFY, event `ts`,
 *                       the `time` block and token expiry; the two rate limits use the
 *                       real now_ms so that moving the clock never resets them.
 *     loyd.emu.install  issues an OAuth token pair, queues ONAPPINSTALL to every handler,
 *                       returns the event's auth block.
 *     loyd.emu.reset_limits  empties the leaky bucket and the operating baskets.
 *
 * Options (all optional; connectors/bitrix24/README.md "The emulator" says what each does,
 * and an unknown key is refused):
 *   portal ("emu.bitrix24.test"), member_id, application_token, webhook_user ("1"),
 *   webhook_code, client_id, client_secret (checked by the token endpoint when set),
 *   access_token + refresh_token (a pre-issued pair), token_ttl_s (3600),
 *   refresh_ttl_s (180 days), handlers: ["http://...", {url, id, events:[...]}],
 *   rate: {drain: 2, burst: 50}, operating_limit_ms (480000), operating_cost_ms (100, charged
 *   per call), operating_cost: {method: ms}, operating_batch: "nested" (docs: nested methods
 *   are charged, batch is not) | "batch" (b24jssdk measurement: batch is charged),
 *   tz_offset_min (180), currency ("RUB"), seed, max_events (10000), clock_ms.
 */
#ifndef LOYD_B24EMU_H
#define LOYD_B24EMU_H

#include <stdbool.h>
#include <stddef.h>
#include <stdint.h>

#include <jansson.h>

#include "loyd/plugin.h"

/* Page size of every list method, fixed by Bitrix24. */
#define B24EMU_PAGE 50
/* Most commands one batch takes. */
#define B24EMU_BATCH_MAX 50

struct b24emu;

/*
 * Form parser the core uses for batch commands ("method?a[b]=c"): the host's form_parse in
 * the daemon, loyd_form_parse in tests.  Same contract as loyd_host_api.form_parse.
 */
typedef int (*b24emu_form_parse_fn)(void *ctx, const char *body, size_t len, json_t **out,
                                    struct loyd_errbuf *err);

/**
 * Creates a portal.  options is borrowed (may be NULL); now_ms starts the portal clock
 * unless options.clock_ms is set.
 * @return 0, or LOYD_ECONFIG with err naming the bad option.
 */
LOYD_MUST_CHECK int b24emu_create(const json_t *options, b24emu_form_parse_fn form_parse,
                                  void *form_ctx, uint64_t now_ms, struct b24emu **out,
                                  struct loyd_errbuf *err);
void b24emu_destroy(struct b24emu *e);

/** The keys b24emu_create takes, NULL-terminated (any other key is refused, with the nearest). */
extern const char *const b24emu_option_keys[];

/**
 * What a client needs to reach the portal at @p base ("http://127.0.0.1:8090"): the inbound
 * webhook URL with its user and code, the member_id and application token its events carry,
 * the OAuth endpoints and the handler URLs; one @p say per line.
 */
void b24emu_announce(const struct b24emu *e, const char *base,
                     void (*say)(void *ctx, const char *line), void *ctx);

/**
 * Answers one REST call.  params is borrowed: a JSON object (a form body parsed by the form
 * parser, or a JSON body), may be NULL.  *response gets a new JSON body: the success envelope
 * {"result":..., "total":..., "next":..., "time":{...}} or the error body
 * {"error":"...","error_description":"...", "time":{...}}; *http_status its status.
 * @return 0 when a response was produced (whatever its status), -EINVAL on bad arguments.
 */
LOYD_MUST_CHECK int b24emu_call(struct b24emu *e, const char *method, const json_t *params,
                                uint64_t now_ms, int *http_status, json_t **response);

/**
 * The OAuth server's token endpoint (/oauth/token/): grant_type=refresh_token with
 * client_id, client_secret, refresh_token.  The refresh token is single use: it and the
 * access token issued with it die, a new pair is returned.  A reused, unknown or expired
 * refresh token gives 400 {"error":"invalid_grant"}.
 * @return 0 when a response was produced, -EINVAL on bad arguments.
 */
LOYD_MUST_CHECK int b24emu_oauth_token(struct b24emu *e, const json_t *params, uint64_t now_ms,
                                       int *http_status, json_t **response);

/**
 * Takes the oldest queued outbound event.  @return false when the queue is empty; else
 * *url is new (free()) and *payload a new JSON object in the documented event shape, all
 * values strings, to be sent form-encoded.
 */
bool b24emu_event_pop(struct b24emu *e, char **url, json_t **payload);
/** The transport reports each popped event's fate (for loyd.emu.calls). */
void b24emu_event_done(struct b24emu *e, bool delivered);
size_t b24emu_events_pending(const struct b24emu *e);

/** The "moved" fault's new base URL, or NULL; the transport counts each 302 it sends. */
const char *b24emu_moved_to(const struct b24emu *e);
void b24emu_count_redirect(struct b24emu *e);

/** Delay the transport adds before answering (the "slow" fault), in ms; 0 when off. */
uint32_t b24emu_slow_ms(const struct b24emu *e);

/** The portal clock (ms since the epoch) for a given real now_ms. */
uint64_t b24emu_clock_ms(const struct b24emu *e, uint64_t now_ms);

/* The transport: `loyd emulate bitrix24`, `loyd demo`, connector tests (emu_http.c). */
extern const struct loyd_emulator b24emu_emulator;

#endif
