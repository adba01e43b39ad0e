/* SPDX-License-Identifier: MIT */
/*
 * Small helpers every core file uses: aborting allocators for internal sizes, fallible ones for
 * sizes that come from outside, a growable byte buffer, constant-time comparison, assertions.
 */
#ifndef LOYD_UTIL_H
#define LOYD_UTIL_H

#include <stdbool.h>
#include <stddef.h>
#include <stdint.h>

#include "loyd/error.h"

#define LOYD_ARRAY_SIZE(a) (sizeof(a) / sizeof((a)[0]))
#define LOYD_CONTAINER_OF(p, type, member) ((type *)((char *)(p)-offsetof(type, member)))

/* Aborts in every build: continuing would corrupt state. */
#define LOYD_REQUIRE(x)                                                                        \
    do {                                                                                       \
        if (!(x))                                                                              \
            loyd__require_fail(#x, __FILE__, __LINE__);                                        \
    } while (0)

_Noreturn void loyd__require_fail(const char *what, const char *file, int line);

/*
 * The loyd_x*alloc family aborts on out-of-memory (systemd restarts us; untestable NULL paths
 * vanish).  Use it only for sizes we choose; sizes from outside use loyd_malloc.
 */
void *loyd_xmalloc(size_t n);
void *loyd_xcalloc(size_t nmemb, size_t n);
void *loyd_xrealloc(void *p, size_t n);
char *loyd_xstrdup(const char *s);
char *loyd_xstrndup(const char *s, size_t n);
char *loyd_xasprintf(const char *fmt, ...) LOYD_PRINTF(1, 2);

/** Constant-time equality of two byte strings; the time depends only on the lengths. */
bool loyd_ct_equal(const void *a, size_t alen, const void *b, size_t blen);
/** Same for NUL-terminated strings; NULL equals nothing. */
bool loyd_ct_streq(const char *a, const char *b);

/* A growable byte buffer, always NUL-terminated so text can be used as a C string. */
struct loyd_buf {
    char *data;
    size_t len, cap;
};

void loyd_buf_append(struct loyd_buf *b, const void *p, size_t n);
void loyd_buf_puts(struct loyd_buf *b, const char *s);
void loyd_buf_printf(struct loyd_buf *b, const char *fmt, ...) LOYD_PRINTF(2, 3);
void loyd_buf_reset(struct loyd_buf *b);
void loyd_buf_free(struct loyd_buf *b);

/** @return new string: the directory part of @p path ("." when it has none). */
char *loyd_dirname(const char *path);

/** Monotonic clock in milliseconds. */
uint64_t loyd_mono_ms(void);
/** Wall clock in milliseconds since the epoch. */
uint64_t loyd_wall_ms(void);

#endif
