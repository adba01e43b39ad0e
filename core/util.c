/* SPDX-License-Identifier: MIT */
/* Allocation, buffers, constant-time comparison and clocks (see util.h). */
#include "util.h"

#include <stdarg.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <time.h>

_Noreturn void loyd__require_fail(const char *what, const char *file, int line)
{
    fprintf(stderr, "<2>[core] fatal: requirement failed: %s at %s:%d\n", what, file, line);
    abort();
}

static _Noreturn void oom(size_t n)
{
    fprintf(stderr, "<2>[core] fatal: out of memory allocating %zu bytes\n", n);
    abort();
}

void *loyd_xmalloc(size_t n)
{
    void *p = malloc(n ? n : 1);
    if (p == NULL)
        oom(n);
    return p;
}

void *loyd_xcalloc(size_t nmemb, size_t n)
{
    void *p = calloc(nmemb ? nmemb : 1, n ? n : 1);
    if (p == NULL)
        oom(nmemb * n);
    return p;
}

void *loyd_xrealloc(void *p, size_t n)
{
    void *q = realloc(p, n ? n : 1);
    if (q == NULL)
        oom(n);
    return q;
}

char *loyd_xstrdup(const char *s)
{
    return loyd_xstrndup(s, strlen(s));
}

char *loyd_xstrndup(const char *s, size_t n)
{
    char *p = loyd_xmalloc(n + 1);
    memcpy(p, s, n);
    p[n] = '\0';
    return p;
}

char *loyd_xasprintf(const char *fmt, ...)
{
    va_list ap;
    va_start(ap, fmt);
    int n = vsnprintf(NULL, 0, fmt, ap);
    va_end(ap);
    LOYD_REQUIRE(n >= 0);
    char *p = loyd_xmalloc((size_t)n + 1);
    va_start(ap, fmt);
    vsnprintf(p, (size_t)n + 1, fmt, ap);
    va_end(ap);
    return p;
}

bool loyd_ct_equal(const void *a, size_t alen, const void *b, size_t blen)
{
    const volatile unsigned char *x = a, *y = b;
    unsigned char diff = alen != blen;
    /* Walk the expected secret's length whatever the candidate is, so timing leaks nothing
     * about where the first difference sits. */
    for (size_t i = 0; i < blen; i++)
        diff |= (unsigned char)((i < alen ? x[i] : 0) ^ y[i]);
    return diff == 0;
}

bool loyd_ct_streq(const char *a, const char *b)
{
    if (a == NULL || b == NULL)
        return false;
    return loyd_ct_equal(a, strlen(a), b, strlen(b));
}

static void buf_reserve(struct loyd_buf *b, size_t extra)
{
    if (b->len + extra + 1 <= b->cap)
        return;
    size_t cap = b->cap ? b->cap : 64;
    while (cap < b->len + extra + 1)
        cap *= 2;
    b->data = loyd_xrealloc(b->data, cap);
    b->cap = cap;
}

void loyd_buf_append(struct loyd_buf *b, const void *p, size_t n)
{
    buf_reserve(b, n);
    if (n)
        memcpy(b->data + b->len, p, n);
    b->len += n;
    b->data[b->len] = '\0';
}

void loyd_buf_puts(struct loyd_buf *b, const char *s)
{
    loyd_buf_append(b, s, strlen(s));
}

void loyd_buf_printf(struct loyd_buf *b, const char *fmt, ...)
{
    va_list ap;
    va_start(ap, fmt);
    int n = vsnprintf(NULL, 0, fmt, ap);
    va_end(ap);
    LOYD_REQUIRE(n >= 0);
    buf_reserve(b, (size_t)n);
    va_start(ap, fmt);
    vsnprintf(b->data + b->len, (size_t)n + 1, fmt, ap);
    va_end(ap);
    b->len += (size_t)n;
}

void loyd_buf_reset(struct loyd_buf *b)
{
    b->len = 0;
    if (b->data)
        b->data[0] = '\0';
}

void loyd_buf_free(struct loyd_buf *b)
{
    free(b->data);
    *b = (struct loyd_buf){0};
}

uint64_t loyd_mono_ms(void)
{
    struct timespec ts;
    clock_gettime(CLOCK_MONOTONIC, &ts);
    return (uint64_t)ts.tv_sec * 1000u + (uint64_t)ts.tv_nsec / 1000000u;
}

uint64_t loyd_wall_ms(void)
{
    struct timespec ts;
    clock_gettime(CLOCK_REALTIME, &ts);
    return (uint64_t)ts.tv_sec * 1000u + (uint64_t)ts.tv_nsec / 1000000u;
}

char *loyd_dirname(const char *path)
{
    const char *slash = strrchr(path, '/');
    if (slash == NULL)
        return loyd_xstrdup(".");
    if (slash == path)
        return loyd_xstrdup("/");
    return loyd_xstrndup(path, (size_t)(slash - path));
}
