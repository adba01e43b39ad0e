/* SPDX-License-Identifier: MIT */
/*
 * A tiny scriptable HTTP/1.1 server for tests, on 127.0.0.1 with a port the OS chooses.
 *
 * It runs in its own thread on its own uv loop, so tests may drive their own loop (or block)
 * while it answers.  Routes are keyed by exact path (the part before '?'), whatever the method;
 * an unknown path gets 404.  A route can answer with a status, headers and a body (given, or
 * N filler bytes, with Content-Length or chunked), after a delay; redirect; hang forever (for
 * client timeouts); close the connection without answering; or call a handler on the stub
 * thread for answers that depend on the request.  Every request is recorded (the last one per
 * path and overall, and hit counts) so tests can assert what a client really sent.
 *
 * Keep-alive, "Expect: 100-continue" and chunked request bodies are supported.  Request limits:
 * 8 KiB URL, 100 headers, 16 MiB body; beyond them the stub answers 431/413 and closes.
 *
 * All functions are thread-safe and may be called while requests are in flight; loyd_stub_*
 * functions abort on failure (they are test fixtures).
 *
 *   struct loyd_stub *s = loyd_stub_start();
 *   loyd_stub_route(s, "/ok", 200, "hello", 0);
 *   char *url = loyd_stub_url(s, "/ok");       ... run the client ...
 *   struct loyd_stub_req rq;
 *   ck_assert(loyd_stub_last(s, "/ok", &rq));  ... assert rq.method, rq.body ...
 *   loyd_stub_req_free(&rq);
 *   free(url);
 *   loyd_stub_stop(s);
 */
#ifndef LOYD_STUB_SERVER_H
#define LOYD_STUB_SERVER_H

#include <stdbool.h>
#include <stddef.h>
#include <stdint.h>

struct loyd_stub;

enum loyd_stub_action {
    LOYD_STUB_RESPOND = 0, /* answer after delay_ms */
    LOYD_STUB_HANG,        /* read the request, never answer; the connection stays open */
    LOYD_STUB_DROP,        /* close the connection without answering */
};

/* What a route answers.  loyd_stub_set() deep-copies it; handlers fill one in. */
struct loyd_stub_reply {
    enum loyd_stub_action action;
    int status;                 /* 0 means 200 */
    const char *const *headers; /* "Name: value" strings, NULL-terminated; may be NULL */
    const char *body;           /* may be NULL (empty body) */
    size_t body_len;            /* 0 with a body: strlen(body) */
    size_t fill_len;            /* > 0: send this many 'x' bytes as the body instead */
    const char *location;       /* non-NULL: adds "Location: <location>" */
    uint32_t delay_ms;          /* wait this long before answering (or dropping) */
    bool chunked;               /* Transfer-Encoding: chunked instead of Content-Length */
    bool stall_body;            /* send status line and headers (announcing the body), then
                                   nothing more; the connection stays open */
    char *body_owned;           /* handlers only: a malloc()ed body (body_len bytes) the stub
                                   frees; takes precedence over body */
};

struct loyd_stub_header {
    char *name, *value;
};

/* One recorded request.  Strings are NUL-terminated; body may contain NULs (use body_len). */
struct loyd_stub_req {
    char *method; /* "GET", "POST"... */
    char *path;   /* without the query */
    char *query;  /* after '?', "" when none */
    char *body;
    size_t body_len;
    struct loyd_stub_header *headers; /* in arrival order */
    size_t n_headers;
};

/*
 * Runs on the stub thread for each request to its route.  `reply` arrives zeroed (200, empty
 * body); pointers put in it must stay valid after the handler returns until the stub answers:
 * use static strings, memory owned by arg, or body_owned.  The stub's lock is not held, so the
 * handler may call loyd_stub_* functions.
 */
typedef void (*loyd_stub_handler_fn)(void *arg, const struct loyd_stub_req *req,
                                     struct loyd_stub_reply *reply);

/** Starts a stub on 127.0.0.1:0 in a new thread.  @return new, freed by loyd_stub_stop(). */
struct loyd_stub *loyd_stub_start(void);
/** Closes every connection, joins the thread, frees everything.  Accepts NULL. */
void loyd_stub_stop(struct loyd_stub *s);

/** The bound port. */
int loyd_stub_port(const struct loyd_stub *s);
/** "http://127.0.0.1:<port><path_and_query>"; @return new, free() it. */
char *loyd_stub_url(const struct loyd_stub *s, const char *path_and_query);

/** Sets (or replaces) the answer for @p path; @p r is copied. */
void loyd_stub_set(struct loyd_stub *s, const char *path, const struct loyd_stub_reply *r);
/** Shorthand: answer @p status with @p body (NULL: empty) after @p delay_ms. */
void loyd_stub_route(struct loyd_stub *s, const char *path, int status, const char *body,
                     uint32_t delay_ms);
/** Shorthand: answer @p status (301, 302...) with "Location: @p location" and no body. */
void loyd_stub_redirect(struct loyd_stub *s, const char *path, int status, const char *location);
/** Shorthand: never answer requests to @p path. */
void loyd_stub_hang(struct loyd_stub *s, const char *path);
/** Shorthand: close the connection without answering. */
void loyd_stub_drop(struct loyd_stub *s, const char *path);
/** Calls @p fn (on the stub thread) to build each answer for @p path. */
void loyd_stub_handler(struct loyd_stub *s, const char *path, loyd_stub_handler_fn fn, void *arg);

/** Requests received for @p path (NULL: for every path, routed or not). */
unsigned loyd_stub_hits(struct loyd_stub *s, const char *path);
/**
 * Copies the last request received for @p path (NULL: the last one overall) into @p out.
 * @return false (and *out zeroed) if there was none.  Free it with loyd_stub_req_free().
 */
bool loyd_stub_last(struct loyd_stub *s, const char *path, struct loyd_stub_req *out);
void loyd_stub_req_free(struct loyd_stub_req *r);
/** @return borrowed: the first value of header @p name (case-insensitive), or NULL. */
const char *loyd_stub_req_header(const struct loyd_stub_req *r, const char *name);

#endif
