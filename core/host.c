/* SPDX-License-Identifier: MIT */
/* The host API implementation (see host.h). */
#include "host.h"

#include <errno.h>
#include <stdarg.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include "form.h"
#include "http_client.h"
#include "httpd.h"
#include "log.h"
#include "store.h"
#include "util.h"

struct host_timer {
    uv_timer_t timer; /* first member: the close callback frees the owner */
    struct loyd_host *host;
    uint64_t id;
    void (*cb)(void *arg);
    void *arg;
    struct host_timer *prev, *next;
};

struct host_server {
    struct loyd_httpd *httpd;
    struct loyd_host *host;
    struct host_server *prev, *next;
};

/* One handle of a loyd_host_close finished closing; the last one reports. */
static void close_step(struct loyd_host *h)
{
    if (h->closing > 0 && --h->closing == 0 && h->closed_cb != NULL)
        h->closed_cb(h->closed_arg);
}

void loyd_host_init(struct loyd_host *h, uv_loop_t *loop, struct loyd_http_client *client,
                    struct loyd_store *store)
{
    *h = (struct loyd_host){.loop = loop, .client = client, .store = store};
}

struct loyd_host_ctx *loyd_host_ctx_create(struct loyd_host *h, const char *plugin,
                                           const char *tenant)
{
    struct loyd_host_ctx *c = loyd_xcalloc(1, sizeof(*c));
    c->host = h;
    c->plugin = loyd_xstrdup(plugin);
    c->tenant = tenant ? loyd_xstrdup(tenant) : NULL;
    return c;
}

void loyd_host_ctx_destroy(struct loyd_host_ctx *c)
{
    if (c == NULL)
        return;
    free(c->plugin);
    free(c->tenant);
    free(c);
}

uint64_t loyd_host_now_ms(const struct loyd_host *h)
{
    return (uint64_t)((int64_t)loyd_wall_ms() + h->clock_offset_ms);
}

static void tag_write(int level, const char *tag, const char *fmt, ...) LOYD_PRINTF(3, 4);
static void tag_write(int level, const char *tag, const char *fmt, ...)
{
    va_list ap;
    va_start(ap, fmt);
    loyd_log_vwrite(level, tag, fmt, ap);
    va_end(ap);
}

static void api_log(void *hctx, int level, const char *fmt, ...)
{
    struct loyd_host_ctx *c = hctx;
    char tag[160];
    va_list ap;

    if (level > loyd_log_max_level)
        return;
    if (level < LOYD_LOG_ERR)
        level = LOYD_LOG_ERR;
    if (c->tenant != NULL)
        snprintf(tag, sizeof(tag), "plugin:%s:%s", c->plugin, c->tenant);
    else
        snprintf(tag, sizeof(tag), "plugin:%s", c->plugin);
    va_start(ap, fmt);
    if (c->origin_file != NULL && level <= LOYD_LOG_WARN) {
        /* "crm.rate: expected ..." from a connector opening a tenant becomes
         * "tenants.d/acme.conf:7: key 'crm.rate': expected ...", as the daemon's own errors. */
        char msg[1024], key[128];
        vsnprintf(msg, sizeof(msg), fmt, ap);
        size_t n = strspn(msg, "abcdefghijklmnopqrstuvwxyzABCDEFGHIJKLMNOPQRSTUVWXYZ0123456789_.");
        if (strncmp(msg, "crm.", 4) == 0 && msg[n] == ':' && n < sizeof(key)) {
            memcpy(key, msg, n);
            key[n] = '\0';
            const json_t *l = json_object_get(c->origin_lines, key);
            while (l == NULL && strrchr(key, '.') != key + 3 && strrchr(key, '.') != NULL) {
                *strrchr(key, '.') = '\0'; /* crm.attributes.x: the line of crm.attributes */
                l = json_object_get(c->origin_lines, key);
            }
            memcpy(key, msg, n);
            key[n] = '\0';
            if (json_is_integer(l))
                tag_write(level, tag, "%s:%d: key '%s':%s", c->origin_file,
                               (int)json_integer_value(l), key, msg + n + 1);
            else
                tag_write(level, tag, "%s: key '%s':%s", c->origin_file, key, msg + n + 1);
        } else {
            tag_write(level, tag, "%s: %s", c->origin_file, msg);
        }
    } else {
        loyd_log_vwrite(level, tag, fmt, ap);
    }
    va_end(ap);
}

static int api_http_start(void *hctx, const struct loyd_http_opts *o, loyd_http_done_cb cb,
                          void *arg)
{
    struct loyd_host_ctx *c = hctx;
    if (c->host->client == NULL)
        return -ENOTSUP;
    return loyd_http_client_start(c->host->client, o, cb, arg);
}

static uint64_t api_now_ms(void *hctx)
{
    struct loyd_host_ctx *c = hctx;
    return loyd_host_now_ms(c->host);
}

static void timer_unlink(struct host_timer *t)
{
    if (t->prev)
        t->prev->next = t->next;
    else
        t->host->timers = t->next;
    if (t->next)
        t->next->prev = t->prev;
    t->prev = t->next = NULL;
}

static void timer_free(uv_handle_t *handle)
{
    struct host_timer *t = (struct host_timer *)handle;
    struct loyd_host *h = t->host;
    free(t);
    close_step(h);
}

static void timer_fire(uv_timer_t *handle)
{
    struct host_timer *t = (struct host_timer *)handle;
    void (*cb)(void *) = t->cb;
    void *arg = t->arg;

    timer_unlink(t);
    uv_close((uv_handle_t *)&t->timer, timer_free);
    cb(arg); /* may start new timers */
}

static uint64_t api_timer_start(void *hctx, uint64_t delay_ms, void (*cb)(void *arg), void *arg)
{
    struct loyd_host_ctx *c = hctx;
    struct loyd_host *h = c->host;
    struct host_timer *t = loyd_xcalloc(1, sizeof(*t));

    t->host = h;
    t->id = ++h->next_timer_id;
    t->cb = cb;
    t->arg = arg;
    uv_timer_init(h->loop, &t->timer);
    uv_timer_start(&t->timer, timer_fire, delay_ms, 0);
    t->next = h->timers;
    if (h->timers)
        h->timers->prev = t;
    h->timers = t;
    return t->id;
}

static void api_timer_cancel(void *hctx, uint64_t id)
{
    struct loyd_host_ctx *c = hctx;
    for (struct host_timer *t = c->host->timers; t != NULL; t = t->next) {
        if (t->id == id) {
            timer_unlink(t);
            uv_timer_stop(&t->timer);
            uv_close((uv_handle_t *)&t->timer, timer_free);
            return;
        }
    }
}

static int api_kv_get(void *hctx, const char *key, char **out)
{
    struct loyd_host_ctx *c = hctx;
    *out = NULL;
    if (c->host->store == NULL)
        return -ENOTSUP;
    return loyd_store_kv_get(c->host->store, c->tenant ? c->tenant : "", key, out);
}

static int api_kv_put(void *hctx, const char *key, const char *value, loyd_done_cb cb, void *arg)
{
    struct loyd_host_ctx *c = hctx;
    if (c->host->store == NULL)
        return -ENOTSUP;
    return loyd_store_kv_put(c->host->store, c->tenant ? c->tenant : "", key, value, cb, arg);
}

/* A server that never made it into the host's list (its listen failed). */
static void server_unlisted_closed(void *arg)
{
    struct host_server *s = arg;
    loyd_httpd_destroy(s->httpd);
    free(s);
}

static int api_http_listen(void *hctx, const char *addr, loyd_http_handler_cb cb, void *arg,
                           void **server_out, int *port_out)
{
    struct loyd_host_ctx *c = hctx;
    struct loyd_httpd_limits lim;
    char host[256];
    const char *colon = strrchr(addr, ':');
    int rc, port;

    if (colon == NULL || colon == addr || (size_t)(colon - addr) >= sizeof(host))
        return -EINVAL;
    memcpy(host, addr, (size_t)(colon - addr));
    host[colon - addr] = '\0';
    port = atoi(colon + 1);
    if (port < 0 || port > 65535)
        return -EINVAL;
    loyd_httpd_limits_default(&lim);
    struct host_server *s = loyd_xcalloc(1, sizeof(*s));
    s->host = c->host;
    if ((rc = loyd_httpd_create(c->host->loop, &lim, cb, arg, &s->httpd)) != 0) {
        free(s);
        return rc;
    }
    if ((rc = loyd_httpd_listen(s->httpd, host, port, port_out)) != 0) {
        /* The server's handles close asynchronously; it is freed from the close callback. */
        loyd_httpd_close(s->httpd, server_unlisted_closed, s);
        return rc;
    }
    s->next = c->host->servers;
    if (c->host->servers)
        c->host->servers->prev = s;
    c->host->servers = s;
    *server_out = s;
    return 0;
}

static void server_closed(void *arg)
{
    struct host_server *s = arg;
    struct loyd_host *h = s->host;
    loyd_httpd_destroy(s->httpd);
    free(s);
    close_step(h);
}

static void api_http_unlisten(void *hctx, void *server)
{
    struct loyd_host_ctx *c = hctx;
    struct host_server *s = server;
    if (s->prev)
        s->prev->next = s->next;
    else
        c->host->servers = s->next;
    if (s->next)
        s->next->prev = s->prev;
    loyd_httpd_close(s->httpd, server_closed, s);
}

static void api_http_respond(void *hctx, struct loyd_http_exchange *ex, int status,
                             const char *const *headers, const char *body, size_t body_len)
{
    (void)hctx;
    loyd_httpd_respond(ex, status, headers, body, body_len);
}

static int api_form_parse(void *hctx, const char *body, size_t len, json_t **out,
                          struct loyd_errbuf *err)
{
    struct loyd_buf msg = {0};
    (void)hctx;
    int rc = loyd_form_parse(body, len, NULL, out, &msg);
    if (rc != 0 && err != NULL && err->size > 0)
        snprintf(err->msg, err->size, "%s", msg.data ? msg.data : loyd_strerror(rc));
    loyd_buf_free(&msg);
    return rc;
}

const struct loyd_host_api loyd_host_api = {
    .abi = LOYD_PLUGIN_ABI,
    .size = sizeof(struct loyd_host_api),
    .log = api_log,
    .http_start = api_http_start,
    .now_ms = api_now_ms,
    .timer_start = api_timer_start,
    .timer_cancel = api_timer_cancel,
    .kv_get = api_kv_get,
    .kv_put = api_kv_put,
    .http_listen = api_http_listen,
    .http_unlisten = api_http_unlisten,
    .http_respond = api_http_respond,
    .form_parse = api_form_parse,
};

void loyd_host_close(struct loyd_host *h, void (*cb)(void *arg), void *arg)
{
    h->closed_cb = cb;
    h->closed_arg = arg;
    h->closing = 1; /* held until every close below is issued */
    while (h->timers != NULL) {
        struct host_timer *t = h->timers;
        timer_unlink(t);
        uv_timer_stop(&t->timer);
        h->closing++;
        uv_close((uv_handle_t *)&t->timer, timer_free);
    }
    for (struct host_server *s = h->servers, *next; s != NULL; s = next) {
        next = s->next;
        h->closing++;
        loyd_httpd_close(s->httpd, server_closed, s);
    }
    h->servers = NULL;
    close_step(h);
}
