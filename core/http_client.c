/* SPDX-License-Identifier: MIT */
/*
 * The outbound HTTP client (see http_client.h): curl's multi socket API on the libuv loop.
 *
 * This file owns the CURLM handle, the uv_timer_t curl uses for its timeouts, one uv_poll_t per
 * socket curl wants watched (struct http_sock), and every request in flight (struct http_req:
 * the easy handle, its header list, the copied request body and the capped response buffer).
 *
 * The control flow follows STYLE.md section 8: curl tells us which sockets to poll and when to
 * wake up; uv tells curl about readiness and expiry through curl_multi_socket_action(); after
 * every socket_action we drain curl's completion messages and run the user callbacks from
 * there, outside any curl callback, so user callbacks may start new requests or close the
 * client.  curl callbacks (socket, timer, write, header) never call curl_multi_* (except
 * curl_multi_assign, which curl documents as allowed inside the socket callback).
 */
#include "http_client.h"

#include <errno.h>
#include <stdbool.h>
#include <stdlib.h>
#include <string.h>
#include <strings.h>

#include <curl/curl.h>

#include "log.h"
#include "util.h"

/* The longest method name we accept; real ones are at most 7 ("OPTIONS"). */
#define METHOD_MAX 16

/* The response buffer starts at this size (or the cap, if smaller) and doubles. */
#define RESP_INITIAL 16384

struct http_sock {
    uv_poll_t poll; /* first member: the close callback frees the sock */
    curl_socket_t fd;
    struct loyd_http_client *client;
    struct http_sock *prev, *next;
};

struct http_req {
    struct http_req *prev, *next;
    struct loyd_http_client *client;
    CURL *easy;
    struct curl_slist *headers;
    char *body;    /* our copy of the request body; curl reads it through POSTFIELDS */
    char *log_url; /* "METHOD scheme://host[:port]/path": never the query, never a header */
    loyd_http_done_cb cb;
    void *arg;

    char *resp; /* NUL-terminated; grows up to max_response + 1 bytes */
    size_t resp_len, resp_cap, max_response;
    bool too_big; /* the write callback refused data past max_response */
    bool oom;     /* the write callback could not grow resp */

    /* Captured from the last response's headers only (reset at each status line). */
    char content_type[LOYD_HTTP_MAX_HEADER_VALUE + 1];
    char retry_after[LOYD_HTTP_MAX_HEADER_VALUE + 1];
    bool has_content_type, has_retry_after;

    char errbuf[CURL_ERROR_SIZE];
};

struct loyd_http_client {
    uv_timer_t timer; /* first member; curl's single timeout */
    uv_loop_t *loop;
    CURLM *multi; /* NULL once close() cleaned it up */
    struct loyd_http_client_opts opts;
    struct loyd_http_client_stats stats;
    struct http_req *reqs;      /* in curl, callback pending */
    struct http_req *cancelled; /* removed from curl by close(), callback pending */
    struct http_sock *socks;    /* every sock not yet freed, closing ones included */
    bool closing, timer_closed, finished;
    void (*close_cb)(void *arg);
    void *close_arg;
};

/* ---- small helpers ----------------------------------------------------------------------- */

static void req_link(struct http_req **head, struct http_req *r)
{
    r->prev = NULL;
    r->next = *head;
    if (*head != NULL)
        (*head)->prev = r;
    *head = r;
}

static void req_unlink(struct http_req **head, struct http_req *r)
{
    if (r->prev != NULL)
        r->prev->next = r->next;
    else
        *head = r->next;
    if (r->next != NULL)
        r->next->prev = r->prev;
    r->prev = r->next = NULL;
}

static void req_free(struct http_req *r)
{
    if (r == NULL)
        return;
    if (r->easy != NULL)
        curl_easy_cleanup(r->easy);
    curl_slist_free_all(r->headers);
    free(r->body);
    free(r->log_url);
    free(r->resp);
    free(r);
}

/* An RFC 9110 token: what a method may be made of. */
static bool method_ok(const char *m)
{
    size_t n = strlen(m);

    if (n == 0 || n > METHOD_MAX)
        return false;
    for (size_t i = 0; i < n; i++) {
        unsigned char ch = (unsigned char)m[i];
        if (!((ch >= 'A' && ch <= 'Z') || (ch >= 'a' && ch <= 'z') || (ch >= '0' && ch <= '9') ||
              strchr("!#$%&'*+-.^_`|~", ch) != NULL))
            return false;
    }
    return true;
}

static bool header_ok(const char *h)
{
    /* A CR or LF would let a value smuggle extra headers or a second request. */
    return strpbrk(h, "\r\n") == NULL && strchr(h, ':') != NULL && h[0] != ':';
}

static bool header_named(const char *h, const char *name)
{
    size_t n = strlen(name);
    return strncasecmp(h, name, n) == 0 && h[n] == ':';
}

/* The longest path we log; longer ones are cut (the log line has its own limit too). */
#define LOG_PATH_MAX 200

/*
 * A path segment that looks like a credential: long, made only of token characters, with both
 * letters and digits.  Bitrix24 incoming-webhook codes ("b4z8hbq3m1i9pw2a") match; method
 * names ("crm.deal.get") and numeric ids (Zoho's 19-digit ones) do not.
 */
static bool segment_secret(const char *seg, size_t len)
{
    bool alpha = false, digit = false;

    if (len < 16)
        return false;
    for (size_t i = 0; i < len; i++) {
        unsigned char ch = (unsigned char)seg[i];
        if (ch >= '0' && ch <= '9')
            digit = true;
        else if ((ch >= 'a' && ch <= 'z') || (ch >= 'A' && ch <= 'Z'))
            alpha = true;
        else if (ch != '_' && ch != '-')
            return false;
    }
    return alpha && digit;
}

/*
 * The path as we log it.  Bitrix24 incoming webhooks carry their secret in the path
 * (/rest/<user_id>/<code>/<method>), so that segment, and any segment that looks like a token,
 * becomes "***".  @return new.
 */
static char *redact_path(const char *path)
{
    struct loyd_buf b = {0};
    const char *p = path;
    int idx = 0;
    bool bitrix_rest = false, bitrix_user = false;

    while (*p != '\0') {
        if (*p == '/') {
            loyd_buf_append(&b, "/", 1);
            p++;
            continue;
        }
        size_t len = strcspn(p, "/");
        bool secret = segment_secret(p, len) || (bitrix_user && idx == 2);
        if (idx == 0)
            bitrix_rest = len == 4 && memcmp(p, "rest", 4) == 0;
        if (idx == 1)
            bitrix_user = bitrix_rest && len > 0 && strspn(p, "0123456789") == len;
        if (secret)
            loyd_buf_puts(&b, "***");
        else
            loyd_buf_append(&b, p, len);
        p += len;
        idx++;
    }
    if (b.len > LOG_PATH_MAX) {
        b.len = LOG_PATH_MAX;
        b.data[b.len] = '\0';
        loyd_buf_puts(&b, "...");
    }
    if (b.data == NULL)
        loyd_buf_puts(&b, "/");
    return b.data;
}

/*
 * Parses the URL once up front so that a bad one fails synchronously with -EINVAL, and builds
 * the redacted form we log: the query and userinfo may carry tokens (Bitrix24 OAuth calls pass
 * auth=<token>), so only scheme, host, port and the redacted path are kept.
 */
static int url_check(const char *method, const char *url, char **log_url)
{
    CURLU *u = curl_url();
    char *scheme = NULL, *host = NULL, *port = NULL, *path = NULL;
    int rc = -EINVAL;

    if (u == NULL)
        return -ENOMEM;
    if (curl_url_set(u, CURLUPART_URL, url, 0) != CURLUE_OK)
        goto done;
    if (curl_url_get(u, CURLUPART_SCHEME, &scheme, 0) != CURLUE_OK ||
        (strcasecmp(scheme, "http") != 0 && strcasecmp(scheme, "https") != 0))
        goto done;
    if (curl_url_get(u, CURLUPART_HOST, &host, 0) != CURLUE_OK)
        goto done;
    if (curl_url_get(u, CURLUPART_PORT, &port, 0) != CURLUE_OK)
        port = NULL; /* none given: the scheme's default */
    if (curl_url_get(u, CURLUPART_PATH, &path, 0) != CURLUE_OK)
        path = NULL;
    char *safe = redact_path(path ? path : "/");
    *log_url = loyd_xasprintf("%s %s://%s%s%s%s", method, scheme, host, port ? ":" : "",
                              port ? port : "", safe);
    free(safe);
    rc = 0;
done:
    curl_free(scheme);
    curl_free(host);
    curl_free(port);
    curl_free(path);
    curl_url_cleanup(u);
    return rc;
}

/* ---- curl callbacks: they only touch the request, never the multi handle ------------------- */

static size_t on_write(char *p, size_t size, size_t nmemb, void *ud)
{
    struct http_req *r = ud;
    size_t n = size * nmemb; /* curl documents size as always 1 */

    if (n > r->max_response - r->resp_len) {
        r->too_big = true;
        return 0; /* curl aborts the transfer with CURLE_WRITE_ERROR */
    }
    if (r->resp_len + n + 1 > r->resp_cap) {
        size_t cap = r->resp_cap ? r->resp_cap : RESP_INITIAL;
        while (cap < r->resp_len + n + 1)
            cap *= 2;
        if (cap > r->max_response + 1)
            cap = r->max_response + 1; /* never more than the cap allows */
        /* The size comes from the peer, so a failure is reported, not fatal. */
        char *q = realloc(r->resp, cap);
        if (q == NULL) {
            r->oom = true;
            return 0;
        }
        r->resp = q;
        r->resp_cap = cap;
    }
    memcpy(r->resp + r->resp_len, p, n);
    r->resp_len += n;
    r->resp[r->resp_len] = '\0';
    return n;
}

/* Stores the trimmed value of a header line if it is short enough; drops it otherwise. */
static void capture_value(const char *v, size_t len, char *dst, bool *has)
{
    while (len > 0 && (*v == ' ' || *v == '\t')) {
        v++;
        len--;
    }
    while (len > 0 &&
           (v[len - 1] == '\r' || v[len - 1] == '\n' || v[len - 1] == ' ' || v[len - 1] == '\t'))
        len--;
    /* A truncated Content-Type could mislead a parser; a dropped one reads as "unknown". */
    if (len > LOYD_HTTP_MAX_HEADER_VALUE) {
        *has = false;
        return;
    }
    memcpy(dst, v, len);
    dst[len] = '\0';
    *has = true;
}

static size_t on_header(char *p, size_t size, size_t nmemb, void *ud)
{
    struct http_req *r = ud;
    size_t n = size * nmemb;
    static const char ct[] = "content-type:", ra[] = "retry-after:";

    /* Every response (1xx, each redirect hop, the final one) starts with its status line;
     * only the final response's headers may describe the body we hand back. */
    if (n >= 5 && memcmp(p, "HTTP/", 5) == 0) {
        r->has_content_type = r->has_retry_after = false;
        return n;
    }
    if (n >= sizeof(ct) - 1 && strncasecmp(p, ct, sizeof(ct) - 1) == 0)
        capture_value(p + sizeof(ct) - 1, n - (sizeof(ct) - 1), r->content_type,
                      &r->has_content_type);
    else if (n >= sizeof(ra) - 1 && strncasecmp(p, ra, sizeof(ra) - 1) == 0)
        capture_value(p + sizeof(ra) - 1, n - (sizeof(ra) - 1), r->retry_after,
                      &r->has_retry_after);
    return n;
}

static void sock_on_close(uv_handle_t *h);
static void on_poll(uv_poll_t *p, int status, int events);

/* CURLMOPT_SOCKETFUNCTION: curl says which events it wants on fd (or that it is done). */
static int on_curl_socket(CURL *e, curl_socket_t fd, int what, void *userp, void *sockp)
{
    struct loyd_http_client *c = userp;
    struct http_sock *s = sockp;
    (void)e;

    if (what == CURL_POLL_REMOVE) {
        /* Stopping clears libuv's fd slot now, so curl may reuse the fd number at once;
         * the memory goes in the close callback.  curl forgets sockp by itself. */
        if (s != NULL && !uv_is_closing((uv_handle_t *)&s->poll)) {
            uv_poll_stop(&s->poll);
            uv_close((uv_handle_t *)&s->poll, sock_on_close);
        }
        return 0;
    }
    if (s == NULL) {
        s = loyd_xcalloc(1, sizeof(*s));
        s->fd = fd;
        s->client = c;
        int rc = uv_poll_init_socket(c->loop, &s->poll, fd);
        if (rc != 0) {
            loyd_log_err(CLIENT, "watching socket %d: %s", (int)fd, uv_strerror(rc));
            free(s);
            return -1; /* curl fails the transfers using this socket */
        }
        s->next = c->socks;
        if (c->socks != NULL)
            c->socks->prev = s;
        c->socks = s;
        /* Documented as safe inside the socket callback; it is how curl hands s back. */
        curl_multi_assign(c->multi, fd, s);
    }
    int ev = ((what & CURL_POLL_IN) ? UV_READABLE : 0) | ((what & CURL_POLL_OUT) ? UV_WRITABLE : 0);
    int rc = uv_poll_start(&s->poll, ev, on_poll);
    if (rc != 0) {
        loyd_log_err(CLIENT, "polling socket %d: %s", (int)fd, uv_strerror(rc));
        return -1;
    }
    return 0;
}

static void on_timer(uv_timer_t *t);

/* CURLMOPT_TIMERFUNCTION: curl wants socket_action(CURL_SOCKET_TIMEOUT) after ms. */
static int on_curl_timer(CURLM *m, long ms, void *userp)
{
    struct loyd_http_client *c = userp;
    (void)m;

    if (ms < 0) {
        uv_timer_stop(&c->timer);
        return 0;
    }
    /* Never call socket_action from here; and a 0 ms uv timer would run again within the same
     * timer phase, starving I/O, so the shortest wait is 1 ms. */
    uv_timer_start(&c->timer, on_timer, ms == 0 ? 1 : (uint64_t)ms, 0);
    return 0;
}

/* ---- completion ---------------------------------------------------------------------------- */

static int map_result(struct http_req *r, CURLcode cc)
{
    switch (cc) {
    case CURLE_OK:
        return 0;
    case CURLE_OPERATION_TIMEDOUT:
        return -ETIMEDOUT;
    case CURLE_FILESIZE_EXCEEDED: /* Content-Length above CURLOPT_MAXFILESIZE_LARGE */
        return LOYD_ETOOBIG;
    case CURLE_WRITE_ERROR:
        if (r->too_big)
            return LOYD_ETOOBIG;
        if (r->oom)
            return -ENOMEM;
        return LOYD_EHTTP;
    default:
        return LOYD_EHTTP;
    }
}

/* Runs the callback exactly once, then frees the request.  r is unlinked already. */
static void req_finish(struct http_req *r, int err, CURLcode cc)
{
    struct loyd_http_client *c = r->client;
    struct loyd_http_response res = {.body = "", .body_len = 0};
    long status = 0;

    if (r->easy != NULL && err != -ECANCELED)
        curl_easy_getinfo(r->easy, CURLINFO_RESPONSE_CODE, &status);
    res.status = status;

    /* Translated once, here: the only place that sees curl's own message. */
    const char *why = r->errbuf[0] ? r->errbuf : curl_easy_strerror(cc);
    switch (err) {
    case 0:
        res.body = r->resp != NULL ? r->resp : "";
        res.body_len = r->resp_len;
        res.content_type = r->has_content_type ? r->content_type : NULL;
        res.retry_after = r->has_retry_after ? r->retry_after : NULL;
        if (curl_easy_getinfo(r->easy, CURLINFO_EFFECTIVE_URL, &res.effective_url) != CURLE_OK)
            res.effective_url = NULL;
        if (status >= 200 && status < 300)
            c->stats.ok_2xx++;
        else if (status >= 400 && status < 500)
            c->stats.http_4xx++;
        else if (status >= 500 && status < 600)
            c->stats.http_5xx++;
        break;
    case -ETIMEDOUT:
        c->stats.timeouts++;
        loyd_log_warn(CLIENT, "%s: timed out: %s", r->log_url, why);
        break;
    case LOYD_ETOOBIG:
        c->stats.too_big++;
        loyd_log_warn(CLIENT, "%s: response larger than %zu bytes, aborted", r->log_url,
                      r->max_response);
        break;
    case -ECANCELED:
        c->stats.cancelled++;
        break;
    case -ENOMEM:
        c->stats.transport_errors++;
        loyd_log_err(CLIENT, "%s: out of memory buffering the response", r->log_url);
        break;
    default:
        c->stats.transport_errors++;
        loyd_log_warn(CLIENT, "%s: %s (curl %d)", r->log_url, why, (int)cc);
        break;
    }
    LOYD_REQUIRE(c->stats.inflight > 0);
    c->stats.inflight--;
    r->cb(r->arg, err, &res);
    req_free(r);
}

/* After every socket_action: hand finished transfers to their callbacks. */
static void drain(struct loyd_http_client *c)
{
    CURLMsg *m;
    int left;

    /* A callback may close the client, which cleans up the multi handle: re-check it. */
    while (c->multi != NULL && (m = curl_multi_info_read(c->multi, &left)) != NULL) {
        if (m->msg != CURLMSG_DONE)
            continue;
        CURL *easy = m->easy_handle;
        CURLcode cc = m->data.result; /* copy: m dies on remove */
        char *priv = NULL;
        curl_easy_getinfo(easy, CURLINFO_PRIVATE, &priv);
        struct http_req *r = (struct http_req *)priv;
        LOYD_REQUIRE(r != NULL && r->easy == easy);
        curl_multi_remove_handle(c->multi, easy);
        req_unlink(&c->reqs, r);
        req_finish(r, map_result(r, cc), cc);
    }
}

static void on_poll(uv_poll_t *p, int status, int events)
{
    struct http_sock *s = (struct http_sock *)p; /* poll is the first member */
    struct loyd_http_client *c = s->client;
    int running, flags = CURL_CSELECT_ERR; /* status < 0, e.g. UV_EBADF */

    if (c->multi == NULL)
        return;
    if (status >= 0)
        flags = ((events & UV_READABLE) ? CURL_CSELECT_IN : 0) |
                ((events & UV_WRITABLE) ? CURL_CSELECT_OUT : 0);
    CURLMcode mc = curl_multi_socket_action(c->multi, s->fd, flags, &running);
    if (mc != CURLM_OK)
        loyd_log_err(CLIENT, "socket_action on %d: %s", (int)s->fd, curl_multi_strerror(mc));
    drain(c);
}

static void on_timer(uv_timer_t *t)
{
    struct loyd_http_client *c = (struct loyd_http_client *)t; /* timer is the first member */
    int running;

    if (c->multi == NULL)
        return;
    CURLMcode mc = curl_multi_socket_action(c->multi, CURL_SOCKET_TIMEOUT, 0, &running);
    if (mc != CURLM_OK)
        loyd_log_err(CLIENT, "socket_action on timeout: %s", curl_multi_strerror(mc));
    drain(c); /* even when running == 0 */
}

/* ---- teardown -------------------------------------------------------------------------------- */

static void maybe_finish(struct loyd_http_client *c)
{
    if (!c->closing || c->finished || !c->timer_closed || c->socks != NULL || c->cancelled != NULL)
        return;
    c->finished = true;
    if (c->close_cb != NULL)
        c->close_cb(c->close_arg); /* last: it may destroy c */
}

static void sock_on_close(uv_handle_t *h)
{
    struct http_sock *s = (struct http_sock *)h;
    struct loyd_http_client *c = s->client;

    if (s->prev != NULL)
        s->prev->next = s->next;
    else
        c->socks = s->next;
    if (s->next != NULL)
        s->next->prev = s->prev;
    free(s);
    maybe_finish(c);
}

static void timer_on_close(uv_handle_t *h)
{
    struct loyd_http_client *c = (struct loyd_http_client *)h;

    c->timer_closed = true;
    /* Cancellations are delivered here, on the loop, not from inside close(): a caller that
     * closes while holding its own state does not get re-entered. */
    while (c->cancelled != NULL) {
        struct http_req *r = c->cancelled;
        req_unlink(&c->cancelled, r);
        req_finish(r, -ECANCELED, CURLE_OK);
    }
    maybe_finish(c);
}

void loyd_http_client_close(struct loyd_http_client *c, void (*cb)(void *arg), void *arg)
{
    LOYD_REQUIRE(!c->closing); /* close() is called once */
    c->closing = true;
    c->close_cb = cb;
    c->close_arg = arg;

    while (c->reqs != NULL) {
        struct http_req *r = c->reqs;
        curl_multi_remove_handle(c->multi, r->easy); /* may REMOVE sockets: fine, it is us */
        req_unlink(&c->reqs, r);
        req_link(&c->cancelled, r);
    }
    /* While the loop is alive: the cleanup may still tell us to stop polling sockets. */
    curl_multi_cleanup(c->multi);
    c->multi = NULL;
    /* Whatever curl did not REMOVE is closed here, so no handle outlives the client. */
    for (struct http_sock *s = c->socks; s != NULL; s = s->next)
        if (!uv_is_closing((uv_handle_t *)&s->poll)) {
            uv_poll_stop(&s->poll);
            uv_close((uv_handle_t *)&s->poll, sock_on_close);
        }
    uv_close((uv_handle_t *)&c->timer, timer_on_close);
}

void loyd_http_client_destroy(struct loyd_http_client *c)
{
    if (c == NULL)
        return;
    /* The timer is registered with the loop from create() on; freeing it before its close
     * callback ran would corrupt the loop. */
    LOYD_REQUIRE(c->finished);
    free(c);
}

/* ---- public API ---------------------------------------------------------------------------- */

int loyd_http_client_create(uv_loop_t *loop, const struct loyd_http_client_opts *o,
                            struct loyd_http_client **out)
{
    static bool warned;
    struct loyd_http_client *c = loyd_xcalloc(1, sizeof(*c));
    CURLMcode mc = CURLM_OK;

    c->loop = loop;
    if (o != NULL)
        c->opts = *o;
    if (c->opts.default_timeout_ms == 0)
        c->opts.default_timeout_ms = LOYD_HTTP_DEFAULT_TIMEOUT_MS;
    if (c->opts.connect_timeout_ms == 0)
        c->opts.connect_timeout_ms = LOYD_HTTP_DEFAULT_CONNECT_TIMEOUT_MS;
    if (c->opts.default_max_response == 0)
        c->opts.default_max_response = LOYD_HTTP_DEFAULT_MAX_RESPONSE;
    if (c->opts.max_redirects == 0)
        c->opts.max_redirects = LOYD_HTTP_DEFAULT_MAX_REDIRECTS;

    const curl_version_info_data *vi = curl_version_info(CURLVERSION_NOW);
    if (!warned && (vi->features & CURL_VERSION_ASYNCHDNS) == 0) {
        warned = true;
        loyd_log_warn(CLIENT, "libcurl %s has no asynchronous resolver: DNS will block the loop",
                      vi->version);
    }

    c->multi = curl_multi_init();
    if (c->multi == NULL) {
        loyd_log_err(CLIENT, "curl_multi_init failed (was curl_global_init called?)");
        free(c);
        return LOYD_EHTTP;
    }
    if (mc == CURLM_OK)
        mc = curl_multi_setopt(c->multi, CURLMOPT_SOCKETFUNCTION, on_curl_socket);
    if (mc == CURLM_OK)
        mc = curl_multi_setopt(c->multi, CURLMOPT_SOCKETDATA, c);
    if (mc == CURLM_OK)
        mc = curl_multi_setopt(c->multi, CURLMOPT_TIMERFUNCTION, on_curl_timer);
    if (mc == CURLM_OK)
        mc = curl_multi_setopt(c->multi, CURLMOPT_TIMERDATA, c);
    if (mc != CURLM_OK) {
        loyd_log_err(CLIENT, "curl_multi_setopt: %s", curl_multi_strerror(mc));
        curl_multi_cleanup(c->multi);
        free(c);
        return LOYD_EHTTP;
    }
    LOYD_REQUIRE(uv_timer_init(loop, &c->timer) == 0); /* cannot fail on unix */
    *out = c;
    return 0;
}

#define SETOPT(opt, val)                                                                           \
    do {                                                                                           \
        if (cc == CURLE_OK) {                                                                      \
            cc = curl_easy_setopt(r->easy, opt, val);                                              \
            failed_opt = #opt;                                                                     \
        }                                                                                          \
    } while (0)

int loyd_http_client_start(struct loyd_http_client *c, const struct loyd_http_opts *o,
                           loyd_http_done_cb cb, void *arg)
{
    struct http_req *r = NULL;
    CURLcode cc = CURLE_OK;
    const char *failed_opt = "";
    int rc;

    if (c == NULL || o == NULL || cb == NULL || o->url == NULL ||
        (o->body == NULL && o->body_len != 0))
        return -EINVAL;
    if (c->closing)
        return LOYD_ECLOSED;
    const char *method = o->method != NULL ? o->method : "GET";
    if (!method_ok(method))
        return -EINVAL;
    bool caller_expect = false;
    for (const char *const *h = o->headers; h != NULL && *h != NULL; h++) {
        if (!header_ok(*h))
            return -EINVAL;
        caller_expect |= header_named(*h, "Expect");
    }

    r = loyd_xcalloc(1, sizeof(*r));
    r->client = c;
    r->cb = cb;
    r->arg = arg;
    r->max_response = o->max_response ? o->max_response : c->opts.default_max_response;
    if ((rc = url_check(method, o->url, &r->log_url)) != 0)
        goto fail;
    bool has_body = o->body != NULL || strcmp(method, "POST") == 0;
    if (has_body) {
        /* The body size comes from the caller's data, so running out is an error, not an
         * abort. */
        r->body = malloc(o->body_len ? o->body_len : 1);
        if (r->body == NULL) {
            rc = -ENOMEM;
            goto fail;
        }
        if (o->body_len)
            memcpy(r->body, o->body, o->body_len);
    }
    for (const char *const *h = o->headers; h != NULL && *h != NULL; h++) {
        struct curl_slist *l = curl_slist_append(r->headers, *h);
        if (l == NULL) {
            rc = -ENOMEM;
            goto fail;
        }
        r->headers = l;
    }
    if (!caller_expect) {
        /* No "Expect: 100-continue" round trip (and its 1 s stall with servers that ignore
         * it) before larger bodies. */
        struct curl_slist *l = curl_slist_append(r->headers, "Expect:");
        if (l == NULL) {
            rc = -ENOMEM;
            goto fail;
        }
        r->headers = l;
    }

    r->easy = curl_easy_init();
    if (r->easy == NULL) {
        loyd_log_err(CLIENT, "%s: curl_easy_init failed", r->log_url);
        rc = LOYD_EHTTP;
        goto fail;
    }
    uint32_t timeout = o->timeout_ms ? o->timeout_ms : c->opts.default_timeout_ms;
    /* curl takes a long: keep it positive where long has 32 bits. */
    long timeout_l = timeout > INT32_MAX ? INT32_MAX : (long)timeout;
    long connect_l =
        c->opts.connect_timeout_ms > INT32_MAX ? INT32_MAX : (long)c->opts.connect_timeout_ms;
    SETOPT(CURLOPT_PRIVATE, (void *)r);
    SETOPT(CURLOPT_URL, o->url);
    SETOPT(CURLOPT_NOSIGNAL, 1L);
    SETOPT(CURLOPT_PROTOCOLS_STR, "http,https");
    /* http too, so loopback emulators and tests work; the caller chose the first scheme. */
    SETOPT(CURLOPT_REDIR_PROTOCOLS_STR, "http,https");
    SETOPT(CURLOPT_CONNECTTIMEOUT_MS, connect_l);
    SETOPT(CURLOPT_TIMEOUT_MS, timeout_l);
    SETOPT(CURLOPT_ERRORBUFFER, r->errbuf);
    SETOPT(CURLOPT_WRITEFUNCTION, on_write);
    SETOPT(CURLOPT_WRITEDATA, (void *)r);
    SETOPT(CURLOPT_HEADERFUNCTION, on_header);
    SETOPT(CURLOPT_HEADERDATA, (void *)r);
    /* Refuse early when the peer announces a too large body; the write callback still
     * enforces the cap for chunked or lying responses. */
    SETOPT(CURLOPT_MAXFILESIZE_LARGE, (curl_off_t)r->max_response);
    SETOPT(CURLOPT_HTTPHEADER, r->headers);
    SETOPT(CURLOPT_USERAGENT, "loyd");
    if (has_body) {
        SETOPT(CURLOPT_POSTFIELDSIZE_LARGE, (curl_off_t)o->body_len);
        SETOPT(CURLOPT_POSTFIELDS, r->body);
        if (strcmp(method, "POST") != 0)
            SETOPT(CURLOPT_CUSTOMREQUEST, method);
    } else if (strcmp(method, "GET") == 0) {
        SETOPT(CURLOPT_HTTPGET, 1L);
    } else if (strcmp(method, "HEAD") == 0) {
        SETOPT(CURLOPT_NOBODY, 1L);
    } else {
        SETOPT(CURLOPT_CUSTOMREQUEST, method);
    }
    if (o->follow_redirects) {
        /* Bitrix24 moves portals with a 302: keep POST (and its body) on 301/302/303 too.
         * CUSTOMREQUEST methods are kept by curl on every hop. */
        SETOPT(CURLOPT_FOLLOWLOCATION, 1L);
        SETOPT(CURLOPT_MAXREDIRS, (long)c->opts.max_redirects);
        SETOPT(CURLOPT_POSTREDIR, (long)CURL_REDIR_POST_ALL);
    } else {
        SETOPT(CURLOPT_FOLLOWLOCATION, 0L);
    }
    if (cc != CURLE_OK) {
        loyd_log_err(CLIENT, "%s: curl_easy_setopt(%s): %s", r->log_url, failed_opt,
                     curl_easy_strerror(cc));
        rc = LOYD_EHTTP;
        goto fail;
    }
    /* Not a curl callback: adding here is allowed, also from a completion callback.  curl only
     * arms the timer now, so cb cannot run before we return. */
    CURLMcode mc = curl_multi_add_handle(c->multi, r->easy);
    if (mc != CURLM_OK) {
        loyd_log_err(CLIENT, "%s: curl_multi_add_handle: %s", r->log_url, curl_multi_strerror(mc));
        rc = LOYD_EHTTP;
        goto fail;
    }
    req_link(&c->reqs, r);
    c->stats.started++;
    c->stats.inflight++;
    return 0;
fail:
    req_free(r);
    return rc;
}

void loyd_http_client_stats(const struct loyd_http_client *c, struct loyd_http_client_stats *out)
{
    *out = c->stats;
}
