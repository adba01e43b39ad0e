/* SPDX-License-Identifier: MIT */
/*
 * The Bitrix24 emulator's transport: puts the core (emu.c) on HTTP through the host API.
 *
 *   POST|GET /rest/<method>[.json]                OAuth call (auth= or Authorization: Bearer)
 *   POST|GET /rest/<user>/<code>/<method>[.json]  inbound-webhook call
 *   POST|GET <prefix>/rest/...                    the same, at a portal's new address (the
 *                                                 "moved" fault redirects /rest/ there)
 *   GET|POST /oauth/token/?grant_type=refresh_token&...   the OAuth server's token endpoint
 *
 * Parameters come from the query string and the body (JSON when the content type says so,
 * form-encoded otherwise; the body wins on a clash), parsed by the host's bounded parsers.
 * After each request the queued outbound events are posted, form-encoded, to their handler
 * URLs through host->http_start, at most EVENTS_IN_FLIGHT at a time.  The "slow" fault delays
 * answers with a host timer.  It owns the listening server, the delayed answers and the
 * in-flight event posts; stop() answers what is delayed and outlives in-flight posts.
 */
#include <errno.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <strings.h>

#include "emu.h"
#include "loyd/plugin.h"

#define EVENTS_IN_FLIGHT 8
#define EVENT_TIMEOUT_MS 5000
#define JSON_BODY_MAX (1024 * 1024)

struct emu_srv;

struct pending {
    struct emu_srv *s;
    struct loyd_http_exchange *ex;
    int status;
    char *body;
    uint64_t timer;
    struct pending *next;
};

struct emu_srv {
    const struct loyd_host_api *host;
    void *hctx;
    struct b24emu *emu;
    void *server;
    int inflight;
    bool stopped;
    struct pending *pending;
};

static const char *const json_headers[] = {"Content-Type: application/json; charset=utf-8",
                                           NULL};

/* ---- form encoding of events (connectors cannot link core's loyd_form_encode) -------- */

struct sbuf {
    char *p;
    size_t len, cap;
};

static void sb_add(struct sbuf *b, const char *s, size_t n)
{
    if (b->len + n + 1 > b->cap) {
        size_t cap = b->cap ? b->cap : 256;
        while (cap < b->len + n + 1)
            cap *= 2;
        b->p = realloc(b->p, cap);
        if (b->p == NULL)
            abort();
        b->cap = cap;
    }
    memcpy(b->p + b->len, s, n);
    b->len += n;
    b->p[b->len] = '\0';
}

static void sb_escape(struct sbuf *b, const char *s, size_t n)
{
    static const char hex[] = "0123456789ABCDEF";
    for (size_t i = 0; i < n; i++) {
        unsigned char c = (unsigned char)s[i];
        if ((c >= 'A' && c <= 'Z') || (c >= 'a' && c <= 'z') || (c >= '0' && c <= '9') ||
            c == '-' || c == '_' || c == '.' || c == '~') {
            sb_add(b, &s[i], 1);
        } else {
            char e[3] = {'%', hex[c >> 4], hex[c & 15]};
            sb_add(b, e, 3);
        }
    }
}

/* PHP http_build_query: nested keys as a[b][c], percent-encoded; events nest 2 levels. */
static void form_encode(struct sbuf *b, const json_t *v, char *path, size_t plen, int depth)
{
    char num[64];
    const char *s = NULL;

    if (depth > 8)
        return;
    if (json_is_object(v) || json_is_array(v)) {
        size_t i = 0;
        const char *k;
        json_t *x;
        void *it = json_is_object(v) ? json_object_iter((json_t *)v) : NULL;
        for (;;) {
            if (json_is_object(v)) {
                if (it == NULL)
                    break;
                k = json_object_iter_key(it);
                x = json_object_iter_value(it);
                it = json_object_iter_next((json_t *)v, it);
            } else {
                if (i >= json_array_size(v))
                    break;
                snprintf(num, sizeof(num), "%zu", i);
                k = num;
                x = json_array_get(v, i++);
            }
            int n = depth == 0 ? snprintf(path + plen, 512 - plen, "%s", k)
                               : snprintf(path + plen, 512 - plen, "[%s]", k);
            if (n > 0 && plen + (size_t)n < 512)
                form_encode(b, x, path, plen + (size_t)n, depth + 1);
            path[plen] = '\0';
        }
        return;
    }
    if (json_is_string(v)) {
        s = json_string_value(v);
    } else if (json_is_integer(v)) {
        snprintf(num, sizeof(num), "%" JSON_INTEGER_FORMAT, json_integer_value(v));
        s = num;
    } else if (json_is_true(v) || json_is_false(v)) {
        s = json_is_true(v) ? "1" : "0";
    } else {
        return;
    }
    if (b->len > 0)
        sb_add(b, "&", 1);
    sb_escape(b, path, plen);
    sb_add(b, "=", 1);
    sb_escape(b, s, strlen(s));
}

/* ---- outbound events ------------------------------------------------------------------ */

static void pump(struct emu_srv *s);
static void pending_fire(void *arg);

static void srv_free(struct emu_srv *s)
{
    free(s);
}

static void event_done(void *arg, int err, const struct loyd_http_response *res)
{
    struct emu_srv *s = arg;

    s->inflight--;
    if (s->stopped) {
        if (s->inflight == 0)
            srv_free(s);
        return;
    }
    bool ok = err == 0 && res != NULL && res->status >= 200 && res->status < 300;
    b24emu_event_done(s->emu, ok);
    if (!ok)
        s->host->log(s->hctx, LOYD_LOG_INFO, "bitrix24 emulator: event not delivered (%s, %ld)",
                     err != 0 ? loyd_strerror(err) : "status", res != NULL ? res->status : 0);
    pump(s);
}

static void pump(struct emu_srv *s)
{
    static const char *const headers[] = {
        "Content-Type: application/x-www-form-urlencoded",
        "User-Agent: Bitrix24 Webhook Engine", NULL};
    char *url;
    json_t *payload;

    while (!s->stopped && s->inflight < EVENTS_IN_FLIGHT &&
           b24emu_event_pop(s->emu, &url, &payload)) {
        struct sbuf b = {0};
        char path[512] = "";
        form_encode(&b, payload, path, 0, 0);
        json_decref(payload);
        struct loyd_http_opts o = {.method = "POST", .url = url, .headers = headers,
                                   .body = b.p, .body_len = b.len,
                                   .timeout_ms = EVENT_TIMEOUT_MS, .max_response = 65536};
        s->inflight++;
        int rc = s->host->http_start(s->hctx, &o, event_done, s);
        if (rc != 0) {
            s->inflight--;
            b24emu_event_done(s->emu, false);
            s->host->log(s->hctx, LOYD_LOG_WARN, "bitrix24 emulator: cannot post event: %s",
                         loyd_strerror(rc));
        }
        free(b.p);
        free(url);
    }
}

/* ---- requests ------------------------------------------------------------------------- */

static const char *header(const struct loyd_http_request *req, const char *name)
{
    for (size_t i = 0; i < req->n_headers; i++)
        if (strcasecmp(req->headers[i].name, name) == 0)
            return req->headers[i].value;
    return NULL;
}

static void respond_json(struct emu_srv *s, struct loyd_http_exchange *ex, int status,
                         json_t *body /* owned */)
{
    char *text = json_dumps(body, JSON_COMPACT);
    json_decref(body);
    uint32_t delay = b24emu_slow_ms(s->emu);

    if (text == NULL) {
        s->host->http_respond(s->hctx, ex, 500, json_headers, "{}", 2);
        return;
    }
    if (delay > 0 && s->host->timer_start != NULL) {
        struct pending *p = calloc(1, sizeof(*p));
        if (p == NULL)
            abort();
        p->s = s;
        p->ex = ex;
        p->status = status;
        p->body = text;
        p->next = s->pending;
        s->pending = p;
        p->timer = s->host->timer_start(s->hctx, delay, pending_fire, p);
        return;
    }
    s->host->http_respond(s->hctx, ex, status, json_headers, text, strlen(text));
    free(text);
}

static void pending_fire(void *arg)
{
    struct pending *p = arg, **pp;
    struct emu_srv *s = p->s;

    for (pp = &s->pending; *pp != NULL; pp = &(*pp)->next) {
        if (*pp == p) {
            *pp = p->next;
            break;
        }
    }
    s->host->http_respond(s->hctx, p->ex, p->status, json_headers, p->body, strlen(p->body));
    free(p->body);
    free(p);
}

static int merge_form(struct emu_srv *s, json_t *params, const char *text, size_t len,
                      char *emsg, size_t emsz)
{
    json_t *o = NULL;
    struct loyd_errbuf eb = {emsg, emsz};
    int rc = s->host->form_parse(s->hctx, text, len, &o, &eb);
    if (rc != 0)
        return rc;
    json_object_update(params, o);
    json_decref(o);
    return 0;
}

static void on_request(void *arg, struct loyd_http_exchange *ex,
                       const struct loyd_http_request *req)
{
    struct emu_srv *s = arg;
    json_t *params = json_object(), *resp = NULL;
    char emsg[256] = "";
    int status = 200;
    uint64_t now = s->host->now_ms(s->hctx);

    if (req->query != NULL && req->query[0] != '\0' &&
        merge_form(s, params, req->query, strlen(req->query), emsg, sizeof(emsg)) != 0)
        goto bad;
    if (req->body_len > 0) {
        const char *ct = header(req, "Content-Type");
        if (ct != NULL && strstr(ct, "application/json") != NULL) {
            json_error_t jerr;
            json_t *o = req->body_len <= JSON_BODY_MAX
                            ? json_loadb(req->body, req->body_len, JSON_REJECT_DUPLICATES, &jerr)
                            : NULL;
            if (!json_is_object(o)) {
                snprintf(emsg, sizeof(emsg), "JSON body must be an object (line %d: %s)",
                         o == NULL ? jerr.line : 0, o == NULL ? jerr.text : "not an object");
                json_decref(o);
                goto bad;
            }
            json_object_update(params, o);
            json_decref(o);
        } else if (merge_form(s, params, req->body, req->body_len, emsg, sizeof(emsg)) != 0) {
            goto bad;
        }
    }
    const char *authz = header(req, "Authorization");
    if (authz != NULL && strncasecmp(authz, "Bearer ", 7) == 0 &&
        json_object_get(params, "auth") == NULL)
        json_object_set_new(params, "auth", json_string(authz + 7));

    const char *rest = strstr(req->path, "/rest/");
    const char *moved = b24emu_moved_to(s->emu);
    if (rest == req->path && moved != NULL && strncmp(rest + 6, "loyd.emu.", 9) != 0) {
        /* The "moved" fault: the old address sends the client to the new one. */
        char loc[1200];
        snprintf(loc, sizeof(loc), "Location: %s%s%s%s", moved, req->path,
                 req->query != NULL && req->query[0] ? "?" : "", req->query ? req->query : "");
        const char *const hdrs[] = {loc, "Content-Type: text/html", NULL};
        json_decref(params);
        b24emu_count_redirect(s->emu);
        s->host->http_respond(s->hctx, ex, 302, hdrs, "", 0);
        return;
    }
    if (rest != NULL) {
        if (b24emu_call(s->emu, rest + 6, params, now, &status, &resp) != 0)
            goto bad;
    } else if (strcmp(req->path, "/oauth/token/") == 0 || strcmp(req->path, "/oauth/token") == 0) {
        if (b24emu_oauth_token(s->emu, params, now, &status, &resp) != 0)
            goto bad;
    } else {
        status = 404;
        resp = json_pack("{s:s,s:s}", "error", "ERROR_METHOD_NOT_FOUND", "error_description",
                         "Method not found!");
    }
    json_decref(params);
    respond_json(s, ex, status, resp);
    pump(s);
    return;
bad:
    json_decref(params);
    respond_json(s, ex, 400, json_pack("{s:s,s:s}", "error", "INVALID_REQUEST",
                                       "error_description", emsg[0] ? emsg : "Bad request"));
}

/* ---- start / stop --------------------------------------------------------------------- */

static void emu_stop(void *state)
{
    struct emu_srv *s = state;

    if (s == NULL)
        return;
    s->stopped = true;
    while (s->pending != NULL) {
        struct pending *p = s->pending;
        s->pending = p->next;
        s->host->timer_cancel(s->hctx, p->timer);
        s->host->http_respond(s->hctx, p->ex, p->status, json_headers, p->body,
                              strlen(p->body));
        free(p->body);
        free(p);
    }
    if (s->server != NULL)
        s->host->http_unlisten(s->hctx, s->server);
    b24emu_destroy(s->emu);
    s->emu = NULL;
    if (s->inflight == 0)
        srv_free(s); /* otherwise the last event_done() frees it */
}

static void announce_line(void *ctx, const char *line)
{
    struct emu_srv *s = ctx;
    s->host->log(s->hctx, LOYD_LOG_INFO, "%s", line);
}

static int emu_start(const struct loyd_host_api *host, void *hctx, const char *listen_addr,
                     const json_t *options, void **state_out, int *port_out)
{
    struct emu_srv *s = calloc(1, sizeof(*s));
    char emsg[256] = "";
    struct loyd_errbuf eb = {emsg, sizeof(emsg)};
    int rc;

    if (s == NULL)
        return -ENOMEM;
    s->host = host;
    s->hctx = hctx;
    rc = b24emu_create(options, host->form_parse, hctx, host->now_ms(hctx), &s->emu, &eb);
    if (rc != 0) {
        host->log(hctx, LOYD_LOG_ERR, "%s", emsg);
        free(s);
        return rc;
    }
    rc = host->http_listen(hctx, listen_addr, on_request, s, &s->server, port_out);
    if (rc != 0) {
        host->log(hctx, LOYD_LOG_ERR, "bitrix24 emulator: cannot listen on %s: %s", listen_addr,
                  loyd_strerror(rc));
        s->server = NULL;
        emu_stop(s);
        return rc;
    }
    host->log(hctx, LOYD_LOG_INFO, "bitrix24 emulator listening on port %d", *port_out);
    /* Its codes and URLs, so that a tenant file can be written from the log alone. */
    char base[300];
    size_t hn = strrchr(listen_addr, ':') != NULL ? (size_t)(strrchr(listen_addr, ':') - listen_addr)
                                                  : strlen(listen_addr);
    snprintf(base, sizeof(base), "http://%.*s:%d", (int)hn, listen_addr, *port_out);
    b24emu_announce(s->emu, base, announce_line, s);
    *state_out = s;
    return 0;
}

const struct loyd_emulator b24emu_emulator = {
    .start = emu_start,
    .stop = emu_stop,
};
