/* SPDX-License-Identifier: MIT */
/*
 * The plugin ABI: the only header (with error.h and log.h) that plugins and connectors see.
 *
 * A plugin exports one constant `struct loyd_plugin loyd_plugin_<name>`.  The daemon passes it a
 * `struct loyd_host_api`, so a plugin links nothing from the daemon; built-in plugins and shared
 * objects (dlopen) load through the same loader, which refuses an ABI mismatch.
 *
 * Connectors are plugins of kind LOYD_PLUGIN_CONNECTOR.  The connector part of the ABI was
 * designed against Bitrix24, amoCRM (Kommo) and Zoho CRM together:
 *   - parse + verify a webhook into notices: Bitrix24 form bodies with an application_token,
 *     amoCRM form bodies authenticated by a secret in the URL path, Zoho JSON bodies carrying a
 *     channel token; one request may carry several notices (amoCRM batches entities);
 *   - enrich a notice through the CRM's REST API into canonical snapshots (events carry only
 *     ids on Bitrix24, stale copies on amoCRM, changed fields only on Zoho);
 *   - write back a batch of changes (Bitrix24 `batch` of 50, amoCRM PATCH arrays of 50, Zoho
 *     upserts of 100) under the CRM's rate policy;
 *   - refresh tokens (single-use rotating refresh tokens on Bitrix24 and amoCRM, long-lived ones
 *     on Zoho), serialised per tenant by the connector and persisted through kv_put before use.
 *
 * Versioning: appending a member at the end of a struct keeps the number (`size` tells old and
 * new apart); removing, reordering or changing a member bumps LOYD_PLUGIN_ABI.
 *
 * Threading: every callback runs on the loop thread and must not block.
 */
#ifndef LOYD_PLUGIN_H
#define LOYD_PLUGIN_H

#include <stdbool.h>
#include <stddef.h>
#include <stdint.h>

#include <jansson.h>

#include "loyd/error.h"
#include "loyd/log.h"

#define LOYD_PLUGIN_ABI 1u

#if defined(__GNUC__)
#define LOYD_EXPORT __attribute__((visibility("default")))
#else
#define LOYD_EXPORT
#endif

/* ---- HTTP client (through the host) ---------------------------------------------------- */

struct loyd_http_opts {
    const char *method;          /* "GET", "POST", "PATCH"...; NULL means GET */
    const char *url;             /* http or https */
    const char *const *headers;  /* "Name: value" strings, NULL-terminated; may be NULL */
    const char *body;            /* may be NULL */
    size_t body_len;
    uint32_t timeout_ms;         /* whole transfer; 0 means the host default */
    size_t max_response;         /* body cap in bytes; 0 means the host default */
    bool follow_redirects;       /* re-send the same method and body to Location (Bitrix24 302) */
};

struct loyd_http_response {
    long status;            /* HTTP status; 0 when no response arrived */
    const char *body;       /* borrowed until the callback returns; NUL-terminated */
    size_t body_len;
    const char *content_type; /* borrowed, may be NULL */
    const char *retry_after;  /* borrowed, may be NULL: the Retry-After header */
    const char *effective_url; /* borrowed, may be NULL: where redirects led (secret-bearing:
                                  never log it) */
};

/*
 * Called once per request, on the loop thread.  err is 0 when a response arrived (whatever its
 * status), -ETIMEDOUT, LOYD_ETOOBIG, LOYD_EHTTP for transport errors, -ECANCELED at shutdown.
 */
typedef void (*loyd_http_done_cb)(void *arg, int err, const struct loyd_http_response *res);

/* ---- HTTP server (through the host; emulators use it) ---------------------------------- */

struct loyd_http_header {
    const char *name, *value;
};

struct loyd_http_request {
    const char *method;
    const char *path;       /* percent-encoded path without the query */
    const char *query;      /* after '?', may be "" */
    const struct loyd_http_header *headers;
    size_t n_headers;
    const char *body;       /* NUL-terminated */
    size_t body_len;
    const char *remote_addr;
};

/* Opaque: one request waiting for its answer.  Answer it exactly once, now or later. */
struct loyd_http_exchange;

typedef void (*loyd_http_handler_cb)(void *arg, struct loyd_http_exchange *ex,
                                     const struct loyd_http_request *req);

/* ---- Webhooks and canonical events ----------------------------------------------------- */

/* One inbound webhook request, borrowed for the duration of webhook_parse. */
struct loyd_webhook {
    const char *tenant;        /* from /hooks/<tenant> */
    const char *path_secret;   /* from /hooks/<tenant>/<secret>, or NULL */
    const struct loyd_http_request *http;
};

/* A bounded, caller-owned buffer for a human-readable error message. */
struct loyd_errbuf {
    char *msg;
    size_t size;
};

/*
 * Notices (webhook_parse output) are JSON objects, one per changed entity:
 *   {"entity": "deal"|"contact", "id": "759", "action": "add"|"update"|"delete"|"install",
 *    "crm_event": "ONCRMDEALUPDATE", "ts": 1736405807, ...connector extras}
 * Snapshots (enrich and sync output) are canonical, the same for every CRM:
 *   {"kind": "deal", "id": "759", "won": true, "lost": true (a failure stage; or absent),
 *    "stage": "C1:WON", "amount": 125000,
 *    "currency": "RUB", "contact_id": "43" (or absent),
 *    "redeem_points": "3000" (as the card shows it: points as people count them),
 *    "offer_code": "BDAY-43-2026" (a code the customer used, as typed; or absent),
 *    "modified_at": <ms>}
 *   {"kind": "contact", "id": "43", "name": "Anna Petrova", "phone": "+7...", "email": "...",
 *    "birthday": "1990-02-28" (or absent), "modified_at": <ms>,
 *    "attributes": {...CRM fields the tenant maps to member attributes...},
 *    "referred_by": {"phone"|"email"|"contact_id": "<the value as the CRM holds it>"} (who
 *                   referred the contact, as a manager typed it; or absent: the host resolves
 *                   it to a member, contact_match.h; a connector reads a referral code,
 *                   loyd/referral.h, and passes on the contact id it names),
 *    "fields": {...loyd's own CRM fields as the CRM shows them, strings or numbers:
 *               "balance": "455.5" (points as people count them), "tier", ...}}
 *   {"kind": "deal"|"contact", "id": "759", "deleted": true}   (gone from the CRM)
 * Amounts are integers in minor units.  The host turns snapshots into canonical events
 * (deal.won, deal.reopened, ...) by comparing them with what it stored before, so every CRM
 * gets the same exactly-once semantics.  "fields" and "modified_at" never make an event: they
 * change when loyd itself writes, so the CRM's echo of loyd's own write is recognised.
 *
 * Write-back items (write input) are JSON objects.  Each carries "uid", unique and stable
 * across retries, and "uncertain": true when an earlier attempt may have reached the CRM
 * (loyd stopped while it was in flight): an add (note, task) must then first look for its uid
 * in the CRM and not be added twice.
 *   {"op": "contact.fields", "contact_id": "43", "fields": {"balance": 1250, "tier": "gold"}}
 *   {"op": "note",  "entity": "contact", "id": "43", "text": "..."}
 *   {"op": "task",  "entity": "contact", "id": "43", "title": "...", "text": "...",
 *    "deadline_ms": ...}
 *   {"op": "deal.mark", "deal_id": "759", "awarded": 3750}
 */
typedef void (*loyd_enrich_cb)(void *arg, int err, json_t *snapshots /* owned array */);
/* results[i] is 0 (done), LOYD_ERATE or LOYD_EHTTP (retry later), or another code (dead). */
typedef void (*loyd_write_cb)(void *arg, const int *results, size_t n);
typedef void (*loyd_done_cb)(void *arg, int err);
/*
 * One page of sync output: snapshots (owned array, ordered by id ascending), and more = true
 * when another page follows (call sync again with after_id = the last snapshot's id).
 */
typedef void (*loyd_sync_cb)(void *arg, int err, json_t *snapshots, bool more);

/* What sync() reads: a page of one entity kind, by id, optionally only recent changes. */
struct loyd_sync_request {
    const char *entity;         /* "contact" or "deal" */
    const char *after_id;       /* ids greater than this; NULL or "" from the start */
    uint64_t modified_since_ms; /* 0: everything; else modified at or after this time */
};

/* How the host paces write() calls for one tenant. */
struct loyd_rate_policy {
    uint32_t per_sec_milli;   /* sustained calls per second x 1000 (2/s = 2000) */
    uint32_t burst;           /* calls allowed back to back */
    uint32_t max_batch;       /* most items one write() call takes */
};

/* ---- The host API ---------------------------------------------------------------------- */

/*
 * Daemon services: the only calls plugins make.  `hctx` identifies the caller: a plugin gets
 * one in init(), and each connector tenant gets its own in tenant_open() so logs and kv are
 * scoped to that tenant.
 */
struct loyd_host_api {
    uint32_t abi;   /* = LOYD_PLUGIN_ABI */
    uint32_t size;  /* = sizeof(struct loyd_host_api) at daemon build time */

    void (*log)(void *hctx, int level, const char *fmt, ...) LOYD_PRINTF(3, 4);

    /* Starts an HTTP request on the loop; @return 0 or a negative code (cb is not called). */
    int (*http_start)(void *hctx, const struct loyd_http_opts *o, loyd_http_done_cb cb,
                      void *arg);

    /* Wall clock in ms since the epoch, as the daemon sees it (the demo can move it). */
    uint64_t (*now_ms)(void *hctx);

    /* One-shot timer on the loop; @return an id > 0 for timer_cancel. */
    uint64_t (*timer_start)(void *hctx, uint64_t delay_ms, void (*cb)(void *arg), void *arg);
    void (*timer_cancel)(void *hctx, uint64_t id);

    /*
     * Durable key/value scoped to hctx's tenant (tokens, provisioned field ids).  kv_get:
     * *out is new (free()) or NULL.  kv_put calls cb once the value is committed, so a rotated
     * refresh token is stored before the new access token is used.
     */
    int (*kv_get)(void *hctx, const char *key, char **out);
    int (*kv_put)(void *hctx, const char *key, const char *value, loyd_done_cb cb, void *arg);

    /* Listens on "host:port" (port 0: the OS chooses); *port_out gets the bound port. */
    int (*http_listen)(void *hctx, const char *addr, loyd_http_handler_cb cb, void *arg,
                       void **server_out, int *port_out);
    void (*http_unlisten)(void *hctx, void *server);
    /* Answers a request; headers are "Name: value" strings, NULL-terminated; may be NULL. */
    void (*http_respond)(void *hctx, struct loyd_http_exchange *ex, int status,
                         const char *const *headers, const char *body, size_t body_len);

    /*
     * Parses an application/x-www-form-urlencoded body with PHP-style bracket keys
     * (a[b][0]=x) into a new JSON object of strings, bounded in pair count, key length and
     * depth.  @return 0, or LOYD_EPARSE / LOYD_ELIMIT with err naming what was wrong.
     */
    int (*form_parse)(void *hctx, const char *body, size_t len, json_t **out,
                      struct loyd_errbuf *err);
};

/* ---- Config schema --------------------------------------------------------------------- */

enum loyd_field_type {
    LOYD_FIELD_END = 0,
    LOYD_FIELD_STRING,
    LOYD_FIELD_INT,
    LOYD_FIELD_BOOL,
    LOYD_FIELD_TABLE,    /* any nested table, validated by the plugin */
    LOYD_FIELD_SECRET,   /* a string never logged */
};

struct loyd_config_field {
    enum loyd_field_type type;
    const char *name;
    const char *default_value; /* as text ("2", "true", "https://..."), or NULL */
    bool required;
    const char *help;
};

/* ---- The plugin ------------------------------------------------------------------------ */

enum loyd_plugin_kind {
    LOYD_PLUGIN_GENERIC = 1,
    LOYD_PLUGIN_CONNECTOR = 2,
};

/* Optional: an offline stand-in for the CRM (`loyd emulate <name>`, `loyd demo`, tests). */
struct loyd_emulator {
    /* Starts on the host's loop; *state_out is owned by the emulator until stop(). */
    int (*start)(const struct loyd_host_api *host, void *hctx, const char *listen_addr,
                 const json_t *options, void **state_out, int *port_out);
    void (*stop)(void *state);
};

struct loyd_connector_ops {
    /* Per-tenant instance, with the tenant's validated `crm` table. */
    int (*tenant_open)(void *plugin_state, void *hctx, const json_t *crm_config,
                       void **tenant_out);
    void (*tenant_close)(void *tenant);

    /*
     * Verifies (constant time) and parses one webhook.  @return 0 with *notices a new array,
     * LOYD_EAUTH (the host answers 401), LOYD_EPARSE (400, err names what was wrong).
     */
    int (*webhook_parse)(void *tenant, const struct loyd_webhook *wh, json_t **notices,
                         struct loyd_errbuf *err);

    /* Reads what a notice refers to; cb gets canonical snapshots.  Asynchronous. */
    int (*enrich)(void *tenant, const json_t *notice, loyd_enrich_cb cb, void *arg);

    /* Writes a batch (at most rate.max_batch items) back to the CRM.  Asynchronous. */
    int (*write)(void *tenant, const json_t *items, loyd_write_cb cb, void *arg);

    /* Proactive token refresh (keep-alive); may be NULL for CRMs without expiring tokens. */
    int (*token_refresh)(void *tenant, loyd_done_cb cb, void *arg);

    /* The pacing the host applies to write() for this tenant. */
    void (*rate_policy)(void *tenant, struct loyd_rate_policy *out);

    const struct loyd_emulator *emulator; /* may be NULL */

    /* Schema of the tenant file's `crm` table; the host validates it before tenant_open. */
    const struct loyd_config_field *tenant_config;

    /*
     * Reads one page of contacts or deals as snapshots: the start-up contact sync (birthdays,
     * balances already on the cards) and the periodic sweep by modification time that
     * catches events the CRM never delivered.  May be NULL.  Asynchronous.
     */
    int (*sync)(void *tenant, const struct loyd_sync_request *req, loyd_sync_cb cb, void *arg);
};

struct loyd_plugin {
    uint32_t abi;                 /* = LOYD_PLUGIN_ABI */
    uint32_t size;                /* = sizeof(struct loyd_plugin) */
    const char *name;             /* [a-z0-9_]+, unique */
    const char *version;          /* informational semver */
    enum loyd_plugin_kind kind;
    const struct loyd_config_field *config; /* plugin-level settings, ended by {0} */

    /* config is borrowed and already validated against `config`; *state is owned. */
    int (*init)(const struct loyd_host_api *host, void *hctx, const json_t *config,
                void **state);
    void (*destroy)(void *state); /* frees everything init() allocated */

    /* Generic plugins: told of each applied event and its effects; may be NULL. */
    void (*on_event)(void *state, const json_t *event, const json_t *effects);

    /* Connectors only. */
    const struct loyd_connector_ops *connector;
};

#endif
