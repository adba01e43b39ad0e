/* SPDX-License-Identifier: MIT */
/*
 * Tests of the outbound HTTP client (core/http_client.c) against the stub server in
 * tests/support/stub_server.c, each on a fresh uv loop that must close cleanly at the end.
 */
#include <check.h>
#include <curl/curl.h>
#include <errno.h>
#include <fcntl.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <unistd.h>

#include <arpa/inet.h>
#include <netinet/in.h>
#include <sys/socket.h>

#include "http_client.h"
#include "stub_server.h"
#include "util.h"

static uv_loop_t loop;
static struct loyd_stub *stub;
static struct loyd_http_client *client;
static bool in_start; /* set around every start(): callbacks must never run inside it */

struct result {
    int calls;
    int err;
    long status;
    char *body;
    size_t body_len;
    char *content_type, *retry_after;
    bool closed_before; /* the client's close callback had already run */
};

static bool client_closed;

static void on_done(void *arg, int err, const struct loyd_http_response *res)
{
    struct result *r = arg;

    ck_assert_msg(!in_start, "callback ran inside loyd_http_client_start");
    ck_assert_ptr_nonnull(res);
    ck_assert_ptr_nonnull(res->body);
    ck_assert_int_eq(res->body[res->body_len], '\0');
    r->calls++;
    r->err = err;
    r->status = res->status;
    free(r->body);
    free(r->content_type);
    free(r->retry_after);
    r->body = loyd_xstrndup(res->body, res->body_len);
    r->body_len = res->body_len;
    r->content_type = res->content_type ? loyd_xstrdup(res->content_type) : NULL;
    r->retry_after = res->retry_after ? loyd_xstrdup(res->retry_after) : NULL;
    r->closed_before = client_closed;
}

static void result_free(struct result *r)
{
    free(r->body);
    free(r->content_type);
    free(r->retry_after);
    memset(r, 0, sizeof(*r));
}

static int start(const struct loyd_http_opts *o, struct result *r)
{
    in_start = true;
    int rc = loyd_http_client_start(client, o, on_done, r);
    in_start = false;
    return rc;
}

/* Starts a request to the stub and asserts it was accepted. */
static void start_ok(const char *method, const char *path, const char *body, bool follow,
                     uint32_t timeout_ms, size_t max_response, struct result *r)
{
    char *url = loyd_stub_url(stub, path);
    struct loyd_http_opts o = {.method = method,
                               .url = url,
                               .body = body,
                               .body_len = body ? strlen(body) : 0,
                               .follow_redirects = follow,
                               .timeout_ms = timeout_ms,
                               .max_response = max_response};
    int before = r->calls;
    ck_assert_int_eq(start(&o, r), 0);
    ck_assert_int_eq(r->calls, before);
    free(url);
}

static void run_until_calls(struct result *r, int n)
{
    while (r->calls < n)
        uv_run(&loop, UV_RUN_ONCE);
}

static void on_closed(void *arg)
{
    (void)arg;
    client_closed = true;
}

static void close_client(void)
{
    client_closed = false;
    loyd_http_client_close(client, on_closed, NULL);
    ck_assert(!client_closed); /* never from inside close() */
    while (!client_closed)
        uv_run(&loop, UV_RUN_ONCE);
    loyd_http_client_destroy(client);
    client = NULL;
}

static void reopen(const struct loyd_http_client_opts *o)
{
    close_client();
    ck_assert_int_eq(loyd_http_client_create(&loop, o, &client), 0);
}

static void setup(void)
{
    ck_assert_int_eq(curl_global_init(CURL_GLOBAL_DEFAULT), CURLE_OK);
    ck_assert_int_eq(uv_loop_init(&loop), 0);
    stub = loyd_stub_start();
    client_closed = false;
    ck_assert_int_eq(loyd_http_client_create(&loop, NULL, &client), 0);
}

static void teardown(void)
{
    if (client != NULL)
        close_client();
    /* Every poll and the timer are closed: libuv agrees. */
    ck_assert_int_eq(uv_loop_close(&loop), 0);
    loyd_stub_stop(stub);
    stub = NULL;
    curl_global_cleanup();
}

static struct loyd_http_client_stats stats(void)
{
    struct loyd_http_client_stats st;
    loyd_http_client_stats(client, &st);
    return st;
}

/* ---- plain requests ------------------------------------------------------------------------ */

START_TEST(test_get_200)
{
    struct result r = {0};
    struct loyd_stub_req rq;

    loyd_stub_set(stub, "/hello",
                  &(struct loyd_stub_reply){
                      .status = 200,
                      .body = "hello world",
                      .headers = (const char *const[]){"Content-Type: text/plain; charset=utf-8",
                                                       "X-Other: 1", NULL}});
    start_ok(NULL, "/hello?a=1&b=two", NULL, false, 0, 0, &r);
    run_until_calls(&r, 1);
    ck_assert_int_eq(r.calls, 1);
    ck_assert_int_eq(r.err, 0);
    ck_assert_int_eq(r.status, 200);
    ck_assert_str_eq(r.body, "hello world");
    ck_assert_uint_eq(r.body_len, 11);
    ck_assert_str_eq(r.content_type, "text/plain; charset=utf-8");
    ck_assert_ptr_null(r.retry_after);

    ck_assert(loyd_stub_last(stub, "/hello", &rq));
    ck_assert_str_eq(rq.method, "GET");
    ck_assert_str_eq(rq.query, "a=1&b=two");
    ck_assert_uint_eq(rq.body_len, 0);
    ck_assert_str_eq(loyd_stub_req_header(&rq, "User-Agent"), "loyd");
    loyd_stub_req_free(&rq);

    struct loyd_http_client_stats st = stats();
    ck_assert_uint_eq(st.started, 1);
    ck_assert_uint_eq(st.ok_2xx, 1);
    ck_assert_uint_eq(st.inflight, 0);
    result_free(&r);
}
END_TEST

START_TEST(test_empty_body_and_head)
{
    struct result r = {0};
    struct loyd_stub_req rq;

    loyd_stub_set(stub, "/empty", &(struct loyd_stub_reply){.status = 204});
    start_ok("GET", "/empty", NULL, false, 0, 0, &r);
    run_until_calls(&r, 1);
    ck_assert_int_eq(r.err, 0);
    ck_assert_int_eq(r.status, 204);
    ck_assert_str_eq(r.body, "");
    ck_assert_uint_eq(r.body_len, 0);

    loyd_stub_route(stub, "/head", 200, "not sent for HEAD", 0);
    start_ok("HEAD", "/head", NULL, false, 0, 0, &r);
    run_until_calls(&r, 2);
    ck_assert_int_eq(r.err, 0);
    ck_assert_int_eq(r.status, 200);
    ck_assert_uint_eq(r.body_len, 0);
    ck_assert(loyd_stub_last(stub, "/head", &rq));
    ck_assert_str_eq(rq.method, "HEAD");
    loyd_stub_req_free(&rq);
    result_free(&r);
}
END_TEST

START_TEST(test_post_body_intact)
{
    struct result r = {0};
    struct loyd_stub_req rq;
    /* Binary, with NULs, larger than curl's old Expect: 100-continue threshold. */
    size_t len = 5000;
    char *body = loyd_xmalloc(len);
    for (size_t i = 0; i < len; i++)
        body[i] = (char)(i * 7 % 256);
    char *url = loyd_stub_url(stub, "/echo");
    const char *hdrs[] = {"Content-Type: application/octet-stream", "X-Trace: 42", NULL};
    struct loyd_http_opts o = {
        .method = "POST", .url = url, .headers = hdrs, .body = body, .body_len = len};

    loyd_stub_route(stub, "/echo", 201, "created", 0);
    ck_assert_int_eq(start(&o, &r), 0);
    /* start() copied everything: scribble over the caller's copies before the transfer. */
    memset(body, 'Z', len);
    free(url);
    run_until_calls(&r, 1);
    ck_assert_int_eq(r.err, 0);
    ck_assert_int_eq(r.status, 201);
    ck_assert_str_eq(r.body, "created");

    ck_assert(loyd_stub_last(stub, "/echo", &rq));
    ck_assert_str_eq(rq.method, "POST");
    ck_assert_uint_eq(rq.body_len, len);
    for (size_t i = 0; i < len; i++)
        ck_assert_int_eq((unsigned char)rq.body[i], (unsigned char)(i * 7 % 256));
    ck_assert_str_eq(loyd_stub_req_header(&rq, "Content-Type"), "application/octet-stream");
    ck_assert_str_eq(loyd_stub_req_header(&rq, "X-Trace"), "42");
    ck_assert_ptr_null(loyd_stub_req_header(&rq, "Expect"));
    loyd_stub_req_free(&rq);
    free(body);
    result_free(&r);
}
END_TEST

/* A caller that asks for "Expect: 100-continue" gets it; the stub answers 100 first. */
START_TEST(test_expect_continue)
{
    struct result r = {0};
    struct loyd_stub_req rq;
    char *url = loyd_stub_url(stub, "/up");
    const char *hdrs[] = {"Expect: 100-continue", NULL};
    struct loyd_http_opts o = {
        .method = "PUT", .url = url, .headers = hdrs, .body = "payload", .body_len = 7};

    loyd_stub_route(stub, "/up", 200, "stored", 0);
    ck_assert_int_eq(start(&o, &r), 0);
    free(url);
    run_until_calls(&r, 1);
    ck_assert_int_eq(r.err, 0);
    ck_assert_str_eq(r.body, "stored");
    ck_assert(loyd_stub_last(stub, "/up", &rq));
    ck_assert_str_eq(rq.method, "PUT");
    ck_assert_str_eq(rq.body, "payload");
    ck_assert_str_eq(loyd_stub_req_header(&rq, "Expect"), "100-continue");
    loyd_stub_req_free(&rq);
    result_free(&r);
}
END_TEST

START_TEST(test_other_methods)
{
    struct result r = {0};
    struct loyd_stub_req rq;

    loyd_stub_route(stub, "/m", 200, "ok", 0);
    start_ok("PATCH", "/m", "{\"x\":1}", false, 0, 0, &r);
    run_until_calls(&r, 1);
    ck_assert_int_eq(r.err, 0);
    ck_assert(loyd_stub_last(stub, "/m", &rq));
    ck_assert_str_eq(rq.method, "PATCH");
    ck_assert_str_eq(rq.body, "{\"x\":1}");
    loyd_stub_req_free(&rq);

    start_ok("DELETE", "/m", NULL, false, 0, 0, &r);
    run_until_calls(&r, 2);
    ck_assert_int_eq(r.err, 0);
    ck_assert(loyd_stub_last(stub, "/m", &rq));
    ck_assert_str_eq(rq.method, "DELETE");
    ck_assert_uint_eq(rq.body_len, 0);
    loyd_stub_req_free(&rq);

    start_ok("POST", "/m", NULL, false, 0, 0, &r); /* POST without a body */
    run_until_calls(&r, 3);
    ck_assert_int_eq(r.err, 0);
    ck_assert(loyd_stub_last(stub, "/m", &rq));
    ck_assert_str_eq(rq.method, "POST");
    ck_assert_str_eq(loyd_stub_req_header(&rq, "Content-Length"), "0");
    loyd_stub_req_free(&rq);
    result_free(&r);
}
END_TEST

START_TEST(test_4xx_5xx_are_responses)
{
    struct result a = {0}, b = {0}, c = {0};

    loyd_stub_route(stub, "/missing", 404, "{\"error\":\"NOT_FOUND\"}", 0);
    loyd_stub_set(
        stub, "/busy",
        &(struct loyd_stub_reply){.status = 503,
                                  .body = "try later",
                                  .headers = (const char *const[]){"Retry-After:  7 ", NULL}});
    loyd_stub_set(stub, "/rate",
                  &(struct loyd_stub_reply){
                      .status = 429, .headers = (const char *const[]){"retry-after: 2", NULL}});
    start_ok("GET", "/missing", NULL, false, 0, 0, &a);
    start_ok("POST", "/busy", "x=1", false, 0, 0, &b);
    start_ok("GET", "/rate", NULL, false, 0, 0, &c);
    run_until_calls(&a, 1);
    run_until_calls(&b, 1);
    run_until_calls(&c, 1);
    ck_assert_int_eq(a.err, 0);
    ck_assert_int_eq(a.status, 404);
    ck_assert_str_eq(a.body, "{\"error\":\"NOT_FOUND\"}");
    ck_assert_int_eq(b.err, 0);
    ck_assert_int_eq(b.status, 503);
    ck_assert_str_eq(b.body, "try later");
    ck_assert_str_eq(b.retry_after, "7");
    ck_assert_int_eq(c.err, 0);
    ck_assert_int_eq(c.status, 429);
    ck_assert_str_eq(c.retry_after, "2");

    struct loyd_http_client_stats st = stats();
    ck_assert_uint_eq(st.http_4xx, 2);
    ck_assert_uint_eq(st.http_5xx, 1);
    ck_assert_uint_eq(st.ok_2xx, 0);
    ck_assert_uint_eq(st.transport_errors, 0);
    result_free(&a);
    result_free(&b);
    result_free(&c);
}
END_TEST

START_TEST(test_header_values_bounded)
{
    struct result r = {0};
    char longct[400];
    char hdr[450];

    memset(longct, 'a', sizeof(longct) - 1);
    longct[sizeof(longct) - 1] = '\0';
    snprintf(hdr, sizeof(hdr), "Content-Type: text/%s", longct);
    loyd_stub_set(
        stub, "/longct",
        &(struct loyd_stub_reply){.status = 200,
                                  .body = "b",
                                  .headers = (const char *const[]){hdr, "Retry-After: 120", NULL}});
    start_ok("GET", "/longct", NULL, false, 0, 0, &r);
    run_until_calls(&r, 1);
    ck_assert_int_eq(r.err, 0);
    ck_assert_ptr_null(r.content_type); /* over LOYD_HTTP_MAX_HEADER_VALUE: dropped */
    ck_assert_str_eq(r.retry_after, "120");
    result_free(&r);
}
END_TEST

/* ---- limits -------------------------------------------------------------------------------- */

START_TEST(test_timeout)
{
    struct result r = {0};

    loyd_stub_hang(stub, "/hang");
    start_ok("GET", "/hang", NULL, false, 200, 0, &r);
    run_until_calls(&r, 1);
    ck_assert_int_eq(r.err, -ETIMEDOUT);
    ck_assert_int_eq(r.status, 0);
    ck_assert_uint_eq(r.body_len, 0);
    ck_assert_uint_eq(loyd_stub_hits(stub, "/hang"), 1); /* it did reach the server */
    ck_assert_uint_eq(stats().timeouts, 1);
    ck_assert_uint_eq(stats().inflight, 0);

    /* A slow answer after the headers started also counts: the timeout is the whole
     * transfer. */
    loyd_stub_route(stub, "/slow", 200, "late", 5000);
    start_ok("GET", "/slow", NULL, false, 200, 0, &r);
    run_until_calls(&r, 2);
    ck_assert_int_eq(r.err, -ETIMEDOUT);
    result_free(&r);
}
END_TEST

START_TEST(test_default_timeout)
{
    struct result r = {0};

    reopen(&(struct loyd_http_client_opts){.default_timeout_ms = 200});
    loyd_stub_hang(stub, "/hang");
    start_ok("GET", "/hang", NULL, false, 0, 0, &r);
    run_until_calls(&r, 1);
    ck_assert_int_eq(r.err, -ETIMEDOUT);
    result_free(&r);
}
END_TEST

START_TEST(test_too_big)
{
    struct result r = {0};

    /* Announced by Content-Length: refused as soon as the headers arrive. */
    loyd_stub_set(stub, "/big", &(struct loyd_stub_reply){.status = 200, .fill_len = 100000});
    /* Chunked: no length up front, so the write callback's cap has to catch it. */
    loyd_stub_set(stub, "/bigchunked",
                  &(struct loyd_stub_reply){.status = 200, .fill_len = 100000, .chunked = true});
    /* Exactly at the cap is fine, both ways. */
    loyd_stub_set(stub, "/exact", &(struct loyd_stub_reply){.status = 200, .fill_len = 1000});
    loyd_stub_set(stub, "/exactchunked",
                  &(struct loyd_stub_reply){.status = 200, .fill_len = 1000, .chunked = true});

    start_ok("GET", "/big", NULL, false, 0, 1000, &r);
    run_until_calls(&r, 1);
    ck_assert_int_eq(r.err, LOYD_ETOOBIG);
    ck_assert_uint_eq(r.body_len, 0);

    start_ok("GET", "/bigchunked", NULL, false, 0, 1000, &r);
    run_until_calls(&r, 2);
    ck_assert_int_eq(r.err, LOYD_ETOOBIG);
    ck_assert_int_eq(r.status, 200); /* the status line did arrive */
    ck_assert_uint_eq(r.body_len, 0);

    start_ok("GET", "/exact", NULL, false, 0, 1000, &r);
    run_until_calls(&r, 3);
    ck_assert_int_eq(r.err, 0);
    ck_assert_uint_eq(r.body_len, 1000);

    start_ok("GET", "/exactchunked", NULL, false, 0, 1000, &r);
    run_until_calls(&r, 4);
    ck_assert_int_eq(r.err, 0);
    ck_assert_uint_eq(r.body_len, 1000);
    ck_assert_uint_eq(strspn(r.body, "x"), 1000);

    /* The announced length alone is refused: the body never comes, yet no timeout. */
    loyd_stub_set(stub, "/announced",
                  &(struct loyd_stub_reply){.status = 200, .fill_len = 100000, .stall_body = true});
    start_ok("GET", "/announced", NULL, false, 5000, 1000, &r);
    run_until_calls(&r, 5);
    ck_assert_int_eq(r.err, LOYD_ETOOBIG);

    ck_assert_uint_eq(stats().too_big, 3);
    ck_assert_uint_eq(stats().ok_2xx, 2);
    result_free(&r);
}
END_TEST

START_TEST(test_default_max_response)
{
    struct result r = {0};

    reopen(&(struct loyd_http_client_opts){.default_max_response = 500});
    loyd_stub_set(stub, "/k",
                  &(struct loyd_stub_reply){.status = 200, .fill_len = 1000, .chunked = true});
    start_ok("GET", "/k", NULL, false, 0, 0, &r);
    run_until_calls(&r, 1);
    ck_assert_int_eq(r.err, LOYD_ETOOBIG);
    /* A per-request cap overrides the default. */
    start_ok("GET", "/k", NULL, false, 0, 2000, &r);
    run_until_calls(&r, 2);
    ck_assert_int_eq(r.err, 0);
    ck_assert_uint_eq(r.body_len, 1000);
    result_free(&r);
}
END_TEST

/* ---- redirects ----------------------------------------------------------------------------- */

START_TEST(test_redirect_post_followed)
{
    static const int codes[] = {301, 302, 303, 307, 308};
    const char *body = "auth[domain]=new.bitrix24.ru&data[FIELDS][ID]=759";

    loyd_stub_set(stub, "/new",
                  &(struct loyd_stub_reply){
                      .status = 200,
                      .body = "{\"result\":true}",
                      .headers = (const char *const[]){"Content-Type: application/json", NULL}});
    for (size_t i = 0; i < LOYD_ARRAY_SIZE(codes); i++) {
        struct result r = {0};
        struct loyd_stub_req rq;
        char old[32];
        snprintf(old, sizeof(old), "/old%d", codes[i]);
        /* The hop's own headers must not leak into the final response. */
        loyd_stub_set(
            stub, old,
            &(struct loyd_stub_reply){.status = codes[i],
                                      .location = "/new",
                                      .headers = (const char *const[]){"Content-Type: text/html",
                                                                       "Retry-After: 5", NULL}});
        start_ok("POST", old, body, true, 0, 0, &r);
        run_until_calls(&r, 1);
        ck_assert_msg(r.err == 0, "%d: err %d", codes[i], r.err);
        ck_assert_int_eq(r.status, 200);
        ck_assert_str_eq(r.body, "{\"result\":true}");
        ck_assert_str_eq(r.content_type, "application/json");
        ck_assert_ptr_null(r.retry_after);
        ck_assert_uint_eq(loyd_stub_hits(stub, old), 1);
        ck_assert_uint_eq(loyd_stub_hits(stub, "/new"), i + 1);
        ck_assert(loyd_stub_last(stub, "/new", &rq));
        ck_assert_msg(strcmp(rq.method, "POST") == 0, "%d re-sent as %s", codes[i], rq.method);
        ck_assert_str_eq(rq.body, body);
        ck_assert_uint_eq(rq.body_len, strlen(body));
        loyd_stub_req_free(&rq);
        result_free(&r);
    }
}
END_TEST

START_TEST(test_redirect_patch_followed)
{
    struct result r = {0};
    struct loyd_stub_req rq;

    loyd_stub_route(stub, "/new", 200, "ok", 0);
    loyd_stub_redirect(stub, "/old", 302, "/new");
    start_ok("PATCH", "/old", "[1,2]", true, 0, 0, &r);
    run_until_calls(&r, 1);
    ck_assert_int_eq(r.err, 0);
    ck_assert_int_eq(r.status, 200);
    ck_assert(loyd_stub_last(stub, "/new", &rq));
    ck_assert_str_eq(rq.method, "PATCH");
    ck_assert_str_eq(rq.body, "[1,2]");
    loyd_stub_req_free(&rq);
    result_free(&r);
}
END_TEST

/* A portal move to another host keeps the POST body but not the Authorization header. */
START_TEST(test_redirect_other_host_drops_auth)
{
    struct result r = {0};
    struct loyd_stub_req rq;
    struct loyd_stub *other = loyd_stub_start();
    char *target = loyd_stub_url(other, "/rest/crm.deal.get");
    char *url = loyd_stub_url(stub, "/rest/crm.deal.get");
    const char *hdrs[] = {"Authorization: Bearer abc", "X-Keep: 1", NULL};
    struct loyd_http_opts o = {.method = "POST",
                               .url = url,
                               .headers = hdrs,
                               .body = "id=759",
                               .body_len = 6,
                               .follow_redirects = true};

    loyd_stub_redirect(stub, "/rest/crm.deal.get", 302, target);
    loyd_stub_route(other, "/rest/crm.deal.get", 200, "{}", 0);
    ck_assert_int_eq(start(&o, &r), 0);
    run_until_calls(&r, 1);
    ck_assert_int_eq(r.err, 0);
    ck_assert_int_eq(r.status, 200);
    ck_assert(loyd_stub_last(stub, "/rest/crm.deal.get", &rq));
    ck_assert_str_eq(loyd_stub_req_header(&rq, "Authorization"), "Bearer abc");
    loyd_stub_req_free(&rq);
    ck_assert(loyd_stub_last(other, "/rest/crm.deal.get", &rq));
    ck_assert_str_eq(rq.method, "POST");
    ck_assert_str_eq(rq.body, "id=759");
    ck_assert_str_eq(loyd_stub_req_header(&rq, "X-Keep"), "1");
    ck_assert_ptr_null(loyd_stub_req_header(&rq, "Authorization"));
    loyd_stub_req_free(&rq);
    free(url);
    free(target);
    close_client(); /* before the second stub goes: no connection to it stays open */
    loyd_stub_stop(other);
    result_free(&r);
}
END_TEST

START_TEST(test_redirect_not_followed)
{
    struct result r = {0};

    loyd_stub_route(stub, "/new", 200, "ok", 0);
    loyd_stub_redirect(stub, "/old", 302, "/new");
    start_ok("POST", "/old", "a=1", false, 0, 0, &r);
    run_until_calls(&r, 1);
    ck_assert_int_eq(r.err, 0);
    ck_assert_int_eq(r.status, 302);
    ck_assert_uint_eq(loyd_stub_hits(stub, "/old"), 1);
    ck_assert_uint_eq(loyd_stub_hits(stub, "/new"), 0);
    result_free(&r);
}
END_TEST

START_TEST(test_redirect_limits)
{
    struct result r = {0};

    /* Default max_redirects = 3: the first request plus three hops, then an error. */
    loyd_stub_redirect(stub, "/loop", 302, "/loop");
    start_ok("GET", "/loop", NULL, true, 0, 0, &r);
    run_until_calls(&r, 1);
    ck_assert_int_eq(r.err, LOYD_EHTTP);
    ck_assert_uint_eq(loyd_stub_hits(stub, "/loop"), 4);

    /* Redirects only go to http/https. */
    loyd_stub_redirect(stub, "/ftp", 302, "ftp://127.0.0.1:1/file");
    start_ok("GET", "/ftp", NULL, true, 0, 0, &r);
    run_until_calls(&r, 2);
    ck_assert_int_eq(r.err, LOYD_EHTTP);
    ck_assert_uint_eq(stats().transport_errors, 2);
    result_free(&r);
}
END_TEST

/* ---- transport errors ---------------------------------------------------------------------- */

/* A port that was bound and then closed: nothing listens there. */
static int closed_port(void)
{
    struct sockaddr_in sa = {.sin_family = AF_INET, .sin_port = 0};
    socklen_t len = sizeof(sa);
    int fd = socket(AF_INET, SOCK_STREAM, 0);

    ck_assert_int_ge(fd, 0);
    sa.sin_addr.s_addr = htonl(INADDR_LOOPBACK);
    ck_assert_int_eq(bind(fd, (struct sockaddr *)&sa, sizeof(sa)), 0);
    ck_assert_int_eq(getsockname(fd, (struct sockaddr *)&sa, &len), 0);
    close(fd);
    return ntohs(sa.sin_port);
}

START_TEST(test_connection_refused)
{
    struct result r = {0};
    char url[64];

    snprintf(url, sizeof(url), "http://127.0.0.1:%d/x", closed_port());
    ck_assert_int_eq(start(&(struct loyd_http_opts){.url = url}, &r), 0);
    ck_assert_int_eq(r.calls, 0);
    run_until_calls(&r, 1);
    ck_assert_int_eq(r.calls, 1);
    ck_assert_int_eq(r.err, LOYD_EHTTP);
    ck_assert_int_eq(r.status, 0);
    ck_assert_uint_eq(stats().transport_errors, 1);
    result_free(&r);
}
END_TEST

START_TEST(test_dropped_connection)
{
    struct result r = {0};

    loyd_stub_drop(stub, "/drop");
    start_ok("GET", "/drop", NULL, false, 0, 0, &r);
    run_until_calls(&r, 1);
    ck_assert_int_eq(r.err, LOYD_EHTTP);
    ck_assert_uint_eq(loyd_stub_hits(stub, "/drop"), 1);
    result_free(&r);
}
END_TEST

/* Captures what the client logs to stderr, through a file in a temporary directory. */
struct capture {
    char dir[32], path[64];
    int fd, saved;
};

static void capture_begin(struct capture *cap)
{
    snprintf(cap->dir, sizeof(cap->dir), "/tmp/loyd_client_XXXXXX");
    ck_assert_ptr_nonnull(mkdtemp(cap->dir));
    snprintf(cap->path, sizeof(cap->path), "%s/stderr", cap->dir);
    cap->fd = open(cap->path, O_CREAT | O_RDWR | O_TRUNC, 0600);
    ck_assert_int_ge(cap->fd, 0);
    cap->saved = dup(STDERR_FILENO);
    ck_assert_int_ge(cap->saved, 0);
    ck_assert_int_ge(dup2(cap->fd, STDERR_FILENO), 0);
}

/* @return new: everything logged since capture_begin. */
static char *capture_end(struct capture *cap)
{
    char *buf = loyd_xmalloc(8192);

    ck_assert_int_ge(dup2(cap->saved, STDERR_FILENO), 0);
    close(cap->saved);
    ssize_t n = pread(cap->fd, buf, 8191, 0);
    ck_assert_int_ge(n, 0);
    buf[n] = '\0';
    close(cap->fd);
    unlink(cap->path);
    rmdir(cap->dir);
    return buf;
}

/* The error line names method, scheme, host and path, and nothing that may carry a secret. */
START_TEST(test_log_redacts_secrets)
{
    struct result r = {0};
    struct capture cap;
    char url[160], want[160];
    const char *hdrs[] = {"Authorization: Bearer SECRET_HEADER", NULL};
    int port = closed_port();

    capture_begin(&cap);
    snprintf(url, sizeof(url),
             "http://user:SECRET_PASS@127.0.0.1:%d/rest/crm.deal.get?auth=SECRET_Q", port);
    struct loyd_http_opts o = {
        .method = "POST", .url = url, .headers = hdrs, .body = "SECRET_BODY", .body_len = 11};
    ck_assert_int_eq(start(&o, &r), 0);
    /* Bitrix24 incoming webhooks carry their code in the path; token-like segments too. */
    snprintf(url, sizeof(url), "http://127.0.0.1:%d/rest/1/abcdef/crm.deal.get.json", port);
    ck_assert_int_eq(start(&(struct loyd_http_opts){.url = url}, &r), 0);
    snprintf(url, sizeof(url), "http://127.0.0.1:%d/hook/tok_8f3k2j4h5g6d7s8a9/x/%s", port,
             "12345678901234567890");
    ck_assert_int_eq(start(&(struct loyd_http_opts){.url = url}, &r), 0);
    run_until_calls(&r, 3);
    char *log = capture_end(&cap);

    ck_assert_int_eq(r.err, LOYD_EHTTP);
    snprintf(want, sizeof(want), "[client] POST http://127.0.0.1:%d/rest/crm.deal.get: ", port);
    ck_assert_msg(strstr(log, want) != NULL, "log was: %s", log);
    snprintf(want, sizeof(want), "GET http://127.0.0.1:%d/rest/1/***/crm.deal.get.json: ", port);
    ck_assert_msg(strstr(log, want) != NULL, "log was: %s", log);
    snprintf(want, sizeof(want), "GET http://127.0.0.1:%d/hook/***/x/12345678901234567890: ", port);
    ck_assert_msg(strstr(log, want) != NULL, "log was: %s", log);
    ck_assert_msg(strstr(log, "SECRET") == NULL, "secret logged: %s", log);
    ck_assert_msg(strstr(log, "auth=") == NULL, "query logged: %s", log);
    ck_assert_msg(strstr(log, "abcdef") == NULL && strstr(log, "8f3k") == NULL, "log: %s", log);
    free(log);
    result_free(&r);
}
END_TEST

START_TEST(test_bad_arguments)
{
    struct result r = {0};
    char *url = loyd_stub_url(stub, "/x");
    const char *crlf[] = {"X-A: 1\r\nX-B: 2", NULL};
    const char *nocolon[] = {"X-A 1", NULL};

    ck_assert_int_eq(start(&(struct loyd_http_opts){.url = NULL}, &r), -EINVAL);
    ck_assert_int_eq(start(&(struct loyd_http_opts){.url = "not a url"}, &r), -EINVAL);
    ck_assert_int_eq(start(&(struct loyd_http_opts){.url = "ftp://127.0.0.1/x"}, &r), -EINVAL);
    ck_assert_int_eq(start(&(struct loyd_http_opts){.url = "file:///etc/passwd"}, &r), -EINVAL);
    ck_assert_int_eq(start(&(struct loyd_http_opts){.url = url, .method = "GE T"}, &r), -EINVAL);
    ck_assert_int_eq(start(&(struct loyd_http_opts){.url = url, .method = ""}, &r), -EINVAL);
    ck_assert_int_eq(start(&(struct loyd_http_opts){.url = url, .headers = crlf}, &r), -EINVAL);
    ck_assert_int_eq(start(&(struct loyd_http_opts){.url = url, .headers = nocolon}, &r), -EINVAL);
    ck_assert_int_eq(start(&(struct loyd_http_opts){.url = url, .body_len = 5}, &r), -EINVAL);
    ck_assert_int_eq(
        loyd_http_client_start(client, &(struct loyd_http_opts){.url = url}, NULL, NULL), -EINVAL);
    for (int i = 0; i < 5; i++)
        uv_run(&loop, UV_RUN_NOWAIT);
    ck_assert_int_eq(r.calls, 0); /* refused starts never call back */
    ck_assert_uint_eq(stats().started, 0);
    ck_assert_uint_eq(loyd_stub_hits(stub, NULL), 0);
    free(url);
}
END_TEST

/* ---- concurrency and reentrancy ------------------------------------------------------------ */

/* Answers with the query string, so each response can be matched to its request. */
static void echo_query(void *arg, const struct loyd_stub_req *req, struct loyd_stub_reply *reply)
{
    (void)arg;
    reply->status = 200;
    reply->body_owned = loyd_xstrdup(req->query);
    reply->body_len = strlen(req->query);
    reply->delay_ms = 20;
}

START_TEST(test_50_concurrent)
{
    enum { N = 50 };
    static struct result rs[N];
    int done;

    loyd_stub_handler(stub, "/echo", echo_query, NULL);
    for (int i = 0; i < N; i++) {
        char path[32];
        snprintf(path, sizeof(path), "/echo?i=%d", i);
        start_ok("GET", path, NULL, false, 0, 0, &rs[i]);
    }
    ck_assert_uint_eq(stats().inflight, N);
    do {
        uv_run(&loop, UV_RUN_ONCE);
        done = 0;
        for (int i = 0; i < N; i++)
            done += rs[i].calls;
    } while (done < N);
    for (int i = 0; i < N; i++) {
        char want[32];
        snprintf(want, sizeof(want), "i=%d", i);
        ck_assert_int_eq(rs[i].calls, 1);
        ck_assert_int_eq(rs[i].err, 0);
        ck_assert_int_eq(rs[i].status, 200);
        ck_assert_str_eq(rs[i].body, want);
        result_free(&rs[i]);
    }
    struct loyd_http_client_stats st = stats();
    ck_assert_uint_eq(st.started, N);
    ck_assert_uint_eq(st.ok_2xx, N);
    ck_assert_uint_eq(st.inflight, 0);
    ck_assert_uint_eq(loyd_stub_hits(stub, "/echo"), N);
}
END_TEST

/* Polls the stub from the test loop until it has seen n requests to path. */
static void on_poll_timer(uv_timer_t *t)
{
    (void)t;
}

static void run_until_hits(const char *path, unsigned n)
{
    uv_timer_t t;
    ck_assert_int_eq(uv_timer_init(&loop, &t), 0);
    ck_assert_int_eq(uv_timer_start(&t, on_poll_timer, 5, 5), 0);
    while (loyd_stub_hits(stub, path) < n)
        uv_run(&loop, UV_RUN_ONCE);
    uv_close((uv_handle_t *)&t, NULL);
    uv_run(&loop, UV_RUN_NOWAIT);
}

START_TEST(test_close_cancels_in_flight)
{
    enum { N = 5 };
    struct result rs[N] = {{0}};
    struct result late = {0};

    loyd_stub_hang(stub, "/hang");
    for (int i = 0; i < N; i++)
        start_ok("POST", "/hang", "x", false, 0, 0, &rs[i]);
    run_until_hits("/hang", N); /* all five are connected and waiting */
    ck_assert_uint_eq(stats().inflight, N);

    client_closed = false;
    loyd_http_client_close(client, on_closed, NULL);
    for (int i = 0; i < N; i++)
        ck_assert_int_eq(rs[i].calls, 0); /* delivered later, on the loop */
    char *url = loyd_stub_url(stub, "/hang");
    ck_assert_int_eq(start(&(struct loyd_http_opts){.url = url}, &late), LOYD_ECLOSED);
    free(url);
    while (!client_closed)
        uv_run(&loop, UV_RUN_ONCE);
    for (int i = 0; i < N; i++) {
        ck_assert_int_eq(rs[i].calls, 1);
        ck_assert_int_eq(rs[i].err, -ECANCELED);
        ck_assert_int_eq(rs[i].status, 0);
        ck_assert(!rs[i].closed_before); /* each request's cb before the close cb */
        result_free(&rs[i]);
    }
    ck_assert_int_eq(late.calls, 0);
    struct loyd_http_client_stats st = stats();
    ck_assert_uint_eq(st.cancelled, N);
    ck_assert_uint_eq(st.inflight, 0);
    loyd_http_client_destroy(client);
    client = NULL;
    ck_assert_int_eq(uv_loop_close(&loop), 0);
    /* teardown closes the loop again: re-init so it has something valid to close. */
    ck_assert_int_eq(uv_loop_init(&loop), 0);
}
END_TEST

START_TEST(test_close_before_connect_and_idle)
{
    struct result r = {0};

    /* Started but the loop never ran: not even connected. */
    loyd_stub_route(stub, "/ok", 200, "ok", 0);
    start_ok("GET", "/ok", NULL, false, 0, 0, &r);
    close_client();
    ck_assert_int_eq(r.calls, 1);
    ck_assert_int_eq(r.err, -ECANCELED);
    ck_assert_uint_eq(loyd_stub_hits(stub, "/ok"), 0);

    /* A finished request leaves a kept-alive connection in curl's cache: close cleans it. */
    ck_assert_int_eq(loyd_http_client_create(&loop, NULL, &client), 0);
    start_ok("GET", "/ok", NULL, false, 0, 0, &r);
    run_until_calls(&r, 2);
    ck_assert_int_eq(r.err, 0);
    close_client();
    ck_assert_int_eq(uv_loop_close(&loop), 0);
    ck_assert_int_eq(uv_loop_init(&loop), 0);
    result_free(&r);
}
END_TEST

/* Each completion starts the next request, from inside its callback. */
struct chain {
    int step, steps;
    struct result r;
    int errs[4];
    long statuses[4];
};

static void chain_done(void *arg, int err, const struct loyd_http_response *res)
{
    struct chain *ch = arg;

    ck_assert(!in_start);
    ch->errs[ch->step] = err;
    ch->statuses[ch->step] = res->status;
    ch->step++;
    if (ch->step < ch->steps) {
        char path[32];
        snprintf(path, sizeof(path), "/step%d", ch->step);
        char *url = loyd_stub_url(stub, path);
        in_start = true;
        int rc =
            loyd_http_client_start(client, &(struct loyd_http_opts){.url = url}, chain_done, ch);
        in_start = false;
        ck_assert_int_eq(rc, 0);
        free(url);
    }
}

START_TEST(test_start_from_callback)
{
    struct chain ch = {.steps = 4};

    loyd_stub_route(stub, "/step0", 200, "0", 0);
    loyd_stub_route(stub, "/step1", 201, "1", 0);
    loyd_stub_route(stub, "/step2", 404, "2", 0);
    loyd_stub_route(stub, "/step3", 200, "3", 0);
    char *url = loyd_stub_url(stub, "/step0");
    in_start = true;
    ck_assert_int_eq(
        loyd_http_client_start(client, &(struct loyd_http_opts){.url = url}, chain_done, &ch), 0);
    in_start = false;
    free(url);
    while (ch.step < ch.steps)
        uv_run(&loop, UV_RUN_ONCE);
    ck_assert_int_eq(ch.errs[0], 0);
    ck_assert_int_eq(ch.statuses[0], 200);
    ck_assert_int_eq(ch.statuses[1], 201);
    ck_assert_int_eq(ch.statuses[2], 404);
    ck_assert_int_eq(ch.statuses[3], 200);
    for (int i = 1; i < 4; i++)
        ck_assert_int_eq(ch.errs[i], 0);
    ck_assert_uint_eq(stats().started, 4);
    ck_assert_uint_eq(stats().inflight, 0);
}
END_TEST

/* A completion callback that closes the client while another request is in flight. */
static struct result closer_other;
static int closer_start_rc;

static void closer_done(void *arg, int err, const struct loyd_http_response *res)
{
    struct result *r = arg;
    char *url = loyd_stub_url(stub, "/fast");

    on_done(r, err, res);
    loyd_http_client_close(client, on_closed, NULL);
    closer_start_rc = loyd_http_client_start(client, &(struct loyd_http_opts){.url = url}, on_done,
                                             &closer_other);
    free(url);
}

START_TEST(test_close_from_callback)
{
    struct result first = {0}, hanging = {0};

    loyd_stub_route(stub, "/fast", 200, "fast", 0);
    loyd_stub_hang(stub, "/hang");
    start_ok("GET", "/hang", NULL, false, 0, 0, &hanging);
    run_until_hits("/hang", 1);
    char *url = loyd_stub_url(stub, "/fast");
    ck_assert_int_eq(
        loyd_http_client_start(client, &(struct loyd_http_opts){.url = url}, closer_done, &first),
        0);
    free(url);
    client_closed = false;
    while (!client_closed)
        uv_run(&loop, UV_RUN_ONCE);
    ck_assert_int_eq(first.calls, 1);
    ck_assert_int_eq(first.err, 0);
    ck_assert_str_eq(first.body, "fast");
    ck_assert_int_eq(hanging.calls, 1);
    ck_assert_int_eq(hanging.err, -ECANCELED);
    ck_assert_int_eq(closer_start_rc, LOYD_ECLOSED);
    ck_assert_int_eq(closer_other.calls, 0);
    loyd_http_client_destroy(client);
    client = NULL;
    ck_assert_int_eq(uv_loop_close(&loop), 0);
    ck_assert_int_eq(uv_loop_init(&loop), 0);
    result_free(&first);
    result_free(&hanging);
}
END_TEST

/* The stub itself: keep-alive reuse, HEAD-less 404 for unknown paths, re-scripted routes. */
START_TEST(test_stub_basics)
{
    struct result r = {0};
    struct loyd_stub_req rq;

    start_ok("GET", "/nowhere", NULL, false, 0, 0, &r);
    run_until_calls(&r, 1);
    ck_assert_int_eq(r.status, 404);
    ck_assert(loyd_stub_last(stub, NULL, &rq));
    ck_assert_str_eq(rq.path, "/nowhere");
    loyd_stub_req_free(&rq);
    ck_assert(!loyd_stub_last(stub, "/never", &rq));

    loyd_stub_route(stub, "/r", 200, "one", 0);
    start_ok("GET", "/r", NULL, false, 0, 0, &r);
    run_until_calls(&r, 2);
    ck_assert_str_eq(r.body, "one");
    loyd_stub_route(stub, "/r", 500, "two", 0);
    start_ok("GET", "/r", NULL, false, 0, 0, &r);
    run_until_calls(&r, 3);
    ck_assert_int_eq(r.status, 500);
    ck_assert_str_eq(r.body, "two");
    ck_assert_uint_eq(loyd_stub_hits(stub, "/r"), 2);
    ck_assert_uint_eq(loyd_stub_hits(stub, NULL), 3);
    result_free(&r);
}
END_TEST

Suite *http_client_suite(void)
{
    Suite *s = suite_create("http_client");
    TCase *tc = tcase_create("client");

    tcase_add_checked_fixture(tc, setup, teardown);
    tcase_set_timeout(tc, 10);
    tcase_add_test(tc, test_get_200);
    tcase_add_test(tc, test_empty_body_and_head);
    tcase_add_test(tc, test_post_body_intact);
    tcase_add_test(tc, test_other_methods);
    tcase_add_test(tc, test_expect_continue);
    tcase_add_test(tc, test_4xx_5xx_are_responses);
    tcase_add_test(tc, test_header_values_bounded);
    tcase_add_test(tc, test_timeout);
    tcase_add_test(tc, test_default_timeout);
    tcase_add_test(tc, test_too_big);
    tcase_add_test(tc, test_default_max_response);
    tcase_add_test(tc, test_redirect_post_followed);
    tcase_add_test(tc, test_redirect_patch_followed);
    tcase_add_test(tc, test_redirect_other_host_drops_auth);
    tcase_add_test(tc, test_redirect_not_followed);
    tcase_add_test(tc, test_redirect_limits);
    tcase_add_test(tc, test_connection_refused);
    tcase_add_test(tc, test_dropped_connection);
    tcase_add_test(tc, test_log_redacts_secrets);
    tcase_add_test(tc, test_bad_arguments);
    tcase_add_test(tc, test_50_concurrent);
    tcase_add_test(tc, test_close_cancels_in_flight);
    tcase_add_test(tc, test_close_before_connect_and_idle);
    tcase_add_test(tc, test_start_from_callback);
    tcase_add_test(tc, test_close_from_callback);
    tcase_add_test(tc, test_stub_basics);
    suite_add_tcase(s, tc);
    return s;
}
