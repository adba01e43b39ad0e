/* SPDX-License-Identifier: MIT */
/* The Bitrix24 REST client: batch calls under the portal's limits (rest.h). */
#include "rest.h"

#include <errno.h>
#include <inttypes.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include "oauth.h"

#define BATCH_MAX 50
#define TRANSPORT_TRIES 5
#define MOVED_KV "portal:moved"

struct cmd {
    struct cmd *next;
    char *method;
    char *query; /* "method?a=b" */
    bool idempotent;
    bool reauthed; /* already re-sent once after a token refresh */
    int tries;
    b24_rest_cb cb;
    void *arg;
};

struct b24_rest {
    const struct loyd_host_api *host;
    void *hctx;
    char *base;               /* inbound-webhook base, or NULL: the OAuth endpoint */
    char *configured;         /* the base as the tenant file gave it (moves are keyed on it) */
    struct b24_oauth *oauth;  /* OAuth tokens, or NULL for an inbound webhook */
    struct b24_portal *portal; /* pacing shared with the portal's other tenants */
    struct b24_portals *portals;
    struct b24_rest_limits lim;
    uint32_t timeout_ms;
    struct cmd *head, *tail;
    size_t queued;
    bool in_flight, closed;
    bool awaiting_token;      /* a refresh was asked for; flush waits for its answer */
    int refs;                 /* the owner + a call in flight + a token wait */
    uint64_t timer, timer_at;
    bool timer_soon; /* the pending timer is for the next loop turn */
    struct b24_rest_stats stats;
};

/* One call in flight: its commands, in the order of their keys c0, c1... */
struct flight {
    struct b24_rest *r;
    struct cmd **cmds;
    size_t n;
    char *body;
    char *url;
    char *access; /* the token the call carried (OAuth) */
};

static void schedule(struct b24_rest *r, uint64_t delay_ms);
static void finish(struct cmd *c, int err, const json_t *result, const json_t *error);
static void fail_queued(struct b24_rest *r, int err);

/* ---- form encoding ------------------------------------------------------------------------- */

static void put(char **buf, size_t *len, size_t *cap, const char *s, size_t n)
{
    if (*len + n + 1 > *cap) {
        size_t nc = *cap ? *cap : 128;
        while (nc < *len + n + 1)
            nc *= 2;
        char *p = realloc(*buf, nc);
        if (p == NULL)
            abort();
        *buf = p;
        *cap = nc;
    }
    memcpy(*buf + *len, s, n);
    *len += n;
    (*buf)[*len] = '\0';
}

void b24_form_append(char **buf, size_t *len, size_t *cap, const char *s)
{
    put(buf, len, cap, s, strlen(s));
}

static void put_escaped(char **buf, size_t *len, size_t *cap, const char *s, size_t n)
{
    static const char hex[] = "0123456789ABCDEF";
    for (size_t i = 0; i < n; i++) {
        unsigned char c = (unsigned char)s[i];
        if ((c >= 'a' && c <= 'z') || (c >= 'A' && c <= 'Z') || (c >= '0' && c <= '9') ||
            c == '-' || c == '_' || c == '.' || c == '~') {
            put(buf, len, cap, (const char *)&c, 1);
        } else {
            char e[3] = {'%', hex[c >> 4], hex[c & 15]};
            put(buf, len, cap, e, 3);
        }
    }
}

void b24_form_encode(char **buf, size_t *len, size_t *cap, const char *prefix, const json_t *v)
{
    char num[32];
    const char *k;
    json_t *x;
    size_t i;

    if (json_is_object(v)) {
        json_object_foreach((json_t *)v, k, x)
        {
            size_t n = strlen(prefix) + strlen(k) + 3;
            char *p = malloc(n);
            if (p == NULL)
                abort();
            snprintf(p, n, prefix[0] ? "%s[%s]" : "%s%s", prefix, k);
            b24_form_encode(buf, len, cap, p, x);
            free(p);
        }
        return;
    }
    if (json_is_array(v)) {
        json_array_foreach(v, i, x)
        {
            size_t n = strlen(prefix) + 24;
            char *p = malloc(n);
            if (p == NULL)
                abort();
            snprintf(p, n, "%s[%zu]", prefix, i);
            b24_form_encode(buf, len, cap, p, x);
            free(p);
        }
        return;
    }
    const char *text = "";
    if (json_is_string(v))
        text = json_string_value(v);
    else if (json_is_integer(v))
        snprintf(num, sizeof(num), "%" JSON_INTEGER_FORMAT, json_integer_value(v)), text = num;
    else if (json_is_true(v))
        text = "Y";
    else if (json_is_false(v))
        text = "N";
    if (*len > 0 && (*buf)[*len - 1] != '?')
        put(buf, len, cap, "&", 1);
    put_escaped(buf, len, cap, prefix, strlen(prefix));
    put(buf, len, cap, "=", 1);
    put_escaped(buf, len, cap, text, strlen(text));
}

/* ---- the queue ----------------------------------------------------------------------------- */

static void unref(struct b24_rest *r)
{
    if (--r->refs > 0)
        return;
    struct cmd *c = r->head;
    while (c != NULL) {
        struct cmd *n = c->next;
        free(c->method);
        free(c->query);
        free(c);
        c = n;
    }
    b24_oauth_close(r->oauth);
    b24_portal_detach(r->portal);
    free(r->base);
    free(r->configured);
    free(r);
}

static char *xstrdup_or_null(const char *v)
{
    if (v == NULL)
        return NULL;
    char *d = strdup(v);
    if (d == NULL)
        abort();
    return d;
}

struct b24_rest *b24_rest_create(const struct loyd_host_api *host, void *hctx,
                                 const struct b24_rest_config *cfg)
{
    struct b24_rest *r = calloc(1, sizeof(*r));
    if (r == NULL)
        abort();
    r->host = host;
    r->hctx = hctx;
    r->oauth = cfg->webhook_url == NULL ? cfg->oauth : NULL;
    if (cfg->webhook_url != NULL)
        b24_oauth_close(cfg->oauth);
    r->base = xstrdup_or_null(cfg->webhook_url);
    r->configured = xstrdup_or_null(cfg->webhook_url);
    r->refs = 1;
    r->portals = cfg->portals;
    r->lim = cfg->lim;
    r->timeout_ms = cfg->timeout_ms;
    /* A portal that moved (302) is called at its new address from the start. */
    char *text = NULL;
    if (r->base != NULL && host->kv_get(hctx, MOVED_KV, &text) == 0 && text != NULL) {
        json_t *mv = json_loads(text, 0, NULL);
        const char *from = json_string_value(json_object_get(mv, "from"));
        const char *to = json_string_value(json_object_get(mv, "to"));
        if (from != NULL && to != NULL && strcmp(from, r->configured) == 0) {
            free(r->base);
            r->base = xstrdup_or_null(to);
        }
        json_decref(mv);
    }
    free(text);
    /* The pacing is the portal's, whoever calls it; an app learns its portal at install. */
    const char *url = r->base != NULL ? r->base : b24_oauth_endpoint(r->oauth);
    r->portal = b24_portal_attach(cfg->portals, url != NULL ? url : "oauth:", &cfg->lim,
                                  host->now_ms(hctx));
    return r;
}

void b24_rest_close(struct b24_rest *r)
{
    if (r == NULL)
        return;
    r->closed = true;
    if (r->timer != 0)
        r->host->timer_cancel(r->hctx, r->timer);
    r->timer = 0;
    /* Queued commands end now, so their callers can free what they hold. */
    fail_queued(r, -ECANCELED);
    /* The tokens go now, with the tenant's host context: a refresh in flight is orphaned (its
     * answer is dropped) and our wait for it with them. */
    b24_oauth_close(r->oauth);
    r->oauth = NULL;
    if (r->awaiting_token) {
        r->awaiting_token = false;
        r->refs--;
    }
    unref(r);
}

void b24_rest_stats(const struct b24_rest *r, struct b24_rest_stats *out)
{
    *out = r->stats;
}

const struct b24_portal *b24_rest_portal(const struct b24_rest *r)
{
    return r->portal;
}

struct b24_oauth *b24_rest_oauth(const struct b24_rest *r)
{
    return r != NULL ? r->oauth : NULL;
}

static void push(struct b24_rest *r, struct cmd *c, bool front)
{
    if (front) {
        c->next = r->head;
        r->head = c;
        if (r->tail == NULL)
            r->tail = c;
    } else {
        c->next = NULL;
        if (r->tail != NULL)
            r->tail->next = c;
        else
            r->head = c;
        r->tail = c;
    }
    r->queued++;
}

void b24_rest_call(struct b24_rest *r, const char *method, const json_t *params, bool idempotent,
                   b24_rest_cb cb, void *arg)
{
    struct cmd *c = calloc(1, sizeof(*c));
    size_t len = 0, cap = 0;
    char *q = NULL;

    if (c == NULL)
        abort();
    put(&q, &len, &cap, method, strlen(method));
    put(&q, &len, &cap, "?", 1);
    if (params != NULL)
        b24_form_encode(&q, &len, &cap, "", params);
    c->method = strdup(method);
    if (c->method == NULL)
        abort();
    c->query = q;
    c->idempotent = idempotent;
    c->cb = cb;
    c->arg = arg;
    push(r, c, false);
    schedule(r, 0);
}

static void finish(struct cmd *c, int err, const json_t *result, const json_t *error)
{
    c->cb(c->arg, err, result, error);
    free(c->method);
    free(c->query);
    free(c);
}

/* ---- sending ------------------------------------------------------------------------------- */

static void flush(void *arg);

static void schedule(struct b24_rest *r, uint64_t delay_ms)
{
    uint64_t at = r->host->now_ms(r->hctx) + delay_ms;
    if (r->closed || r->in_flight)
        return;
    if (r->timer != 0) {
        /* "Now" always wins: the clock may have jumped since the pending timer was set. */
        if (r->timer_at <= at && (delay_ms > 0 || r->timer_soon))
            return;
        r->host->timer_cancel(r->hctx, r->timer);
    }
    r->timer_soon = delay_ms == 0;
    r->timer_at = at;
    r->timer = r->host->timer_start(r->hctx, delay_ms, flush, r);
}

static void on_response(void *arg, int err, const struct loyd_http_response *res);

/* Ends every queued command with @p err (closing, or the token is gone). */
static void fail_queued(struct b24_rest *r, int err)
{
    while (r->head != NULL) {
        struct cmd *c = r->head;
        r->head = c->next;
        r->queued--;
        finish(c, err, NULL, NULL);
    }
    r->tail = NULL;
}

static void on_token(void *arg, int err)
{
    struct b24_rest *r = arg;
    r->awaiting_token = false;
    if (!r->closed) {
        if (err == 0)
            schedule(r, 0);
        else
            fail_queued(r, err);
    }
    unref(r);
}

/* OAuth: asks for a new pair once; flush resumes when it is stored. */
static void need_token(struct b24_rest *r)
{
    if (r->awaiting_token)
        return;
    r->awaiting_token = true;
    r->refs++;
    b24_oauth_refresh(r->oauth, on_token, r);
}

/* Where calls go now: the webhook base (or where it moved), or the app's portal. */
static const char *base_url(const struct b24_rest *r)
{
    return r->base != NULL ? r->base : b24_oauth_endpoint(r->oauth);
}

static void flush(void *arg)
{
    struct b24_rest *r = arg;
    uint64_t now = r->host->now_ms(r->hctx), wait = 0;

    r->timer = 0;
    if (r->closed || r->in_flight || r->head == NULL || r->awaiting_token)
        return;
    if (r->oauth != NULL && (b24_oauth_access(r->oauth) == NULL || b24_oauth_busy(r->oauth) ||
                             base_url(r) == NULL)) {
        need_token(r);
        return;
    }
    char origin[256];
    b24_url_origin(base_url(r), origin, sizeof(origin));
    if (strcmp(origin, r->portal->origin) != 0) {
        /* The app learned (or changed) its portal: pace with that portal's other callers. */
        struct b24_portal *p = b24_portal_attach(r->portals, origin, &r->lim, now);
        b24_portal_detach(r->portal);
        r->portal = p;
    }
    if ((wait = b24_portal_wait(r->portal, now)) > 0 ||
        (wait = b24_portal_held_for(r->portal, "batch", now)) > 0) {
        schedule(r, wait);
        return;
    }
    /* Up to 50 commands whose method is not held by the operating limit, in queue order. */
    struct flight *f = calloc(1, sizeof(*f));
    if (f == NULL)
        abort();
    f->r = r;
    f->cmds = calloc(BATCH_MAX, sizeof(*f->cmds));
    if (f->cmds == NULL)
        abort();
    json_t *cmd = json_object();
    struct cmd **pp = &r->head, *prev = NULL;
    while (*pp != NULL && f->n < BATCH_MAX) {
        struct cmd *c = *pp;
        uint64_t h = b24_portal_held_for(r->portal, c->method, now);
        if (h > 0) {
            wait = wait == 0 || h < wait ? h : wait;
            prev = c;
            pp = &c->next;
            continue;
        }
        *pp = c->next;
        if (r->tail == c)
            r->tail = prev;
        r->queued--;
        char key[24];
        snprintf(key, sizeof(key), "c%zu", f->n);
        json_object_set_new(cmd, key, json_string(c->query));
        f->cmds[f->n++] = c;
    }
    if (f->n == 0) {
        json_decref(cmd);
        free(f->cmds);
        free(f);
        schedule(r, wait);
        return;
    }
    json_t *body = json_pack("{s:i, s:o}", "halt", 0, "cmd", cmd);
    if (r->oauth != NULL) {
        f->access = xstrdup_or_null(b24_oauth_access(r->oauth));
        json_object_set_new(body, "auth", json_string(f->access));
    }
    f->body = json_dumps(body, JSON_COMPACT);
    json_decref(body);
    const char *base = base_url(r);
    f->url = malloc(strlen(base) + 16);
    if (f->url == NULL)
        abort();
    sprintf(f->url, "%s%sbatch.json", base, base[strlen(base) - 1] == '/' ? "" : "/");
    static const char *const headers[] = {"Content-Type: application/json",
                                          "Accept: application/json", NULL};
    struct loyd_http_opts o = {.method = "POST",
                               .url = f->url,
                               .headers = headers,
                               .body = f->body,
                               .body_len = strlen(f->body),
                               .timeout_ms = r->timeout_ms,
                               .follow_redirects = true};
    b24_portal_take(r->portal);
    r->in_flight = true;
    r->refs++;
    r->stats.calls++;
    r->stats.commands += f->n;
    r->host->log(r->hctx, LOYD_LOG_DEBUG, "batch: %zu commands", f->n);
    int rc = r->host->http_start(r->hctx, &o, on_response, f);
    if (rc != 0)
        on_response(f, LOYD_EHTTP, NULL);
}

/* Puts the commands of a refused call back at the front, in their order. */
static void requeue(struct flight *f, size_t from)
{
    for (size_t i = f->n; i-- > from;)
        push(f->r, f->cmds[i], true);
}

/*
 * The portal answered from another address (302, its domain changed): later calls go there
 * directly, and the new address is remembered across restarts.  Only the origin is logged,
 * since a webhook URL's path holds its secret code.
 */
static void follow_move(struct b24_rest *r, struct flight *f, const char *effective)
{
    size_t n = strlen(effective), tail = strlen("batch.json");
    if (r->base == NULL || n <= tail || strcmp(effective + n - tail, "batch.json") != 0 ||
        strcmp(effective, f->url) == 0)
        return;
    char *to = malloc(n - tail + 1), origin[256];
    if (to == NULL)
        abort();
    memcpy(to, effective, n - tail);
    to[n - tail] = '\0';
    b24_url_origin(to, origin, sizeof(origin));
    r->host->log(r->hctx, LOYD_LOG_NOTICE, "the portal moved to %s: calling it there from now on",
                 origin);
    free(r->base);
    r->base = to;
    json_t *mv = json_pack("{s:s, s:s}", "from", r->configured, "to", to);
    char *text = json_dumps(mv, JSON_COMPACT);
    json_decref(mv);
    if (r->host->kv_put(r->hctx, MOVED_KV, text, NULL, NULL) != 0)
        r->host->log(r->hctx, LOYD_LOG_WARN, "cannot remember the portal's new address");
    free(text);
}

static const json_t *keyed(const json_t *o, const char *key)
{
    /* PHP encodes an empty map as []: treat anything but an object as empty. */
    return json_is_object(o) ? json_object_get(o, key) : NULL;
}

/* The operating-time limit refused @p method: only it waits (portal.c has the policy). */
static void operating_hold(struct b24_rest *r, const char *method, const json_t *time, uint64_t now)
{
    uint64_t ms = b24_portal_hold(r->portal, method, time, now);
    const struct b24_hold *h = b24_portal_hold_of(r->portal, method);
    bool whole = strcmp(method, "batch") == 0;
    r->host->log(r->hctx, LOYD_LOG_INFO,
                 "portal says OPERATION_TIME_LIMIT for %s (refusal %u in a row): holding %s for "
                 "%" PRIu64 " s%s",
                 method, h != NULL ? (unsigned)h->strikes : 1u,
                 whole ? "every call (all go through batch)" : "that method", (ms + 999) / 1000,
                 whole ? "" : ", other methods go on");
}

static void on_response(void *arg, int err, const struct loyd_http_response *res)
{
    struct flight *f = arg;
    struct b24_rest *r = f->r;
    json_t *doc = NULL;
    size_t i = 0;

    r->in_flight = false;
    uint64_t now = r->host->now_ms(r->hctx);
    if (r->closed) {
        /* Nobody listens any more: forget the commands. */
        for (i = 0; i < f->n; i++) {
            free(f->cmds[i]->method);
            free(f->cmds[i]->query);
            free(f->cmds[i]);
        }
        goto out;
    }
    if (err == 0 && res->body != NULL)
        doc = json_loadb(res->body, res->body_len, 0, NULL);
    const char *code = json_string_value(json_object_get(doc, "error"));
    long status = err == 0 ? res->status : 0;
    if (err == 0 && res->effective_url != NULL)
        follow_move(r, f, res->effective_url);

    if (err != 0 || (status >= 500 && status != 503) || (status == 200 && doc == NULL)) {
        /* The call may or may not have run: reads again, adds are the caller's to check. */
        r->stats.transport_errors++;
        r->host->log(r->hctx, LOYD_LOG_WARN, "batch call failed: %s",
                     err != 0 ? loyd_strerror(err) : "bad answer from the portal");
        b24_portal_backoff(r->portal, now);
        for (i = 0; i < f->n; i++) {
            struct cmd *c = f->cmds[i];
            if (c->idempotent && ++c->tries < TRANSPORT_TRIES)
                push(r, c, false);
            else
                finish(c, LOYD_EHTTP, NULL, NULL);
        }
        goto out;
    }
    if (status == 503 || (code != NULL && strcmp(code, "QUERY_LIMIT_EXCEEDED") == 0)) {
        r->stats.limit_errors++;
        r->host->log(r->hctx, LOYD_LOG_INFO, "portal says QUERY_LIMIT_EXCEEDED: backing off");
        b24_portal_backoff(r->portal, now);
        requeue(f, 0);
        goto out;
    }
    if (status == 429 || (code != NULL && strcmp(code, "OPERATION_TIME_LIMIT") == 0)) {
        r->stats.limit_errors++;
        /* The batch call itself was refused (b24jssdk PR #539: the portal charges `batch`), so
         * every command waits for it; single methods are held in their own results below. */
        operating_hold(r, "batch", json_object_get(doc, "time"), now);
        requeue(f, 0);
        goto out;
    }
    if (status == 401 && code != NULL && strcmp(code, "expired_token") == 0 &&
        r->oauth != NULL) {
        /* Refresh once and send again; a command refused twice has a token problem. */
        size_t kept = 0;
        for (i = f->n; i-- > 0;) {
            struct cmd *c = f->cmds[i];
            if (c->reauthed) {
                finish(c, LOYD_ETOKEN, NULL, NULL);
            } else {
                c->reauthed = true;
                push(r, c, true);
                kept++;
            }
        }
        r->host->log(r->hctx, LOYD_LOG_INFO, "access token expired: refreshing");
        /* Unless the pair changed meanwhile, this token is dead: ask for a new one. */
        if (kept > 0 && f->access != NULL && b24_oauth_access(r->oauth) != NULL &&
            strcmp(f->access, b24_oauth_access(r->oauth)) == 0)
            need_token(r);
        goto out;
    }
    if (status == 401 && r->base != NULL) {
        /* An inbound webhook's code never expires: a 401 (NO_AUTH_FOUND, "Wrong authorization
         * data") means the URL's user or code is wrong, or the webhook was deleted.  Its
         * commands wait (LOYD_ETOKEN) for the configuration to be fixed.  Only the origin is
         * named: the path holds the code. */
        char origin[256];
        b24_url_origin(r->base, origin, sizeof(origin));
        r->host->log(r->hctx, LOYD_LOG_ERR,
                     "%s refused the inbound-webhook code (HTTP 401 %s): the user or code in "
                     "crm.webhook_url is wrong, or the webhook was deleted; check crm.webhook_url "
                     "against the portal's inbound webhook (Developer resources > Other > "
                     "Inbound webhook)",
                     origin, code != NULL && *code ? code : "with no error code");
        for (i = 0; i < f->n; i++)
            finish(f->cmds[i], LOYD_ETOKEN, NULL, NULL);
        goto out;
    }
    if (status != 200 || code != NULL) {
        int e = status == 401 ? LOYD_ETOKEN : LOYD_ECRM;
        json_t *eo = json_pack("{s:s, s:s}", "error", code ? code : "",
                               "error_description",
                               json_string_value(json_object_get(doc, "error_description"))
                                   ? json_string_value(json_object_get(doc, "error_description"))
                                   : "");
        r->host->log(r->hctx, LOYD_LOG_WARN, "batch refused: HTTP %ld %s", status,
                     code ? code : "");
        for (i = 0; i < f->n; i++)
            finish(f->cmds[i], e, NULL, eo);
        json_decref(eo);
        goto out;
    }
    b24_portal_ok(r->portal);
    b24_portal_went(r->portal, "batch", json_object_get(doc, "time"), now);
    const json_t *outer = json_object_get(doc, "result");
    const json_t *results = json_object_get(outer, "result");
    const json_t *errors = json_object_get(outer, "result_error");
    const json_t *times = json_object_get(outer, "result_time");
    for (i = 0; i < f->n; i++) {
        struct cmd *c = f->cmds[i];
        char key[24];
        snprintf(key, sizeof(key), "c%zu", i);
        const json_t *e = keyed(errors, key);
        const char *ecode = json_string_value(json_object_get(e, "error"));
        if (e != NULL && ecode != NULL &&
            (strcmp(ecode, "QUERY_LIMIT_EXCEEDED") == 0 ||
             strcmp(ecode, "OPERATION_TIME_LIMIT") == 0)) {
            /* Refused, not run: again later. */
            r->stats.limit_errors++;
            if (strcmp(ecode, "OPERATION_TIME_LIMIT") == 0)
                operating_hold(r, c->method, keyed(times, key), now);
            push(r, c, false);
            continue;
        }
        b24_portal_went(r->portal, c->method, keyed(times, key), now);
        if (e != NULL) {
            json_t *eo = json_is_object(e) ? json_incref((json_t *)e)
                                            : json_pack("{s:s, s:s}", "error", "",
                                                        "error_description", "");
            if (json_object_get(eo, "error") == NULL)
                json_object_set_new(eo, "error", json_string(""));
            finish(c, LOYD_ECRM, NULL, eo);
            json_decref(eo);
        } else {
            const json_t *v = keyed(results, key);
            finish(c, 0, v != NULL ? v : json_null(), NULL);
        }
    }
out:
    json_decref(doc);
    free(f->cmds);
    free(f->body);
    free(f->url);
    free(f->access);
    free(f);
    if (!r->closed && r->head != NULL)
        schedule(r, 0);
    unref(r);
}
