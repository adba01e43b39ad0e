/* SPDX-License-Identifier: MIT */
/*
 * Tests for core/httpd.c.  Each test owns a fresh uv_loop_t running in a second thread with the
 * server on 127.0.0.1 port 0; the test thread is a raw-socket client (tests/support/
 * httpd_client.c) that sends exact bytes.  The test thread touches server state only through
 * fx_call(), which runs a function on the loop thread and waits for it.  Every test ends with
 * loyd_httpd_close() and proves uv_loop_close() returns 0.
 */
#include <check.h>
#include <errno.h>
#include <pthread.h>
#include <strings.h>
#include <sys/socket.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <time.h>
#include <unistd.h>

#include "httpd.h"
#include "log.h"
#include "util.h"
#include "httpd_client.h"

#define MAX_HELD 256

enum mode {
    MODE_ECHO,     /* answer at once with a description of the request */
    MODE_DEFER,    /* keep the exchange; the test answers it through fx_call */
    MODE_REVERSE3, /* keep three, then answer them newest first from a timer */
    MODE_BIG,      /* answer at once with a 256 KiB body */
};

struct fx {
    uv_loop_t loop;
    uv_async_t async;
    uv_timer_t timer;
    bool timer_open;
    pthread_t thr;
    pthread_mutex_t mu;
    pthread_cond_t cv;
    void (*call_fn)(struct fx *f, void *arg);
    void *call_arg;
    bool call_done, stop;

    struct loyd_httpd *h;
    struct loyd_httpd_limits lim;
    int port;
    enum mode mode;
    /* Loop thread only. */
    struct loyd_http_exchange *held[MAX_HELD];
    char held_path[MAX_HELD][64];
    size_t n_held;
    size_t max_pending;
    int answer_order[8];
    size_t n_answered;
    size_t n_calls;
};

static char big_body[256 * 1024];

/* ---- the handler (loop thread) ----------------------------------------------------------- */

static void echo(struct loyd_http_exchange *ex, const struct loyd_http_request *req)
{
    char *out = NULL;
    size_t len = 0;
    FILE *m = open_memstream(&out, &len);
    const char *x = "";

    for (size_t i = 0; i < req->n_headers; i++)
        if (strcasecmp(req->headers[i].name, "X-Test") == 0)
            x = req->headers[i].value;
    fprintf(m, "M=%s\nP=%s\nQ=%s\nR=%s\nN=%zu\nX=%s\nL=%zu\nB=%s", req->method, req->path,
            req->query, req->remote_addr, req->n_headers, x, req->body_len, req->body);
    fclose(m);
    /* Only test_simple_get checks that framing-breaking header lines are dropped (and logged). */
    bool evil = strncmp(req->path, "/hooks/", 7) == 0;
    const char *hdrs[] = {"Content-Type: text/plain", evil ? "X-Evil: a\r\nInjected: yes" : NULL,
                          "Content-Length: 999", NULL};
    loyd_httpd_respond(ex, 200, evil ? hdrs : (const char *const[]){hdrs[0], hdrs[2], NULL}, out,
                       len);
    free(out);
}

static void on_reverse_tick(uv_timer_t *t)
{
    struct fx *f = t->data;

    if (f->n_held == 0) {
        uv_timer_stop(t);
        return;
    }
    f->n_held--;
    struct loyd_http_exchange *ex = f->held[f->n_held];
    f->answer_order[f->n_answered++] = (int)f->n_held + 1;
    loyd_httpd_respond(ex, 200, NULL, f->held_path[f->n_held], strlen(f->held_path[f->n_held]));
}

static void handler(void *arg, struct loyd_http_exchange *ex, const struct loyd_http_request *req)
{
    struct fx *f = arg;
    size_t pending = loyd_httpd_pending(f->h);

    f->n_calls++;
    if (pending > f->max_pending)
        f->max_pending = pending;
    switch (f->mode) {
    case MODE_ECHO:
        echo(ex, req);
        break;
    case MODE_BIG:
        loyd_httpd_respond(ex, 200, NULL, big_body, sizeof(big_body));
        break;
    case MODE_DEFER:
    case MODE_REVERSE3:
        ck_assert_uint_lt(f->n_held, MAX_HELD);
        f->held[f->n_held] = ex;
        snprintf(f->held_path[f->n_held], sizeof(f->held_path[0]), "%s", req->path);
        f->n_held++;
        if (f->mode == MODE_REVERSE3 && f->n_held == 3)
            uv_timer_start(&f->timer, on_reverse_tick, 20, 20);
        break;
    }
}

/* ---- the loop thread and fx_call --------------------------------------------------------- */

static void on_httpd_closed(void *arg)
{
    (void)arg;
}

static void on_async(uv_async_t *a)
{
    struct fx *f = a->data;

    pthread_mutex_lock(&f->mu);
    if (f->call_fn != NULL) {
        f->call_fn(f, f->call_arg);
        f->call_fn = NULL;
        f->call_done = true;
        pthread_cond_broadcast(&f->cv);
    }
    if (f->stop) {
        f->stop = false;
        uv_close((uv_handle_t *)&f->async, NULL);
        uv_close((uv_handle_t *)&f->timer, NULL);
        loyd_httpd_close(f->h, on_httpd_closed, f);
    }
    pthread_mutex_unlock(&f->mu);
}

static void *loop_thread(void *arg)
{
    struct fx *f = arg;

    uv_run(&f->loop, UV_RUN_DEFAULT);
    return NULL;
}

static void fx_call(struct fx *f, void (*fn)(struct fx *, void *), void *arg)
{
    pthread_mutex_lock(&f->mu);
    f->call_fn = fn;
    f->call_arg = arg;
    f->call_done = false;
    uv_async_send(&f->async);
    while (!f->call_done)
        pthread_cond_wait(&f->cv, &f->mu);
    pthread_mutex_unlock(&f->mu);
}

static void fx_start(struct fx *f, const struct loyd_httpd_limits *lim, enum mode mode)
{
    memset(f, 0, sizeof(*f));
    if (getenv("LOYD_TEST_DEBUG") != NULL)
        loyd_log_set_level(LOYD_LOG_DEBUG);
    pthread_mutex_init(&f->mu, NULL);
    pthread_cond_init(&f->cv, NULL);
    f->mode = mode;
    ck_assert_int_eq(uv_loop_init(&f->loop), 0);
    ck_assert_int_eq(uv_async_init(&f->loop, &f->async, on_async), 0);
    f->async.data = f;
    ck_assert_int_eq(uv_timer_init(&f->loop, &f->timer), 0);
    f->timer.data = f;
    ck_assert_int_eq(loyd_httpd_create(&f->loop, lim, handler, f, &f->h), 0);
    ck_assert_int_eq(loyd_httpd_listen(f->h, "127.0.0.1", 0, &f->port), 0);
    ck_assert_int_gt(f->port, 0);
    ck_assert_int_eq(pthread_create(&f->thr, NULL, loop_thread, f), 0);
}

/* Closes the server with whatever is still open, and proves the loop can close. */
static void fx_stop(struct fx *f)
{
    pthread_mutex_lock(&f->mu);
    f->stop = true;
    uv_async_send(&f->async);
    pthread_mutex_unlock(&f->mu);
    pthread_join(f->thr, NULL);
    ck_assert_int_eq(uv_loop_close(&f->loop), 0);
    /* Exchanges still held are orphans now: answering them only frees them, even after the
     * server itself is gone. */
    struct loyd_http_exchange *held[MAX_HELD];
    size_t n = f->n_held;
    memcpy(held, f->held, sizeof(held));
    loyd_httpd_destroy(f->h);
    for (size_t i = 0; i < n; i++)
        loyd_httpd_respond(held[i], 200, NULL, "late", 4);
    pthread_mutex_destroy(&f->mu);
    pthread_cond_destroy(&f->cv);
}

static void get_stats(struct fx *f, void *arg)
{
    loyd_httpd_stats(f->h, arg);
}

static struct loyd_httpd_stats fx_stats(struct fx *f)
{
    struct loyd_httpd_stats st;
    fx_call(f, get_stats, &st);
    return st;
}

struct probe {
    size_t pending, held, max_pending;
    int order[3];
};

static void get_probe(struct fx *f, void *arg)
{
    struct probe *p = arg;
    p->pending = loyd_httpd_pending(f->h);
    p->held = f->n_held;
    p->max_pending = f->max_pending;
    memcpy(p->order, f->answer_order, sizeof(p->order));
}

static struct probe fx_probe(struct fx *f)
{
    struct probe p;
    fx_call(f, get_probe, &p);
    return p;
}

static void sleep_ms(long ms)
{
    struct timespec ts = {.tv_sec = ms / 1000, .tv_nsec = (ms % 1000) * 1000000L};
    nanosleep(&ts, NULL);
}

/* Polls a condition on the server for up to 5 s (a safety net, never a timing assertion). */
#define WAIT_FOR(cond)                                                                             \
    do {                                                                                           \
        int waited_ = 0;                                                                           \
        while (!(cond) && waited_ < 5000) {                                                        \
            sleep_ms(5);                                                                           \
            waited_ += 5;                                                                          \
        }                                                                                          \
        ck_assert_msg((cond), "timed out waiting for %s", #cond);                                  \
    } while (0)

static void answer_held(struct fx *f, void *arg)
{
    (void)arg;
    for (size_t i = 0; i < f->n_held; i++)
        loyd_httpd_respond(f->held[i], 200, NULL, f->held_path[i], strlen(f->held_path[i]));
    f->n_held = 0;
}

static void connect_ok(struct fx *f, struct httpd_client *c)
{
    ck_assert_int_eq(httpd_client_connect(c, f->port), 0);
}

static void expect_response(struct httpd_client *c, int status, const char *body)
{
    struct httpd_client_response r;
    ck_assert_int_eq(httpd_client_read(c, &r), 0);
    ck_assert_int_eq(r.status, status);
    if (body != NULL)
        ck_assert_str_eq(r.body, body);
    httpd_client_response_free(&r);
}

static bool has_header(const struct httpd_client_response *r, const char *name, const char *want)
{
    char *v = httpd_client_header(r, name);
    bool ok = v != NULL && (want == NULL || strcasecmp(v, want) == 0);
    free(v);
    return ok;
}

/* ---- tests ------------------------------------------------------------------------------- */

START_TEST(test_simple_get)
{
    struct fx f;
    struct httpd_client c;
    struct httpd_client_response r;

    fx_start(&f, NULL, MODE_ECHO);
    connect_ok(&f, &c);
    ck_assert_int_eq(httpd_client_sends(&c, "GET /hooks/acme?a=1&b=2#frag HTTP/1.1\r\n"
                                            "Host: x\r\nX-Empty:\r\nX-Test: hello\r\n\r\n"),
                     0);
    ck_assert_int_eq(httpd_client_read(&c, &r), 0);
    ck_assert_int_eq(r.status, 200);
    ck_assert_str_eq(r.body, "M=GET\nP=/hooks/acme\nQ=a=1&b=2\nR=127.0.0.1\nN=3\nX=hello\nL=0\nB=");
    char *clen = httpd_client_header(&r, "Content-Length");
    ck_assert_ptr_nonnull(clen);
    ck_assert_uint_eq(strtoul(clen, NULL, 10), strlen(r.body));
    free(clen);
    ck_assert(has_header(&r, "Connection", "keep-alive"));
    ck_assert(has_header(&r, "Content-Type", "text/plain"));
    /* Header lines that would break the framing never reach the wire. */
    ck_assert(!has_header(&r, "X-Evil", NULL));
    ck_assert(!has_header(&r, "Injected", NULL));
    ck_assert_ptr_null(strstr(r.head, "999"));
    httpd_client_response_free(&r);

    /* A POST body arrives NUL-terminated, with its length. */
    ck_assert_int_eq(httpd_client_sends(&c, "POST /p HTTP/1.1\r\nHost: x\r\n"
                                            "Content-Length: 5\r\n\r\nhello"),
                     0);
    ck_assert_int_eq(httpd_client_read(&c, &r), 0);
    ck_assert_int_eq(r.status, 200);
    ck_assert_ptr_nonnull(strstr(r.body, "L=5\nB=hello"));
    httpd_client_response_free(&r);

    /* HEAD: the length the body would have, no body. */
    ck_assert_int_eq(httpd_client_sends(&c, "HEAD /h HTTP/1.1\r\nHost: x\r\n\r\n"), 0);
    ck_assert_int_eq(httpd_client_read_ex(&c, &r, true), 0);
    ck_assert_int_eq(r.status, 200);
    char *cl = httpd_client_header(&r, "Content-Length");
    ck_assert_ptr_nonnull(cl);
    ck_assert_int_gt(atoi(cl), 0);
    free(cl);
    httpd_client_response_free(&r);
    /* Had the body been sent, this GET's response would be misread. */
    ck_assert_int_eq(httpd_client_sends(&c, "GET /after-head HTTP/1.1\r\nHost: x\r\n\r\n"), 0);
    ck_assert_int_eq(httpd_client_read(&c, &r), 0);
    ck_assert_int_eq(r.status, 200);
    ck_assert_ptr_nonnull(strstr(r.body, "P=/after-head\n"));
    httpd_client_response_free(&r);
    httpd_client_close(&c);

    struct loyd_httpd_stats st = fx_stats(&f);
    ck_assert_uint_eq(st.accepted, 1);
    ck_assert_uint_eq(st.requests, 4);
    fx_stop(&f);
}
END_TEST

START_TEST(test_keep_alive)
{
    struct fx f;
    struct httpd_client c;

    fx_start(&f, NULL, MODE_ECHO);
    connect_ok(&f, &c);
    for (int i = 0; i < 2; i++) {
        struct httpd_client_response r;
        char req[128];
        snprintf(req, sizeof(req), "GET /r%d HTTP/1.1\r\nHost: x\r\n\r\n", i);
        ck_assert_int_eq(httpd_client_sends(&c, req), 0);
        ck_assert_int_eq(httpd_client_read(&c, &r), 0);
        ck_assert_int_eq(r.status, 200);
        snprintf(req, sizeof(req), "P=/r%d\n", i);
        ck_assert_ptr_nonnull(strstr(r.body, req));
        ck_assert(has_header(&r, "Connection", "keep-alive"));
        httpd_client_response_free(&r);
    }
    httpd_client_close(&c);
    struct loyd_httpd_stats st = fx_stats(&f);
    ck_assert_uint_eq(st.accepted, 1); /* both on one connection */
    ck_assert_uint_eq(st.requests, 2);
    fx_stop(&f);
}
END_TEST

START_TEST(test_one_byte_at_a_time)
{
    struct fx f;
    struct httpd_client c;
    struct httpd_client_response r;
    const char *req = "POST /slow?q=1 HTTP/1.1\r\nHost: x\r\nX-Test: split\r\n"
                      "Content-Length: 11\r\n\r\nhello world";

    fx_start(&f, NULL, MODE_ECHO);
    connect_ok(&f, &c);
    for (size_t i = 0; req[i] != '\0'; i++) {
        ck_assert_int_eq(httpd_client_send(&c, req + i, 1), 0);
        sleep_ms(1); /* separate segments, so the server sees separate reads */
    }
    ck_assert_int_eq(httpd_client_read(&c, &r), 0);
    ck_assert_int_eq(r.status, 200);
    ck_assert_str_eq(r.body,
                     "M=POST\nP=/slow\nQ=q=1\nR=127.0.0.1\nN=3\nX=split\nL=11\nB=hello world");
    httpd_client_response_free(&r);
    httpd_client_close(&c);
    fx_stop(&f);
}
END_TEST

START_TEST(test_pipelined_reverse)
{
    struct fx f;
    struct httpd_client c;

    fx_start(&f, NULL, MODE_REVERSE3);
    connect_ok(&f, &c);
    ck_assert_int_eq(httpd_client_sends(&c, "GET /1 HTTP/1.1\r\nHost: x\r\n\r\n"
                                            "GET /2 HTTP/1.1\r\nHost: x\r\n\r\n"
                                            "GET /3 HTTP/1.1\r\nHost: x\r\n\r\n"),
                     0);
    expect_response(&c, 200, "/1");
    expect_response(&c, 200, "/2");
    expect_response(&c, 200, "/3");
    httpd_client_close(&c);
    struct probe p = fx_probe(&f);
    ck_assert_uint_eq(p.max_pending, 3);
    /* The handler really answered newest first. */
    ck_assert_int_eq(p.order[0], 3);
    ck_assert_int_eq(p.order[1], 2);
    ck_assert_int_eq(p.order[2], 1);
    fx_stop(&f);
}
END_TEST

START_TEST(test_header_limit)
{
    struct fx f;
    struct httpd_client c;
    struct httpd_client_response r;
    static char req[24000];
    char pad[20001];

    fx_start(&f, NULL, MODE_ECHO);
    /* Just under the 16 KiB default: served. */
    memset(pad, 'a', 15000);
    pad[15000] = '\0';
    snprintf(req, sizeof(req), "GET / HTTP/1.1\r\nHost: x\r\nX-Pad: %s\r\n\r\n", pad);
    connect_ok(&f, &c);
    ck_assert_int_eq(httpd_client_sends(&c, req), 0);
    expect_response(&c, 200, NULL);
    httpd_client_close(&c);

    /* Over it: 431 naming the limit, then the connection closes. */
    memset(pad, 'a', 20000);
    pad[20000] = '\0';
    snprintf(req, sizeof(req), "GET / HTTP/1.1\r\nHost: x\r\nX-Pad: %s\r\n\r\n", pad);
    connect_ok(&f, &c);
    ck_assert_int_eq(httpd_client_sends(&c, req), 0);
    ck_assert_int_eq(httpd_client_read(&c, &r), 0);
    ck_assert_int_eq(r.status, 431);
    ck_assert_str_eq(r.body, "request headers exceed 16384 bytes\n");
    ck_assert(has_header(&r, "Connection", "close"));
    httpd_client_response_free(&r);
    ck_assert(httpd_client_wait_closed(&c));
    httpd_client_close(&c);

    /* Many small headers count too. */
    connect_ok(&f, &c);
    ck_assert_int_eq(httpd_client_sends(&c, "GET / HTTP/1.1\r\n"), 0);
    int rc = 0;
    for (int i = 0; i < 2000 && rc == 0; i++)
        rc = httpd_client_sends(&c, "X-Many: 0123456789\r\n");
    expect_response(&c, 431, "request headers exceed 16384 bytes\n");
    httpd_client_close(&c);

    struct loyd_httpd_stats st = fx_stats(&f);
    ck_assert_uint_eq(st.status_431, 2);
    ck_assert_uint_eq(st.requests, 1);
    fx_stop(&f);
}
END_TEST

START_TEST(test_body_limit_content_length)
{
    struct fx f;
    struct httpd_client c;
    struct httpd_client_response r;

    fx_start(&f, NULL, MODE_ECHO);
    connect_ok(&f, &c);
    /* Only the headers are sent: the answer must come before any body byte. */
    ck_assert_int_eq(httpd_client_sends(&c, "POST /big HTTP/1.1\r\nHost: x\r\n"
                                            "Content-Length: 2000000\r\n\r\n"),
                     0);
    ck_assert_int_eq(httpd_client_read(&c, &r), 0);
    ck_assert_int_eq(r.status, 413);
    ck_assert_str_eq(r.body, "request body exceeds 1048576 bytes\n");
    ck_assert(has_header(&r, "Connection", "close"));
    httpd_client_response_free(&r);
    /* A client that goes on sending still sees an orderly close, not a hang. */
    static char chunk[65536];
    httpd_client_send(&c, chunk, sizeof(chunk));
    ck_assert(httpd_client_wait_closed(&c));
    httpd_client_close(&c);

    /* With Expect: 100-continue the refusal replaces the 100. */
    connect_ok(&f, &c);
    ck_assert_int_eq(httpd_client_sends(&c, "POST /big HTTP/1.1\r\nHost: x\r\n"
                                            "Expect: 100-continue\r\n"
                                            "Content-Length: 2000000\r\n\r\n"),
                     0);
    expect_response(&c, 413, NULL);
    httpd_client_close(&c);

    struct loyd_httpd_stats st = fx_stats(&f);
    ck_assert_uint_eq(st.status_413, 2);
    ck_assert_uint_eq(st.requests, 0);
    fx_stop(&f);
}
END_TEST

START_TEST(test_chunked)
{
    struct fx f;
    struct httpd_client c;
    struct httpd_client_response r;
    struct loyd_httpd_limits lim;

    loyd_httpd_limits_default(&lim);
    lim.max_body_bytes = 1000;
    fx_start(&f, &lim, MODE_ECHO);
    connect_ok(&f, &c);
    ck_assert_int_eq(httpd_client_sends(&c, "POST /c HTTP/1.1\r\nHost: x\r\n"
                                            "Transfer-Encoding: chunked\r\n\r\n"
                                            "5\r\nhello\r\n"),
                     0);
    sleep_ms(5);
    ck_assert_int_eq(httpd_client_sends(&c, "6\r\n world\r\n0\r\nX-Trailer: t\r\n\r\n"), 0);
    ck_assert_int_eq(httpd_client_read(&c, &r), 0);
    ck_assert_int_eq(r.status, 200);
    ck_assert_ptr_nonnull(strstr(r.body, "L=11\nB=hello world"));
    httpd_client_response_free(&r);

    /* Over the cap while decoding: 413 before the last chunk. */
    char chunk[700];
    memset(chunk, 'z', sizeof(chunk));
    ck_assert_int_eq(httpd_client_sends(&c, "POST /c HTTP/1.1\r\nHost: x\r\n"
                                            "Transfer-Encoding: chunked\r\n\r\n2bc\r\n"),
                     0);
    ck_assert_int_eq(httpd_client_send(&c, chunk, sizeof(chunk)), 0);
    ck_assert_int_eq(httpd_client_sends(&c, "\r\n2bc\r\n"), 0);
    ck_assert_int_eq(httpd_client_send(&c, chunk, sizeof(chunk)), 0);
    expect_response(&c, 413, "request body exceeds 1000 bytes\n");
    ck_assert(httpd_client_wait_closed(&c));
    httpd_client_close(&c);

    struct loyd_httpd_stats st = fx_stats(&f);
    ck_assert_uint_eq(st.status_413, 1);
    ck_assert_uint_eq(st.requests, 1);
    fx_stop(&f);
}
END_TEST

static void expect_400(struct fx *f, const char *req, const char *body_prefix)
{
    struct httpd_client c;
    struct httpd_client_response r;

    connect_ok(f, &c);
    ck_assert_int_eq(httpd_client_sends(&c, req), 0);
    ck_assert_int_eq(httpd_client_read(&c, &r), 0);
    ck_assert_int_eq(r.status, 400);
    ck_assert_msg(strncmp(r.body, body_prefix, strlen(body_prefix)) == 0, "body: %s", r.body);
    ck_assert(has_header(&r, "Connection", "close"));
    httpd_client_response_free(&r);
    ck_assert(httpd_client_wait_closed(&c));
    httpd_client_close(&c);
}

START_TEST(test_garbage)
{
    struct fx f;

    fx_start(&f, NULL, MODE_ECHO);
    expect_400(&f, "\x16\x03\x01\x02\x00\x01\x00\x01\xfc\x03\x03garbage\r\n\r\n",
               "malformed request: ");
    expect_400(&f, "GET / HTTP/1.1\r\nHost: x\r\nBad Header\r\n\r\n", "malformed request: ");
    expect_400(&f, "GET / HTTP/1.1\r\nContent-Length: 1\r\nContent-Length: 2\r\n\r\n",
               "malformed request: ");
    expect_400(&f, "GET / HTTP/1.1\r\nUpgrade: websocket\r\nConnection: Upgrade\r\n\r\n",
               "protocol upgrade and CONNECT are not supported\n");
    expect_400(&f, "CONNECT example.com:443 HTTP/1.1\r\nHost: example.com:443\r\n\r\n",
               "protocol upgrade and CONNECT are not supported\n");
    expect_400(&f, "GET / HTTP/2.0\r\nHost: x\r\n\r\n", "unsupported HTTP version");

    /* An error after a good pipelined request: the good one is still answered first. */
    struct httpd_client c;
    connect_ok(&f, &c);
    ck_assert_int_eq(httpd_client_sends(&c, "GET /ok HTTP/1.1\r\nHost: x\r\n\r\nBAD\x01\r\n\r\n"),
                     0);
    expect_response(&c, 200, NULL);
    expect_response(&c, 400, NULL);
    ck_assert(httpd_client_wait_closed(&c));
    httpd_client_close(&c);

    struct loyd_httpd_stats st = fx_stats(&f);
    ck_assert_uint_eq(st.status_400, 7);
    ck_assert_uint_eq(st.requests, 1);
    fx_stop(&f);
}
END_TEST

START_TEST(test_too_many_connections)
{
    struct fx f;
    struct httpd_client a, b, c;
    struct httpd_client_response r;
    struct loyd_httpd_limits lim;

    loyd_httpd_limits_default(&lim);
    lim.max_connections = 2;
    fx_start(&f, &lim, MODE_ECHO);
    connect_ok(&f, &a);
    connect_ok(&f, &b);
    WAIT_FOR(fx_stats(&f).open_connections == 2);
    connect_ok(&f, &c);
    ck_assert_int_eq(httpd_client_read(&c, &r), 0);
    ck_assert_int_eq(r.status, 503);
    ck_assert_str_eq(r.body, "too many connections\n");
    httpd_client_response_free(&r);
    ck_assert(httpd_client_wait_closed(&c));
    httpd_client_close(&c);

    /* The admitted ones still work. */
    ck_assert_int_eq(httpd_client_sends(&a, "GET /a HTTP/1.1\r\nHost: x\r\n\r\n"), 0);
    expect_response(&a, 200, NULL);

    /* A freed slot is usable again. */
    httpd_client_close(&b);
    WAIT_FOR(fx_stats(&f).open_connections == 1);
    connect_ok(&f, &c);
    ck_assert_int_eq(httpd_client_sends(&c, "GET /c HTTP/1.1\r\nHost: x\r\n\r\n"), 0);
    expect_response(&c, 200, NULL);
    httpd_client_close(&c);
    httpd_client_close(&a);

    struct loyd_httpd_stats st = fx_stats(&f);
    ck_assert_uint_eq(st.rejected_busy, 1);
    ck_assert_uint_eq(st.accepted, 3);
    fx_stop(&f);
}
END_TEST

START_TEST(test_slow_client)
{
    struct fx f;
    struct httpd_client c;
    struct loyd_httpd_limits lim;

    loyd_httpd_limits_default(&lim);
    lim.read_timeout_ms = 200;
    lim.idle_timeout_ms = 60000;
    fx_start(&f, &lim, MODE_ECHO);
    connect_ok(&f, &c);
    ck_assert_int_eq(httpd_client_sends(&c, "GET / HTTP/1.1\r\nX-Slow: "), 0);
    /* Keep trickling a byte every 25 ms: the deadline must not move with each byte, so the
     * server cuts the connection while the client is still sending (10 s of trickle is the
     * safety net; the cut comes after 200 ms). */
    bool closed = false;
    for (int i = 0; i < 400 && !closed; i++) {
        char b;
        if (httpd_client_sends(&c, "a") != 0 || recv(c.fd, &b, 1, MSG_DONTWAIT) == 0)
            closed = true;
        else
            sleep_ms(25);
    }
    ck_assert_msg(closed, "a client trickling bytes was never cut off");
    httpd_client_close(&c);
    struct loyd_httpd_stats st = fx_stats(&f);
    ck_assert_uint_eq(st.timeouts, 1);
    ck_assert_uint_eq(st.requests, 0);
    fx_stop(&f);
}
END_TEST

START_TEST(test_idle_timeout)
{
    struct fx f;
    struct httpd_client c;
    struct loyd_httpd_limits lim;

    loyd_httpd_limits_default(&lim);
    lim.idle_timeout_ms = 200;
    lim.read_timeout_ms = 60000;
    fx_start(&f, &lim, MODE_ECHO);
    connect_ok(&f, &c);
    ck_assert_int_eq(httpd_client_sends(&c, "GET / HTTP/1.1\r\nHost: x\r\n\r\n"), 0);
    expect_response(&c, 200, NULL);
    ck_assert(httpd_client_wait_closed(&c)); /* well within the client's 5 s */
    httpd_client_close(&c);
    struct loyd_httpd_stats st = fx_stats(&f);
    ck_assert_uint_eq(st.timeouts, 1);
    ck_assert_uint_eq(st.open_connections, 0);
    fx_stop(&f);
}
END_TEST

START_TEST(test_client_gone_before_answer)
{
    struct fx f;
    struct httpd_client c;

    fx_start(&f, NULL, MODE_DEFER);
    /* Reset: the server notices at once and orphans the exchange. */
    connect_ok(&f, &c);
    ck_assert_int_eq(httpd_client_sends(&c, "POST /x HTTP/1.1\r\nHost: x\r\n"
                                            "Content-Length: 3\r\n\r\nabc"),
                     0);
    WAIT_FOR(fx_probe(&f).pending == 1);
    httpd_client_reset(&c);
    WAIT_FOR(fx_stats(&f).open_connections == 0);
    ck_assert_uint_eq(fx_probe(&f).pending, 1);
    fx_call(&f, answer_held, NULL); /* respond on an orphan: freed, nothing written */
    ck_assert_uint_eq(fx_probe(&f).pending, 0);

    /* Orderly close: the half-closed connection waits for the answer, then closes. */
    connect_ok(&f, &c);
    ck_assert_int_eq(httpd_client_sends(&c, "GET /y HTTP/1.1\r\nHost: x\r\n\r\n"), 0);
    WAIT_FOR(fx_probe(&f).pending == 1);
    httpd_client_close(&c);
    sleep_ms(20);
    fx_call(&f, answer_held, NULL);
    WAIT_FOR(fx_stats(&f).open_connections == 0);
    ck_assert_uint_eq(fx_probe(&f).pending, 0);

    /* Half-close with shutdown(SHUT_WR): the answer still arrives. */
    connect_ok(&f, &c);
    ck_assert_int_eq(httpd_client_sends(&c, "GET /z HTTP/1.1\r\nHost: x\r\n\r\n"), 0);
    shutdown(c.fd, SHUT_WR);
    WAIT_FOR(fx_probe(&f).pending == 1);
    fx_call(&f, answer_held, NULL);
    struct httpd_client_response r;
    ck_assert_int_eq(httpd_client_read(&c, &r), 0);
    ck_assert_str_eq(r.body, "/z");
    ck_assert(has_header(&r, "Connection", "close"));
    httpd_client_response_free(&r);
    ck_assert(httpd_client_wait_closed(&c));
    httpd_client_close(&c);
    fx_stop(&f);
}
END_TEST

START_TEST(test_close_with_open_connections)
{
    struct fx f;
    struct httpd_client idle, partial, waiting;

    fx_start(&f, NULL, MODE_DEFER);
    connect_ok(&f, &idle);
    connect_ok(&f, &partial);
    connect_ok(&f, &waiting);
    ck_assert_int_eq(httpd_client_sends(&partial, "POST /p HTTP/1.1\r\nContent-Length: 10\r\n"
                                                  "\r\nabc"),
                     0);
    ck_assert_int_eq(httpd_client_sends(&waiting, "GET /w1 HTTP/1.1\r\nHost: x\r\n\r\n"
                                                  "GET /w2 HTTP/1.1\r\nHost: x\r\n\r\n"),
                     0);
    WAIT_FOR(fx_probe(&f).pending == 2);
    WAIT_FOR(fx_stats(&f).open_connections == 3);
    /* fx_stop closes the server with all three open and two exchanges pending, asserts
     * uv_loop_close() == 0, destroys the server, then answers the orphans (ASan-clean). */
    fx_stop(&f);
    ck_assert(httpd_client_wait_closed(&idle));
    ck_assert(httpd_client_wait_closed(&partial));
    ck_assert(httpd_client_wait_closed(&waiting));
    httpd_client_close(&idle);
    httpd_client_close(&partial);
    httpd_client_close(&waiting);
}
END_TEST

START_TEST(test_connection_close)
{
    struct fx f;
    struct httpd_client c;
    struct httpd_client_response r;

    fx_start(&f, NULL, MODE_ECHO);
    connect_ok(&f, &c);
    /* The request after Connection: close is never served. */
    ck_assert_int_eq(httpd_client_sends(&c, "GET /a HTTP/1.1\r\nHost: x\r\nConnection: close\r\n"
                                            "\r\nGET /b HTTP/1.1\r\nHost: x\r\n\r\n"),
                     0);
    ck_assert_int_eq(httpd_client_read(&c, &r), 0);
    ck_assert_int_eq(r.status, 200);
    ck_assert(has_header(&r, "Connection", "close"));
    httpd_client_response_free(&r);
    ck_assert(httpd_client_wait_closed(&c));
    httpd_client_close(&c);
    ck_assert_uint_eq(fx_stats(&f).requests, 1);
    fx_stop(&f);
}
END_TEST

START_TEST(test_http10)
{
    struct fx f;
    struct httpd_client c;
    struct httpd_client_response r;

    fx_start(&f, NULL, MODE_ECHO);
    /* HTTP/1.0 closes by default. */
    connect_ok(&f, &c);
    ck_assert_int_eq(httpd_client_sends(&c, "GET /old HTTP/1.0\r\n\r\n"), 0);
    ck_assert_int_eq(httpd_client_read(&c, &r), 0);
    ck_assert_int_eq(r.status, 200);
    ck_assert(has_header(&r, "Connection", "close"));
    httpd_client_response_free(&r);
    ck_assert(httpd_client_wait_closed(&c));
    httpd_client_close(&c);

    /* ...and stays open when it asks for keep-alive. */
    connect_ok(&f, &c);
    for (int i = 0; i < 2; i++) {
        ck_assert_int_eq(
            httpd_client_sends(&c, "GET /ka HTTP/1.0\r\nConnection: keep-alive\r\n\r\n"), 0);
        ck_assert_int_eq(httpd_client_read(&c, &r), 0);
        ck_assert_int_eq(r.status, 200);
        ck_assert(has_header(&r, "Connection", "keep-alive"));
        httpd_client_response_free(&r);
    }
    httpd_client_close(&c);
    fx_stop(&f);
}
END_TEST

START_TEST(test_expect_continue)
{
    struct fx f;
    struct httpd_client c;
    struct httpd_client_response r;

    fx_start(&f, NULL, MODE_ECHO);
    connect_ok(&f, &c);
    ck_assert_int_eq(httpd_client_sends(&c, "POST /e HTTP/1.1\r\nHost: x\r\n"
                                            "Expect: 100-continue\r\nContent-Length: 4\r\n\r\n"),
                     0);
    ck_assert_int_eq(httpd_client_read(&c, &r), 0); /* before the body is sent */
    ck_assert_int_eq(r.status, 100);
    httpd_client_response_free(&r);
    ck_assert_int_eq(httpd_client_sends(&c, "data"), 0);
    ck_assert_int_eq(httpd_client_read(&c, &r), 0);
    ck_assert_int_eq(r.status, 200);
    ck_assert_ptr_nonnull(strstr(r.body, "L=4\nB=data"));
    httpd_client_response_free(&r);
    httpd_client_close(&c);
    fx_stop(&f);
}
END_TEST

START_TEST(test_pipeline_backpressure)
{
    struct fx f;
    struct httpd_client c;
    struct loyd_httpd_limits lim;
    char req[4096] = "";

    loyd_httpd_limits_default(&lim);
    lim.max_pipelined = 2;
    fx_start(&f, &lim, MODE_DEFER);
    connect_ok(&f, &c);
    for (int i = 1; i <= 6; i++) {
        char one[64];
        snprintf(one, sizeof(one), "GET /%d HTTP/1.1\r\nHost: x\r\n\r\n", i);
        strcat(req, one);
    }
    ck_assert_int_eq(httpd_client_sends(&c, req), 0); /* one segment: one read */
    for (int got = 0; got < 6;) {
        struct probe p;
        WAIT_FOR((p = fx_probe(&f)).held > 0);
        fx_call(&f, answer_held, NULL);
        for (size_t k = 0; k < p.held; k++) {
            struct httpd_client_response r;
            char want[16];
            ck_assert_int_eq(httpd_client_read(&c, &r), 0);
            snprintf(want, sizeof(want), "/%d", ++got);
            ck_assert_str_eq(r.body, want);
            httpd_client_response_free(&r);
        }
    }
    /* Never more than max_pipelined requests parsed ahead of their answers. */
    ck_assert_uint_le(fx_probe(&f).max_pending, 2);
    ck_assert_uint_eq(fx_stats(&f).requests, 6);
    httpd_client_close(&c);
    fx_stop(&f);
}
END_TEST

START_TEST(test_non_reading_client_bounded)
{
    struct fx f;
    struct httpd_client c;
    static char reqs[200 * 40];
    size_t len = 0;

    fx_start(&f, NULL, MODE_BIG);
    connect_ok(&f, &c);
    for (int i = 0; i < 200; i++)
        len += (size_t)snprintf(reqs + len, sizeof(reqs) - len, "GET /%03d HTTP/1.1\r\n\r\n", i);
    ck_assert_int_eq(httpd_client_send(&c, reqs, len), 0);
    /* 200 answers of 256 KiB would be 50 MiB queued; the server must stop at what the
     * sockets hold plus max_pipelined. */
    sleep_ms(300);
    uint64_t served = fx_stats(&f).requests;
    ck_assert_uint_lt(served, 200);
    /* Reading them all still gets every answer, in order. */
    for (int i = 0; i < 200; i++) {
        struct httpd_client_response r;
        ck_assert_int_eq(httpd_client_read(&c, &r), 0);
        ck_assert_int_eq(r.status, 200);
        ck_assert_uint_eq(r.body_len, sizeof(big_body));
        httpd_client_response_free(&r);
    }
    ck_assert_uint_eq(fx_stats(&f).requests, 200);
    httpd_client_close(&c);
    fx_stop(&f);
}
END_TEST

/* Mutations of valid requests, in random splits: whatever the server answers, it must not
 * crash, leak or hang (ASan and the client's timeouts watch), and must go on serving. */
START_TEST(test_random_input)
{
    static const char *const seeds[] = {
        "POST /hooks/t?x=1 HTTP/1.1\r\nHost: x\r\nContent-Length: 5\r\n\r\nhello",
        "POST /c HTTP/1.1\r\nTransfer-Encoding: chunked\r\n\r\n5\r\nhello\r\n0\r\n\r\n",
        "GET / HTTP/1.0\r\nConnection: keep-alive\r\n\r\nGET /2 HTTP/1.1\r\n\r\n",
        "POST /e HTTP/1.1\r\nExpect: 100-continue\r\nContent-Length: 2\r\n\r\nok",
    };
    static const char noise[] = "\r\n :;\t\x00\x7f\xff"
                                "0123456789abcdefABCDEF-/?#%HTTP";
    struct fx f;
    struct loyd_httpd_limits lim;
    unsigned seed = 12345;

    loyd_httpd_limits_default(&lim);
    lim.max_body_bytes = 64;
    lim.max_header_bytes = 256;
    fx_start(&f, &lim, MODE_ECHO);
    for (int iter = 0; iter < 300; iter++) {
        char buf[512];
        const char *src = seeds[iter % LOYD_ARRAY_SIZE(seeds)];
        size_t len = strlen(src);
        memset(buf, 'x', sizeof(buf)); /* a duplicated run near the end copies past len */
        memcpy(buf, src, len);
        int edits = 1 + (int)(rand_r(&seed) % 4);
        for (int e = 0; e < edits; e++) {
            size_t at = (size_t)rand_r(&seed) % len;
            switch (rand_r(&seed) % 3) {
            case 0: /* replace */
                buf[at] = noise[(size_t)rand_r(&seed) % (sizeof(noise) - 1)];
                break;
            case 1: /* delete */
                memmove(buf + at, buf + at + 1, len - at - 1);
                len--;
                break;
            default: /* duplicate a run */
                if (len + 16 < sizeof(buf)) {
                    memmove(buf + at + 16, buf + at, len - at);
                    len += 16;
                }
                break;
            }
        }
        struct httpd_client c;
        connect_ok(&f, &c);
        for (size_t off = 0; off < len;) {
            size_t n = 1 + (size_t)rand_r(&seed) % 64;
            if (n > len - off)
                n = len - off;
            if (httpd_client_send(&c, buf + off, n) != 0)
                break;
            off += n;
        }
        shutdown(c.fd, SHUT_WR); /* the server answers what is complete, then closes */
        ck_assert_msg(httpd_client_wait_closed(&c), "iteration %d hung", iter);
        httpd_client_close(&c);
    }
    struct httpd_client c;
    connect_ok(&f, &c);
    ck_assert_int_eq(httpd_client_sends(&c, "GET /still HTTP/1.1\r\nHost: x\r\n\r\n"), 0);
    expect_response(&c, 200, NULL);
    httpd_client_close(&c);
    WAIT_FOR(fx_stats(&f).open_connections == 0);
    fx_stop(&f);
}
END_TEST

static void null_handler(void *arg, struct loyd_http_exchange *ex,
                         const struct loyd_http_request *req)
{
    (void)arg;
    (void)req;
    loyd_httpd_respond(ex, 204, NULL, NULL, 0);
}

static void count_close(void *arg)
{
    (*(int *)arg)++;
}

/* Listener errors, and close() with nothing open: both leave a loop that closes. */
START_TEST(test_listen_and_close)
{
    uv_loop_t loop;
    struct loyd_httpd *h;
    int port = 0, port2 = 0, closed = 0;

    ck_assert_int_eq(uv_loop_init(&loop), 0);
    ck_assert_int_eq(loyd_httpd_create(&loop, NULL, null_handler, NULL, &h), 0);
    ck_assert_int_eq(loyd_httpd_listen(h, "not-an-address", 0, &port), -EINVAL);
    ck_assert_int_eq(loyd_httpd_listen(h, "127.0.0.1", 70000, &port), -EINVAL);
    ck_assert_int_eq(loyd_httpd_listen(h, "127.0.0.1", 0, &port), 0);
    ck_assert_int_gt(port, 0);
    ck_assert_int_eq(loyd_httpd_listen(h, "127.0.0.1", port, &port2), UV_EADDRINUSE);
    int rc6 = loyd_httpd_listen(h, "::1", 0, &port2); /* fails only without IPv6 */
    ck_assert(rc6 == 0 || rc6 == UV_EADDRNOTAVAIL || rc6 == UV_EAFNOSUPPORT);
    loyd_httpd_close(h, count_close, &closed);
    ck_assert_int_eq(uv_run(&loop, UV_RUN_DEFAULT), 0);
    ck_assert_int_eq(closed, 1);
    ck_assert_int_eq(uv_loop_close(&loop), 0);
    loyd_httpd_destroy(h);

    /* Never listened: close still reports through its callback. */
    ck_assert_int_eq(uv_loop_init(&loop), 0);
    ck_assert_int_eq(loyd_httpd_create(&loop, NULL, null_handler, NULL, &h), 0);
    loyd_httpd_close(h, count_close, &closed);
    ck_assert_int_eq(uv_run(&loop, UV_RUN_DEFAULT), 0);
    ck_assert_int_eq(closed, 2);
    ck_assert_int_eq(uv_loop_close(&loop), 0);
    loyd_httpd_destroy(h);
}
END_TEST

static void raise_body_limit(struct fx *f, void *arg)
{
    (void)arg;
    f->lim.max_body_bytes = 100;
    loyd_httpd_set_limits(f->h, &f->lim);
}

START_TEST(test_set_limits)
{
    struct fx f;
    struct httpd_client c;
    struct loyd_httpd_limits lim;
    const char *req = "POST /l HTTP/1.1\r\nHost: x\r\nContent-Length: 50\r\n\r\n"
                      "01234567890123456789012345678901234567890123456789";

    loyd_httpd_limits_default(&lim);
    lim.max_body_bytes = 10;
    fx_start(&f, &lim, MODE_ECHO);
    f.lim = lim;
    connect_ok(&f, &c);
    ck_assert_int_eq(httpd_client_sends(&c, req), 0);
    expect_response(&c, 413, "request body exceeds 10 bytes\n");
    httpd_client_close(&c);
    fx_call(&f, raise_body_limit, NULL);
    connect_ok(&f, &c);
    ck_assert_int_eq(httpd_client_sends(&c, req), 0);
    expect_response(&c, 200, NULL);
    httpd_client_close(&c);
    fx_stop(&f);
}
END_TEST

static void do_stop_accepting(struct fx *f, void *arg)
{
    (void)arg;
    loyd_httpd_stop_accepting(f->h);
}

START_TEST(test_stop_accepting_drains)
{
    struct fx f;
    struct httpd_client idle, busy, late;
    struct httpd_client_response r;

    fx_start(&f, NULL, MODE_DEFER);
    connect_ok(&f, &idle);
    connect_ok(&f, &busy);
    ck_assert_int_eq(httpd_client_sends(&busy, "GET /busy HTTP/1.1\r\nHost: x\r\n\r\n"), 0);
    WAIT_FOR(fx_probe(&f).pending == 1);
    WAIT_FOR(fx_stats(&f).open_connections == 2);
    fx_call(&f, do_stop_accepting, NULL);
    ck_assert(httpd_client_wait_closed(&idle));
    ck_assert_int_ne(httpd_client_connect(&late, f.port), 0); /* listener gone */
    fx_call(&f, answer_held, NULL);
    ck_assert_int_eq(httpd_client_read(&busy, &r), 0);
    ck_assert_str_eq(r.body, "/busy");
    ck_assert(has_header(&r, "Connection", "close"));
    httpd_client_response_free(&r);
    ck_assert(httpd_client_wait_closed(&busy));
    httpd_client_close(&idle);
    httpd_client_close(&busy);
    fx_stop(&f);
}
END_TEST

/* LOYD_TEST_ONLY=test_name runs one test (debugging aid). */
#define ADD(fn)                                                                                    \
    do {                                                                                           \
        const char *only_ = getenv("LOYD_TEST_ONLY");                                              \
        if (only_ == NULL || strcmp(only_, #fn) == 0)                                              \
            tcase_add_test(tc, fn);                                                                \
    } while (0)

Suite *httpd_suite(void)
{
    Suite *s = suite_create("httpd");
    TCase *tc = tcase_create("server");

    tcase_set_timeout(tc, 30);
    ADD(test_simple_get);
    ADD(test_keep_alive);
    ADD(test_one_byte_at_a_time);
    ADD(test_pipelined_reverse);
    ADD(test_header_limit);
    ADD(test_body_limit_content_length);
    ADD(test_chunked);
    ADD(test_garbage);
    ADD(test_too_many_connections);
    ADD(test_slow_client);
    ADD(test_idle_timeout);
    ADD(test_client_gone_before_answer);
    ADD(test_close_with_open_connections);
    ADD(test_connection_close);
    ADD(test_http10);
    ADD(test_expect_continue);
    ADD(test_pipeline_backpressure);
    ADD(test_non_reading_client_bounded);
    ADD(test_stop_accepting_drains);
    ADD(test_random_input);
    ADD(test_listen_and_close);
    ADD(test_set_limits);
    suite_add_tcase(s, tc);
    return s;
}
