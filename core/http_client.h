/* SPDX-License-Identifier: MIT */
/*
 * The outbound HTTP client: libcurl's multi socket API driven by the daemon's libuv loop.
 *
 * One client per loop.  It owns one CURLM handle, one uv_timer_t (curl's timeout), one
 * uv_poll_t per socket curl asks us to watch, and every in-flight request (its easy handle,
 * header list, request body copy and response buffer).  Nothing here blocks the loop: DNS goes
 * through libcurl's threaded resolver, and every transfer is bounded by a connect timeout, a
 * whole-transfer timeout and a response size cap.
 *
 * Lifecycle: loyd_http_client_create() -> loyd_http_client_start()... ->
 * loyd_http_client_close(cb) -> (cb runs once every handle is closed) ->
 * loyd_http_client_destroy().
 *
 * Threading: loop thread only.  curl_global_init() must have run (main does it).
 */
#ifndef LOYD_HTTP_CLIENT_H
#define LOYD_HTTP_CLIENT_H

#include <stddef.h>
#include <stdint.h>

#include <uv.h>

#include "loyd/plugin.h" /* struct loyd_http_opts, struct loyd_http_response, loyd_http_done_cb */

/* Defaults used when create() gets NULL options, or a member is 0. */
#define LOYD_HTTP_DEFAULT_TIMEOUT_MS 30000u
#define LOYD_HTTP_DEFAULT_CONNECT_TIMEOUT_MS 10000u
#define LOYD_HTTP_DEFAULT_MAX_RESPONSE ((size_t)8 << 20)
#define LOYD_HTTP_DEFAULT_MAX_REDIRECTS 3u

/* Content-Type and Retry-After values longer than this are dropped (reported as NULL). */
#define LOYD_HTTP_MAX_HEADER_VALUE 255u

struct loyd_http_client;

struct loyd_http_client_opts {
    uint32_t default_timeout_ms; /* whole transfer when the request says 0; 0 here: 30000 */
    uint32_t connect_timeout_ms; /* 0: 10000 */
    size_t default_max_response; /* body cap when the request says 0; 0 here: 8 MiB */
    unsigned max_redirects;      /* for follow_redirects requests; 0 here: 3 */
};

/* Counters since create(); a request is counted once, when its callback runs. */
struct loyd_http_client_stats {
    uint64_t started;          /* start() calls that returned 0 */
    uint64_t ok_2xx;           /* err 0 with a 2xx status */
    uint64_t http_4xx;         /* err 0 with a 4xx status */
    uint64_t http_5xx;         /* err 0 with a 5xx status */
    uint64_t timeouts;         /* -ETIMEDOUT */
    uint64_t too_big;          /* LOYD_ETOOBIG */
    uint64_t transport_errors; /* LOYD_EHTTP (and -ENOMEM while buffering a response) */
    uint64_t cancelled;        /* -ECANCELED by close() */
    size_t inflight;           /* started, callback not yet run */
};

/**
 * Creates a client on @p loop.
 * @param o  borrowed, copied; NULL (or 0 members) means the defaults above.
 * @param out  new client, freed by loyd_http_client_destroy() after loyd_http_client_close().
 * @return 0, or LOYD_EHTTP when curl cannot make a multi handle.  Loop thread only.
 */
LOYD_MUST_CHECK int loyd_http_client_create(uv_loop_t *loop, const struct loyd_http_client_opts *o,
                                            struct loyd_http_client **out);

/**
 * Starts a request; never blocks the loop.
 *
 * Everything needed is copied from @p o (URL, method, headers, body), so the caller may free it
 * as soon as this returns.  @p cb is called exactly once, later (never from inside this call),
 * on the loop thread, with a response that is never NULL:
 *   - err 0: a response arrived, whatever its status (the caller inspects res->status);
 *   - -ETIMEDOUT: the connect or whole-transfer timeout expired;
 *   - LOYD_ETOOBIG: the body exceeded max_response (res->status may be set, the body is empty);
 *   - LOYD_EHTTP: any other transport failure (refused, reset, DNS, TLS, too many redirects,
 *     redirect to a scheme other than http/https); logged once here with curl's message;
 *   - -ENOMEM: the response body could not be buffered;
 *   - -ECANCELED: loyd_http_client_close() ran first.
 * On an error res->body is "" and res->body_len 0.  res and everything it points to is
 * borrowed until cb returns.  cb may start new requests, and may call loyd_http_client_close().
 *
 * With o->follow_redirects, 301/302/303/307/308 are followed (at most max_redirects hops)
 * re-sending the SAME method and body: Bitrix24 moves a portal with a 302 and the POST must
 * stay intact.  Without it, a 3xx is an ordinary response.  Redirects go to http/https only,
 * and (curl's rule) an Authorization or Cookie header is not re-sent to another host or port.
 *
 * @return 0; -EINVAL for a NULL/unparsable URL, a scheme other than http/https, a malformed
 * method or a header containing CR/LF; LOYD_ECLOSED after close(); LOYD_EHTTP if curl refuses
 * the request; -ENOMEM if the body cannot be copied.  On error cb is not called.
 */
LOYD_MUST_CHECK int loyd_http_client_start(struct loyd_http_client *c,
                                           const struct loyd_http_opts *o, loyd_http_done_cb cb,
                                           void *arg);

/** Copies the counters into @p out. */
void loyd_http_client_stats(const struct loyd_http_client *c, struct loyd_http_client_stats *out);

/**
 * Asynchronous teardown.  Right away: every in-flight transfer is removed from curl and the
 * multi handle is cleaned up while the loop is still alive; then every socket poll and the
 * timer are closed.  Later, on the loop: each cancelled request's callback gets -ECANCELED,
 * then @p cb(@p arg) runs once every handle is closed (never from inside this call).  After
 * that only loyd_http_client_destroy() may be called (it may be called from @p cb).
 * Call it once.  May be called from a request callback.
 */
void loyd_http_client_close(struct loyd_http_client *c, void (*cb)(void *arg), void *arg);

/** Frees a client whose close callback has run.  Accepts NULL. */
void loyd_http_client_destroy(struct loyd_http_client *c);

#endif
