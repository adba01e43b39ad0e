/* SPDX-License-Identifier: MIT */
/* OAuth tokens of one tenant's Bitrix24 app: single-flight refresh, stored before use. */
#include "oauth.h"

#include <errno.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include "rest.h"

#define OAUTH_URL_DEFAULT "https://oauth.bitrix.info/oauth/token/"
#define REFRESH_TIMEOUT_MS 15000
#define KV_KEY "oauth"

struct waiter {
    struct waiter *next;
    loyd_done_cb cb;
    void *arg;
};

/* A new pair on its way: fetched from the token server (refresh) or handed over (install). */
struct op {
    struct b24_oauth *o; /* NULL once the owner closed or a newer op superseded this one */
    char *access, *refresh, *endpoint;
    loyd_done_cb cb; /* install's own callback */
    void *arg;
};

struct b24_oauth {
    const struct loyd_host_api *host;
    void *hctx;
    char *client_id, *client_secret, *oauth_url;
    char *access, *refresh, *endpoint;
    char *fixed_endpoint; /* crm.rest_url: wins over what tokens say (a proxy, a test) */
    struct op *op;
    struct waiter *waiters;
    int later_err;
    uint64_t later_timer;
    struct b24_oauth_stats stats;
};

static char *dup_or_null(const char *s)
{
    if (s == NULL || *s == '\0')
        return NULL;
    char *d = strdup(s);
    if (d == NULL)
        abort();
    return d;
}

static void set(char **slot, const char *v)
{
    char *d = dup_or_null(v);
    free(*slot);
    *slot = d;
}

static void op_free(struct op *op)
{
    free(op->access);
    free(op->refresh);
    free(op->endpoint);
    free(op);
}

static void load(struct b24_oauth *o, const struct b24_oauth_config *cfg)
{
    char *text = NULL;
    json_t *st = NULL;
    if (o->host->kv_get(o->hctx, KV_KEY, &text) == 0 && text != NULL)
        st = json_loads(text, 0, NULL);
    free(text);
    const char *refresh = json_string_value(json_object_get(st, "refresh"));
    if (refresh != NULL && *refresh != '\0') {
        set(&o->refresh, refresh);
        set(&o->access, json_string_value(json_object_get(st, "access")));
        set(&o->endpoint, json_string_value(json_object_get(st, "endpoint")));
    } else {
        set(&o->refresh, cfg->refresh_token);
        set(&o->access, cfg->access_token);
    }
    set(&o->fixed_endpoint, cfg->rest_url);
    json_decref(st);
}

struct b24_oauth *b24_oauth_open(const struct loyd_host_api *host, void *hctx,
                                 const struct b24_oauth_config *cfg)
{
    struct b24_oauth *o = calloc(1, sizeof(*o));
    if (o == NULL)
        abort();
    o->host = host;
    o->hctx = hctx;
    o->client_id = dup_or_null(cfg->client_id);
    o->client_secret = dup_or_null(cfg->client_secret);
    o->oauth_url = dup_or_null(cfg->oauth_url ? cfg->oauth_url : OAUTH_URL_DEFAULT);
    load(o, cfg);
    return o;
}

void b24_oauth_close(struct b24_oauth *o)
{
    if (o == NULL)
        return;
    if (o->op != NULL)
        o->op->o = NULL; /* its callback frees it */
    if (o->later_timer != 0)
        o->host->timer_cancel(o->hctx, o->later_timer);
    while (o->waiters != NULL) {
        struct waiter *w = o->waiters;
        o->waiters = w->next;
        free(w);
    }
    free(o->client_id);
    free(o->client_secret);
    free(o->oauth_url);
    free(o->access);
    free(o->refresh);
    free(o->endpoint);
    free(o->fixed_endpoint);
    free(o);
}

const char *b24_oauth_access(const struct b24_oauth *o)
{
    return o->access;
}

const char *b24_oauth_endpoint(const struct b24_oauth *o)
{
    return o->fixed_endpoint != NULL ? o->fixed_endpoint : o->endpoint;
}

bool b24_oauth_busy(const struct b24_oauth *o)
{
    return o->op != NULL;
}

void b24_oauth_stats(const struct b24_oauth *o, struct b24_oauth_stats *out)
{
    *out = o->stats;
}

/* Everyone waiting for the pair learns how it went; they may start another refresh. */
static void waiters_done(struct b24_oauth *o, int err)
{
    struct waiter *w = o->waiters;
    o->waiters = NULL;
    while (w != NULL) {
        struct waiter *n = w->next;
        w->cb(w->arg, err);
        free(w);
        w = n;
    }
}

static void later_fire(void *arg)
{
    struct b24_oauth *o = arg;
    o->later_timer = 0;
    waiters_done(o, o->later_err);
}

/* A refresh that cannot even start answers on the next loop turn, never inside the call. */
static void fail_later(struct b24_oauth *o, int err)
{
    o->later_err = err;
    if (o->later_timer == 0)
        o->later_timer = o->host->timer_start(o->hctx, 0, later_fire, o);
}

/* The new pair is committed: from now on it is the one in use. */
static void on_stored(void *arg, int err)
{
    struct op *op = arg;
    struct b24_oauth *o = op->o;

    if (o != NULL) {
        o->op = NULL;
        if (err != 0) {
            /* The refresh token is spent either way; keeping the pair in memory at least
             * lets this run go on.  A restart will need a reinstall. */
            o->host->log(o->hctx, LOYD_LOG_ERR,
                         "the new OAuth token pair could not be stored (%s): after a restart "
                         "the app must be reinstalled",
                         loyd_strerror(err));
        }
        set(&o->access, op->access);
        set(&o->refresh, op->refresh);
        if (op->endpoint != NULL)
            set(&o->endpoint, op->endpoint);
        if (op->cb != NULL)
            op->cb(op->arg, err);
        waiters_done(o, 0);
    }
    op_free(op);
}

static void store(struct b24_oauth *o, struct op *op)
{
    json_t *doc = json_pack("{s:s?, s:s, s:s?}", "access", op->access, "refresh", op->refresh,
                            "endpoint", op->endpoint != NULL ? op->endpoint : o->endpoint);
    char *text = json_dumps(doc, JSON_COMPACT | JSON_SORT_KEYS);
    json_decref(doc);
    int rc = o->host->kv_put(o->hctx, KV_KEY, text, on_stored, op);
    free(text);
    if (rc != 0)
        on_stored(op, rc);
}

static const char *sget(const json_t *doc, const char *key)
{
    const char *v = json_string_value(json_object_get(doc, key));
    return v != NULL && *v != '\0' ? v : NULL;
}

static void on_token(void *arg, int err, const struct loyd_http_response *res)
{
    struct op *op = arg;
    struct b24_oauth *o = op->o;
    json_t *doc = NULL;

    if (o == NULL) {
        op_free(op);
        return;
    }
    if (err == 0 && res->body != NULL)
        doc = json_loadb(res->body, res->body_len, 0, NULL);
    if (err == 0 && res->status == 200 && sget(doc, "access_token") != NULL &&
        sget(doc, "refresh_token") != NULL) {
        op->access = dup_or_null(sget(doc, "access_token"));
        op->refresh = dup_or_null(sget(doc, "refresh_token"));
        op->endpoint = dup_or_null(sget(doc, "client_endpoint"));
        json_decref(doc);
        o->host->log(o->hctx, LOYD_LOG_INFO, "OAuth token refreshed");
        store(o, op);
        return;
    }
    /* A 4xx with an error code is the server's word on the refresh token; anything else says
     * nothing about it, and the pair is kept for the next try. */
    const char *code = sget(doc, "error");
    int e = err == 0 && res->status >= 400 && res->status < 500 && code != NULL ? LOYD_ETOKEN
                                                                              : LOYD_EHTTP;
    o->stats.refresh_failures++;
    if (e == LOYD_ETOKEN) {
        o->host->log(o->hctx, LOYD_LOG_ERR,
                     "OAuth refresh refused: %s%s", code,
                     strcmp(code, "invalid_grant") == 0
                         ? " (the refresh token is spent or expired: reinstall the app)"
                         : "");
        set(&o->access, NULL);
        set(&o->refresh, NULL);
    } else {
        o->host->log(o->hctx, LOYD_LOG_WARN, "OAuth refresh failed: %s",
                     err != 0 ? loyd_strerror(err) : "bad answer from the token server");
    }
    json_decref(doc);
    o->op = NULL;
    op_free(op);
    waiters_done(o, e);
}

void b24_oauth_refresh(struct b24_oauth *o, loyd_done_cb cb, void *arg)
{
    struct waiter *w = calloc(1, sizeof(*w));
    if (w == NULL)
        abort();
    w->cb = cb;
    w->arg = arg;
    w->next = o->waiters;
    o->waiters = w;
    if (o->op != NULL)
        return; /* the pair on its way serves this caller too */
    if (o->refresh == NULL || o->client_id == NULL) {
        o->host->log(o->hctx, LOYD_LOG_ERR,
                     o->refresh == NULL ? "no OAuth refresh token: install the app on the portal"
                                        : "crm.client_id is needed to refresh the OAuth token");
        fail_later(o, LOYD_ETOKEN);
        return;
    }
    struct op *op = calloc(1, sizeof(*op));
    if (op == NULL)
        abort();
    op->o = o;
    o->op = op;
    o->stats.refreshes++;

    char *url = NULL;
    size_t len = 0, cap = 0;
    json_t *q = json_pack("{s:s, s:s, s:s, s:s}", "grant_type", "refresh_token", "client_id",
                          o->client_id, "client_secret",
                          o->client_secret != NULL ? o->client_secret : "", "refresh_token",
                          o->refresh);
    b24_form_append(&url, &len, &cap, o->oauth_url);
    b24_form_append(&url, &len, &cap, strchr(o->oauth_url, '?') != NULL ? "&" : "?");
    b24_form_encode(&url, &len, &cap, "", q);
    json_decref(q);
    struct loyd_http_opts ho = {.method = "GET",
                                .url = url,
                                .timeout_ms = REFRESH_TIMEOUT_MS,
                                .max_response = 65536};
    int rc = o->host->http_start(o->hctx, &ho, on_token, op);
    free(url);
    if (rc != 0)
        on_token(op, rc, NULL);
}

void b24_oauth_install(struct b24_oauth *o, const char *access, const char *refresh,
                       const char *endpoint, loyd_done_cb cb, void *arg)
{
    struct op *op = calloc(1, sizeof(*op));
    if (op == NULL)
        abort();
    if (o->op != NULL)
        o->op->o = NULL; /* a refresh in flight is superseded: the install's pair wins */
    op->o = o;
    op->access = dup_or_null(access);
    op->refresh = dup_or_null(refresh);
    op->endpoint = dup_or_null(endpoint);
    op->cb = cb;
    op->arg = arg;
    o->op = op;
    store(o, op);
}
