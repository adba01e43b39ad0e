/* SPDX-License-Identifier: MIT */
/*
 * The ceiling for the ingest benchmark: a minimal libuv HTTP/1.1 server that reads each request
 * (headers and a Content-Length body), answers 200 with keep-alive, and does nothing else.  No
 * parsing beyond finding where a request ends, no store, no logging.  loyd's ingest is reported
 * as a share of what this server does on the same machine in the same run.
 *
 *   ceiling PORT      listens on 127.0.0.1:PORT (0: the OS chooses) and prints "port N"
 */
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <strings.h>
#include <uv.h>

static const char answer[] = "HTTP/1.1 200 OK\r\nContent-Length: 3\r\nContent-Type: text/plain\r\n"
                             "\r\nok\n";

struct conn {
    uv_tcp_t tcp;
    char *buf;
    size_t len, cap;
};

static void on_closed(uv_handle_t *h)
{
    struct conn *c = h->data;
    free(c->buf);
    free(c);
}

static void on_written(uv_write_t *w, int status)
{
    (void)status;
    free(w);
}

static void on_alloc(uv_handle_t *h, size_t hint, uv_buf_t *out)
{
    struct conn *c = h->data;
    (void)hint;
    if (c->cap - c->len < 65536) {
        c->cap = c->cap ? c->cap * 2 : 131072;
        c->buf = realloc(c->buf, c->cap);
        if (c->buf == NULL)
            abort();
    }
    *out = uv_buf_init(c->buf + c->len, (unsigned)(c->cap - c->len));
}

/* Length of the first complete request in buf, or 0 if it is not all there yet. */
static size_t request_len(const char *buf, size_t len)
{
    const char *end = NULL;
    for (size_t i = 3; i < len; i++) {
        if (buf[i] == '\n' && buf[i - 1] == '\r' && buf[i - 2] == '\n' && buf[i - 3] == '\r') {
            end = buf + i + 1;
            break;
        }
    }
    if (end == NULL)
        return 0;
    size_t head = (size_t)(end - buf), body = 0;
    for (const char *p = buf; p < end; p++) {
        if ((p == buf || p[-1] == '\n') && (size_t)(end - p) > 15 &&
            strncasecmp(p, "content-length:", 15) == 0) {
            body = strtoul(p + 15, NULL, 10);
            break;
        }
    }
    return head + body <= len ? head + body : 0;
}

static void on_read(uv_stream_t *s, ssize_t n, const uv_buf_t *b)
{
    struct conn *c = s->data;
    (void)b;
    if (n < 0) {
        uv_close((uv_handle_t *)s, on_closed);
        return;
    }
    c->len += (size_t)n;
    size_t used = 0, r, answers = 0;
    while ((r = request_len(c->buf + used, c->len - used)) > 0) {
        used += r;
        answers++;
    }
    if (answers > 0) {
        /* One write per read, as many answers as requests (pipelining). */
        size_t total = answers * (sizeof(answer) - 1);
        uv_write_t *w = malloc(sizeof(*w) + total);
        if (w == NULL)
            abort();
        char *out = (char *)(w + 1);
        for (size_t i = 0; i < answers; i++)
            memcpy(out + i * (sizeof(answer) - 1), answer, sizeof(answer) - 1);
        uv_buf_t wb = uv_buf_init(out, (unsigned)total);
        uv_write(w, s, &wb, 1, on_written);
    }
    memmove(c->buf, c->buf + used, c->len - used);
    c->len -= used;
}

static void on_connection(uv_stream_t *server, int status)
{
    if (status < 0)
        return;
    struct conn *c = calloc(1, sizeof(*c));
    if (c == NULL)
        abort();
    uv_tcp_init(server->loop, &c->tcp);
    c->tcp.data = c;
    if (uv_accept(server, (uv_stream_t *)&c->tcp) != 0) {
        uv_close((uv_handle_t *)&c->tcp, on_closed);
        return;
    }
    uv_tcp_nodelay(&c->tcp, 1);
    uv_read_start((uv_stream_t *)&c->tcp, on_alloc, on_read);
}

int main(int argc, char **argv)
{
    uv_loop_t *loop = uv_default_loop();
    uv_tcp_t server;
    struct sockaddr_in addr;
    struct sockaddr_storage bound;
    int len = sizeof(bound);

    uv_ip4_addr("127.0.0.1", argc > 1 ? atoi(argv[1]) : 0, &addr);
    uv_tcp_init(loop, &server);
    if (uv_tcp_bind(&server, (const struct sockaddr *)&addr, 0) != 0 ||
        uv_listen((uv_stream_t *)&server, 1024, on_connection) != 0) {
        fprintf(stderr, "ceiling: cannot listen\n");
        return 1;
    }
    uv_tcp_getsockname(&server, (struct sockaddr *)&bound, &len);
    printf("port %d\n", ntohs(((struct sockaddr_in *)&bound)->sin_port));
    fflush(stdout);
    return uv_run(loop, UV_RUN_DEFAULT);
}
