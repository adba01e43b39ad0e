/* SPDX-License-Identifier: MIT */
/* The httpd tests' raw-socket client (see httpd_client.h). */
#include "httpd_client.h"

#include <arpa/inet.h>
#include <errno.h>
#include <netinet/in.h>
#include <netinet/tcp.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <strings.h>
#include <sys/socket.h>
#include <sys/time.h>
#include <unistd.h>

#define CLIENT_TIMEOUT_S 5

int httpd_client_connect(struct httpd_client *c, int port)
{
    struct sockaddr_in sa = {.sin_family = AF_INET, .sin_port = htons((uint16_t)port)};
    struct timeval tv = {.tv_sec = CLIENT_TIMEOUT_S};
    int one = 1;

    memset(c, 0, sizeof(*c));
    sa.sin_addr.s_addr = htonl(INADDR_LOOPBACK);
    c->fd = socket(AF_INET, SOCK_STREAM, 0);
    if (c->fd < 0)
        return -errno;
    setsockopt(c->fd, SOL_SOCKET, SO_RCVTIMEO, &tv, sizeof(tv));
    setsockopt(c->fd, SOL_SOCKET, SO_SNDTIMEO, &tv, sizeof(tv));
    setsockopt(c->fd, IPPROTO_TCP, TCP_NODELAY, &one, sizeof(one));
    if (connect(c->fd, (struct sockaddr *)&sa, sizeof(sa)) != 0) {
        int err = -errno;
        close(c->fd);
        c->fd = -1;
        return err;
    }
    return 0;
}

int httpd_client_send(struct httpd_client *c, const void *data, size_t len)
{
    const char *p = data;

    while (len > 0) {
        ssize_t n = send(c->fd, p, len, MSG_NOSIGNAL);
        if (n < 0) {
            if (errno == EINTR)
                continue;
            return errno == EAGAIN ? -ETIMEDOUT : -errno;
        }
        p += n;
        len -= (size_t)n;
    }
    return 0;
}

int httpd_client_sends(struct httpd_client *c, const char *s)
{
    return httpd_client_send(c, s, strlen(s));
}

/* Reads more into the buffer: @return bytes read, 0 on EOF, or -errno. */
static ssize_t fill(struct httpd_client *c)
{
    if (c->cap - c->len < 65536) {
        c->cap = c->cap ? c->cap * 2 : 131072;
        c->buf = realloc(c->buf, c->cap + 1);
        if (c->buf == NULL)
            abort();
    }
    for (;;) {
        ssize_t n = recv(c->fd, c->buf + c->len, c->cap - c->len, 0);
        if (n < 0 && errno == EINTR)
            continue;
        if (n < 0)
            return errno == EAGAIN ? -ETIMEDOUT : -errno;
        c->len += (size_t)n;
        c->buf[c->len] = '\0';
        return n;
    }
}

static void consume(struct httpd_client *c, size_t n)
{
    memmove(c->buf, c->buf + n, c->len - n);
    c->len -= n;
    c->buf[c->len] = '\0'; /* strstr must not find what was consumed */
}

char *httpd_client_header(const struct httpd_client_response *r, const char *name)
{
    size_t nlen = strlen(name);
    const char *line = strstr(r->head, "\r\n");

    while (line != NULL && line[2] != '\0') {
        line += 2;
        const char *end = strstr(line, "\r\n");
        if (end == NULL)
            end = line + strlen(line);
        if ((size_t)(end - line) > nlen && line[nlen] == ':' &&
            strncasecmp(line, name, nlen) == 0) {
            const char *v = line + nlen + 1;
            while (*v == ' ')
                v++;
            return strndup(v, (size_t)(end - v));
        }
        line = *end ? end : NULL;
    }
    return NULL;
}

int httpd_client_read(struct httpd_client *c, struct httpd_client_response *r)
{
    return httpd_client_read_ex(c, r, false);
}

int httpd_client_read_ex(struct httpd_client *c, struct httpd_client_response *r, bool head)
{
    char *eoh;

    memset(r, 0, sizeof(*r));
    while (c->buf == NULL || (eoh = strstr(c->buf, "\r\n\r\n")) == NULL) {
        ssize_t n = fill(c);
        if (n == 0)
            return -EPIPE;
        if (n < 0)
            return (int)n;
    }
    size_t head_len = (size_t)(eoh - c->buf) + 2;
    r->head = strndup(c->buf, head_len);
    if (sscanf(r->head, "HTTP/1.%*d %d", &r->status) != 1) {
        httpd_client_response_free(r);
        return -EPROTO;
    }
    char *cl = httpd_client_header(r, "Content-Length");
    size_t body_len = cl != NULL && !head ? strtoul(cl, NULL, 10) : 0;
    free(cl);
    size_t total = head_len + 2 + body_len;
    while (c->len < total) {
        ssize_t n = fill(c);
        if (n <= 0) {
            httpd_client_response_free(r);
            return n == 0 ? -EPIPE : (int)n;
        }
    }
    r->body = malloc(body_len + 1);
    memcpy(r->body, c->buf + head_len + 2, body_len);
    r->body[body_len] = '\0';
    r->body_len = body_len;
    consume(c, total);
    return 0;
}

bool httpd_client_wait_closed(struct httpd_client *c)
{
    for (;;) {
        ssize_t n = fill(c);
        if (n == 0 || n == -ECONNRESET)
            return true;
        if (n < 0)
            return false;
        consume(c, c->len); /* whatever it still says is not the point */
    }
}

void httpd_client_reset(struct httpd_client *c)
{
    struct linger lg = {.l_onoff = 1, .l_linger = 0};

    if (c->fd >= 0)
        setsockopt(c->fd, SOL_SOCKET, SO_LINGER, &lg, sizeof(lg));
    httpd_client_close(c);
}

void httpd_client_close(struct httpd_client *c)
{
    if (c->fd >= 0)
        close(c->fd);
    c->fd = -1;
    free(c->buf);
    c->buf = NULL;
    c->len = c->cap = 0;
}

void httpd_client_response_free(struct httpd_client_response *r)
{
    free(r->head);
    free(r->body);
    memset(r, 0, sizeof(*r));
}
