/* SPDX-License-Identifier: MIT */
/*
 * The test stub HTTP server (see stub_server.h).
 *
 * It owns a thread with its own uv loop, the listening socket, every accepted connection
 * (struct stub_conn: a TCP handle, a delay timer, an http_parser and the request being parsed)
 * and, under one mutex shared with the test thread, the route table and the recorded requests.
 * Everything on the loop is touched only by the stub thread; the test thread talks to it through
 * the mutex and, to stop it, a uv_async_t.
 */
#include "stub_server.h"

#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <strings.h>

#include <arpa/inet.h>
#include <http_parser.h>
#include <uv.h>

#include "util.h"

#define STUB_MAX_URL 8192
#define STUB_MAX_HEADERS 100
#define STUB_MAX_BODY ((size_t)16 << 20)
#define STUB_CHUNK 4096

struct stub_route {
    struct stub_route *next;
    char *path;
    /* Deep copies of what loyd_stub_set() was given (reply's pointers point into these). */
    struct loyd_stub_reply reply;
    char **headers;
    char *body, *location;
    loyd_stub_handler_fn fn;
    void *fn_arg;
    unsigned hits;
    struct loyd_stub_req last;
    bool has_last;
};

struct loyd_stub {
    uv_loop_t loop;
    uv_tcp_t listener;
    uv_async_t stop;
    uv_thread_t thread;
    int port;
    struct stub_conn *conns; /* stub thread only */

    uv_mutex_t mu; /* guards everything below */
    struct stub_route *routes;
    unsigned hits;
    struct loyd_stub_req last;
    bool has_last;
};

struct stub_conn {
    uv_tcp_t tcp; /* first member */
    uv_timer_t delay;
    struct loyd_stub *stub;
    struct stub_conn *prev, *next;
    int open_handles; /* freed when both tcp and delay are closed */
    bool closing;

    http_parser parser;
    struct loyd_buf url, body, hname, hval;
    struct loyd_stub_header *headers;
    size_t n_headers;
    bool in_value; /* the parser is inside a header value (hname/hval hold a pair) */
    int reject;    /* 413/431 when a limit was hit */
    bool busy;     /* a request is complete and not answered yet: later bytes wait */
    bool keep_alive;
    struct loyd_buf pending; /* bytes that arrived while busy */

    char *out; /* the serialised answer waiting for its delay */
    size_t out_len;
    bool out_close; /* drop instead of answering */
    bool out_stall; /* the answer is headers only, and the body never comes */
};

struct stub_write {
    uv_write_t req;
    struct stub_conn *conn;
    char *data;
    bool close_after;
};

/* ---- records ------------------------------------------------------------------------------- */

static void req_copy(struct loyd_stub_req *dst, const struct loyd_stub_req *src)
{
    dst->method = loyd_xstrdup(src->method);
    dst->path = loyd_xstrdup(src->path);
    dst->query = loyd_xstrdup(src->query);
    dst->body = loyd_xmalloc(src->body_len + 1);
    memcpy(dst->body, src->body, src->body_len);
    dst->body[src->body_len] = '\0';
    dst->body_len = src->body_len;
    dst->n_headers = src->n_headers;
    dst->headers = loyd_xcalloc(src->n_headers ? src->n_headers : 1, sizeof(*dst->headers));
    for (size_t i = 0; i < src->n_headers; i++) {
        dst->headers[i].name = loyd_xstrdup(src->headers[i].name);
        dst->headers[i].value = loyd_xstrdup(src->headers[i].value);
    }
}

void loyd_stub_req_free(struct loyd_stub_req *r)
{
    if (r == NULL)
        return;
    free(r->method);
    free(r->path);
    free(r->query);
    free(r->body);
    for (size_t i = 0; i < r->n_headers; i++) {
        free(r->headers[i].name);
        free(r->headers[i].value);
    }
    free(r->headers);
    memset(r, 0, sizeof(*r));
}

const char *loyd_stub_req_header(const struct loyd_stub_req *r, const char *name)
{
    for (size_t i = 0; i < r->n_headers; i++)
        if (strcasecmp(r->headers[i].name, name) == 0)
            return r->headers[i].value;
    return NULL;
}

/* ---- routes -------------------------------------------------------------------------------- */

static void route_free(struct stub_route *rt)
{
    if (rt == NULL)
        return;
    free(rt->path);
    for (char **h = rt->headers; h != NULL && *h != NULL; h++)
        free(*h);
    free(rt->headers);
    free(rt->body);
    free(rt->location);
    loyd_stub_req_free(&rt->last);
    free(rt);
}

/* Caller holds mu. */
static struct stub_route *route_find(struct loyd_stub *s, const char *path)
{
    for (struct stub_route *rt = s->routes; rt != NULL; rt = rt->next)
        if (strcmp(rt->path, path) == 0)
            return rt;
    return NULL;
}

static void route_put(struct loyd_stub *s, struct stub_route *rt)
{
    uv_mutex_lock(&s->mu);
    struct stub_route **pp = &s->routes;
    while (*pp != NULL && strcmp((*pp)->path, rt->path) != 0)
        pp = &(*pp)->next;
    if (*pp != NULL) {
        /* Replacing keeps the hit count and last request: tests re-script routes midway. */
        struct stub_route *old = *pp;
        rt->hits = old->hits;
        rt->last = old->last;
        rt->has_last = old->has_last;
        old->has_last = false;
        memset(&old->last, 0, sizeof(old->last));
        rt->next = old->next;
        *pp = rt;
        route_free(old);
    } else {
        rt->next = NULL;
        *pp = rt;
    }
    uv_mutex_unlock(&s->mu);
}

void loyd_stub_set(struct loyd_stub *s, const char *path, const struct loyd_stub_reply *r)
{
    struct stub_route *rt = loyd_xcalloc(1, sizeof(*rt));
    size_t n = 0;

    rt->path = loyd_xstrdup(path);
    rt->reply = *r;
    rt->reply.body_owned = NULL;
    while (r->headers != NULL && r->headers[n] != NULL)
        n++;
    rt->headers = loyd_xcalloc(n + 1, sizeof(char *));
    for (size_t i = 0; i < n; i++)
        rt->headers[i] = loyd_xstrdup(r->headers[i]);
    rt->reply.headers = (const char *const *)rt->headers;
    if (r->body != NULL) {
        size_t len = r->body_len ? r->body_len : strlen(r->body);
        rt->body = loyd_xstrndup(r->body, len);
        rt->reply.body = rt->body;
        rt->reply.body_len = len;
    }
    if (r->location != NULL) {
        rt->location = loyd_xstrdup(r->location);
        rt->reply.location = rt->location;
    }
    route_put(s, rt);
}

void loyd_stub_route(struct loyd_stub *s, const char *path, int status, const char *body,
                     uint32_t delay_ms)
{
    loyd_stub_set(s, path,
                  &(struct loyd_stub_reply){.status = status, .body = body, .delay_ms = delay_ms});
}

void loyd_stub_redirect(struct loyd_stub *s, const char *path, int status, const char *location)
{
    loyd_stub_set(s, path, &(struct loyd_stub_reply){.status = status, .location = location});
}

void loyd_stub_hang(struct loyd_stub *s, const char *path)
{
    loyd_stub_set(s, path, &(struct loyd_stub_reply){.action = LOYD_STUB_HANG});
}

void loyd_stub_drop(struct loyd_stub *s, const char *path)
{
    loyd_stub_set(s, path, &(struct loyd_stub_reply){.action = LOYD_STUB_DROP});
}

void loyd_stub_handler(struct loyd_stub *s, const char *path, loyd_stub_handler_fn fn, void *arg)
{
    struct stub_route *rt = loyd_xcalloc(1, sizeof(*rt));
    rt->path = loyd_xstrdup(path);
    rt->fn = fn;
    rt->fn_arg = arg;
    route_put(s, rt);
}

unsigned loyd_stub_hits(struct loyd_stub *s, const char *path)
{
    unsigned n = 0;

    uv_mutex_lock(&s->mu);
    if (path == NULL) {
        n = s->hits;
    } else {
        struct stub_route *rt = route_find(s, path);
        n = rt != NULL ? rt->hits : 0;
    }
    uv_mutex_unlock(&s->mu);
    return n;
}

bool loyd_stub_last(struct loyd_stub *s, const char *path, struct loyd_stub_req *out)
{
    bool found = false;

    memset(out, 0, sizeof(*out));
    uv_mutex_lock(&s->mu);
    if (path == NULL) {
        if ((found = s->has_last))
            req_copy(out, &s->last);
    } else {
        struct stub_route *rt = route_find(s, path);
        if (rt != NULL && (found = rt->has_last))
            req_copy(out, &rt->last);
    }
    uv_mutex_unlock(&s->mu);
    return found;
}

/* ---- connections (stub thread) ------------------------------------------------------------- */

static void conn_on_close(uv_handle_t *h)
{
    struct stub_conn *c = h->data;

    if (--c->open_handles > 0)
        return;
    loyd_buf_free(&c->url);
    loyd_buf_free(&c->body);
    loyd_buf_free(&c->hname);
    loyd_buf_free(&c->hval);
    loyd_buf_free(&c->pending);
    for (size_t i = 0; i < c->n_headers; i++) {
        free(c->headers[i].name);
        free(c->headers[i].value);
    }
    free(c->headers);
    free(c->out);
    free(c);
}

static void conn_close(struct stub_conn *c)
{
    if (c->closing)
        return;
    c->closing = true;
    if (c->prev != NULL)
        c->prev->next = c->next;
    else
        c->stub->conns = c->next;
    if (c->next != NULL)
        c->next->prev = c->prev;
    uv_close((uv_handle_t *)&c->tcp, conn_on_close);
    uv_close((uv_handle_t *)&c->delay, conn_on_close);
}

static void conn_reset_request(struct stub_conn *c)
{
    loyd_buf_reset(&c->url);
    loyd_buf_reset(&c->body);
    loyd_buf_reset(&c->hname);
    loyd_buf_reset(&c->hval);
    for (size_t i = 0; i < c->n_headers; i++) {
        free(c->headers[i].name);
        free(c->headers[i].value);
    }
    free(c->headers);
    c->headers = NULL;
    c->n_headers = 0;
    c->in_value = false;
    c->reject = 0;
}

static void header_push(struct stub_conn *c)
{
    if (!c->in_value)
        return;
    c->in_value = false;
    if (c->n_headers >= STUB_MAX_HEADERS) {
        c->reject = 431;
    } else {
        c->headers = loyd_xrealloc(c->headers, (c->n_headers + 1) * sizeof(*c->headers));
        c->headers[c->n_headers].name = loyd_xstrdup(c->hname.data ? c->hname.data : "");
        c->headers[c->n_headers].value = loyd_xstrdup(c->hval.data ? c->hval.data : "");
        c->n_headers++;
    }
    loyd_buf_reset(&c->hname);
    loyd_buf_reset(&c->hval);
}

static int on_message_begin(http_parser *p)
{
    conn_reset_request(p->data);
    return 0;
}

static int on_url(http_parser *p, const char *at, size_t len)
{
    struct stub_conn *c = p->data;
    if (c->url.len + len > STUB_MAX_URL) {
        c->reject = 431;
        return 0;
    }
    loyd_buf_append(&c->url, at, len);
    return 0;
}

static int on_header_field(http_parser *p, const char *at, size_t len)
{
    struct stub_conn *c = p->data;
    header_push(c); /* a new field: the previous pair is complete */
    if (c->hname.len + len <= STUB_MAX_URL)
        loyd_buf_append(&c->hname, at, len);
    else
        c->reject = 431;
    return 0;
}

static int on_header_value(http_parser *p, const char *at, size_t len)
{
    struct stub_conn *c = p->data;
    c->in_value = true;
    if (c->hval.len + len <= STUB_MAX_URL)
        loyd_buf_append(&c->hval, at, len);
    else
        c->reject = 431;
    return 0;
}

static void conn_write(struct stub_conn *c, const char *data, size_t len, bool close_after);

static int on_headers_complete(http_parser *p)
{
    struct stub_conn *c = p->data;
    header_push(c);
    for (size_t i = 0; i < c->n_headers; i++)
        if (strcasecmp(c->headers[i].name, "Expect") == 0 &&
            strcasecmp(c->headers[i].value, "100-continue") == 0 && c->reject == 0) {
            static const char cont[] = "HTTP/1.1 100 Continue\r\n\r\n";
            conn_write(c, cont, sizeof(cont) - 1, false);
        }
    return 0;
}

static int on_body(http_parser *p, const char *at, size_t len)
{
    struct stub_conn *c = p->data;
    if (len > STUB_MAX_BODY - c->body.len) {
        c->reject = 413;
        return 0;
    }
    loyd_buf_append(&c->body, at, len);
    return 0;
}

static int on_message_complete(http_parser *p)
{
    struct stub_conn *c = p->data;
    c->keep_alive = http_should_keep_alive(p);
    /* Stop here: the request is answered before the next one on this connection is read. */
    http_parser_pause(p, 1);
    return 0;
}

static const http_parser_settings parser_settings = {
    .on_message_begin = on_message_begin,
    .on_url = on_url,
    .on_header_field = on_header_field,
    .on_header_value = on_header_value,
    .on_headers_complete = on_headers_complete,
    .on_body = on_body,
    .on_message_complete = on_message_complete,
};

static const char *reason(int status)
{
    static const struct {
        int status;
        const char *text;
    } reasons[] = {
        {100, "Continue"},
        {200, "OK"},
        {201, "Created"},
        {204, "No Content"},
        {301, "Moved Permanently"},
        {302, "Found"},
        {303, "See Other"},
        {307, "Temporary Redirect"},
        {308, "Permanent Redirect"},
        {400, "Bad Request"},
        {401, "Unauthorized"},
        {403, "Forbidden"},
        {404, "Not Found"},
        {413, "Content Too Large"},
        {429, "Too Many Requests"},
        {431, "Request Header Fields Too Large"},
        {500, "Internal Server Error"},
        {502, "Bad Gateway"},
        {503, "Service Unavailable"},
    };
    for (size_t i = 0; i < LOYD_ARRAY_SIZE(reasons); i++)
        if (reasons[i].status == status)
            return reasons[i].text;
    return "Status";
}

/* Builds the whole answer; a HEAD request gets the headers only. */
static void serialise(struct loyd_buf *out, const struct loyd_stub_reply *r, bool keep_alive,
                      bool head)
{
    int status = r->status ? r->status : 200;
    const char *body = r->body_owned != NULL ? r->body_owned : r->body;
    size_t len = r->fill_len             ? r->fill_len
                 : r->body_owned != NULL ? r->body_len
                 : body != NULL          ? (r->body_len ? r->body_len : strlen(body))
                                         : 0;
    char *fill = NULL;

    if (r->fill_len) {
        fill = loyd_xmalloc(r->fill_len);
        memset(fill, 'x', r->fill_len);
        body = fill;
    }
    loyd_buf_printf(out, "HTTP/1.1 %d %s\r\n", status, reason(status));
    if (r->chunked)
        loyd_buf_puts(out, "Transfer-Encoding: chunked\r\n");
    else
        loyd_buf_printf(out, "Content-Length: %zu\r\n", len);
    if (r->location != NULL)
        loyd_buf_printf(out, "Location: %s\r\n", r->location);
    for (const char *const *h = r->headers; h != NULL && *h != NULL; h++)
        loyd_buf_printf(out, "%s\r\n", *h);
    loyd_buf_puts(out, keep_alive ? "Connection: keep-alive\r\n\r\n" : "Connection: close\r\n\r\n");
    if (!head && !r->stall_body) {
        if (!r->chunked) {
            loyd_buf_append(out, body, len);
        } else {
            for (size_t off = 0; off < len; off += STUB_CHUNK) {
                size_t n = len - off < STUB_CHUNK ? len - off : STUB_CHUNK;
                loyd_buf_printf(out, "%zx\r\n", n);
                loyd_buf_append(out, body + off, n);
                loyd_buf_puts(out, "\r\n");
            }
            loyd_buf_puts(out, "0\r\n\r\n");
        }
    }
    free(fill);
}

static void conn_feed(struct stub_conn *c, const char *data, size_t len);

static void on_write(uv_write_t *w, int status)
{
    struct stub_write *sw = (struct stub_write *)w;
    struct stub_conn *c = sw->conn;
    bool close_after = sw->close_after;

    free(sw->data);
    free(sw);
    if (status < 0 || c->closing)
        return; /* cancelled by a close: c is about to go */
    if (close_after) {
        conn_close(c);
        return;
    }
}

static void conn_write(struct stub_conn *c, const char *data, size_t len, bool close_after)
{
    struct stub_write *sw = loyd_xcalloc(1, sizeof(*sw));
    sw->conn = c;
    sw->data = loyd_xmalloc(len ? len : 1);
    memcpy(sw->data, data, len);
    sw->close_after = close_after;
    uv_buf_t b = uv_buf_init(sw->data, (unsigned)len);
    if (uv_write(&sw->req, (uv_stream_t *)&c->tcp, &b, 1, on_write) != 0) {
        free(sw->data);
        free(sw);
        conn_close(c);
    }
}

/* The answer for the request just parsed went out (or was dropped): read the next one. */
static void conn_next(struct stub_conn *c)
{
    c->busy = false;
    http_parser_pause(&c->parser, 0);
    if (c->pending.len > 0) {
        struct loyd_buf rest = c->pending;
        c->pending = (struct loyd_buf){0};
        conn_feed(c, rest.data, rest.len);
        loyd_buf_free(&rest);
    }
}

static void send_out(struct stub_conn *c)
{
    char *out = c->out;
    size_t len = c->out_len;

    c->out = NULL;
    c->out_len = 0;
    if (c->out_close) {
        free(out);
        conn_close(c);
        return;
    }
    if (c->out_stall) {
        conn_write(c, out, len, false);
        free(out);
        return; /* busy for good, like a hang, but after the headers */
    }
    bool close_after = !c->keep_alive;
    conn_write(c, out, len, close_after);
    free(out);
    if (!close_after)
        conn_next(c);
}

static void on_delay(uv_timer_t *t)
{
    send_out(t->data);
}

static void record(struct loyd_stub *s, struct stub_route *rt, const struct loyd_stub_req *rq)
{
    s->hits++;
    loyd_stub_req_free(&s->last);
    req_copy(&s->last, rq);
    s->has_last = true;
    if (rt != NULL) {
        rt->hits++;
        loyd_stub_req_free(&rt->last);
        req_copy(&rt->last, rq);
        rt->has_last = true;
    }
}

static void conn_handle_request(struct stub_conn *c)
{
    struct loyd_stub *s = c->stub;
    struct loyd_stub_reply reply = {0};
    struct loyd_buf out = {0};
    struct loyd_stub_req rq = {0};
    const char *url = c->url.data ? c->url.data : "/";
    const char *q = strchr(url, '?');
    loyd_stub_handler_fn fn = NULL;
    void *fn_arg = NULL;

    c->busy = true;
    if (c->reject) {
        reply.status = c->reject;
        reply.body = "request over the stub's limits\n";
        c->keep_alive = false;
        serialise(&out, &reply, false, false);
        goto answer;
    }
    rq.method = (char *)http_method_str((enum http_method)c->parser.method);
    rq.path = q != NULL ? loyd_xstrndup(url, (size_t)(q - url)) : loyd_xstrdup(url);
    rq.query = (char *)(q != NULL ? q + 1 : "");
    rq.body = c->body.data ? c->body.data : (char *)"";
    rq.body_len = c->body.len;
    rq.headers = c->headers;
    rq.n_headers = c->n_headers;

    uv_mutex_lock(&s->mu);
    struct stub_route *rt = route_find(s, rq.path);
    record(s, rt, &rq);
    if (rt == NULL) {
        reply.status = 404;
        reply.body = "no such route\n";
    } else if (rt->fn != NULL) {
        fn = rt->fn;
        fn_arg = rt->fn_arg;
    } else {
        reply = rt->reply; /* serialised below, still under the lock: rt may be replaced */
    }
    if (fn == NULL)
        serialise(&out, &reply, c->keep_alive, c->parser.method == HTTP_HEAD);
    uv_mutex_unlock(&s->mu);
    if (fn != NULL) {
        fn(fn_arg, &rq, &reply);
        serialise(&out, &reply, c->keep_alive, c->parser.method == HTTP_HEAD);
        free(reply.body_owned);
    }
    free(rq.path);

answer:
    if (reply.action == LOYD_STUB_HANG) {
        loyd_buf_free(&out);
        return; /* busy forever: later bytes just pile up in pending (bounded below) */
    }
    c->out = out.data ? out.data : loyd_xstrdup("");
    c->out_len = out.len;
    c->out_close = reply.action == LOYD_STUB_DROP;
    c->out_stall = reply.stall_body;
    if (reply.delay_ms > 0) {
        uv_timer_start(&c->delay, on_delay, reply.delay_ms, 0);
        return;
    }
    send_out(c);
}

static void conn_feed(struct stub_conn *c, const char *data, size_t len)
{
    while (len > 0 && !c->closing) {
        if (c->busy) {
            if (c->pending.len + len > STUB_MAX_BODY) {
                conn_close(c);
                return;
            }
            loyd_buf_append(&c->pending, data, len);
            return;
        }
        size_t used = http_parser_execute(&c->parser, &parser_settings, data, len);
        enum http_errno e = HTTP_PARSER_ERRNO(&c->parser);
        if (e == HPE_PAUSED) {
            data += used;
            len -= used;
            conn_handle_request(c); /* may answer now and unpause, or later */
            continue;
        }
        if (e != HPE_OK) {
            static const char bad[] = "HTTP/1.1 400 Bad Request\r\nContent-Length: 0\r\n"
                                      "Connection: close\r\n\r\n";
            c->busy = true;
            conn_write(c, bad, sizeof(bad) - 1, true);
            return;
        }
        return; /* everything consumed */
    }
}

static void on_alloc(uv_handle_t *h, size_t suggested, uv_buf_t *buf)
{
    (void)h;
    buf->base = loyd_xmalloc(suggested);
    buf->len = suggested;
}

static void on_read(uv_stream_t *st, ssize_t nread, const uv_buf_t *buf)
{
    struct stub_conn *c = st->data;

    if (nread < 0) {
        conn_close(c); /* EOF or error: the client gave up (timeouts do this) */
    } else if (nread > 0) {
        conn_feed(c, buf->base, (size_t)nread);
    }
    free(buf->base);
}

static void on_connection(uv_stream_t *server, int status)
{
    struct loyd_stub *s = server->data;

    if (status < 0)
        return;
    struct stub_conn *c = loyd_xcalloc(1, sizeof(*c));
    c->stub = s;
    LOYD_REQUIRE(uv_tcp_init(&s->loop, &c->tcp) == 0);
    LOYD_REQUIRE(uv_timer_init(&s->loop, &c->delay) == 0);
    c->tcp.data = c;
    c->delay.data = c;
    c->open_handles = 2;
    c->next = s->conns;
    if (s->conns != NULL)
        s->conns->prev = c;
    s->conns = c;
    http_parser_init(&c->parser, HTTP_REQUEST);
    c->parser.data = c;
    if (uv_accept(server, (uv_stream_t *)&c->tcp) != 0 ||
        uv_read_start((uv_stream_t *)&c->tcp, on_alloc, on_read) != 0)
        conn_close(c);
}

/* ---- lifecycle ----------------------------------------------------------------------------- */

static void on_stop(uv_async_t *a)
{
    struct loyd_stub *s = a->data;

    while (s->conns != NULL)
        conn_close(s->conns);
    uv_close((uv_handle_t *)&s->listener, NULL);
    uv_close((uv_handle_t *)&s->stop, NULL);
}

static void stub_thread(void *arg)
{
    struct loyd_stub *s = arg;
    uv_run(&s->loop, UV_RUN_DEFAULT);
}

struct loyd_stub *loyd_stub_start(void)
{
    struct loyd_stub *s = loyd_xcalloc(1, sizeof(*s));
    struct sockaddr_in sa;
    struct sockaddr_storage bound;
    int len = sizeof(bound);

    LOYD_REQUIRE(uv_mutex_init(&s->mu) == 0);
    LOYD_REQUIRE(uv_loop_init(&s->loop) == 0);
    LOYD_REQUIRE(uv_tcp_init(&s->loop, &s->listener) == 0);
    s->listener.data = s;
    LOYD_REQUIRE(uv_ip4_addr("127.0.0.1", 0, &sa) == 0);
    LOYD_REQUIRE(uv_tcp_bind(&s->listener, (const struct sockaddr *)&sa, 0) == 0);
    LOYD_REQUIRE(uv_listen((uv_stream_t *)&s->listener, 128, on_connection) == 0);
    LOYD_REQUIRE(uv_tcp_getsockname(&s->listener, (struct sockaddr *)&bound, &len) == 0);
    s->port = ntohs(((struct sockaddr_in *)&bound)->sin_port);
    LOYD_REQUIRE(uv_async_init(&s->loop, &s->stop, on_stop) == 0);
    s->stop.data = s;
    /* The loop is handed to the thread before anything else touches it. */
    LOYD_REQUIRE(uv_thread_create(&s->thread, stub_thread, s) == 0);
    return s;
}

void loyd_stub_stop(struct loyd_stub *s)
{
    if (s == NULL)
        return;
    uv_async_send(&s->stop);
    LOYD_REQUIRE(uv_thread_join(&s->thread) == 0);
    LOYD_REQUIRE(uv_loop_close(&s->loop) == 0); /* every connection and timer was closed */
    while (s->routes != NULL) {
        struct stub_route *rt = s->routes;
        s->routes = rt->next;
        route_free(rt);
    }
    loyd_stub_req_free(&s->last);
    uv_mutex_destroy(&s->mu);
    free(s);
}

int loyd_stub_port(const struct loyd_stub *s)
{
    return s->port;
}

char *loyd_stub_url(const struct loyd_stub *s, const char *path_and_query)
{
    return loyd_xasprintf("http://127.0.0.1:%d%s", s->port, path_and_query);
}
