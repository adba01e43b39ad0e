/* SPDX-License-Identifier: MIT */
/*
 * The inbound HTTP/1.1 server (see httpd.h): loyd's webhook receiver.
 *
 * Ownership.  A `struct loyd_httpd` owns its listeners and connections.  A connection owns its
 * TCP handle and one timer (both closed together; the connection is freed when the second close
 * callback ran), the request being parsed (`cur`), and a queue of exchanges in request order.
 * An exchange enters the queue when its request is complete (or when the server rejects the
 * connection's input) and leaves it when its response is handed to uv_write; responses
 * therefore go out strictly in request order whatever order the callback answers in.
 * Exchanges handed to the callback and not yet answered are also on the server's pending list.
 * When their connection dies they stay there as orphans (conn == NULL), and when the server is
 * destroyed they lose their server too (h == NULL); loyd_httpd_respond() then only frees them.
 *
 * Bounds.  Request line + headers are counted against max_header_bytes as they are parsed
 * (431); bodies against max_body_bytes, decided from Content-Length before reading it, or while
 * decoding chunks (413).  A connection stops reading (and pauses http_parser, keeping the rest of
 * the current read in `held`, at most one read buffer) when its unanswered plus unsent responses
 * reach max_pipelined, so neither a fast pipeliner nor a client that never reads its answers
 * makes memory grow.  Over max_connections a connection gets 503; more than BUSY_MAX such
 * rejections in flight are shed without an answer.
 *
 * Timers.  One per connection, in one of four modes: READ (a request is being received, or a new
 * connection has not completed its first request: the deadline does not move while bytes
 * trickle in), NONE (waiting for the callback's answers), IDLE (nothing in progress; also covers
 * responses stuck in a client that does not read), LINGER (after the last response).
 *
 * Closing.  After the last response on a connection (Connection: close, HTTP/1.0, an error, EOF,
 * drain) the server shuts down its write side and keeps reading and discarding for a short
 * while, so a client still sending (an oversized body, say) reads our answer instead of a reset.
 */
#include "httpd.h"

#include <errno.h>
#include <inttypes.h>
#include <limits.h>
#include <stdarg.h>
#include <stdbool.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <strings.h>

#include <http_parser.h>

#include "log.h"
#include "util.h"

#define READ_BUF_SIZE (64u * 1024u)
#define LISTEN_BACKLOG 511
#define LINGER_MS 1000u /* how long to discard input after the last response */
#define LINGER_MAX_BYTES (256u * 1024u)
#define BUSY_MAX 64u /* 503 answers in flight; beyond, close without one */
#define ACCEPT_LOG_EVERY_MS 1000u

enum tmode { T_NONE, T_READ, T_IDLE, T_LINGER };
enum hstate { HS_URL, HS_FIELD, HS_VALUE };

struct listener {
    uv_tcp_t tcp; /* first: the close callback frees the listener */
    struct loyd_httpd *h;
    struct listener *next;
};

struct conn;

struct loyd_http_exchange {
    struct conn *conn;                          /* NULL once orphaned */
    struct loyd_httpd *h;                       /* NULL once the server is destroyed */
    struct loyd_http_exchange *next;            /* connection queue, request order */
    struct loyd_http_exchange *p_prev, *p_next; /* server's pending list */
    struct loyd_http_request req;               /* points into raw, hdrs and body */

    struct loyd_buf raw; /* target\0 name\0 value\0 ...: bounded by max_header_bytes */
    size_t *hoff;        /* name and value offsets into raw, two per header */
    size_t n_hoff, cap_hoff;
    struct loyd_http_header *hdrs;
    char *body; /* from outside: allocated with plain malloc, failure answered 503 */
    size_t body_len, body_cap;
    enum hstate hstate;
    bool headers_done, keep_alive, head, delivered, answered;

    char *resp_head; /* status line, headers, Content-Length; Connection is added on write */
    size_t resp_head_len;
    char *resp_body;
    size_t resp_body_len;

    char remote[64];
};

struct conn {
    uv_tcp_t tcp; /* first: handle->data leads back here for both handles */
    uv_timer_t timer;
    uv_shutdown_t shutdown_req;
    struct loyd_httpd *h;
    struct conn *prev, *next;
    http_parser parser;

    struct loyd_http_exchange *cur; /* request being received, not in the queue */
    struct loyd_http_exchange *q_head, *q_tail;
    unsigned q_len;        /* complete requests (and rejections) not yet written */
    unsigned writes;       /* uv_write requests in flight */
    unsigned n_unanswered; /* delivered to the callback, not yet answered */
    uint64_t n_done;       /* requests completed on this connection */
    size_t hdr_bytes;
    size_t lingered;
    struct loyd_buf held; /* unparsed input kept while paused */

    int reject_status; /* set by a parser callback, acted on after http_parser_execute */
    char reject_msg[128];

    int handles; /* open uv handles; freed at 0 */
    enum tmode tmode;
    bool busy;         /* over max_connections: gets 503 */
    bool closing;      /* uv_close called */
    bool reading;      /* uv_read_start active */
    bool in_parse;     /* inside http_parser_execute: no re-entrant parsing */
    bool paused;       /* stopped for max_pipelined; held has the rest */
    bool read_done;    /* no further requests will be parsed */
    bool eof;          /* the client closed its side */
    bool shutting;     /* uv_shutdown issued */
    bool lingering;    /* discarding input until EOF or LINGER_MS */
    bool continue_due; /* owes the current request "100 Continue" */
    char remote[64];
};

struct wreq {
    uv_write_t req;
    char *head, *body; /* owned; NULL for the static 100 Continue */
};

struct loyd_httpd {
    uv_timer_t kick; /* first; never started: closed last, its close callback ends close() */
    uv_loop_t *loop;
    struct loyd_httpd_limits lim;
    loyd_httpd_cb cb;
    void *arg;
    struct listener *listeners;
    struct conn *conns;                 /* every connection not yet closing */
    struct loyd_http_exchange *pending; /* delivered and unanswered, orphans included */
    size_t n_pending;
    size_t n_conns, n_busy; /* not yet closing */
    size_t n_objects;       /* listeners and connections whose handles are not closed yet */
    struct loyd_httpd_stats stats;
    uint64_t last_accept_log;
    bool draining, closing, closed;
    void (*close_cb)(void *arg);
    void *close_arg;
    /* One read buffer for every connection: libuv fills it and calls on_read at once, and
     * anything that must outlive on_read is copied out (held, raw, body). */
    char rbuf[READ_BUF_SIZE];
};

static const char CONTINUE_100[] = "HTTP/1.1 100 Continue\r\n\r\n";
static const char CONN_CLOSE[] = "Connection: close\r\n\r\n";
static const char CONN_KEEP[] = "Connection: keep-alive\r\n\r\n";

static void conn_after(struct conn *c);
static void conn_close(struct conn *c);
static void conn_timer_update(struct conn *c);
static void on_kick_closed(uv_handle_t *handle);

/* ---- limits ------------------------------------------------------------------------------ */

void loyd_httpd_limits_default(struct loyd_httpd_limits *l)
{
    *l = (struct loyd_httpd_limits){
        .max_header_bytes = 16 * 1024,
        .max_body_bytes = 1024 * 1024,
        .max_connections = 10000,
        .idle_timeout_ms = 30000,
        .read_timeout_ms = 10000,
        .max_pipelined = 16,
    };
}

static void limits_fill(struct loyd_httpd_limits *dst, const struct loyd_httpd_limits *src)
{
    struct loyd_httpd_limits d;

    loyd_httpd_limits_default(&d);
    if (src == NULL) {
        *dst = d;
        return;
    }
    dst->max_header_bytes = src->max_header_bytes ? src->max_header_bytes : d.max_header_bytes;
    dst->max_body_bytes = src->max_body_bytes ? src->max_body_bytes : d.max_body_bytes;
    dst->max_connections = src->max_connections ? src->max_connections : d.max_connections;
    dst->idle_timeout_ms = src->idle_timeout_ms ? src->idle_timeout_ms : d.idle_timeout_ms;
    dst->read_timeout_ms = src->read_timeout_ms ? src->read_timeout_ms : d.read_timeout_ms;
    dst->max_pipelined = src->max_pipelined ? src->max_pipelined : d.max_pipelined;
}

/* ---- exchanges --------------------------------------------------------------------------- */

static struct loyd_http_exchange *ex_new(struct conn *c)
{
    struct loyd_http_exchange *ex = loyd_xcalloc(1, sizeof(*ex));

    ex->conn = c;
    ex->h = c->h;
    memcpy(ex->remote, c->remote, sizeof(ex->remote));
    ex->req.remote_addr = ex->remote;
    ex->req.query = "";
    ex->req.path = "";
    ex->req.body = "";
    return ex;
}

static void ex_free_request(struct loyd_http_exchange *ex)
{
    loyd_buf_free(&ex->raw);
    free(ex->hoff);
    free(ex->hdrs);
    free(ex->body);
    ex->hoff = NULL;
    ex->hdrs = NULL;
    ex->body = NULL;
    ex->n_hoff = ex->cap_hoff = 0;
    memset(&ex->req, 0, sizeof(ex->req));
}

static void ex_free(struct loyd_http_exchange *ex)
{
    ex_free_request(ex);
    free(ex->resp_head);
    free(ex->resp_body);
    free(ex);
}

static void pending_unlink(struct loyd_httpd *h, struct loyd_http_exchange *ex)
{
    if (ex->p_prev != NULL)
        ex->p_prev->p_next = ex->p_next;
    else
        h->pending = ex->p_next;
    if (ex->p_next != NULL)
        ex->p_next->p_prev = ex->p_prev;
    ex->p_prev = ex->p_next = NULL;
    h->n_pending--;
}

static void queue_push(struct conn *c, struct loyd_http_exchange *ex)
{
    ex->next = NULL;
    if (c->q_tail != NULL)
        c->q_tail->next = ex;
    else
        c->q_head = ex;
    c->q_tail = ex;
    c->q_len++;
}

/* A header line from the caller is sent only if it cannot break the framing. */
static bool header_line_ok(const char *line, size_t *name_len)
{
    const char *colon = strchr(line, ':');

    if (colon == NULL || colon == line || strpbrk(line, "\r\n") != NULL)
        return false;
    for (const char *p = line; p < colon; p++)
        if (*p <= ' ' || *p >= 127 || strchr("\"(),/:;<=>?@[\\]{}", *p) != NULL)
            return false;
    *name_len = (size_t)(colon - line);
    return true;
}

static bool name_is(const char *name, size_t len, const char *want)
{
    return strlen(want) == len && strncasecmp(name, want, len) == 0;
}

/* Builds the response into ex (copying everything, so headers and body may point into the
 * request).  The Connection line and the blank line are added when it is written. */
static void build_response(struct loyd_http_exchange *ex, int status, const char *const *headers,
                           const char *body, size_t len)
{
    struct loyd_buf b = {0};

    if (status < 200 || status > 999) {
        loyd_log_warn(HTTP, "handler answered status %d; sending 500", status);
        status = 500;
    }
    const char *reason = http_status_str((enum http_status)status);
    if (reason == NULL || reason[0] == '<')
        reason = "Unknown";
    loyd_buf_printf(&b, "HTTP/1.1 %d %s\r\n", status, reason);
    for (size_t i = 0; headers != NULL && headers[i] != NULL; i++) {
        size_t nlen;
        if (!header_line_ok(headers[i], &nlen)) {
            loyd_log_warn(HTTP, "dropping malformed response header line %zu", i);
            continue;
        }
        if (name_is(headers[i], nlen, "content-length") ||
            name_is(headers[i], nlen, "connection") ||
            name_is(headers[i], nlen, "transfer-encoding"))
            continue;
        loyd_buf_puts(&b, headers[i]);
        loyd_buf_puts(&b, "\r\n");
    }
    /* RFC 9110 8.6: no Content-Length in a 204; a HEAD or 304 answer states the length the
     * body would have had, without the body. */
    if (status != 204)
        loyd_buf_printf(&b, "Content-Length: %zu\r\n", len);
    free(ex->resp_head);
    free(ex->resp_body);
    ex->resp_head = b.data;
    ex->resp_head_len = b.len;
    ex->resp_body = NULL;
    ex->resp_body_len = 0;
    if (!ex->head && status != 204 && status != 304 && len > 0) {
        ex->resp_body = loyd_xmalloc(len);
        memcpy(ex->resp_body, body, len);
        ex->resp_body_len = len;
    }
}

/* ---- writing ----------------------------------------------------------------------------- */

static void on_write(uv_write_t *req, int status)
{
    struct wreq *w = (struct wreq *)req;
    struct conn *c = req->handle->data;

    free(w->head);
    free(w->body);
    free(w);
    c->writes--;
    if (c->closing)
        return;
    if (status < 0) {
        loyd_log_debug(HTTP, "write to %s: %s", c->remote, uv_strerror(status));
        conn_close(c);
        return;
    }
    conn_after(c);
}

/* Takes ownership of w (and what it points to) whatever happens. */
static void conn_write(struct conn *c, struct wreq *w, uv_buf_t *bufs, unsigned n)
{
    int rc = uv_write(&w->req, (uv_stream_t *)&c->tcp, bufs, n, on_write);

    if (rc != 0) {
        loyd_log_debug(HTTP, "write to %s: %s", c->remote, uv_strerror(rc));
        free(w->head);
        free(w->body);
        free(w);
        conn_close(c);
        return;
    }
    c->writes++;
}

/* Writes every answered response at the head of the queue, in order, then a 100 Continue the
 * request being received is owed once nothing is queued before it. */
static void conn_flush(struct conn *c)
{
    struct loyd_http_exchange *ex;

    while (!c->closing && (ex = c->q_head) != NULL && ex->answered) {
        c->q_head = ex->next;
        if (c->q_head == NULL)
            c->q_tail = NULL;
        c->q_len--;
        /* The last response says so: no further request will be read after it. */
        bool last = !ex->keep_alive || (c->read_done && c->q_head == NULL && c->cur == NULL);
        if (last)
            c->read_done = true;
        struct wreq *w = loyd_xcalloc(1, sizeof(*w));
        const char *cl = last ? CONN_CLOSE : CONN_KEEP;
        uv_buf_t bufs[3] = {
            uv_buf_init(ex->resp_head, (unsigned)ex->resp_head_len),
            uv_buf_init((char *)cl, (unsigned)strlen(cl)),
            uv_buf_init(ex->resp_body, (unsigned)ex->resp_body_len),
        };
        w->head = ex->resp_head;
        w->body = ex->resp_body;
        ex->resp_head = ex->resp_body = NULL;
        ex_free(ex);
        conn_write(c, w, bufs, bufs[2].len > 0 ? 3 : 2);
    }
    if (!c->closing && c->continue_due && c->q_head == NULL && c->cur != NULL) {
        c->continue_due = false;
        struct wreq *w = loyd_xcalloc(1, sizeof(*w));
        uv_buf_t buf = uv_buf_init((char *)CONTINUE_100, sizeof(CONTINUE_100) - 1);
        conn_write(c, w, &buf, 1);
    }
}

/* ---- connection life --------------------------------------------------------------------- */

static void obj_gone(struct loyd_httpd *h)
{
    LOYD_REQUIRE(h->n_objects > 0);
    h->n_objects--;
    if (h->closing && h->n_objects == 0 && !uv_is_closing((uv_handle_t *)&h->kick))
        uv_close((uv_handle_t *)&h->kick, on_kick_closed);
}

static void on_conn_handle_closed(uv_handle_t *handle)
{
    struct conn *c = handle->data;
    struct loyd_httpd *h = c->h;

    if (--c->handles > 0)
        return;
    loyd_buf_free(&c->held);
    free(c);
    obj_gone(h);
}

static void conn_read_stop(struct conn *c)
{
    if (c->reading) {
        uv_read_stop((uv_stream_t *)&c->tcp);
        c->reading = false;
    }
}

static void on_alloc(uv_handle_t *handle, size_t suggested, uv_buf_t *buf)
{
    struct conn *c = handle->data;
    (void)suggested;
    *buf = uv_buf_init(c->h->rbuf, sizeof(c->h->rbuf));
}

static void on_read(uv_stream_t *s, ssize_t nread, const uv_buf_t *buf);

static void conn_read_start(struct conn *c)
{
    if (c->reading || c->closing)
        return;
    int rc = uv_read_start((uv_stream_t *)&c->tcp, on_alloc, on_read);
    if (rc != 0) {
        loyd_log_debug(HTTP, "read from %s: %s", c->remote, uv_strerror(rc));
        conn_close(c);
        return;
    }
    c->reading = true;
}

/* Starts closing c; it is freed when both handles' close callbacks ran.  Safe anywhere,
 * including inside parser callbacks: the memory stays until the loop runs the callbacks. */
static void conn_close(struct conn *c)
{
    struct loyd_httpd *h = c->h;

    if (c->closing)
        return;
    c->closing = true;
    if (c->prev != NULL)
        c->prev->next = c->next;
    else
        h->conns = c->next;
    if (c->next != NULL)
        c->next->prev = c->prev;
    c->prev = c->next = NULL;
    if (c->busy)
        h->n_busy--;
    else
        h->n_conns--;

    if (c->cur != NULL) {
        ex_free(c->cur);
        c->cur = NULL;
    }
    struct loyd_http_exchange *ex = c->q_head;
    while (ex != NULL) {
        struct loyd_http_exchange *next = ex->next;
        if (ex->delivered && !ex->answered) {
            ex->conn = NULL; /* orphan: still pending, freed by respond */
            ex->next = NULL;
        } else {
            ex_free(ex);
        }
        ex = next;
    }
    c->q_head = c->q_tail = NULL;
    c->q_len = 0;
    c->n_unanswered = 0;
    loyd_buf_free(&c->held);
    c->reading = false;
    uv_timer_stop(&c->timer);
    uv_close((uv_handle_t *)&c->timer, on_conn_handle_closed);
    uv_close((uv_handle_t *)&c->tcp, on_conn_handle_closed);
}

static void on_timer(uv_timer_t *t)
{
    struct conn *c = t->data;

    switch (c->tmode) {
    case T_READ:
        loyd_log_debug(HTTP, "%s: request not received within %" PRIu64 " ms; closing", c->remote,
                       c->h->lim.read_timeout_ms);
        c->h->stats.timeouts++;
        break;
    case T_IDLE:
        loyd_log_debug(HTTP, "%s: idle for %" PRIu64 " ms; closing", c->remote,
                       c->h->lim.idle_timeout_ms);
        c->h->stats.timeouts++;
        break;
    case T_LINGER:
    case T_NONE:
        break;
    }
    conn_close(c);
}

static void conn_timer_update(struct conn *c)
{
    const struct loyd_httpd_limits *lim = &c->h->lim;
    enum tmode m;
    uint64_t ms = 0;

    if (c->closing)
        return;
    if (c->lingering) {
        m = T_LINGER;
        ms = LINGER_MS;
    } else if (c->shutting) {
        m = T_IDLE; /* the last responses are stuck in a client that does not read */
        ms = lim->idle_timeout_ms;
    } else if (c->cur != NULL || (c->n_done == 0 && !c->read_done)) {
        m = T_READ; /* a new connection's deadline runs from accept */
        ms = lim->read_timeout_ms;
    } else if (c->n_unanswered > 0) {
        m = T_NONE;
    } else {
        m = T_IDLE;
        ms = lim->idle_timeout_ms;
    }
    if (m == c->tmode)
        return; /* keep the running deadline: trickling bytes must not extend it */
    c->tmode = m;
    if (m == T_NONE)
        uv_timer_stop(&c->timer);
    else
        uv_timer_start(&c->timer, on_timer, ms, 0);
}

static void on_shutdown(uv_shutdown_t *req, int status)
{
    struct conn *c = req->handle->data;

    if (c->closing)
        return;
    if (status < 0 || c->eof) {
        conn_close(c);
        return;
    }
    c->lingering = true;
    c->lingered = 0;
    conn_read_start(c);
    conn_timer_update(c);
}

/* After the last response: shut the write side down (libuv waits for pending writes). */
static void conn_maybe_finish(struct conn *c)
{
    if (c->closing || c->shutting || !c->read_done || c->cur != NULL || c->q_head != NULL)
        return;
    if (c->eof && c->writes == 0) {
        conn_close(c);
        return;
    }
    c->shutting = true;
    conn_read_stop(c);
    int rc = uv_shutdown(&c->shutdown_req, (uv_stream_t *)&c->tcp, on_shutdown);
    if (rc != 0)
        conn_close(c);
}

static unsigned max_pipelined(const struct conn *c)
{
    return c->h->lim.max_pipelined;
}

/* ---- parsing ----------------------------------------------------------------------------- */

static void set_reject(struct conn *c, int status, const char *fmt, ...) LOYD_PRINTF(3, 4);
static void set_reject(struct conn *c, int status, const char *fmt, ...)
{
    va_list ap;

    if (c->reject_status != 0)
        return;
    c->reject_status = status;
    va_start(ap, fmt);
    vsnprintf(c->reject_msg, sizeof(c->reject_msg), fmt, ap);
    va_end(ap);
}

static int hdr_account(struct conn *c, size_t n)
{
    size_t max = c->h->lim.max_header_bytes;

    c->hdr_bytes += n;
    if (c->hdr_bytes > max) {
        set_reject(c, 431, "request headers exceed %zu bytes\n", max);
        return -1;
    }
    return 0;
}

static struct loyd_http_exchange *parsing(http_parser *p)
{
    struct conn *c = p->data;

    return c->closing || c->read_done || c->reject_status ? NULL : c->cur;
}

static int on_message_begin(http_parser *p)
{
    struct conn *c = p->data;

    if (c->closing || c->read_done || c->reject_status)
        return -1;
    LOYD_REQUIRE(c->cur == NULL); /* http_parser completes a message before beginning one */
    c->cur = ex_new(c);
    c->hdr_bytes = 0;
    conn_timer_update(c);
    return 0;
}

static int on_url(http_parser *p, const char *at, size_t len)
{
    struct loyd_http_exchange *ex = parsing(p);

    if (ex == NULL || hdr_account(p->data, len) != 0)
        return -1;
    loyd_buf_append(&ex->raw, at, len);
    return 0;
}

static void hoff_push(struct loyd_http_exchange *ex, size_t off)
{
    if (ex->n_hoff == ex->cap_hoff) {
        ex->cap_hoff = ex->cap_hoff ? ex->cap_hoff * 2 : 16;
        ex->hoff = loyd_xrealloc(ex->hoff, ex->cap_hoff * sizeof(*ex->hoff));
    }
    ex->hoff[ex->n_hoff++] = off;
}

static int on_header_field(http_parser *p, const char *at, size_t len)
{
    struct loyd_http_exchange *ex = parsing(p);

    if (ex == NULL)
        return -1;
    /* Each header costs ": " and CRLF besides its name and value. */
    if (hdr_account(p->data, len + (ex->hstate != HS_FIELD ? 4 : 0)) != 0)
        return -1;
    if (ex->headers_done)
        return 0; /* chunked trailers: counted, not kept (raw must not move any more) */
    if (ex->hstate != HS_FIELD) {
        loyd_buf_append(&ex->raw, "", 1); /* ends the target or the previous value */
        hoff_push(ex, ex->raw.len);
        ex->hstate = HS_FIELD;
    }
    loyd_buf_append(&ex->raw, at, len);
    return 0;
}

static int on_header_value(http_parser *p, const char *at, size_t len)
{
    struct loyd_http_exchange *ex = parsing(p);

    if (ex == NULL || hdr_account(p->data, len) != 0)
        return -1;
    if (ex->headers_done)
        return 0;
    if (ex->hstate != HS_VALUE) {
        loyd_buf_append(&ex->raw, "", 1);
        hoff_push(ex, ex->raw.len);
        ex->hstate = HS_VALUE;
    }
    loyd_buf_append(&ex->raw, at, len);
    return 0;
}

/* Splits the request target in place into path and query (the fragment is dropped). */
static int split_target(struct loyd_http_exchange *ex, size_t url_len)
{
    char *url = ex->raw.data;
    struct http_parser_url u;

    if (url_len == 1 && url[0] == '*') {
        ex->req.path = url;
        return 0;
    }
    http_parser_url_init(&u);
    if (http_parser_parse_url(url, url_len, 0, &u) != 0)
        return -1;
    char *path = NULL, *query = NULL;
    if (u.field_set & (1u << UF_PATH))
        path = url + u.field_data[UF_PATH].off;
    if (u.field_set & (1u << UF_QUERY))
        query = url + u.field_data[UF_QUERY].off;
    /* Terminate each part where it ends ('?', '#' or the end): the query starts after the '?'
     * that ends the path, so the cuts never overlap. */
    if (path != NULL)
        path[u.field_data[UF_PATH].len] = '\0';
    if (query != NULL)
        query[u.field_data[UF_QUERY].len] = '\0';
    ex->req.path = path != NULL ? path : "/";
    ex->req.query = query != NULL ? query : "";
    return 0;
}

static int on_headers_complete(http_parser *p)
{
    struct conn *c = p->data;
    struct loyd_http_exchange *ex = parsing(p);
    const struct loyd_httpd_limits *lim = &c->h->lim;

    if (ex == NULL)
        return -1;
    if (ex->hstate == HS_FIELD) /* a name without a value: keep it with "" */
        loyd_buf_append(&ex->raw, "", 1), hoff_push(ex, ex->raw.len);
    size_t url_len = ex->hstate == HS_URL ? ex->raw.len : strlen(ex->raw.data);
    loyd_buf_append(&ex->raw, "", 1); /* ends the target or the last value */
    ex->headers_done = true;
    ex->req.method = http_method_str((enum http_method)p->method);
    if (hdr_account(c, strlen(ex->req.method) + 12) != 0)
        return -1;
    if (p->http_major != 1) {
        set_reject(c, 400, "unsupported HTTP version %u.%u\n", p->http_major, p->http_minor);
        return -1;
    }
    if (p->upgrade || p->method == HTTP_CONNECT) {
        set_reject(c, 400, "protocol upgrade and CONNECT are not supported\n");
        return -1;
    }
    if (url_len == 0 || split_target(ex, url_len) != 0) {
        set_reject(c, 400, "malformed request target\n");
        return -1;
    }

    size_t n = ex->n_hoff / 2;
    bool expect_continue = false;
    ex->hdrs = loyd_xcalloc(n ? n : 1, sizeof(*ex->hdrs));
    for (size_t i = 0; i < n; i++) {
        ex->hdrs[i].name = ex->raw.data + ex->hoff[2 * i];
        ex->hdrs[i].value = ex->raw.data + ex->hoff[2 * i + 1];
        if (strcasecmp(ex->hdrs[i].name, "expect") == 0 &&
            strcasecmp(ex->hdrs[i].value, "100-continue") == 0)
            expect_continue = true;
    }
    ex->req.headers = ex->hdrs;
    ex->req.n_headers = n;
    ex->head = p->method == HTTP_HEAD;

    bool chunked = (p->flags & F_CHUNKED) != 0;
    bool has_length = !chunked && p->content_length != ULLONG_MAX && p->content_length > 0;
    if (has_length) {
        if (p->content_length > lim->max_body_bytes) {
            set_reject(c, 413, "request body exceeds %zu bytes\n", lim->max_body_bytes);
            return -1;
        }
        ex->body_cap = (size_t)p->content_length + 1;
        ex->body = malloc(ex->body_cap);
        if (ex->body == NULL) {
            ex->body_cap = 0;
            set_reject(c, 503, "server out of memory\n");
            return -1;
        }
    }
    /* Only HTTP/1.1 clients wait for it (RFC 9110 10.1.1). */
    if (expect_continue && p->http_minor >= 1 && (has_length || chunked))
        c->continue_due = true;
    return 0;
}

static int on_body(http_parser *p, const char *at, size_t len)
{
    struct conn *c = p->data;
    struct loyd_http_exchange *ex = parsing(p);
    size_t max = c->h->lim.max_body_bytes;

    if (ex == NULL)
        return -1;
    if (len > max || ex->body_len > max - len) {
        set_reject(c, 413, "request body exceeds %zu bytes\n", max);
        return -1;
    }
    if (ex->body_len + len + 1 > ex->body_cap) {
        size_t cap = ex->body_cap ? ex->body_cap : 4096;
        while (cap < ex->body_len + len + 1)
            cap *= 2;
        if (cap > max + 1)
            cap = max + 1;
        char *nb = realloc(ex->body, cap);
        if (nb == NULL) {
            set_reject(c, 503, "server out of memory\n");
            return -1;
        }
        ex->body = nb;
        ex->body_cap = cap;
    }
    memcpy(ex->body + ex->body_len, at, len);
    ex->body_len += len;
    return 0;
}

static int on_message_complete(http_parser *p)
{
    struct conn *c = p->data;
    struct loyd_httpd *h = c->h;
    struct loyd_http_exchange *ex = parsing(p);

    if (ex == NULL)
        return -1;
    c->cur = NULL;
    c->continue_due = false; /* the body came without waiting for it */
    c->n_done++;
    if (ex->body != NULL) {
        ex->body[ex->body_len] = '\0';
        ex->req.body = ex->body;
        ex->req.body_len = ex->body_len;
    }
    ex->keep_alive = http_should_keep_alive(p) && !h->draining;
    if (!ex->keep_alive)
        c->read_done = true;
    queue_push(c, ex);
    ex->delivered = true;
    ex->p_next = h->pending;
    if (h->pending != NULL)
        h->pending->p_prev = ex;
    h->pending = ex;
    h->n_pending++;
    c->n_unanswered++;
    h->stats.requests++;
    conn_timer_update(c);

    h->cb(h->arg, ex, &ex->req);

    if (c->closing)
        return -1;
    if (c->read_done) {
        http_parser_pause(p, 1); /* what follows is not for us */
    } else if (c->q_len + c->writes >= max_pipelined(c)) {
        http_parser_pause(p, 1);
        c->paused = true;
    }
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

/* Queues the rejection set_reject() recorded (or status/msg) and stops taking input. */
static void conn_reject(struct conn *c)
{
    struct loyd_httpd *h = c->h;
    int status = c->reject_status;

    switch (status) {
    case 400:
        h->stats.status_400++;
        break;
    case 413:
        h->stats.status_413++;
        break;
    case 431:
        h->stats.status_431++;
        break;
    default:
        break;
    }
    if (status != 503)
        loyd_log_debug(HTTP, "%s: %d %.*s", c->remote, status, (int)strcspn(c->reject_msg, "\n"),
                       c->reject_msg);
    if (c->cur != NULL) {
        ex_free(c->cur);
        c->cur = NULL;
    }
    struct loyd_http_exchange *ex = ex_new(c);
    build_response(ex, status, (const char *const[]){"Content-Type: text/plain", NULL},
                   c->reject_msg, strlen(c->reject_msg));
    ex->answered = true;
    ex->keep_alive = false;
    queue_push(c, ex);
    c->read_done = true;
    c->paused = false;
    c->continue_due = false;
    c->reject_status = 0;
    loyd_buf_free(&c->held);
    conn_read_stop(c);
}

static void conn_feed(struct conn *c, const char *data, size_t len)
{
    c->in_parse = true;
    size_t n = http_parser_execute(&c->parser, &parser_settings, data, len);
    c->in_parse = false;

    if (c->closing)
        return;
    if (c->reject_status != 0) {
        conn_reject(c);
        return;
    }
    if (c->read_done) {
        conn_read_stop(c); /* Connection: close or drain: the rest is not for us */
        return;
    }
    enum http_errno e = HTTP_PARSER_ERRNO(&c->parser);
    if (e == HPE_PAUSED) {
        if (n < len)
            loyd_buf_append(&c->held, data + n, len - n);
        conn_read_stop(c);
        return;
    }
    if (e == HPE_HEADER_OVERFLOW) {
        set_reject(c, 431, "request headers exceed %zu bytes\n", c->h->lim.max_header_bytes);
    } else if (e != HPE_OK) {
        set_reject(c, 400, "malformed request: %s\n", http_errno_description(e));
    } else if (n != len) {
        set_reject(c, 400, "malformed request\n");
    } else {
        return;
    }
    conn_reject(c);
}

/* Reading was paused for max_pipelined: parse what was held, then read again. */
static bool conn_resume(struct conn *c)
{
    if (c->closing || c->in_parse || !c->paused || c->read_done)
        return false;
    if (c->q_len + c->writes >= max_pipelined(c))
        return false;
    c->paused = false;
    http_parser_pause(&c->parser, 0);
    if (c->held.len > 0) {
        struct loyd_buf b = c->held;
        c->held = (struct loyd_buf){0};
        conn_feed(c, b.data, b.len);
        loyd_buf_free(&b);
    }
    if (!c->paused && !c->read_done)
        conn_read_start(c);
    return true;
}

/* Moves c forward after anything changed: write what can be written, resume reading, finish. */
static void conn_after(struct conn *c)
{
    if (c->closing)
        return;
    conn_flush(c);
    if (conn_resume(c))
        conn_flush(c);
    conn_maybe_finish(c);
    conn_timer_update(c);
}

static void conn_on_eof(struct conn *c)
{
    c->eof = true;
    conn_read_stop(c);
    if (c->lingering) {
        conn_close(c);
        return;
    }
    /* A half-closed client may still read: answer what it sent completely, drop the rest. */
    if (c->cur != NULL) {
        ex_free(c->cur);
        c->cur = NULL;
    }
    c->continue_due = false;
    c->read_done = true;
    conn_after(c);
}

static void on_read(uv_stream_t *s, ssize_t nread, const uv_buf_t *buf)
{
    struct conn *c = s->data;

    if (c->closing || nread == 0)
        return;
    if (nread < 0) {
        if (nread == UV_EOF) {
            conn_on_eof(c);
        } else {
            loyd_log_debug(HTTP, "read from %s: %s", c->remote, uv_strerror((int)nread));
            conn_close(c);
        }
        return;
    }
    if (c->lingering) {
        c->lingered += (size_t)nread;
        if (c->lingered > LINGER_MAX_BYTES)
            conn_close(c);
        return;
    }
    if (c->read_done || c->paused)
        return; /* not reached: reading stops in both states */
    conn_feed(c, buf->base, (size_t)nread);
    conn_after(c);
}

/* ---- accepting --------------------------------------------------------------------------- */

static void peer_name(struct conn *c)
{
    struct sockaddr_storage ss;
    int len = sizeof(ss);

    snprintf(c->remote, sizeof(c->remote), "?");
    if (uv_tcp_getpeername(&c->tcp, (struct sockaddr *)&ss, &len) != 0)
        return;
    if (ss.ss_family == AF_INET)
        uv_ip4_name((struct sockaddr_in *)&ss, c->remote, sizeof(c->remote));
    else if (ss.ss_family == AF_INET6)
        uv_ip6_name((struct sockaddr_in6 *)&ss, c->remote, sizeof(c->remote));
}

static void log_accept_error(struct loyd_httpd *h, int err)
{
    uint64_t now = uv_now(h->loop);

    /* Out of descriptors repeats on every loop turn: say it once a second. */
    if (h->last_accept_log != 0 && now - h->last_accept_log < ACCEPT_LOG_EVERY_MS)
        return;
    h->last_accept_log = now;
    loyd_log_err(HTTP, "accept: %s", uv_strerror(err));
}

static void on_connection(uv_stream_t *server, int status)
{
    struct listener *l = (struct listener *)server;
    struct loyd_httpd *h = l->h;

    if (status < 0) {
        log_accept_error(h, status);
        return;
    }
    struct conn *c = loyd_xcalloc(1, sizeof(*c));
    c->h = h;
    LOYD_REQUIRE(uv_tcp_init(h->loop, &c->tcp) == 0); /* AF_UNSPEC: creates no socket */
    LOYD_REQUIRE(uv_timer_init(h->loop, &c->timer) == 0);
    c->tcp.data = c->timer.data = c;
    c->handles = 2;
    h->n_objects++;
    c->next = h->conns;
    if (h->conns != NULL)
        h->conns->prev = c;
    h->conns = c;
    c->busy = h->n_conns >= h->lim.max_connections;
    if (c->busy)
        h->n_busy++;
    else
        h->n_conns++;

    int rc = uv_accept(server, (uv_stream_t *)&c->tcp);
    if (rc != 0) {
        log_accept_error(h, rc);
        conn_close(c);
        return;
    }
    http_parser_init(&c->parser, HTTP_REQUEST);
    c->parser.data = c;
    peer_name(c);
    uv_tcp_nodelay(&c->tcp, 1);
    if (c->busy) {
        h->stats.rejected_busy++;
        if (h->n_busy > BUSY_MAX) {
            conn_close(c);
            return;
        }
        loyd_log_debug(HTTP, "%s: over %u connections; answering 503", c->remote,
                       h->lim.max_connections);
        set_reject(c, 503, "too many connections\n");
        conn_reject(c);
        conn_after(c);
        return;
    }
    h->stats.accepted++;
    conn_read_start(c);
    conn_timer_update(c);
}

static void on_listener_closed(uv_handle_t *handle)
{
    struct listener *l = (struct listener *)handle;
    struct loyd_httpd *h = l->h;

    free(l);
    obj_gone(h);
}

static void close_listeners(struct loyd_httpd *h)
{
    while (h->listeners != NULL) {
        struct listener *l = h->listeners;
        h->listeners = l->next;
        uv_close((uv_handle_t *)&l->tcp, on_listener_closed);
    }
}

/* ---- public API -------------------------------------------------------------------------- */

int loyd_httpd_create(uv_loop_t *loop, const struct loyd_httpd_limits *lim, loyd_httpd_cb cb,
                      void *arg, struct loyd_httpd **out)
{
    struct loyd_httpd *h = loyd_xcalloc(1, sizeof(*h));

    LOYD_REQUIRE(loop != NULL && cb != NULL && out != NULL);
    LOYD_REQUIRE(uv_timer_init(loop, &h->kick) == 0);
    h->kick.data = h;
    h->loop = loop;
    h->cb = cb;
    h->arg = arg;
    limits_fill(&h->lim, lim);
    *out = h;
    return 0;
}

int loyd_httpd_listen(struct loyd_httpd *h, const char *host, int port, int *bound_port)
{
    struct sockaddr_storage ss;
    int rc;

    if (h->closing || h->draining || host == NULL || port < 0 || port > 65535)
        return -EINVAL;
    memset(&ss, 0, sizeof(ss));
    if (strchr(host, ':') != NULL)
        rc = uv_ip6_addr(host, port, (struct sockaddr_in6 *)&ss);
    else
        rc = uv_ip4_addr(host, port, (struct sockaddr_in *)&ss);
    if (rc != 0) {
        loyd_log_err(HTTP, "listen: bad address \"%s\"", host);
        return -EINVAL;
    }
    struct listener *l = loyd_xcalloc(1, sizeof(*l));
    l->h = h;
    rc = uv_tcp_init(h->loop, &l->tcp);
    if (rc != 0) {
        free(l);
        return rc;
    }
    h->n_objects++;
    rc = uv_tcp_bind(&l->tcp, (const struct sockaddr *)&ss, 0);
    if (rc == 0)
        rc = uv_listen((uv_stream_t *)&l->tcp, LISTEN_BACKLOG, on_connection);
    if (rc != 0)
        goto fail;
    struct sockaddr_storage bound;
    int len = sizeof(bound);
    rc = uv_tcp_getsockname(&l->tcp, (struct sockaddr *)&bound, &len);
    if (rc != 0)
        goto fail;
    int got = ntohs(bound.ss_family == AF_INET6 ? ((struct sockaddr_in6 *)&bound)->sin6_port
                                                : ((struct sockaddr_in *)&bound)->sin_port);
    if (bound_port != NULL)
        *bound_port = got;
    l->next = h->listeners;
    h->listeners = l;
    loyd_log_info(HTTP, "listening on %s port %d", host, got);
    return 0;
fail:
    loyd_log_err(HTTP, "listen on %s port %d: %s", host, port, uv_strerror(rc));
    uv_close((uv_handle_t *)&l->tcp, on_listener_closed);
    return rc;
}

void loyd_httpd_set_limits(struct loyd_httpd *h, const struct loyd_httpd_limits *lim)
{
    limits_fill(&h->lim, lim);
    /* A raised max_pipelined may let paused connections read again. */
    for (struct conn *c = h->conns, *next; c != NULL; c = next) {
        next = c->next;
        conn_after(c);
    }
}

void loyd_httpd_respond(struct loyd_http_exchange *ex, int status, const char *const *headers,
                        const char *body, size_t len)
{
    LOYD_REQUIRE(ex != NULL && ex->delivered && !ex->answered); /* answer exactly once */
    LOYD_REQUIRE(body != NULL || len == 0);
    LOYD_REQUIRE(len < UINT_MAX); /* uv_buf_t lengths are unsigned int */
    if (ex->h != NULL)
        pending_unlink(ex->h, ex);
    struct conn *c = ex->conn;
    if (c == NULL) {
        ex_free(ex); /* orphan: the client or the server is gone */
        return;
    }
    build_response(ex, status, headers, body, len); /* copies first: body may be req->body */
    ex_free_request(ex);
    ex->answered = true;
    c->n_unanswered--;
    conn_after(c);
}

void loyd_httpd_stop_accepting(struct loyd_httpd *h)
{
    close_listeners(h);
    if (h->draining)
        return;
    h->draining = true;
    /* Connections between requests finish now; the others after their current requests. */
    for (struct conn *c = h->conns, *next; c != NULL; c = next) {
        next = c->next;
        if (c->cur == NULL && !c->read_done) {
            c->read_done = true;
            c->paused = false;
            loyd_buf_free(&c->held);
            conn_read_stop(c);
            conn_after(c);
        }
    }
}

size_t loyd_httpd_pending(const struct loyd_httpd *h)
{
    return h->n_pending;
}

void loyd_httpd_stats(const struct loyd_httpd *h, struct loyd_httpd_stats *out)
{
    *out = h->stats;
    out->open_connections = h->n_conns;
}

static void on_kick_closed(uv_handle_t *handle)
{
    struct loyd_httpd *h = handle->data;

    h->closed = true;
    if (h->close_cb != NULL)
        h->close_cb(h->close_arg);
}

void loyd_httpd_close(struct loyd_httpd *h, void (*cb)(void *arg), void *arg)
{
    LOYD_REQUIRE(!h->closing); /* close once */
    h->closing = true;
    h->draining = true;
    h->close_cb = cb;
    h->close_arg = arg;
    close_listeners(h);
    while (h->conns != NULL)
        conn_close(h->conns);
    if (h->n_objects == 0)
        uv_close((uv_handle_t *)&h->kick, on_kick_closed);
}

void loyd_httpd_destroy(struct loyd_httpd *h)
{
    if (h == NULL)
        return;
    LOYD_REQUIRE(h->closed); /* loyd_httpd_close's callback has run */
    for (struct loyd_http_exchange *ex = h->pending; ex != NULL; ex = ex->p_next)
        ex->h = NULL;
    free(h);
}
