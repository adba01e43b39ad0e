/* SPDX-License-Identifier: MIT */
/*
 * Bitrix24 records to loyd's canonical snapshots (loyd/plugin.h): money strings to integer
 * minor units, ISO dates to milliseconds and birthdays to "YYYY-MM-DD", loyd's own UF_CRM_LOYD_*
 * fields to "fields", the tenant's mapped fields to "attributes".  No floating point anywhere.
 */
#include <errno.h>
#include <stdlib.h>
#include <string.h>

#include "b24.h"
#include "loyd/referral.h"

/* Currencies without minor units (ISO 4217 exponent 0) among those a portal may use. */
static const char *const zero_decimals[] = {"JPY", "KRW", "VND", "CLP", "ISK", "UGX", "XAF",
                                            "XOF", "PYG", "RWF", NULL};

static int decimals_of(const char *currency)
{
    for (size_t i = 0; currency != NULL && zero_decimals[i] != NULL; i++)
        if (strcmp(currency, zero_decimals[i]) == 0)
            return 0;
    return 2;
}

int b24_money_minor(const char *s, const char *currency, int64_t *out)
{
    int dec = decimals_of(currency);
    int64_t whole = 0, frac = 0;
    int fdigits = 0;
    bool neg = false, digits = false;

    if (s == NULL)
        return -EINVAL;
    while (*s == ' ')
        s++;
    if (*s == '-') {
        neg = true;
        s++;
    }
    for (; *s >= '0' && *s <= '9'; s++) {
        if (whole > (INT64_MAX / 1000 - 9) / 10)
            return -ERANGE;
        whole = whole * 10 + (*s - '0');
        digits = true;
    }
    if (*s == '.' || *s == ',') {
        s++;
        for (; *s >= '0' && *s <= '9'; s++) {
            digits = true;
            if (fdigits < dec) {
                frac = frac * 10 + (*s - '0');
                fdigits++;
            } else if (*s != '0') {
                return -EINVAL; /* more precision than the currency has: not money */
            }
        }
    }
    while (*s == ' ')
        s++;
    if (!digits || *s != '\0')
        return -EINVAL;
    for (; fdigits < dec; fdigits++)
        frac *= 10;
    int64_t scale = dec == 2 ? 100 : 1;
    *out = (whole * scale + frac) * (neg ? -1 : 1);
    return 0;
}

/* Days since 1970-01-01 of a civil date (Howard Hinnant's algorithm). */
static int64_t days_from_civil(int64_t y, unsigned m, unsigned d)
{
    y -= m <= 2;
    int64_t era = (y >= 0 ? y : y - 399) / 400;
    unsigned yoe = (unsigned)(y - era * 400);
    unsigned doy = (153 * (m > 2 ? m - 3 : m + 9) + 2) / 5 + d - 1;
    unsigned doe = yoe * 365 + yoe / 4 - yoe / 100 + doy;
    return era * 146097 + (int64_t)doe - 719468;
}

static bool num(const char *s, int n, int *out)
{
    int v = 0;
    for (int i = 0; i < n; i++) {
        if (s[i] < '0' || s[i] > '9')
            return false;
        v = v * 10 + (s[i] - '0');
    }
    *out = v;
    return true;
}

int b24_iso_ms(const char *s, int64_t *out)
{
    int y, mo, d, h = 0, mi = 0, se = 0, oh = 0, om = 0, sign = 1;
    if (s == NULL || strlen(s) < 10 || !num(s, 4, &y) || s[4] != '-' || !num(s + 5, 2, &mo) ||
        s[7] != '-' || !num(s + 8, 2, &d) || mo < 1 || mo > 12 || d < 1 || d > 31)
        return -EINVAL;
    const char *p = s + 10;
    if (*p == 'T' || *p == ' ') {
        if (strlen(p) < 9 || !num(p + 1, 2, &h) || p[3] != ':' || !num(p + 4, 2, &mi) ||
            p[6] != ':' || !num(p + 7, 2, &se))
            return -EINVAL;
        p += 9;
        if (*p == '+' || *p == '-') {
            sign = *p == '-' ? -1 : 1;
            if (strlen(p) != 6 || !num(p + 1, 2, &oh) || p[3] != ':' || !num(p + 4, 2, &om))
                return -EINVAL;
            p += 6;
        } else if (*p == 'Z') {
            p++;
        }
    }
    if (*p != '\0')
        return -EINVAL;
    int64_t secs = days_from_civil(y, (unsigned)mo, (unsigned)d) * 86400 + h * 3600 + mi * 60 +
                   se - sign * (oh * 3600 + om * 60);
    *out = secs * 1000;
    return 0;
}

static const char *str(const json_t *o, const char *k)
{
    const char *v = json_string_value(json_object_get(o, k));
    return v != NULL && v[0] != '\0' ? v : NULL;
}

/* A scalar as text: Bitrix24 sends ids as strings or numbers depending on the method. */
static char *id_text(const json_t *v, char buf[32])
{
    if (json_is_string(v) && json_string_value(v)[0] != '\0' && json_string_length(v) < 32)
        return strcpy(buf, json_string_value(v));
    if (json_is_integer(v) && json_integer_value(v) > 0) {
        snprintf(buf, 32, "%" JSON_INTEGER_FORMAT, json_integer_value(v));
        return buf;
    }
    return NULL;
}

static void set_modified(json_t *snap, const json_t *raw)
{
    int64_t ms;
    if (b24_iso_ms(str(raw, "DATE_MODIFY"), &ms) == 0)
        json_object_set_new(snap, "modified_at", json_integer(ms));
}

/* A UF value as a loyd attribute: Y/1/true -> true, N/0/""/false -> false, else the text. */
static json_t *attribute(const json_t *v)
{
    if (json_is_boolean(v) || json_is_integer(v))
        return json_is_integer(v) ? json_boolean(json_integer_value(v) != 0) : json_incref((json_t *)v);
    const char *s = json_string_value(v);
    if (s == NULL)
        return json_null();
    if (strcmp(s, "Y") == 0 || strcmp(s, "1") == 0 || strcmp(s, "true") == 0)
        return json_true();
    if (strcmp(s, "N") == 0 || strcmp(s, "0") == 0 || s[0] == '\0' || strcmp(s, "false") == 0)
        return json_false();
    return json_string(s);
}

/* A UF value as trimmed text (a string, or a number as its digits) into @p out; false: none. */
static bool uf_text(const json_t *v, char *out, size_t n)
{
    if (json_is_array(v)) /* a multiple field: the first value */
        v = json_array_get(v, 0);
    if (json_is_integer(v) && json_integer_value(v) > 0) {
        snprintf(out, n, "%" JSON_INTEGER_FORMAT, json_integer_value(v));
        return true;
    }
    const char *s = json_string_value(v);
    if (s == NULL)
        return false;
    while (*s == ' ')
        s++;
    size_t len = strlen(s);
    while (len > 0 && (s[len - 1] == ' ' || s[len - 1] == '\n' || s[len - 1] == '\r'))
        len--;
    if (len == 0 || len >= n)
        return false;
    memcpy(out, s, len);
    out[len] = '\0';
    return true;
}

json_t *b24_referred_by(const struct b24_tenant *t, const char *contact_id, const json_t *raw)
{
    char v[320], id[65];
    if (t->referrer_field == NULL ||
        !uf_text(json_object_get(raw, t->referrer_field), v, sizeof(v)))
        return NULL;
    switch (t->referrer_match) {
    case B24_REF_PHONE:
        return json_pack("{s:s}", "phone", v);
    case B24_REF_EMAIL:
        return json_pack("{s:s}", "email", v);
    case B24_REF_CONTACT_ID:
        /* A "CRM" type field bound to contacts holds "7"; bound to several kinds, "C_7". */
        return json_pack("{s:s}", "contact_id", strncmp(v, "C_", 2) == 0 ? v + 2 : v);
    case B24_REF_CODE:
        if (loyd_referral_code_parse(v, id))
            return json_pack("{s:s}", "contact_id", id);
        /* A code is no personal data: the manager can look for the typo. */
        t->host->log(t->hctx, LOYD_LOG_WARN,
                     "contact %s: %s holds '%.40s', which is not a loyd referral code "
                     "(R<id>-<letter>; a typo?)",
                     contact_id, t->referrer_field, v);
        return NULL;
    }
    return NULL;
}

json_t *b24_snapshot_contact(const struct b24_tenant *t, const json_t *raw)
{
    char idb[32];
    const char *id = id_text(json_object_get(raw, "ID"), idb);
    if (id == NULL)
        return NULL;
    json_t *s = json_pack("{s:s, s:s}", "kind", "contact", "id", id);
    char name[512];
    snprintf(name, sizeof(name), "%s%s%s", str(raw, "NAME") ? str(raw, "NAME") : "",
             str(raw, "NAME") && str(raw, "LAST_NAME") ? " " : "",
             str(raw, "LAST_NAME") ? str(raw, "LAST_NAME") : "");
    if (name[0] != '\0')
        json_object_set_new(s, "name", json_string(name));
    const char *multi[][2] = {{"PHONE", "phone"}, {"EMAIL", "email"}};
    for (size_t i = 0; i < 2; i++) {
        const char *v = str(json_array_get(json_object_get(raw, multi[i][0]), 0), "VALUE");
        if (v != NULL)
            json_object_set_new(s, multi[i][1], json_string(v));
    }
    const char *bd = str(raw, "BIRTHDATE");
    int y, m, d;
    if (bd != NULL && strlen(bd) >= 10 && num(bd, 4, &y) && num(bd + 5, 2, &m) &&
        num(bd + 8, 2, &d) && m >= 1 && m <= 12 && d >= 1 && d <= 31)
        json_object_set_new(s, "birthday", json_stringn(bd, 10));
    set_modified(s, raw);

    /* loyd's own fields, as the card shows them. */
    json_t *fields = json_object();
    const char *k;
    json_t *v;
    json_object_foreach((json_t *)raw, k, v)
    {
        if (strncmp(k, "UF_CRM_LOYD_", 12) != 0 || json_is_null(v))
            continue;
        /* Typed by a manager, not written by loyd: it is referred_by below. */
        if (t->referrer_field != NULL && strcmp(k, t->referrer_field) == 0)
            continue;
        char lower[96];
        size_t n = 0;
        for (const char *p = k + 12; *p && n + 1 < sizeof(lower); p++)
            lower[n++] = (char)(*p >= 'A' && *p <= 'Z' ? *p - 'A' + 'a' : *p);
        lower[n] = '\0';
        /* As the card shows them: the host reads numbers in the pack's point unit. */
        if (json_is_number(v) || (json_is_string(v) && json_string_value(v)[0] != '\0'))
            json_object_set(fields, lower, v);
    }
    json_object_set_new(s, "fields", fields);

    /* The tenant's mapped fields: attribute name -> CRM field. */
    json_t *attrs = json_object();
    json_object_foreach(t->attributes, k, v)
    {
        json_t *raw_v = json_object_get(raw, json_string_value(v));
        if (raw_v != NULL)
            json_object_set_new(attrs, k, attribute(raw_v));
    }
    json_object_set_new(s, "attributes", attrs);
    json_t *rb = b24_referred_by(t, id, raw);
    if (rb != NULL)
        json_object_set_new(s, "referred_by", rb);
    return s;
}

json_t *b24_snapshot_deal(const struct b24_tenant *t, const json_t *raw, const char *contact_id)
{
    char idb[32], cb[32];
    const char *id = id_text(json_object_get(raw, "ID"), idb);
    if (id == NULL)
        return NULL;
    const char *sem = str(raw, "STAGE_SEMANTIC_ID");
    json_t *s = json_pack("{s:s, s:s, s:b}", "kind", "deal", "id", id, "won",
                          sem != NULL && strcmp(sem, "S") == 0);
    if (sem != NULL && strcmp(sem, "F") == 0) /* a failure stage: the deal was lost */
        json_object_set_new(s, "lost", json_true());
    if (str(raw, "STAGE_ID") != NULL)
        json_object_set_new(s, "stage", json_string(str(raw, "STAGE_ID")));
    const char *cur = str(raw, "CURRENCY_ID");
    int64_t amount;
    if (cur != NULL)
        json_object_set_new(s, "currency", json_string(cur));
    if (b24_money_minor(str(raw, "OPPORTUNITY") ? str(raw, "OPPORTUNITY") : "0", cur, &amount) == 0)
        json_object_set_new(s, "amount", json_integer(amount));
    else
        t->host->log(t->hctx, LOYD_LOG_WARN, "deal %s: OPPORTUNITY '%.40s' is not an amount", id,
                     str(raw, "OPPORTUNITY"));
    if (contact_id == NULL)
        contact_id = id_text(json_object_get(raw, "CONTACT_ID"), cb);
    if (contact_id != NULL && strcmp(contact_id, "0") != 0)
        json_object_set_new(s, "contact_id", json_string(contact_id));
    if (t->redeem_field != NULL) {
        /* Points as the manager typed them ("3000", "12.5"): the host knows the unit. */
        const json_t *rv = json_object_get(raw, t->redeem_field);
        if (json_is_number(rv) || (json_is_string(rv) && json_string_value(rv)[0] != '\0'))
            json_object_set(s, "redeem_points", (json_t *)rv);
    }
    char code[80];
    if (t->offer_code_field != NULL &&
        uf_text(json_object_get(raw, t->offer_code_field), code, sizeof(code)))
        json_object_set_new(s, "offer_code", json_string(code));
    set_modified(s, raw);
    return s;
}

void b24_format_iso(int64_t ms, char out[40])
{
    int64_t secs = ms / 1000, days = secs / 86400, rem = secs % 86400;
    if (rem < 0) {
        rem += 86400;
        days--;
    }
    /* civil_from_days (Howard Hinnant). */
    int64_t z = days + 719468, era = (z >= 0 ? z : z - 146096) / 146097;
    unsigned doe = (unsigned)(z - era * 146097);
    unsigned yoe = (doe - doe / 1460 + doe / 36524 - doe / 146096) / 365;
    int64_t y = (int64_t)yoe + era * 400;
    unsigned doy = doe - (365 * yoe + yoe / 4 - yoe / 100);
    unsigned mp = (5 * doy + 2) / 153, d = doy - (153 * mp + 2) / 5 + 1;
    unsigned m = mp < 10 ? mp + 3 : mp - 9;
    y += m <= 2;
    snprintf(out, 40, "%04lld-%02u-%02uT%02d:%02d:%02d+00:00", (long long)y, m, d,
             (int)(rem / 3600), (int)(rem % 3600 / 60), (int)(rem % 60));
}
