/* SPDX-License-Identifier: MIT */
/* Points as people count them (points.h). */
#include "points.h"

#include <errno.h>
#include <stdio.h>
#include <string.h>

void loyd_points_unit_default(struct loyd_points_unit *u)
{
    u->minor = 1;
    u->decimals = 0;
    snprintf(u->unit, sizeof(u->unit), "points");
}

static int decimals_of(int64_t minor)
{
    switch (minor) {
    case 1: return 0;
    case 10: return 1;
    case 100: return 2;
    case 1000: return 3;
    default: return -1;
    }
}

int loyd_points_unit_parse(const json_t *spec, struct loyd_points_unit *u, struct loyd_buf *err)
{
    const char *key;
    json_t *v;

    loyd_points_unit_default(u);
    if (spec == NULL)
        return 0;
    if (!json_is_object(spec)) {
        loyd_buf_puts(err, "points: expected a table { unit = \"points\", minor = 100 }");
        return -EINVAL;
    }
    json_object_foreach((json_t *)spec, key, v) {
        if (strcmp(key, "minor") == 0) {
            int d = json_is_integer(v) ? decimals_of(json_integer_value(v)) : -1;
            if (d < 0) {
                loyd_buf_puts(err, "points.minor: expected 1, 10, 100 or 1000 (ledger units "
                                   "per point people see)");
                return -EINVAL;
            }
            u->minor = json_integer_value(v);
            u->decimals = (unsigned)d;
        } else if (strcmp(key, "unit") == 0) {
            const char *s = json_string_value(v);
            size_t len = s ? strlen(s) : 0;
            if (len == 0 || len >= sizeof(u->unit) || strpbrk(s, "\r\n\t") != NULL) {
                loyd_buf_printf(err, "points.unit: expected a name of 1 to %zu characters "
                                     "(\"points\")", sizeof(u->unit) - 1);
                return -EINVAL;
            }
            memcpy(u->unit, s, len + 1);
        } else {
            static const char *const known[] = {"unit", "minor"};
            loyd_buf_printf(err, "points.%s: unknown key (known: %s, %s)", key, known[0],
                            known[1]);
            return -EINVAL;
        }
    }
    return 0;
}

/* Digits of @p mag (an absolute value) into @p out, grouped by thousands when asked. */
static size_t put_whole(uint64_t mag, bool group, char *out)
{
    char rev[32];
    size_t n = 0, len = 0;
    do {
        if (group && n > 0 && n % 3 == 0)
            rev[len++] = ',';
        rev[len++] = (char)('0' + mag % 10);
        mag /= 10;
        n++;
    } while (mag > 0);
    for (size_t i = 0; i < len; i++)
        out[i] = rev[len - 1 - i];
    return len;
}

size_t loyd_points_format(int64_t v, const struct loyd_points_unit *u, int flags, char *buf,
                          size_t n)
{
    char tmp[80];
    size_t len = 0;
    /* The magnitude of INT64_MIN does not fit int64_t; unsigned arithmetic keeps it. */
    uint64_t mag = v < 0 ? (uint64_t)0 - (uint64_t)v : (uint64_t)v;
    uint64_t minor = u != NULL && u->minor > 0 ? (uint64_t)u->minor : 1;
    unsigned decimals = u != NULL ? u->decimals : 0;
    uint64_t frac = mag % minor;

    if (v < 0)
        tmp[len++] = '-';
    len += put_whole(mag / minor, (flags & LOYD_POINTS_GROUP) != 0, tmp + len);
    if (frac != 0) {
        char digits[8];
        int d = (int)decimals;
        snprintf(digits, sizeof(digits), "%0*llu", d, (unsigned long long)frac);
        while (d > 0 && digits[d - 1] == '0')
            digits[--d] = '\0';
        len += (size_t)snprintf(tmp + len, sizeof(tmp) - len, ".%s", digits);
    }
    if ((flags & LOYD_POINTS_UNIT) != 0)
        len += (size_t)snprintf(tmp + len, sizeof(tmp) - len, " %s",
                                u != NULL ? u->unit : "points");
    if (n == 0)
        return 0;
    if (len >= n)
        len = n - 1;
    memcpy(buf, tmp, len);
    buf[len] = '\0';
    return len;
}

json_t *loyd_points_json(int64_t v, const struct loyd_points_unit *u)
{
    int64_t minor = u != NULL && u->minor > 0 ? u->minor : 1;
    if (v % minor == 0)
        return json_integer(v / minor);
    /* Exact to the unit's decimals: at most 3 of them, and the CRM field is a real. */
    return json_real((double)v / (double)minor);
}

bool loyd_points_parse(const char *s, const struct loyd_points_unit *u, int64_t *out)
{
    int64_t minor = u != NULL && u->minor > 0 ? u->minor : 1;
    unsigned decimals = u != NULL ? u->decimals : 0;
    uint64_t whole = 0, frac = 0, limit = (uint64_t)INT64_MAX / (uint64_t)minor;
    unsigned nfrac = 0, ndigits = 0;
    bool neg = false;

    if (s == NULL)
        return false;
    while (*s == ' ')
        s++;
    if (*s == '-' || *s == '+')
        neg = *s++ == '-';
    for (; *s != '\0' && *s != '.' && *s != ' '; s++) {
        if (*s == ',' && ndigits > 0)
            continue;
        if (*s < '0' || *s > '9')
            return false;
        if (whole > (limit - (uint64_t)(*s - '0')) / 10)
            return false;
        whole = whole * 10 + (uint64_t)(*s - '0');
        ndigits++;
    }
    if (*s == '.') {
        for (s++; *s >= '0' && *s <= '9'; s++) {
            if (*s == '0' && nfrac >= decimals) /* "455.00" in a 0-decimal unit */
                continue;
            if (nfrac >= decimals)
                return false;
            frac = frac * 10 + (uint64_t)(*s - '0');
            nfrac++;
        }
    }
    while (*s == ' ')
        s++;
    if (*s != '\0' || ndigits == 0)
        return false;
    for (; nfrac < decimals; nfrac++)
        frac *= 10;
    *out = (int64_t)(whole * (uint64_t)minor + frac);
    if (neg)
        *out = -*out;
    return true;
}
