/* SPDX-License-Identifier: MIT */
/*
 * A raw-socket HTTP/1.1 client for the httpd tests: blocking sockets on 127.0.0.1 with a
 * receive timeout, so a broken server fails a test instead of hanging it.  It sends bytes
 * exactly as given (split, pipelined, malformed) and reads responses framed by Content-Length.
 * Test code only; call it from the test's own thread, never from the server's loop thread.
 */
#ifndef LOYD_TEST_HTTPD_CLIENT_H
#define LOYD_TEST_HTTPD_CLIENT_H

#include <stdbool.h>
#include <stddef.h>

struct httpd_client {
    int fd;
    char *buf; /* received, not yet consumed */
    size_t len, cap;
};

struct httpd_client_response {
    int status;
    char *head; /* status line and headers, NUL-terminated, CRLFs kept */
    char *body; /* NUL-terminated */
    size_t body_len;
};

/** Connects to 127.0.0.1:port with a 5 s receive timeout.  @return 0 or -errno. */
int httpd_client_connect(struct httpd_client *c, int port);
/** Sends all of data (MSG_NOSIGNAL).  @return 0 or -errno (-EPIPE once the server closed). */
int httpd_client_send(struct httpd_client *c, const void *data, size_t len);
int httpd_client_sends(struct httpd_client *c, const char *s);
/**
 * Reads one response (a 1xx one too).  @return 0, -ETIMEDOUT, -EPIPE (closed before a whole
 * response), -ECONNRESET or -EPROTO (unparseable).  Free *r with httpd_client_response_free.
 */
int httpd_client_read(struct httpd_client *c, struct httpd_client_response *r);
/** Same; head: the answer to a HEAD request, whose Content-Length announces no body. */
int httpd_client_read_ex(struct httpd_client *c, struct httpd_client_response *r, bool head);
/** @return new copy of the first header called name (case-insensitive), or NULL; free() it. */
char *httpd_client_header(const struct httpd_client_response *r, const char *name);
/** Reads and discards until the server closes: @return true on EOF or reset, false on timeout. */
bool httpd_client_wait_closed(struct httpd_client *c);
/** Closes with SO_LINGER 0, so the server sees a reset rather than an orderly close. */
void httpd_client_reset(struct httpd_client *c);
void httpd_client_close(struct httpd_client *c);
void httpd_client_response_free(struct httpd_client_response *r);

#endif
