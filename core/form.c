/* SPDX-License-Identifier: MIT */
/*
 * The bounded form-body parser and its encoder (see form.h for the shape of the result).
 *
 * The parser makes one pass over the body, pair by pair: it decodes the key and the value into
 * scratch buffers no longer than the raw text (so the work is linear in the body, which is
 * itself capped), checks every limit before building anything, splits the key into its base
 * name and subscripts, and inserts the value into the tree.  The tree is plain jansson objects;
 * nothing here keeps state between calls.
 */
#include "form.h"

#include <errno.h>
#include <inttypes.h>
#include <stdarg.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#define ENCODE_MAX_DEPTH 32

struct limits {
    size_t body, pairs, key, depth, value;
};

static void seterr(struct loyd_buf *err, const char *fmt, ...) LOYD_PRINTF(2, 3);

static void seterr(struct loyd_buf *err, const char *fmt, ...)
{
    char line[256];
    va_list ap;

    if (err == NULL)
        return;
    va_start(ap, fmt);
    vsnprintf(line, sizeof(line), fmt, ap);
    va_end(ap);
    loyd_buf_reset(err);
    loyd_buf_puts(err, line);
}

static int hexval(unsigned char c)
{
    if (c >= '0' && c <= '9')
        return c - '0';
    if (c >= 'a' && c <= 'f')
        return c - 'a' + 10;
    if (c >= 'A' && c <= 'F')
        return c - 'A' + 10;
    return -1;
}

/*
 * Decodes src[0..n) into dst (room for n bytes).  @return the decoded length, or -1 with
 * *bad set to the offset (within src) of a malformed escape.
 */
static long url_decode(const char *src, size_t n, char *dst, size_t *bad)
{
    size_t o = 0;

    for (size_t i = 0; i < n; i++) {
        unsigned char c = (unsigned char)src[i];
        if (c == '+') {
            dst[o++] = ' ';
        } else if (c == '%') {
            if (i + 2 >= n) {
                *bad = i;
                return -1;
            }
            int hi = hexval((unsigned char)src[i + 1]);
            int lo = hexval((unsigned char)src[i + 2]);
            if (hi < 0 || lo < 0) {
                *bad = i;
                return -1;
            }
            dst[o++] = (char)(hi << 4 | lo);
            i += 2;
        } else {
            dst[o++] = (char)c;
        }
    }
    return (long)o;
}

/* @return the offset of the first byte that breaks UTF-8 (RFC 3629), or n when all is valid. */
static size_t utf8_check(const unsigned char *s, size_t n)
{
    size_t i = 0;

    while (i < n) {
        unsigned char c = s[i];
        size_t need;
        uint32_t cp;
        if (c < 0x80) {
            i++;
            continue;
        } else if (c >= 0xC2 && c <= 0xDF) {
            need = 1;
            cp = c & 0x1F;
        } else if (c >= 0xE0 && c <= 0xEF) {
            need = 2;
            cp = c & 0x0F;
        } else if (c >= 0xF0 && c <= 0xF4) {
            need = 3;
            cp = c & 0x07;
        } else {
            return i;
        }
        if (n - i <= need)
            return i;
        for (size_t k = 1; k <= need; k++) {
            if ((s[i + k] & 0xC0) != 0x80)
                return i;
            cp = cp << 6 | (s[i + k] & 0x3F);
        }
        /* Overlong forms, UTF-16 surrogates and code points past U+10FFFF are not UTF-8. */
        if ((need == 2 && cp < 0x800) || (need == 3 && cp < 0x10000) || cp > 0x10FFFF ||
            (cp >= 0xD800 && cp <= 0xDFFF))
            return i;
        i += need + 1;
    }
    return n;
}

/* A canonical non-negative decimal ("0", "17"; not "017", "-1", "1e3"), as PHP's int keys. */
static bool index_key(const char *k, long long *v)
{
    size_t n = strlen(k);
    long long x = 0;

    if (n == 0 || n > 18 || (n > 1 && k[0] == '0'))
        return false;
    for (size_t i = 0; i < n; i++) {
        if (k[i] < '0' || k[i] > '9')
            return false;
        x = x * 10 + (k[i] - '0');
    }
    *v = x;
    return true;
}

/* The key `a[]` appends under: one past the largest integer key, as PHP's next free index. */
static void next_index(const json_t *obj, char buf[24])
{
    const char *k;
    json_t *v;
    long long next = 0, x;

    json_object_foreach((json_t *)obj, k, v) {
        if (index_key(k, &x) && x + 1 > next)
            next = x + 1;
    }
    snprintf(buf, 24, "%lld", next);
}

struct seg {
    const char *p;
    size_t n;
};

/*
 * Splits a decoded key into base name and subscripts.  segs has room for depth + 1 entries.
 * @return the number of segments, or a negative code with err set.
 */
static int split_key(const char *key, size_t klen, size_t pair, const struct limits *lim,
                     struct seg *segs, struct loyd_buf *err)
{
    const char *open = memchr(key, '[', klen);
    size_t base = open != NULL ? (size_t)(open - key) : klen;
    int n = 0;

    if (base == 0) {
        seterr(err, "form: empty key name in pair %zu", pair);
        return LOYD_EPARSE;
    }
    segs[n++] = (struct seg){key, base};
    size_t i = base;
    while (i < klen) {
        if (key[i] != '[') {
            seterr(err, "form: unexpected text after ']' in key of pair %zu", pair);
            return LOYD_EPARSE;
        }
        const char *close = memchr(key + i + 1, ']', klen - i - 1);
        if (close == NULL) {
            seterr(err, "form: unbalanced '[' in key of pair %zu", pair);
            return LOYD_EPARSE;
        }
        if ((size_t)n > lim->depth) {
            seterr(err, "form: key of pair %zu nests deeper than the limit of %zu subscripts",
                   pair, lim->depth);
            return LOYD_ELIMIT;
        }
        segs[n++] = (struct seg){key + i + 1, (size_t)(close - (key + i + 1))};
        i = (size_t)(close - key) + 1;
    }
    return n;
}

/* Puts value (owned, taken even on failure) at the path segs[0..n) under root. */
static int insert(json_t *root, const struct seg *segs, int n, json_t *value)
{
    json_t *node = root;
    char idx[24];

    for (int i = 0; i < n; i++) {
        const char *k = segs[i].p;
        size_t kn = segs[i].n;
        if (kn == 0) {          /* `[]`: append (never the base: split_key refuses that) */
            next_index(node, idx);
            k = idx;
            kn = strlen(idx);
        }
        if (i == n - 1) {
            /* Last pair wins, whether the old entry was a string or a subtree. */
            if (json_object_setn_new_nocheck(node, k, kn, value) != 0)
                return -ENOMEM;
            return 0;
        }
        json_t *child = json_object_getn(node, k, kn);
        if (!json_is_object(child)) {
            child = json_object();
            if (child == NULL || json_object_setn_new_nocheck(node, k, kn, child) != 0) {
                json_decref(value);
                return -ENOMEM;
            }
        }
        node = child;
    }
    json_decref(value);
    return -EINVAL;
}

int loyd_form_parse(const char *body, size_t len, const struct loyd_form_limits *user_lim,
                    json_t **out, struct loyd_buf *err)
{
    struct limits lim = {LOYD_FORM_MAX_BODY, LOYD_FORM_MAX_PAIRS, LOYD_FORM_MAX_KEY,
                         LOYD_FORM_MAX_DEPTH, LOYD_FORM_MAX_VALUE};
    json_t *root = NULL;
    char *kbuf = NULL, *vbuf = NULL;
    struct seg *segs = NULL;
    size_t pairs = 0;
    int rc = 0;

    *out = NULL;
    if (user_lim != NULL) {
        if (user_lim->max_body)
            lim.body = user_lim->max_body;
        if (user_lim->max_pairs)
            lim.pairs = user_lim->max_pairs;
        if (user_lim->max_key)
            lim.key = user_lim->max_key;
        if (user_lim->max_depth)
            lim.depth = user_lim->max_depth;
        if (user_lim->max_value)
            lim.value = user_lim->max_value;
    }
    if (len > lim.body) {
        seterr(err, "form: body of %zu bytes exceeds the limit of %zu", len, lim.body);
        return LOYD_ELIMIT;
    }
    root = json_object();
    if (root == NULL)
        return -ENOMEM;
    if (len == 0)
        goto done;
    /* Decoding never grows text, so the raw lengths (capped by the body) bound the scratch. */
    kbuf = malloc(len + 1);
    vbuf = malloc(len + 1);
    segs = malloc((lim.depth + 1) * sizeof(*segs));
    if (kbuf == NULL || vbuf == NULL || segs == NULL) {
        rc = -ENOMEM;
        goto fail;
    }

    size_t pos = 0;
    while (pos < len) {
        const char *p = body + pos;
        const char *amp = memchr(p, '&', len - pos);
        size_t plen = amp != NULL ? (size_t)(amp - p) : len - pos;
        size_t start = pos;

        pos += plen + 1;
        if (plen == 0)
            continue;
        if (++pairs > lim.pairs) {
            seterr(err, "form: more than the limit of %zu pairs", lim.pairs);
            rc = LOYD_ELIMIT;
            goto fail;
        }
        const char *eq = memchr(p, '=', plen);
        size_t rk = eq != NULL ? (size_t)(eq - p) : plen;
        size_t rv = eq != NULL ? plen - rk - 1 : 0;
        size_t bad = 0;

        long kn = url_decode(p, rk, kbuf, &bad);
        if (kn < 0) {
            seterr(err, "form: invalid percent-escape at byte %zu (key of pair %zu)",
                   start + bad, pairs);
            rc = LOYD_EPARSE;
            goto fail;
        }
        if ((size_t)kn > lim.key) {
            seterr(err, "form: key of pair %zu is %ld bytes, over the limit of %zu", pairs, kn,
                   lim.key);
            rc = LOYD_ELIMIT;
            goto fail;
        }
        long vn = url_decode(p + rk + 1, rv, vbuf, &bad);
        if (vn < 0) {
            seterr(err, "form: invalid percent-escape at byte %zu (value of pair %zu)",
                   start + rk + 1 + bad, pairs);
            rc = LOYD_EPARSE;
            goto fail;
        }
        if ((size_t)vn > lim.value) {
            seterr(err, "form: value of pair %zu is %ld bytes, over the limit of %zu", pairs,
                   vn, lim.value);
            rc = LOYD_ELIMIT;
            goto fail;
        }
        if (kn == 0) {
            seterr(err, "form: empty key in pair %zu (byte %zu)", pairs, start);
            rc = LOYD_EPARSE;
            goto fail;
        }
        if (memchr(kbuf, '\0', (size_t)kn) != NULL) {
            seterr(err, "form: NUL byte in key of pair %zu", pairs);
            rc = LOYD_EPARSE;
            goto fail;
        }
        size_t u = utf8_check((unsigned char *)kbuf, (size_t)kn);
        if (u != (size_t)kn) {
            seterr(err, "form: key of pair %zu is not UTF-8 (decoded byte %zu)", pairs, u);
            rc = LOYD_EPARSE;
            goto fail;
        }
        u = utf8_check((unsigned char *)vbuf, (size_t)vn);
        if (u != (size_t)vn) {
            seterr(err, "form: value of pair %zu is not UTF-8 (decoded byte %zu)", pairs, u);
            rc = LOYD_EPARSE;
            goto fail;
        }
        int n = split_key(kbuf, (size_t)kn, pairs, &lim, segs, err);
        if (n < 0) {
            rc = n;
            goto fail;
        }
        json_t *v = json_stringn_nocheck(vbuf, (size_t)vn);
        if (v == NULL) {
            rc = -ENOMEM;
            goto fail;
        }
        if ((rc = insert(root, segs, n, v)) != 0)
            goto fail;
    }
done:
    free(kbuf);
    free(vbuf);
    free(segs);
    *out = root;
    return 0;
fail:
    if (rc == -ENOMEM)
        seterr(err, "form: out of memory");
    free(kbuf);
    free(vbuf);
    free(segs);
    json_decref(root);
    return rc;
}

/* ---- encoding ------------------------------------------------------------------------- */

void loyd_form_escape(struct loyd_buf *out, const char *s, size_t n)
{
    static const char hex[] = "0123456789ABCDEF";

    for (size_t i = 0; i < n; i++) {
        unsigned char c = (unsigned char)s[i];
        if ((c >= 'A' && c <= 'Z') || (c >= 'a' && c <= 'z') || (c >= '0' && c <= '9') ||
            c == '-' || c == '_' || c == '.' || c == '~') {
            loyd_buf_append(out, &s[i], 1);
        } else {
            char e[3] = {'%', hex[c >> 4], hex[c & 15]};
            loyd_buf_append(out, e, 3);
        }
    }
}

void loyd_form_add(struct loyd_buf *out, const char *key, const char *value)
{
    if (out->len > 0)
        loyd_buf_append(out, "&", 1);
    loyd_form_escape(out, key, strlen(key));
    loyd_buf_append(out, "=", 1);
    loyd_form_escape(out, value, strlen(value));
}

static void format_real(double d, char buf[40])
{
    /* Shortest of %.15g..%.17g that reads back to the same double. */
    for (int prec = 15; prec <= 17; prec++) {
        snprintf(buf, 40, "%.*g", prec, d);
        if (strtod(buf, NULL) == d)
            return;
    }
}

static int encode_value(const json_t *v, struct loyd_buf *path, struct loyd_buf *out,
                        int depth);

static int encode_child(const char *k, size_t kn, const json_t *v, struct loyd_buf *path,
                        struct loyd_buf *out, int depth)
{
    size_t keep = path->len;
    int rc;

    /* A key that would not read back as one path element is refused, not mangled. */
    if (kn == 0 || memchr(k, ']', kn) != NULL || (keep == 0 && memchr(k, '[', kn) != NULL))
        return -EINVAL;
    if (keep > 0)
        loyd_buf_append(path, "[", 1);
    loyd_buf_append(path, k, kn);
    if (keep > 0)
        loyd_buf_append(path, "]", 1);
    rc = encode_value(v, path, out, depth + 1);
    path->len = keep;
    path->data[keep] = '\0';
    return rc;
}

static int encode_value(const json_t *v, struct loyd_buf *path, struct loyd_buf *out,
                        int depth)
{
    char num[40];
    const char *s = NULL;
    size_t sn = 0;

    if (depth > ENCODE_MAX_DEPTH)
        return -EINVAL;
    switch (json_typeof(v)) {
    case JSON_OBJECT: {
        const char *k;
        json_t *c;
        json_object_foreach((json_t *)v, k, c) {
            int rc = encode_child(k, strlen(k), c, path, out, depth);
            if (rc != 0)
                return rc;
        }
        return 0;
    }
    case JSON_ARRAY: {
        for (size_t i = 0; i < json_array_size(v); i++) {
            snprintf(num, sizeof(num), "%zu", i);
            int rc = encode_child(num, strlen(num), json_array_get(v, i), path, out, depth);
            if (rc != 0)
                return rc;
        }
        return 0;
    }
    case JSON_STRING:
        s = json_string_value(v);
        sn = json_string_length(v);
        break;
    case JSON_INTEGER:
        snprintf(num, sizeof(num), "%" JSON_INTEGER_FORMAT, json_integer_value(v));
        s = num;
        sn = strlen(num);
        break;
    case JSON_REAL:
        format_real(json_real_value(v), num);
        s = num;
        sn = strlen(num);
        break;
    case JSON_TRUE:
        s = "1";
        sn = 1;
        break;
    case JSON_FALSE:
        s = "0";
        sn = 1;
        break;
    case JSON_NULL:
        return 0; /* http_build_query drops nulls */
    }
    if (out->len > 0)
        loyd_buf_append(out, "&", 1);
    loyd_form_escape(out, path->data, path->len);
    loyd_buf_append(out, "=", 1);
    loyd_form_escape(out, s, sn);
    return 0;
}

int loyd_form_encode(const json_t *obj, struct loyd_buf *out)
{
    struct loyd_buf path = {0};
    int rc;

    if (!json_is_object(obj))
        return -EINVAL;
    loyd_buf_reset(&path);
    rc = encode_value(obj, &path, out, 0);
    loyd_buf_free(&path);
    return rc;
}
