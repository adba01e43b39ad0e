/* SPDX-License-Identifier: MIT */
/* The Bitrix24 REST client: batch calls under the portal's limits (rest.h). */
#include "rest.h"

#include <errno.h>
#include <inttypes.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#define BATCH_MAX 50
#define BACKOFF_FIRST_MS 1000
#define BACKOFF_MAX_MS 30000
#define TRANSPORT_TRIES 5

struct cmd {
    struct cmd *next;
    char *method;
    char *query; /* "method?a=b" */
    bool idempotent;
    int tries;
    b24_rest_cb cb;
    void *arg;
};

struct b24_rest {
    const struct loyd_host_api *host;
    void *hctx;
    char *base;
    struct b24_rest_limits lim;
    struct cmd *head, *tail;
    size_t queued;
    bool in_flight, closed;
    int refs;                /* the owner + a call in flight */
    uint64_t timer, timer_at;
    /* Leaky bucket, in thousandths of a request. */
    int64_t tokens;
    uint64_t refilled_ms;
    uint64_t backoff_until, backoff_ms;
    json_t *held; /* method -> ms until which the operating limit holds it */
    struct b24_rest_stats stats;
};

/* One call in flight: its commands, in the order of their keys c0, c1... */
struct flight {
    struct b24_rest *r;
    struct cmd **cmds;
    size_t n;
    char *body;
};

static void schedule(struct b24_rest *r, uint64_t delay_ms);
static void finish(struct cmd *c, int err, const json_t *result, const json_t *error);

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
    json_decref(r->held);
    free(r->base);
    free(r);
}

struct b24_rest *b24_rest_create(const struct loyd_host_api *host, void *hctx,
                                 const char *base_url, const struct b24_rest_limits *lim)
{
    struct b24_rest *r = calloc(1, sizeof(*r));
    if (r == NULL)
        abort();
    r->host = host;
    r->hctx = hctx;
    r->base = strdup(base_url);
    if (r->base == NULL)
        abort();
    r->lim = *lim;
    if (r->lim.drain_milli == 0)
        r->lim.drain_milli = 2000;
    if (r->lim.burst == 0)
        r->lim.burst = 50;
    r->tokens = (int64_t)r->lim.burst * 1000;
    r->refilled_ms = host->now_ms(hctx);
    r->held = json_object();
    r->refs = 1;
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
    while (r->head != NULL) {
        struct cmd *c = r->head;
        r->head = c->next;
        r->queued--;
        finish(c, -ECANCELED, NULL, NULL);
    }
    r->tail = NULL;
    unref(r);
}

void b24_rest_stats(const struct b24_rest *r, struct b24_rest_stats *out)
{
    *out = r->stats;
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
        if (r->timer_at <= at)
            return;
        r->host->timer_cancel(r->hctx, r->timer);
    }
    r->timer_at = at;
    r->timer = r->host->timer_start(r->hctx, delay_ms, flush, r);
}

static void refill(struct b24_rest *r, uint64_t now)
{
    if (now > r->refilled_ms) {
        r->tokens += (int64_t)((now - r->refilled_ms) * r->lim.drain_milli / 1000);
        if (r->tokens > (int64_t)r->lim.burst * 1000)
            r->tokens = (int64_t)r->lim.burst * 1000;
    }
    r->refilled_ms = now;
}

static uint64_t held_for(struct b24_rest *r, const char *method, uint64_t now)
{
    uint64_t until = (uint64_t)json_integer_value(json_object_get(r->held, method));
    return until > now ? until - now : 0;
}

static void on_response(void *arg, int err, const struct loyd_http_response *res);

static void flush(void *arg)
{
    struct b24_rest *r = arg;
    uint64_t now = r->host->now_ms(r->hctx), wait = 0;

    r->timer = 0;
    if (r->closed || r->in_flight || r->head == NULL)
        return;
    if (now < r->backoff_until) {
        schedule(r, r->backoff_until - now);
        return;
    }
    refill(r, now);
    if (r->tokens < 1000) {
        schedule(r, (uint64_t)(1000 - r->tokens) * 1000 / r->lim.drain_milli + 1);
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
        uint64_t h = held_for(r, c->method, now);
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
    f->body = json_dumps(body, JSON_COMPACT);
    json_decref(body);
    char *url = malloc(strlen(r->base) + 16);
    if (url == NULL)
        abort();
    sprintf(url, "%sbatch.json", r->base);
    static const char *const headers[] = {"Content-Type: application/json",
                                          "Accept: application/json", NULL};
    struct loyd_http_opts o = {.method = "POST",
                               .url = url,
                               .headers = headers,
                               .body = f->body,
                               .body_len = strlen(f->body),
                               .follow_redirects = true};
    r->tokens -= 1000;
    r->in_flight = true;
    r->refs++;
    r->stats.calls++;
    r->stats.commands += f->n;
    r->host->log(r->hctx, LOYD_LOG_DEBUG, "batch: %zu commands", f->n);
    int rc = r->host->http_start(r->hctx, &o, on_response, f);
    free(url);
    if (rc != 0)
        on_response(f, LOYD_EHTTP, NULL);
}

/* Puts the commands of a refused call back at the front, in their order. */
static void requeue(struct flight *f, size_t from)
{
    for (size_t i = f->n; i-- > from;)
        push(f->r, f->cmds[i], true);
}

static void backoff(struct b24_rest *r)
{
    r->backoff_ms = r->backoff_ms == 0 ? BACKOFF_FIRST_MS : r->backoff_ms * 2;
    if (r->backoff_ms > BACKOFF_MAX_MS)
        r->backoff_ms = BACKOFF_MAX_MS;
    r->backoff_until = r->host->now_ms(r->hctx) + r->backoff_ms;
    r->tokens = 0; /* the portal says the bucket is full */
}

/* Holds @p method until the portal's operating_reset_at (from its `time` block). */
static void hold(struct b24_rest *r, const char *method, const json_t *time)
{
    double reset = json_number_value(json_object_get(time, "operating_reset_at"));
    double finish = json_number_value(json_object_get(time, "finish"));
    uint64_t ms = reset > finish && finish > 0 ? (uint64_t)((reset - finish) * 1000) : 60000;
    if (ms > 600000)
        ms = 600000;
    json_object_set_new(r->held, method,
                        json_integer((json_int_t)(r->host->now_ms(r->hctx) + ms + 100)));
}

static const json_t *keyed(const json_t *o, const char *key)
{
    /* PHP encodes an empty map as []: treat anything but an object as empty. */
    return json_is_object(o) ? json_object_get(o, key) : NULL;
}

static void on_response(void *arg, int err, const struct loyd_http_response *res)
{
    struct flight *f = arg;
    struct b24_rest *r = f->r;
    json_t *doc = NULL;
    size_t i = 0;

    r->in_flight = false;
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

    if (err != 0 || (status >= 500 && status != 503) || (status == 200 && doc == NULL)) {
        /* The call may or may not have run: reads again, adds are the caller's to check. */
        r->stats.transport_errors++;
        r->host->log(r->hctx, LOYD_LOG_WARN, "batch call failed: %s",
                     err != 0 ? loyd_strerror(err) : "bad answer from the portal");
        backoff(r);
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
        backoff(r);
        requeue(f, 0);
        goto out;
    }
    if (status == 429 || (code != NULL && strcmp(code, "OPERATION_TIME_LIMIT") == 0)) {
        r->stats.limit_errors++;
        hold(r, "batch", json_object_get(doc, "time"));
        backoff(r);
        requeue(f, 0);
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
    r->backoff_ms = 0;
    const json_t *outer = json_object_get(doc, "result");
    const json_t *results = json_object_get(outer, "result");
    const json_t *errors = json_object_get(outer, "result_error");
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
                hold(r, c->method, json_object_get(doc, "time"));
            push(r, c, false);
        } else if (e != NULL) {
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
    free(f);
    if (!r->closed && r->head != NULL)
        schedule(r, 0);
    unref(r);
}
