/* SPDX-License-Identifier: MIT */
/*
 * The Bitrix24 emulator core (see emu.h): configuration, the clock, credentials, both rate
 * limits, faults, counters, the outbound event queue, `batch`, the control methods and the
 * dispatch of REST calls.  The CRM methods themselves (contacts, deals, user fields,
 * timeline, activities) live in emu_crm.c; emu_int.h is the seam between the two.
 *
 * Behaviour follows /work/shared/crm/bitrix24.md; where the note marks something [I] or says
 * nothing, the choice made here is commented.
 */
#include "emu_int.h"

#include <ctype.h>
#include <errno.h>
#include <math.h>
#include <stdarg.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include "loyd/plugin.h"

#define DEFAULT_MAX_EVENTS 10000
#define OP_BASKETS 10
#define OP_BASKET_MS 60000u

/* ---- small helpers shared with emu_crm.c ---------------------------------------------- */

char *b24_strdup(const char *s)
{
    size_t n = strlen(s) + 1;
    char *p = malloc(n);
    if (p == NULL)
        abort(); /* internal sizes only: like loyd_xstrdup, which connectors cannot link */
    memcpy(p, s, n);
    return p;
}

const json_t *b24_param(const json_t *p, const char *lower)
{
    char upper[64];
    size_t i;
    const json_t *v = json_object_get(p, lower);

    if (v != NULL)
        return v;
    for (i = 0; lower[i] != '\0' && i + 1 < sizeof(upper); i++)
        upper[i] = (char)toupper((unsigned char)lower[i]);
    upper[i] = '\0';
    return json_object_get(p, upper);
}

bool b24_scalar(const json_t *v, char *buf, size_t size)
{
    if (v == NULL)
        return false;
    switch (json_typeof(v)) {
    case JSON_STRING:
        snprintf(buf, size, "%s", json_string_value(v));
        return true;
    case JSON_INTEGER:
        snprintf(buf, size, "%" JSON_INTEGER_FORMAT, json_integer_value(v));
        return true;
    case JSON_REAL: {
        double d = json_real_value(v);
        for (int prec = 15; prec <= 17; prec++) {
            snprintf(buf, size, "%.*g", prec, d);
            if (strtod(buf, NULL) == d)
                break;
        }
        return true;
    }
    case JSON_TRUE:
        snprintf(buf, size, "Y");
        return true;
    case JSON_FALSE:
        snprintf(buf, size, "N");
        return true;
    default:
        return false;
    }
}

bool b24_int(const json_t *v, long long *out)
{
    char buf[64], *end;

    if (json_is_integer(v)) {
        *out = json_integer_value(v);
        return true;
    }
    if (json_is_real(v)) {
        double d = json_real_value(v);
        if (d != floor(d) || fabs(d) > 9e15)
            return false;
        *out = (long long)d;
        return true;
    }
    if (!json_is_string(v))
        return false;
    snprintf(buf, sizeof(buf), "%s", json_string_value(v));
    if (buf[0] == '\0')
        return false;
    errno = 0;
    long long x = strtoll(buf, &end, 10);
    while (*end == ' ')
        end++;
    if (errno != 0 || *end != '\0')
        return false;
    *out = x;
    return true;
}

bool b24_truthy(const json_t *v)
{
    char buf[16];

    if (v == NULL || json_is_null(v) || json_is_false(v))
        return false;
    if (!b24_scalar(v, buf, sizeof(buf)))
        return json_is_true(v);
    return strcmp(buf, "0") != 0 && strcmp(buf, "") != 0 && strcasecmp(buf, "N") != 0 &&
           strcasecmp(buf, "false") != 0;
}

size_t b24_list(const json_t *v, const json_t **items, size_t max)
{
    size_t n = 0;

    if (json_is_array(v)) {
        for (size_t i = 0; i < json_array_size(v) && n < max; i++)
            items[n++] = json_array_get(v, i);
    } else if (json_is_object(v)) {
        /* A form body gives lists as objects keyed "0", "1", ...: take them in key order. */
        const char *k;
        json_t *x;
        json_object_foreach((json_t *)v, k, x) {
            if (n < max)
                items[n++] = x;
        }
    } else if (v != NULL && !json_is_null(v) && max > 0) {
        items[n++] = v;
    }
    return n;
}

/* PHP's json_encode of an associative array: [] when empty, a list when keyed 0..n-1. */
json_t *b24_php_map(json_t *obj)
{
    size_t n = json_object_size(obj), i = 0;
    const char *k;
    json_t *v;
    char want[24];

    if (!json_is_object(obj))
        return obj;
    json_object_foreach(obj, k, v) {
        snprintf(want, sizeof(want), "%zu", i++);
        if (strcmp(k, want) != 0)
            return obj;
    }
    json_t *arr = json_array();
    for (i = 0; i < n; i++) {
        snprintf(want, sizeof(want), "%zu", i);
        json_array_append(arr, json_object_get(obj, want));
    }
    json_decref(obj);
    return arr;
}

/* Days since 1970-01-01 of a civil date (Howard Hinnant's algorithm). */
static long long days_from_civil(long long y, unsigned m, unsigned d)
{
    y -= m <= 2;
    long long era = (y >= 0 ? y : y - 399) / 400;
    unsigned yoe = (unsigned)(y - era * 400);
    unsigned doy = (153 * (m + (m > 2 ? -3 : 9)) + 2) / 5 + d - 1;
    unsigned doe = yoe * 365 + yoe / 4 - yoe / 100 + doy;
    return era * 146097 + (long long)doe - 719468;
}

static void civil_from_days(long long z, int *y, unsigned *m, unsigned *d)
{
    z += 719468;
    long long era = (z >= 0 ? z : z - 146096) / 146097;
    unsigned doe = (unsigned)(z - era * 146097);
    unsigned yoe = (doe - doe / 1460 + doe / 36524 - doe / 146096) / 365;
    long long yy = (long long)yoe + era * 400;
    unsigned doy = doe - (365 * yoe + yoe / 4 - yoe / 100);
    unsigned mp = (5 * doy + 2) / 153;
    *d = doy - (153 * mp + 2) / 5 + 1;
    *m = mp < 10 ? mp + 3 : mp - 9;
    *y = (int)(yy + (*m <= 2));
}

void b24_fmt_time(long long epoch_s, int tz_min, char out[32])
{
    long long local = epoch_s + (long long)tz_min * 60;
    long long days = local >= 0 ? local / 86400 : -((-local + 86399) / 86400);
    long long sec = local - days * 86400;
    int y;
    unsigned m, d;
    int tz = tz_min < 0 ? -tz_min : tz_min;

    civil_from_days(days, &y, &m, &d);
    /* Bounded pieces (years past 9999 are not dates a CRM holds) keep the text in 32 bytes. */
    snprintf(out, 32, "%04u-%02u-%02uT%02u:%02u:%02u%c%02u:%02u", (unsigned)y % 10000u, m % 100u,
             d % 100u, (unsigned)(sec / 3600) % 24u, (unsigned)(sec / 60 % 60),
             (unsigned)(sec % 60), tz_min < 0 ? '-' : '+', (unsigned)(tz / 60) % 100u,
             (unsigned)(tz % 60));
}

static bool valid_date(int y, unsigned m, unsigned d)
{
    static const unsigned mdays[] = {31, 29, 31, 30, 31, 30, 31, 31, 30, 31, 30, 31};
    if (y < 1 || y > 9999 || m < 1 || m > 12 || d < 1 || d > mdays[m - 1])
        return false;
    if (m == 2 && d == 29 && !((y % 4 == 0 && y % 100 != 0) || y % 400 == 0))
        return false;
    return true;
}

bool b24_parse_time(const char *s, int tz_min, long long *epoch, bool *date_only)
{
    int y, n = 0;
    unsigned mo, d, hh = 0, mi = 0, ss = 0;
    int off = tz_min;
    const char *p;

    /* YYYY-MM-DD, DD.MM.YYYY (the portal's locale form), each with an optional time. */
    if (sscanf(s, "%4d-%2u-%2u%n", &y, &mo, &d, &n) == 3 && n == 10) {
        p = s + 10;
    } else if (sscanf(s, "%2u.%2u.%4d%n", &d, &mo, &y, &n) == 3 && n == 10) {
        p = s + 10;
    } else {
        return false;
    }
    if (!valid_date(y, mo, d))
        return false;
    *date_only = *p == '\0';
    if (*p == 'T' || *p == ' ') {
        int k = 0;
        if (sscanf(p + 1, "%2u:%2u%n", &hh, &mi, &k) != 2 || k != 5)
            return false;
        p += 1 + k;
        if (*p == ':') {
            if (sscanf(p + 1, "%2u%n", &ss, &k) != 1 || k != 2)
                return false;
            p += 3;
        }
        if (hh > 23 || mi > 59 || ss > 60)
            return false;
        if (*p == 'Z') {
            off = 0;
            p++;
        } else if (*p == '+' || *p == '-') {
            unsigned oh, om;
            if (sscanf(p + 1, "%2u:%2u%n", &oh, &om, &k) != 2 || k != 5)
                return false;
            off = (int)(oh * 60 + om) * (*p == '-' ? -1 : 1);
            p += 6;
        }
    }
    if (*p != '\0')
        return false;
    *epoch = days_from_civil(y, mo, d) * 86400 + hh * 3600 + mi * 60 + ss - (long long)off * 60;
    return true;
}

/* ---- the call context ----------------------------------------------------------------- */

void b24_fail(struct b24_call *c, int status, const char *code, const char *fmt, ...)
{
    va_list ap;

    c->status = status;
    snprintf(c->err_code, sizeof(c->err_code), "%s", code);
    va_start(ap, fmt);
    vsnprintf(c->err_desc, sizeof(c->err_desc), fmt, ap);
    va_end(ap);
    json_decref(c->result);
    c->result = NULL;
}

void b24_ok(struct b24_call *c, json_t *result)
{
    json_decref(c->result);
    c->result = result;
    c->status = 200;
}

long long b24_wall_s(const struct b24_call *c)
{
    return (long long)(b24emu_clock_ms(c->e, c->now_ms) / 1000);
}

/* ---- configuration -------------------------------------------------------------------- */

static uint64_t rng_next(struct b24emu *e)
{
    /* xorshift64*: reproducible from options.seed, so dropped-event tests are deterministic */
    e->rng ^= e->rng >> 12;
    e->rng ^= e->rng << 25;
    e->rng ^= e->rng >> 27;
    return e->rng * 2685821657736338717ull;
}

static void rand_hex(struct b24emu *e, char out[33])
{
    static const char hex[] = "0123456789abcdef";
    for (int i = 0; i < 32; i += 16) {
        uint64_t r = rng_next(e);
        for (int k = 0; k < 16; k++)
            out[i + k] = hex[(r >> (4 * k)) & 15];
    }
    out[32] = '\0';
}

/* Every option b24emu_create reads (emu.h; connectors/bitrix24/README.md has each one). */
const char *const b24emu_option_keys[] = {
    "portal",         "member_id",          "application_token", "webhook_user",
    "webhook_code",   "client_id",          "client_secret",     "access_token",
    "refresh_token",  "token_ttl_s",        "refresh_ttl_s",     "server_endpoint",
    "handlers",       "rate",               "operating_limit_ms", "operating_cost_ms",
    "operating_cost", "operating_batch",    "tz_offset_min",     "currency",
    "seed",           "max_events",         "clock_ms",          NULL,
};
static const char *const rate_keys[] = {"drain", "burst", NULL};
static const char *const handler_keys[] = {"url", "id", "events", NULL};

/* Edit distance of two short keys (a typo is a letter or two away). */
static size_t distance(const char *a, const char *b)
{
    size_t la = strlen(a), lb = strlen(b), row[64], i, j;
    if (la >= 63 || lb >= 63)
        return SIZE_MAX;
    for (j = 0; j <= lb; j++)
        row[j] = j;
    for (i = 1; i <= la; i++) {
        size_t diag = row[0];
        row[0] = i;
        for (j = 1; j <= lb; j++) {
            size_t up = row[j];
            size_t best = diag + (a[i - 1] != b[j - 1]);
            if (row[j - 1] + 1 < best)
                best = row[j - 1] + 1;
            if (up + 1 < best)
                best = up + 1;
            row[j] = best;
            diag = up;
        }
    }
    return row[lb];
}

/*
 * Refuses a key of @p o that is not in @p known (@p where: "" or "rate." ...), with the
 * nearest known key when one is close: an option mistyped would otherwise be a default in
 * silence (a "webhok_code" and no inbound webhook at all).
 */
static int opt_keys(const json_t *o, const char *const *known, const char *where,
                    struct loyd_errbuf *err)
{
    const char *k;
    const json_t *v;
    json_object_foreach((json_t *)o, k, v)
    {
        const char *best = NULL;
        size_t bd = SIZE_MAX, i;
        for (i = 0; known[i] != NULL && strcmp(known[i], k) != 0; i++) {
            size_t d = distance(k, known[i]);
            if (d < bd) {
                bd = d;
                best = known[i];
            }
        }
        if (known[i] != NULL)
            continue;
        bool near = best != NULL && bd <= 2 + strlen(k) / 4;
        if (err != NULL && err->size > 0)
            snprintf(err->msg, err->size,
                     "bitrix24 emulator: unknown option '%s%s'%s%s%s%s (every option: "
                     "connectors/bitrix24/README.md, \"The emulator\")",
                     where, k, near ? "; did you mean '" : "", near ? where : "",
                     near ? best : "", near ? "'?" : "");
        return LOYD_ECONFIG;
    }
    return 0;
}

static const char *opt_str(const json_t *o, const char *key, const char *def)
{
    const json_t *v = json_object_get(o, key);
    return json_is_string(v) ? json_string_value(v) : def;
}

static int opt_int(const json_t *o, const char *key, long long def, long long lo, long long hi,
                   long long *out, struct loyd_errbuf *err)
{
    const json_t *v = json_object_get(o, key);
    long long x = def;

    if (v != NULL && !b24_int(v, &x)) {
        if (err != NULL && err->size > 0)
            snprintf(err->msg, err->size, "bitrix24 emulator: option %s must be an integer",
                     key);
        return LOYD_ECONFIG;
    }
    if (x < lo || x > hi) {
        if (err != NULL && err->size > 0)
            snprintf(err->msg, err->size,
                     "bitrix24 emulator: option %s=%lld is outside %lld..%lld", key, x, lo, hi);
        return LOYD_ECONFIG;
    }
    *out = x;
    return 0;
}

static void add_token(struct b24emu *e, const char *access, const char *refresh,
                      uint64_t clock_ms)
{
    if (e->n_tokens == e->cap_tokens) {
        e->cap_tokens = e->cap_tokens ? e->cap_tokens * 2 : 8;
        e->tokens = realloc(e->tokens, e->cap_tokens * sizeof(*e->tokens));
        if (e->tokens == NULL)
            abort();
    }
    struct b24_token *t = &e->tokens[e->n_tokens++];
    memset(t, 0, sizeof(*t));
    snprintf(t->access, sizeof(t->access), "%s", access);
    snprintf(t->refresh, sizeof(t->refresh), "%s", refresh);
    t->access_exp_ms = clock_ms + e->token_ttl_ms;
    t->refresh_exp_ms = clock_ms + e->refresh_ttl_ms;
    t->access_ok = t->refresh_ok = true;
}

int b24emu_create(const json_t *o, b24emu_form_parse_fn form_parse, void *form_ctx,
                  uint64_t now_ms, struct b24emu **out, struct loyd_errbuf *err)
{
    struct b24emu *e = calloc(1, sizeof(*e));
    long long x;
    int rc;
    char hex[33];

    if (e == NULL)
        abort();
    *out = NULL;
    if (o != NULL && !json_is_object(o)) {
        if (err != NULL && err->size > 0)
            snprintf(err->msg, err->size, "bitrix24 emulator: options must be an object");
        free(e);
        return LOYD_ECONFIG;
    }
    e->form_parse = form_parse;
    e->form_ctx = form_ctx;
    if ((rc = opt_keys(o, b24emu_option_keys, "", err)) != 0 ||
        (json_is_object(json_object_get(o, "rate")) &&
         (rc = opt_keys(json_object_get(o, "rate"), rate_keys, "rate.", err)) != 0))
        goto fail;
    for (size_t i = 0; i < json_array_size(json_object_get(o, "handlers")); i++) {
        const json_t *h = json_array_get(json_object_get(o, "handlers"), i);
        char where[40];
        snprintf(where, sizeof(where), "handlers[%zu].", i);
        if (json_is_object(h) && (rc = opt_keys(h, handler_keys, where, err)) != 0)
            goto fail;
    }
    if ((rc = opt_int(o, "seed", 0x2545F4914F6CDD1DLL, 1, INT64_MAX, &x, err)) != 0)
        goto fail;
    e->rng = (uint64_t)x;
    e->portal = b24_strdup(opt_str(o, "portal", "emu.bitrix24.test"));
    rand_hex(e, hex);
    e->member_id = b24_strdup(opt_str(o, "member_id", hex));
    rand_hex(e, hex);
    e->app_token = b24_strdup(opt_str(o, "application_token", hex));
    e->webhook_user = b24_strdup(opt_str(o, "webhook_user", "1"));
    e->webhook_code = json_is_string(json_object_get(o, "webhook_code"))
                          ? b24_strdup(opt_str(o, "webhook_code", ""))
                          : NULL;
    e->client_id = json_is_string(json_object_get(o, "client_id"))
                       ? b24_strdup(opt_str(o, "client_id", ""))
                       : NULL;
    e->client_secret = json_is_string(json_object_get(o, "client_secret"))
                           ? b24_strdup(opt_str(o, "client_secret", ""))
                           : NULL;
    e->currency = b24_strdup(opt_str(o, "currency", "RUB"));
    e->server_endpoint =
        b24_strdup(opt_str(o, "server_endpoint", "https://oauth.bitrix.info/rest/"));
    if ((rc = opt_int(o, "tz_offset_min", 180, -720, 840, &x, err)) != 0)
        goto fail;
    e->tz_min = (int)x;
    const json_t *rate = json_object_get(o, "rate");
    if ((rc = opt_int(rate, "drain", 2, 1, 1000000, &x, err)) != 0)
        goto fail;
    e->drain = (uint32_t)x;
    if ((rc = opt_int(rate, "burst", 50, 1, 1000000, &x, err)) != 0)
        goto fail;
    e->burst = (uint32_t)x;
    if ((rc = opt_int(o, "operating_limit_ms", 480000, 1, INT64_MAX / 2, &x, err)) != 0)
        goto fail;
    e->op_limit_ms = (uint64_t)x;
    if ((rc = opt_int(o, "operating_cost_ms", 100, 0, 600000, &x, err)) != 0)
        goto fail;
    e->op_cost_ms = (uint64_t)x;
    e->op_cost_by_method = json_object();
    const char *mk;
    json_t *mv;
    json_object_foreach(json_object_get(o, "operating_cost"), mk, mv) {
        long long c;
        if (!b24_int(mv, &c) || c < 0 || c > 600000) {
            if (err != NULL && err->size > 0)
                snprintf(err->msg, err->size,
                         "bitrix24 emulator: operating_cost.%s must be 0..600000 ms", mk);
            rc = LOYD_ECONFIG;
            goto fail;
        }
        json_object_set_new(e->op_cost_by_method, mk, json_integer(c));
    }
    const char *ob = opt_str(o, "operating_batch", "nested");
    if (strcmp(ob, "nested") != 0 && strcmp(ob, "batch") != 0) {
        if (err != NULL && err->size > 0)
            snprintf(err->msg, err->size,
                     "bitrix24 emulator: operating_batch must be \"nested\" or \"batch\"");
        rc = LOYD_ECONFIG;
        goto fail;
    }
    e->op_charge_batch = strcmp(ob, "batch") == 0;
    if ((rc = opt_int(o, "token_ttl_s", 3600, 1, 365LL * 86400, &x, err)) != 0)
        goto fail;
    e->token_ttl_ms = (uint64_t)x * 1000;
    if ((rc = opt_int(o, "refresh_ttl_s", 180LL * 86400, 1, 3650LL * 86400, &x, err)) != 0)
        goto fail;
    e->refresh_ttl_ms = (uint64_t)x * 1000;
    if ((rc = opt_int(o, "max_events", DEFAULT_MAX_EVENTS, 1, 10000000, &x, err)) != 0)
        goto fail;
    e->max_events = (size_t)x;
    if ((rc = opt_int(o, "clock_ms", (long long)now_ms, 0, INT64_MAX / 2, &x, err)) != 0)
        goto fail;
    e->clock_offset_ms = x - (long long)now_ms;

    const json_t *hs = json_object_get(o, "handlers");
    if (hs != NULL && !json_is_array(hs)) {
        if (err != NULL && err->size > 0)
            snprintf(err->msg, err->size, "bitrix24 emulator: handlers must be an array");
        rc = LOYD_ECONFIG;
        goto fail;
    }
    e->handlers = calloc(json_array_size(hs) + 1, sizeof(*e->handlers));
    if (e->handlers == NULL)
        abort();
    for (size_t i = 0; i < json_array_size(hs); i++) {
        const json_t *h = json_array_get(hs, i);
        const char *url = json_is_string(h) ? json_string_value(h) : opt_str(h, "url", NULL);
        char idbuf[32];
        if (url == NULL || (strncmp(url, "http://", 7) != 0 && strncmp(url, "https://", 8) != 0)) {
            if (err != NULL && err->size > 0)
                snprintf(err->msg, err->size,
                         "bitrix24 emulator: handlers[%zu] needs an http(s) url", i);
            rc = LOYD_ECONFIG;
            goto fail;
        }
        struct b24_handler *hd = &e->handlers[e->n_handlers++];
        hd->url = b24_strdup(url);
        snprintf(idbuf, sizeof(idbuf), "%zu", 201 + i); /* ids like the docs' "201" */
        const json_t *hid = json_object_get(h, "id");
        if (hid != NULL && b24_scalar(hid, idbuf, sizeof(idbuf)) == false) {
            rc = LOYD_ECONFIG;
            goto fail;
        }
        hd->id = b24_strdup(idbuf);
        const json_t *evs = json_object_get(h, "events");
        if (json_is_array(evs))
            hd->events = json_incref((json_t *)evs);
    }

    e->contacts = json_object();
    e->deals = json_object();
    e->deal_contacts = json_object();
    e->uf[B24_CONTACT] = json_array();
    e->uf[B24_DEAL] = json_array();
    e->comments = json_array();
    e->activities = json_array();
    e->events = json_array();
    e->calls = json_object();
    e->next_id[B24_CONTACT] = e->next_id[B24_DEAL] = 1;
    e->next_uf = 101;
    e->next_enum = 1;
    e->next_multi = 1;
    e->next_comment = 1;
    e->next_activity = 1;

    const char *at = opt_str(o, "access_token", NULL), *rt = opt_str(o, "refresh_token", NULL);
    if (at != NULL && rt != NULL)
        add_token(e, at, rt, b24emu_clock_ms(e, now_ms));
    *out = e;
    return 0;
fail:
    b24emu_destroy(e);
    return rc;
}

void b24emu_announce(const struct b24emu *e, const char *base,
                     void (*say)(void *ctx, const char *line), void *ctx)
{
    char line[512];

    if (e->webhook_code != NULL)
        snprintf(line, sizeof(line),
                 "bitrix24 emulator: inbound webhook %s/rest/%s/%s/ (user %s, code %s): "
                 "crm.webhook_url",
                 base, e->webhook_user, e->webhook_code, e->webhook_user, e->webhook_code);
    else
        snprintf(line, sizeof(line),
                 "bitrix24 emulator: no inbound webhook (set webhook_code in --options); OAuth "
                 "calls only, at %s/rest/",
                 base);
    say(ctx, line);
    snprintf(line, sizeof(line),
             "bitrix24 emulator: portal %s, member_id %s, application_token %s: its events "
             "carry both (crm.member_id, crm.application_token)",
             e->portal, e->member_id, e->app_token);
    say(ctx, line);
    snprintf(line, sizeof(line),
             "bitrix24 emulator: OAuth at %s/rest/ with tokens from %s/oauth/token/ (client_id "
             "%s)",
             base, base, e->client_id != NULL ? e->client_id : "any");
    say(ctx, line);
    if (e->n_handlers == 0) {
        say(ctx, "bitrix24 emulator: no handler yet: events go to the URLs of --handler or "
                 "event.bind");
    }
    for (size_t i = 0; i < e->n_handlers; i++) {
        snprintf(line, sizeof(line), "bitrix24 emulator: events go to %s", e->handlers[i].url);
        say(ctx, line);
    }
}

void b24emu_destroy(struct b24emu *e)
{
    if (e == NULL)
        return;
    free(e->portal);
    free(e->member_id);
    free(e->app_token);
    free(e->webhook_user);
    free(e->webhook_code);
    free(e->client_id);
    free(e->client_secret);
    free(e->currency);
    free(e->server_endpoint);
    free(e->moved_to);
    json_decref(e->op_cost_by_method);
    for (size_t i = 0; i < e->n_handlers; i++) {
        free(e->handlers[i].url);
        free(e->handlers[i].id);
        json_decref(e->handlers[i].events);
    }
    free(e->handlers);
    for (size_t i = 0; i < e->n_ops; i++)
        free(e->ops[i].key);
    free(e->ops);
    free(e->tokens);
    json_decref(e->contacts);
    json_decref(e->deals);
    json_decref(e->deal_contacts);
    json_decref(e->uf[B24_CONTACT]);
    json_decref(e->uf[B24_DEAL]);
    json_decref(e->comments);
    json_decref(e->activities);
    json_decref(e->events);
    json_decref(e->calls);
    free(e);
}

uint64_t b24emu_clock_ms(const struct b24emu *e, uint64_t now_ms)
{
    long long t = (long long)now_ms + e->clock_offset_ms;
    return t < 0 ? 0 : (uint64_t)t;
}

const char *b24emu_moved_to(const struct b24emu *e)
{
    return e->moved_to;
}

void b24emu_count_redirect(struct b24emu *e)
{
    e->redirects++;
}

uint32_t b24emu_slow_ms(const struct b24emu *e)
{
    return e->slow_ms;
}

/* ---- outbound events ------------------------------------------------------------------ */

static json_t *event_auth(const struct b24emu *e)
{
    char endpoint[300];
    snprintf(endpoint, sizeof(endpoint), "https://%s/rest/", e->portal);
    return json_pack("{s:s,s:s,s:s,s:s,s:s}", "domain", e->portal, "client_endpoint", endpoint,
                     "server_endpoint", e->server_endpoint, "member_id", e->member_id,
                     "application_token", e->app_token);
}

static bool handler_wants(const struct b24_handler *h, const char *event)
{
    size_t i;
    json_t *v;

    if (h->events == NULL)
        return true;
    json_array_foreach(h->events, i, v) {
        if (json_is_string(v) && strcasecmp(json_string_value(v), event) == 0)
            return true;
    }
    return false;
}

/* Queues `event` with `data` (borrowed) and `auth` (owned, NULL: the webhook auth block). */
static void queue_event_auth(struct b24emu *e, uint64_t now_ms, const char *event,
                             const json_t *data, json_t *auth)
{
    char ts[32];

    if (auth == NULL)
        auth = event_auth(e);
    snprintf(ts, sizeof(ts), "%llu",
             (unsigned long long)(b24emu_clock_ms(e, now_ms) / 1000));
    for (size_t i = 0; i < e->n_handlers; i++) {
        const struct b24_handler *h = &e->handlers[i];
        if (!handler_wants(h, event))
            continue;
        e->ev_queued++;
        if (e->drop_ratio > 0 && (double)(rng_next(e) >> 11) / 9007199254740992.0 < e->drop_ratio) {
            e->ev_dropped++; /* the fault: the portal's queue server loses it, no retry */
            continue;
        }
        if (json_array_size(e->events) >= e->max_events) {
            e->ev_dropped++; /* bounded memory: a handler that never drains loses events */
            continue;
        }
        json_t *payload = json_pack("{s:s,s:s,s:O,s:s,s:O}", "event", event, "event_handler_id",
                                    h->id, "data", data, "ts", ts, "auth", auth);
        json_array_append_new(e->events, json_pack("{s:s,s:o}", "url", h->url, "payload",
                                                   payload));
    }
    json_decref(auth);
}

void b24_queue_event(struct b24_call *c, const char *event, const char *id)
{
    json_t *data = json_pack("{s:{s:s}}", "FIELDS", "ID", id);
    queue_event_auth(c->e, c->now_ms, event, data, NULL);
    json_decref(data);
}

bool b24emu_event_pop(struct b24emu *e, char **url, json_t **payload)
{
    json_t *ev = json_array_get(e->events, 0);

    if (ev == NULL)
        return false;
    *url = b24_strdup(json_string_value(json_object_get(ev, "url")));
    *payload = json_incref(json_object_get(ev, "payload"));
    json_array_remove(e->events, 0);
    return true;
}

void b24emu_event_done(struct b24emu *e, bool delivered)
{
    if (delivered)
        e->ev_delivered++;
    else
        e->ev_failed++;
}

size_t b24emu_events_pending(const struct b24emu *e)
{
    return json_array_size(e->events);
}

/* ---- rate limits ---------------------------------------------------------------------- */

/* The leaky bucket, in thousandths of a request: +1000 per request, -drain per ms. */
static bool bucket_admit(struct b24emu *e, uint64_t now_ms)
{
    if (e->bucket_ms != 0 && now_ms > e->bucket_ms) {
        uint64_t drained = (now_ms - e->bucket_ms) * e->drain;
        e->bucket_milli = drained >= e->bucket_milli ? 0 : e->bucket_milli - drained;
    }
    if (now_ms > e->bucket_ms)
        e->bucket_ms = now_ms;
    if (e->bucket_milli + 1000 > (uint64_t)e->burst * 1000)
        return false; /* a blocked request does not fill the bucket further */
    e->bucket_milli += 1000;
    return true;
}

static struct b24_op *op_find(struct b24emu *e, const char *key)
{
    for (size_t i = 0; i < e->n_ops; i++)
        if (strcmp(e->ops[i].key, key) == 0)
            return &e->ops[i];
    e->ops = realloc(e->ops, (e->n_ops + 1) * sizeof(*e->ops));
    if (e->ops == NULL)
        abort();
    struct b24_op *op = &e->ops[e->n_ops++];
    memset(op, 0, sizeof(*op));
    op->key = b24_strdup(key);
    return op;
}

/* Sum of the live baskets (the last 10 minutes) and when the oldest one drops out. */
static uint64_t op_sum(const struct b24_op *op, uint64_t now_ms, long long *reset_at)
{
    uint64_t minute = now_ms / OP_BASKET_MS, sum = 0, oldest = UINT64_MAX;

    for (int i = 0; i < OP_BASKETS; i++) {
        if (op->ms[i] == 0 || op->minute[i] + OP_BASKETS <= minute)
            continue;
        sum += op->ms[i];
        if (op->minute[i] < oldest)
            oldest = op->minute[i];
    }
    if (reset_at != NULL)
        *reset_at = oldest == UINT64_MAX
                        ? (long long)((minute + OP_BASKETS) * OP_BASKET_MS / 1000)
                        : (long long)((oldest + OP_BASKETS) * OP_BASKET_MS / 1000);
    return sum;
}

static void op_charge(struct b24_op *op, uint64_t now_ms, uint64_t ms)
{
    uint64_t minute = now_ms / OP_BASKET_MS;
    int slot = (int)(minute % OP_BASKETS);

    if (op->minute[slot] != minute) {
        op->minute[slot] = minute;
        op->ms[slot] = 0;
    }
    op->ms[slot] += ms;
}

static uint64_t op_cost(const struct b24emu *e, const char *method)
{
    const json_t *v = json_object_get(e->op_cost_by_method, method);
    return json_is_integer(v) ? (uint64_t)json_integer_value(v) : e->op_cost_ms;
}

/* The `time` block every response carries; op may be NULL (no operating figures). */
static json_t *time_block(const struct b24emu *e, uint64_t now_ms, uint64_t cost_ms,
                          const struct b24_op *op)
{
    uint64_t clock = b24emu_clock_ms(e, now_ms);
    double start = (double)clock / 1000.0, dur = (double)cost_ms / 1000.0;
    char ds[32], df[32];

    b24_fmt_time((long long)(clock / 1000), e->tz_min, ds);
    b24_fmt_time((long long)((clock + cost_ms) / 1000), e->tz_min, df);
    json_t *t = json_pack("{s:f,s:f,s:f,s:f,s:s,s:s}", "start", start, "finish", start + dur,
                          "duration", dur, "processing", dur, "date_start", ds, "date_finish",
                          df);
    if (op != NULL) {
        long long reset_at;
        uint64_t sum = op_sum(op, now_ms, &reset_at);
        json_object_set_new(t, "operating_reset_at", json_integer(reset_at));
        json_object_set_new(t, "operating", json_real((double)sum / 1000.0));
    }
    return t;
}

/* ---- dispatch ------------------------------------------------------------------------- */

static void m_batch(struct b24_call *c, const json_t *p);

struct method {
    const char *name;
    void (*fn)(struct b24_call *c, const json_t *p);
};

static const struct method methods[] = {
    {"crm.contact.add", b24_m_contact_add},
    {"crm.contact.get", b24_m_contact_get},
    {"crm.contact.update", b24_m_contact_update},
    {"crm.contact.delete", b24_m_contact_delete},
    {"crm.contact.list", b24_m_contact_list},
    {"crm.deal.add", b24_m_deal_add},
    {"crm.deal.get", b24_m_deal_get},
    {"crm.deal.update", b24_m_deal_update},
    {"crm.deal.delete", b24_m_deal_delete},
    {"crm.deal.list", b24_m_deal_list},
    {"crm.deal.contact.items.get", b24_m_deal_contact_items_get},
    {"crm.contact.userfield.add", b24_m_contact_uf_add},
    {"crm.contact.userfield.list", b24_m_contact_uf_list},
    {"crm.deal.userfield.add", b24_m_deal_uf_add},
    {"crm.deal.userfield.list", b24_m_deal_uf_list},
    {"crm.timeline.comment.add", b24_m_timeline_comment_add},
    {"crm.activity.todo.add", b24_m_activity_todo_add},
    {"crm.timeline.comment.list", b24_m_timeline_comment_list},
    {"crm.activity.list", b24_m_activity_list},
    {"event.bind", b24_m_event_bind},
    {"event.unbind", b24_m_event_unbind},
    {"event.get", b24_m_event_get},
    {"batch", m_batch},
};

static const struct method *find_method(const char *name)
{
    for (size_t i = 0; i < sizeof(methods) / sizeof(methods[0]); i++)
        if (strcmp(methods[i].name, name) == 0)
            return &methods[i];
    return NULL;
}

static void count_call(struct b24emu *e, const char *method)
{
    json_t *n = json_object_get(e->calls, method);
    json_object_set_new(e->calls, method, json_integer(json_integer_value(n) + 1));
}

/*
 * Runs one method with auth and the bucket already passed: the operating check and charge,
 * then the method.  Used for top-level calls and for each batch command.
 */
static void run_method(struct b24_call *c, const struct method *m, const json_t *p,
                       const struct b24_op **op_out)
{
    struct b24emu *e = c->e;
    char key[128];
    bool charge = !(c->in_batch && e->op_charge_batch) &&
                  !(strcmp(m->name, "batch") == 0 && !e->op_charge_batch);

    count_call(e, m->name);
    *op_out = NULL;
    if (e->fault_429_left > 0 && strcmp(m->name, e->fault_429_method) == 0) {
        /* The "429" fault: refused as the cloud does, without operating figures (b24jssdk's
         * RestrictionManager: "errors do not carry the operation timings"). */
        e->fault_429_left--;
        b24_fail(c, 429, "OPERATION_TIME_LIMIT", "Method is blocked due to operation time limit.");
        return;
    }
    if (!charge) {
        m->fn(c, p);
        return;
    }
    snprintf(key, sizeof(key), "%s:%s", c->auth_kind, m->name);
    struct b24_op *op = op_find(e, key);
    long long reset_at;
    if (op_sum(op, c->now_ms, &reset_at) >= e->op_limit_ms) {
        b24_fail(c, 429, "OPERATION_TIME_LIMIT", "Method is blocked due to operation time limit.");
        *op_out = op;
        return;
    }
    c->cost_ms = op_cost(e, m->name);
    m->fn(c, p);
    op_charge(op, c->now_ms, c->cost_ms);
    *op_out = op;
}

static json_t *envelope(struct b24_call *c, const struct b24_op *op)
{
    json_t *r;

    if (c->status == 200) {
        r = json_object();
        json_object_set_new(r, "result", c->result != NULL ? c->result : json_null());
        c->result = NULL;
        if (c->total >= 0)
            json_object_set_new(r, "total", json_integer(c->total));
        if (c->next >= 0)
            json_object_set_new(r, "next", json_integer(c->next));
    } else {
        r = json_pack("{s:s,s:s}", "error", c->err_code, "error_description", c->err_desc);
    }
    json_object_set_new(r, "time", time_block(c->e, c->now_ms, c->cost_ms, op));
    return r;
}

static void call_init(struct b24_call *c, struct b24emu *e, uint64_t now_ms)
{
    memset(c, 0, sizeof(*c));
    c->e = e;
    c->now_ms = now_ms;
    c->total = c->next = -1;
    c->status = 200;
    snprintf(c->auth_kind, sizeof(c->auth_kind), "none");
}

/* ---- batch ---------------------------------------------------------------------------- */

/*
 * Resolves `$result[key][a][b]` at s against the results so far.  @return the referenced
 * value (borrowed, NULL if it does not exist) and *len the length of the reference text.
 */
static const json_t *resolve_ref(const json_t *results, const char *s, size_t *len)
{
    static const char pre[] = "$result[";
    const char *p = s + sizeof(pre) - 1, *close;
    const json_t *v;
    char key[128];

    if (strncmp(s, pre, sizeof(pre) - 1) != 0 || (close = strchr(p, ']')) == NULL ||
        (size_t)(close - p) >= sizeof(key)) {
        *len = 0;
        return NULL;
    }
    memcpy(key, p, (size_t)(close - p));
    key[close - p] = '\0';
    v = json_object_get(results, key);
    p = close + 1;
    while (*p == '[' && (close = strchr(p + 1, ']')) != NULL &&
           (size_t)(close - p - 1) < sizeof(key)) {
        memcpy(key, p + 1, (size_t)(close - p - 1));
        key[close - p - 1] = '\0';
        if (json_is_array(v)) {
            char *end;
            long i = strtol(key, &end, 10);
            v = *end == '\0' && i >= 0 ? json_array_get(v, (size_t)i) : NULL;
        } else {
            v = json_object_get(v, key);
        }
        p = close + 1;
    }
    *len = (size_t)(p - s);
    return v;
}

/* Replaces references in every string under v (owned; returns the new owned value). */
static json_t *substitute(json_t *v, const json_t *results, int depth)
{
    if (depth > 16)
        return v;
    if (json_is_object(v)) {
        const char *k;
        json_t *x;
        void *tmp;
        json_object_foreach_safe(v, tmp, k, x) {
            json_object_set_new(v, k, substitute(json_incref(x), results, depth + 1));
        }
        return v;
    }
    if (json_is_array(v)) {
        for (size_t i = 0; i < json_array_size(v); i++)
            json_array_set_new(v, i, substitute(json_incref(json_array_get(v, i)), results,
                                                depth + 1));
        return v;
    }
    if (!json_is_string(v) || strstr(json_string_value(v), "$result[") == NULL)
        return v;
    const char *s = json_string_value(v);
    size_t rlen;
    const json_t *whole = resolve_ref(results, s, &rlen);
    if (rlen == strlen(s) && whole != NULL && !json_is_string(whole)) {
        /* The whole value is one reference to a number, list or map: pass it as is. */
        json_t *copy = json_deep_copy(whole);
        json_decref(v);
        return copy;
    }
    char *out = NULL;
    size_t on = 0;
    FILE *f = open_memstream(&out, &on);
    if (f == NULL)
        abort();
    for (const char *p = s; *p != '\0';) {
        const json_t *ref = resolve_ref(results, p, &rlen);
        char buf[128];
        if (rlen == 0) {
            fputc(*p++, f);
            continue;
        }
        if (ref != NULL && b24_scalar(ref, buf, sizeof(buf)))
            fputs(buf, f);
        p += rlen; /* an unresolved or non-scalar reference becomes empty */
    }
    fclose(f);
    json_t *r = json_string(out);
    free(out);
    json_decref(v);
    return r != NULL ? r : json_string("");
}

static void m_batch(struct b24_call *c, const json_t *p)
{
    struct b24emu *e = c->e;
    const json_t *cmd = b24_param(p, "cmd");
    bool halt = b24_truthy(b24_param(p, "halt"));
    json_t *results = json_object(), *errors = json_object(), *totals = json_object(),
           *nexts = json_object(), *times = json_object();
    size_t n = json_is_object(cmd) ? json_object_size(cmd) : json_array_size(cmd);

    if (c->in_batch) {
        b24_fail(c, 405, "ERROR_BATCH_METHOD_NOT_ALLOWED",
                 "Method is not allowed for batch usage.");
        goto out;
    }
    if (!json_is_object(cmd) && !json_is_array(cmd)) {
        b24_fail(c, 400, "INVALID_ARG_VALUE", "Parameter 'cmd' must be a map of commands");
        goto out;
    }
    if (n > B24EMU_BATCH_MAX) {
        b24_fail(c, 400, "ERROR_BATCH_LENGTH_EXCEEDED", "Max batch length exceeded");
        goto out;
    }
    for (size_t i = 0; i < n; i++) {
        char keybuf[24];
        const char *key;
        const json_t *v;
        if (json_is_object(cmd)) {
            void *it = json_object_iter((json_t *)cmd);
            for (size_t k = 0; k < i; k++)
                it = json_object_iter_next((json_t *)cmd, it);
            key = json_object_iter_key(it);
            v = json_object_iter_value(it);
        } else {
            snprintf(keybuf, sizeof(keybuf), "%zu", i);
            key = keybuf;
            v = json_array_get(cmd, i);
        }
        struct b24_call sub;
        call_init(&sub, e, c->now_ms);
        sub.in_batch = true;
        snprintf(sub.auth_kind, sizeof(sub.auth_kind), "%s", c->auth_kind);
        const struct b24_op *op = NULL;
        json_t *params = NULL;
        char mname[128];
        const char *s = json_string_value(v);
        if (s == NULL) {
            b24_fail(&sub, 400, "INVALID_ARG_VALUE", "Command must be a string");
            goto record;
        }
        const char *q = strchr(s, '?');
        size_t mlen = q != NULL ? (size_t)(q - s) : strlen(s);
        if (mlen >= sizeof(mname))
            mlen = sizeof(mname) - 1;
        for (size_t k = 0; k < mlen; k++)
            mname[k] = (char)tolower((unsigned char)s[k]);
        mname[mlen] = '\0';
        if (mlen > 5 && strcmp(mname + mlen - 5, ".json") == 0)
            mname[mlen - 5] = '\0';
        if (q != NULL && q[1] != '\0') {
            char emsg[200] = "";
            struct loyd_errbuf eb = {emsg, sizeof(emsg)};
            int rc = e->form_parse != NULL
                         ? e->form_parse(e->form_ctx, q + 1, strlen(q + 1), &params, &eb)
                         : LOYD_EPARSE;
            if (rc != 0) {
                b24_fail(&sub, 400, "INVALID_ARG_VALUE", "Cannot parse command parameters: %s",
                         emsg);
                goto record;
            }
            params = substitute(params, results, 0);
        } else {
            params = json_object();
        }
        const struct method *m = find_method(mname);
        if (m == NULL) {
            b24_fail(&sub, 404, "ERROR_METHOD_NOT_FOUND", "Method not found!");
            goto record;
        }
        if (strcmp(mname, "batch") == 0) {
            b24_fail(&sub, 405, "ERROR_BATCH_METHOD_NOT_ALLOWED",
                     "Method is not allowed for batch usage.");
            goto record;
        }
        run_method(&sub, m, params, &op);
    record:
        json_decref(params);
        if (sub.status == 200) {
            json_object_set_new(results, key, sub.result != NULL ? sub.result : json_null());
            sub.result = NULL;
            if (sub.total >= 0)
                json_object_set_new(totals, key, json_integer(sub.total));
            if (sub.next >= 0)
                json_object_set_new(nexts, key, json_integer(sub.next));
        } else {
            json_object_set_new(errors, key, json_pack("{s:s,s:s}", "error", sub.err_code,
                                                       "error_description", sub.err_desc));
        }
        json_object_set_new(times, key, time_block(e, c->now_ms, sub.cost_ms, op));
        json_decref(sub.result);
        if (halt && sub.status != 200)
            break;
    }
    b24_ok(c, json_pack("{s:o,s:o,s:o,s:o,s:o}", "result", b24_php_map(results), "result_error",
                        b24_php_map(errors), "result_total", b24_php_map(totals),
                        "result_next", b24_php_map(nexts), "result_time",
                        b24_php_map(times)));
    return;
out:
    json_decref(results);
    json_decref(errors);
    json_decref(totals);
    json_decref(nexts);
    json_decref(times);
}

/* ---- control methods (loyd.emu.*) ----------------------------------------------------- */

static json_t *counters(const struct b24emu *e)
{
    return json_pack("{s:O,s:I,s:I,s:I,s:I,s:I,s:I,s:I,s:I,s:I}", "calls", e->calls, "requests",
                     (json_int_t)e->requests, "updates", (json_int_t)e->updates, "redirects",
                     (json_int_t)e->redirects, "refused", (json_int_t)e->refused,
                     "events_queued", (json_int_t)e->ev_queued, "events_dropped",
                     (json_int_t)e->ev_dropped, "events_delivered", (json_int_t)e->ev_delivered,
                     "events_failed", (json_int_t)e->ev_failed, "events_pending",
                     (json_int_t)json_array_size(e->events));
}

static json_t *values_of(const json_t *obj)
{
    json_t *arr = json_array();
    const char *k;
    json_t *v;
    json_object_foreach((json_t *)obj, k, v) {
        json_array_append(arr, v);
    }
    return arr;
}

static json_t *emu_state(struct b24emu *e, uint64_t now_ms)
{
    json_t *tokens = json_array();
    for (size_t i = 0; i < e->n_tokens; i++) {
        const struct b24_token *t = &e->tokens[i];
        json_array_append_new(tokens, json_pack("{s:s,s:b,s:I,s:s,s:b}", "access_token",
                                                t->access, "access_valid", t->access_ok,
                                                "access_expires_ms", (json_int_t)t->access_exp_ms,
                                                "refresh_token", t->refresh, "refresh_valid",
                                                t->refresh_ok));
    }
    json_t *ops = json_object();
    for (size_t i = 0; i < e->n_ops; i++) {
        long long reset_at;
        uint64_t sum = op_sum(&e->ops[i], now_ms, &reset_at);
        json_object_set_new(ops, e->ops[i].key, json_pack("{s:I,s:I}", "operating_ms",
                                                          (json_int_t)sum, "operating_reset_at",
                                                          (json_int_t)reset_at));
    }
    return json_pack(
        "{s:s,s:s,s:s,s:I,s:o,s:o,s:O,s:O,s:O,s:O,s:O,s:O,s:o,s:{s:f,s:i,s:I},s:o,s:{s:I,s:i,s:f},"
        "s:o}",
        "portal", e->portal, "member_id", e->member_id, "application_token", e->app_token,
        "clock_ms", (json_int_t)b24emu_clock_ms(e, now_ms), "contacts", values_of(e->contacts),
        "deals", values_of(e->deals), "deal_contacts", e->deal_contacts, "contact_userfields",
        e->uf[B24_CONTACT], "deal_userfields", e->uf[B24_DEAL], "timeline_comments",
        e->comments, "activities", e->activities, "events", e->events, "tokens", tokens,
        "bucket", "level", (double)e->bucket_milli / 1000.0, "burst", (int)e->burst, "drain",
        (json_int_t)e->drain, "operating", ops, "faults", "burst_503_until_ms",
        (json_int_t)e->fault_503_until, "slow_ms", (int)e->slow_ms, "drop_ratio",
        e->drop_ratio, "counters", counters(e));
}

static void emu_install(struct b24_call *c)
{
    struct b24emu *e = c->e;
    char at[33], rt[33], endpoint[300];
    uint64_t clock = b24emu_clock_ms(e, c->now_ms);

    rand_hex(e, at);
    rand_hex(e, rt);
    add_token(e, at, rt, clock);
    snprintf(endpoint, sizeof(endpoint), "https://%s/rest/", e->portal);
    json_t *auth = json_pack("{s:s,s:s,s:s,s:s,s:s,s:s,s:s,s:s,s:s,s:s,s:s}", "domain", e->portal,
                             "scope", "crm", "access_token", at, "refresh_token", rt, "expires",
                             "", "expires_in", "", "server_endpoint", e->server_endpoint,
                             "status", "L", "client_endpoint", endpoint, "member_id",
                             e->member_id, "application_token", e->app_token);
    char num[32];
    snprintf(num, sizeof(num), "%llu", (unsigned long long)((clock + e->token_ttl_ms) / 1000));
    json_object_set_new(auth, "expires", json_string(num));
    snprintf(num, sizeof(num), "%llu", (unsigned long long)(e->token_ttl_ms / 1000));
    json_object_set_new(auth, "expires_in", json_string(num));
    json_object_set_new(auth, "user_id", json_string(e->webhook_user));
    json_t *data = json_pack("{s:s,s:s,s:s,s:s}", "VERSION", "1", "ACTIVE", "Y", "INSTALLED",
                             "Y", "LANGUAGE_ID", "en");
    queue_event_auth(e, c->now_ms, "ONAPPINSTALL", data, json_incref(auth));
    json_decref(data);
    b24_ok(c, auth);
}

/*
 * loyd.emu.seed: @p contacts contacts, each with @p deals won deals of @p amount, made by the
 * same code as crm.*.add (so they read back exactly like added ones) but in one call and
 * outside the rate limits: benchmarks need portals of 100,000 deals.
 */
static void emu_seed(struct b24_call *c, const json_t *p)
{
    long long contacts = 0, deals = 0;
    const char *amount = json_string_value(json_object_get(p, "amount"));
    if (!b24_int(json_object_get(p, "contacts"), &contacts) || contacts < 0 ||
        contacts > 1000000 ||
        (json_object_get(p, "deals") != NULL &&
         (!b24_int(json_object_get(p, "deals"), &deals) || deals < 0 || deals > 100))) {
        b24_fail(c, 400, "INVALID_ARG_VALUE", "seed needs contacts (0..1000000), deals (0..100)");
        return;
    }
    long long first = -1, last = -1;
    for (long long i = 0; i < contacts; i++) {
        struct b24_call sub;
        call_init(&sub, c->e, c->now_ms);
        json_t *cp = json_pack("{s:{s:s, s:s}}", "fields", "NAME", "Seeded", "BIRTHDATE",
                               "1990-05-17");
        b24_m_contact_add(&sub, cp);
        json_decref(cp);
        long long id = json_integer_value(sub.result);
        json_decref(sub.result);
        if (sub.status != 200) {
            b24_fail(c, 500, "INTERNAL_SERVER_ERROR", "seeding failed");
            return;
        }
        first = first < 0 ? id : first;
        last = id;
        for (long long d = 0; d < deals; d++) {
            call_init(&sub, c->e, c->now_ms);
            json_t *dp = json_pack("{s:{s:s, s:s, s:s, s:s, s:I}}", "fields", "TITLE", "Order",
                                   "OPPORTUNITY", amount != NULL ? amount : "1000.00",
                                   "CURRENCY_ID", "RUB", "STAGE_ID", "WON", "CONTACT_ID",
                                   (json_int_t)id);
            b24_m_deal_add(&sub, dp);
            json_decref(dp);
            json_decref(sub.result);
        }
    }
    b24_ok(c, json_pack("{s:I, s:I}", "first_contact", (json_int_t)first, "last_contact",
                        (json_int_t)last));
}

static void emu_control(struct b24_call *c, const char *name, const json_t *p)
{
    struct b24emu *e = c->e;

    if (strcmp(name, "state") == 0) {
        b24_ok(c, emu_state(e, c->now_ms));
    } else if (strcmp(name, "calls") == 0) {
        b24_ok(c, counters(e));
    } else if (strcmp(name, "install") == 0) {
        emu_install(c);
    } else if (strcmp(name, "seed") == 0) {
        emu_seed(c, p);
    } else if (strcmp(name, "reset_limits") == 0) {
        e->bucket_milli = 0;
        for (size_t i = 0; i < e->n_ops; i++)
            memset(e->ops[i].ms, 0, sizeof(e->ops[i].ms));
        b24_ok(c, json_true());
    } else if (strcmp(name, "clock") == 0) {
        long long x;
        if (b24_int(json_object_get(p, "now_ms"), &x) && x >= 0)
            e->clock_offset_ms = x - (long long)c->now_ms;
        else if (b24_int(json_object_get(p, "advance_ms"), &x))
            e->clock_offset_ms += x;
        b24_ok(c, json_pack("{s:I}", "clock_ms", (json_int_t)b24emu_clock_ms(e, c->now_ms)));
    } else if (strcmp(name, "fault") == 0) {
        const char *mode = json_string_value(json_object_get(p, "mode"));
        long long x = 0;
        if (mode == NULL) {
            b24_fail(c, 400, "INVALID_ARG_VALUE", "fault needs a mode");
        } else if (strcmp(mode, "503_burst") == 0) {
            if (!b24_int(json_object_get(p, "seconds"), &x) || x < 0 || x > 86400) {
                b24_fail(c, 400, "INVALID_ARG_VALUE", "503_burst needs seconds 0..86400");
                return;
            }
            const char *only = json_string_value(json_object_get(p, "only"));
            if (only != NULL && strcmp(only, "webhook") != 0 && strcmp(only, "oauth") != 0) {
                b24_fail(c, 400, "INVALID_ARG_VALUE", "503_burst only is webhook or oauth");
                return;
            }
            snprintf(e->fault_503_auth, sizeof(e->fault_503_auth), "%s", only ? only : "");
            e->fault_503_until = c->now_ms + (uint64_t)x * 1000;
            b24_ok(c, json_true());
        } else if (strcmp(mode, "slow") == 0) {
            if (!b24_int(json_object_get(p, "ms"), &x) || x < 0 || x > 120000) {
                b24_fail(c, 400, "INVALID_ARG_VALUE", "slow needs ms 0..120000");
                return;
            }
            e->slow_ms = (uint32_t)x;
            b24_ok(c, json_true());
        } else if (strcmp(mode, "drop_events") == 0) {
            const json_t *r = json_object_get(p, "ratio");
            double ratio = json_is_number(r) ? json_number_value(r)
                           : json_is_string(r) ? strtod(json_string_value(r), NULL)
                                               : -1;
            if (!(ratio >= 0 && ratio <= 1)) {
                b24_fail(c, 400, "INVALID_ARG_VALUE", "drop_events needs ratio 0..1");
                return;
            }
            e->drop_ratio = ratio;
            b24_ok(c, json_true());
        } else if (strcmp(mode, "expire_tokens") == 0) {
            for (size_t i = 0; i < e->n_tokens; i++)
                e->tokens[i].access_exp_ms = 0;
            b24_ok(c, json_true());
        } else if (strcmp(mode, "moved") == 0) {
            const char *to = json_string_value(json_object_get(p, "to"));
            if (to == NULL ||
                (strncmp(to, "http://", 7) != 0 && strncmp(to, "https://", 8) != 0) ||
                strlen(to) > 512 || strpbrk(to, "\r\n") != NULL) {
                b24_fail(c, 400, "INVALID_ARG_VALUE", "moved needs to: an http(s) base URL");
                return;
            }
            free(e->moved_to);
            e->moved_to = b24_strdup(to);
            b24_ok(c, json_true());
        } else if (strcmp(mode, "429") == 0) {
            const char *method = json_string_value(json_object_get(p, "method"));
            if (method == NULL || *method == '\0' ||
                strlen(method) >= sizeof(e->fault_429_method) ||
                !b24_int(json_object_get(p, "count"), &x) || x < 0 || x > 100000) {
                b24_fail(c, 400, "INVALID_ARG_VALUE", "429 needs method and count 0..100000");
                return;
            }
            snprintf(e->fault_429_method, sizeof(e->fault_429_method), "%s", method);
            for (char *q = e->fault_429_method; *q; q++)
                *q = (char)tolower((unsigned char)*q);
            e->fault_429_left = (uint32_t)x;
            b24_ok(c, json_true());
        } else if (strcmp(mode, "none") == 0) {
            e->fault_429_left = 0;
            e->fault_503_until = 0;
            e->slow_ms = 0;
            free(e->moved_to);
            e->moved_to = NULL;
            e->drop_ratio = 0;
            b24_ok(c, json_true());
        } else {
            b24_fail(c, 400, "INVALID_ARG_VALUE", "unknown fault mode");
        }
    } else {
        b24_fail(c, 404, "ERROR_METHOD_NOT_FOUND", "Method not found!");
    }
}

/* ---- the entry points ----------------------------------------------------------------- */

/* Checks an access token.  @return 0, or fills the 401 error. */
static int check_token(struct b24_call *c, const char *token)
{
    struct b24emu *e = c->e;
    uint64_t clock = b24emu_clock_ms(e, c->now_ms);

    for (size_t i = 0; token != NULL && i < e->n_tokens; i++) {
        struct b24_token *t = &e->tokens[i];
        if (!b24_streq(t->access, token))
            continue;
        if (!t->access_ok)
            break; /* revoked by a refresh: unknown to the portal */
        if (clock >= t->access_exp_ms) {
            b24_fail(c, 401, "expired_token", "The access token provided has expired.");
            return -1;
        }
        return 0;
    }
    b24_fail(c, 401, "NO_AUTH_FOUND", "Wrong authorization data");
    return -1;
}

bool b24_streq(const char *a, const char *b)
{
    /* Constant time in the candidate, like the daemon's check of real secrets. */
    size_t an = strlen(a), bn = strlen(b);
    unsigned char diff = an != bn;
    for (size_t i = 0; i < an; i++)
        diff |= (unsigned char)(a[i] ^ (i < bn ? b[i] : 0));
    return diff == 0;
}

int b24emu_call(struct b24emu *e, const char *method, const json_t *params, uint64_t now_ms,
                int *http_status, json_t **response)
{
    struct b24_call c;
    char path[256], *name;
    const struct b24_op *op = NULL;

    if (e == NULL || method == NULL || http_status == NULL || response == NULL ||
        (params != NULL && !json_is_object(params)))
        return -EINVAL;
    call_init(&c, e, now_ms);
    while (*method == '/')
        method++;
    snprintf(path, sizeof(path), "%s", method);
    for (char *p = path; *p; p++)
        *p = (char)tolower((unsigned char)*p);
    size_t pl = strlen(path);
    if (pl > 5 && strcmp(path + pl - 5, ".json") == 0)
        path[pl - 5] = '\0';

    /* "<user>/<code>/<method>" is an inbound webhook, "<method>" an OAuth call. */
    char *s1 = strchr(path, '/'), *s2 = s1 != NULL ? strchr(s1 + 1, '/') : NULL;
    if (s1 != NULL && (s2 == NULL || strchr(s2 + 1, '/') != NULL)) {
        b24_fail(&c, 404, "ERROR_METHOD_NOT_FOUND", "Method not found!");
        goto answer;
    }
    name = s2 != NULL ? s2 + 1 : path;
    if (strncmp(name, "loyd.emu.", 9) == 0) {
        emu_control(&c, name + 9, params);
        goto answer;
    }
    e->requests++;
    if (s2 != NULL) {
        /* Compare against the original spelling: the code is case-sensitive. */
        char user[64], code[128];
        const char *o1 = strchr(method, '/');
        snprintf(user, sizeof(user), "%.*s", (int)(o1 - method), method);
        const char *o2 = strchr(o1 + 1, '/');
        snprintf(code, sizeof(code), "%.*s", (int)(o2 - o1 - 1), o1 + 1);
        if (e->webhook_code == NULL || !b24_streq(code, e->webhook_code) ||
            strcmp(user, e->webhook_user) != 0) {
            b24_fail(&c, 401, "NO_AUTH_FOUND", "Wrong authorization data");
            goto answer;
        }
        snprintf(c.auth_kind, sizeof(c.auth_kind), "webhook");
    } else {
        if (check_token(&c, json_string_value(json_object_get(params, "auth"))) != 0)
            goto answer;
        snprintf(c.auth_kind, sizeof(c.auth_kind), "oauth");
    }
    bool burst = now_ms < e->fault_503_until &&
                 (e->fault_503_auth[0] == '\0' || strcmp(e->fault_503_auth, c.auth_kind) == 0);
    if (burst || !bucket_admit(e, now_ms)) {
        e->refused++;
        b24_fail(&c, 503, "QUERY_LIMIT_EXCEEDED", "Too many requests");
        goto answer;
    }
    const struct method *m = find_method(name);
    if (m == NULL) {
        b24_fail(&c, 404, "ERROR_METHOD_NOT_FOUND", "Method not found!");
        goto answer;
    }
    run_method(&c, m, params, &op);
answer:
    *http_status = c.status;
    *response = envelope(&c, op);
    json_decref(c.result);
    return 0;
}

int b24emu_oauth_token(struct b24emu *e, const json_t *params, uint64_t now_ms,
                       int *http_status, json_t **response)
{
    const char *grant = json_string_value(json_object_get(params, "grant_type"));
    const char *cid = json_string_value(json_object_get(params, "client_id"));
    const char *sec = json_string_value(json_object_get(params, "client_secret"));
    const char *rt = json_string_value(json_object_get(params, "refresh_token"));
    uint64_t clock;

    if (e == NULL || http_status == NULL || response == NULL)
        return -EINVAL;
    clock = b24emu_clock_ms(e, now_ms);
    *http_status = 400;
    if (grant == NULL || strcmp(grant, "refresh_token") != 0) {
        *response = json_pack("{s:s,s:s}", "error", "invalid_request", "error_description",
                              "grant_type must be refresh_token");
        return 0;
    }
    if ((e->client_id != NULL && (cid == NULL || !b24_streq(cid, e->client_id))) ||
        (e->client_secret != NULL && (sec == NULL || !b24_streq(sec, e->client_secret)))) {
        *http_status = 401;
        *response = json_pack("{s:s,s:s}", "error", "invalid_client", "error_description",
                              "Invalid client credentials");
        return 0;
    }
    struct b24_token *found = NULL;
    for (size_t i = 0; rt != NULL && i < e->n_tokens; i++)
        if (b24_streq(e->tokens[i].refresh, rt))
            found = &e->tokens[i];
    if (found == NULL || !found->refresh_ok || clock >= found->refresh_exp_ms) {
        *response = json_pack("{s:s,s:s}", "error", "invalid_grant", "error_description",
                              "Invalid refresh token");
        return 0;
    }
    /* Single use: the refresh token and the access token issued with it both die. */
    found->refresh_ok = false;
    found->access_ok = false;
    char at[33], nrt[33], endpoint[300];
    rand_hex(e, at);
    rand_hex(e, nrt);
    add_token(e, at, nrt, clock);
    snprintf(endpoint, sizeof(endpoint), "https://%s/rest/", e->portal);
    long long user = atoll(e->webhook_user);
    *response = json_pack("{s:s,s:s,s:s,s:I,s:I,s:s,s:s,s:s,s:s,s:s,s:I}", "access_token", at,
                          "client_endpoint", endpoint, "domain", "oauth.bitrix.info", "expires",
                          (json_int_t)((clock + e->token_ttl_ms) / 1000), "expires_in",
                          (json_int_t)(e->token_ttl_ms / 1000), "member_id", e->member_id,
                          "refresh_token", nrt, "scope", "crm", "server_endpoint",
                          e->server_endpoint, "status", "L", "user_id", (json_int_t)user);
    *http_status = 200;
    return 0;
}
