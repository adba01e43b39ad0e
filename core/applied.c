/* SPDX-License-Identifier: MIT */
/* An applied event in words (applied.h). */
#include "applied.h"

#include <inttypes.h>
#include <string.h>

#define TEXT_MAX 60 /* bytes of a reason or title shown; the trace has all of it */

static const char *sfield(const json_t *o, const char *k)
{
    return json_string_value(json_object_get(o, k));
}

static int64_t ifield(const json_t *o, const char *k)
{
    return (int64_t)json_integer_value(json_object_get(o, k));
}

/* Rules' free text, on one line and short: no line break may split a log line. */
static void text(struct loyd_buf *out, const char *s)
{
    size_t n = 0;
    for (; s[n] != '\0' && n < TEXT_MAX; n++) {
        char c = s[n];
        loyd_buf_append(out, c == '\n' || c == '\r' || c == '\t' ? " " : &c, 1);
    }
    if (s[n] != '\0') {
        /* Not in the middle of a UTF-8 sequence: back up to its first byte. */
        while (n > 0 && ((unsigned char)s[n] & 0xc0) == 0x80) {
            n--;
            out->len--;
        }
        out->data[out->len] = '\0';
        loyd_buf_puts(out, "…");
    }
}

static void points(struct loyd_buf *out, int64_t v, const struct loyd_points_unit *u, bool unit)
{
    char b[80];
    loyd_points_format(v, u, LOYD_POINTS_GROUP | (unit ? LOYD_POINTS_UNIT : 0), b, sizeof(b));
    loyd_buf_puts(out, b);
}

static void reason(struct loyd_buf *out, const json_t *e)
{
    const char *r = sfield(e, "reason");
    if (r != NULL && r[0] != '\0') {
        loyd_buf_puts(out, " (");
        text(out, r);
        loyd_buf_puts(out, ")");
    }
}

void loyd_applied_effect_words(const json_t *e, const struct loyd_points_unit *u,
                               struct loyd_buf *out)
{
    const char *kind = sfield(e, "kind");

    if (kind == NULL) {
        loyd_buf_puts(out, "an effect");
    } else if (strcmp(kind, "award") == 0) {
        loyd_buf_puts(out, "+");
        points(out, ifield(e, "points"), u, true);
        reason(out, e);
        if (sfield(e, "campaign") != NULL)
            loyd_buf_printf(out, " [campaign %.40s]", sfield(e, "campaign"));
        if (sfield(e, "member") != NULL)
            loyd_buf_printf(out, " to member %.64s", sfield(e, "member"));
    } else if (strcmp(kind, "redeem") == 0) {
        loyd_buf_puts(out, "redeem ");
        points(out, ifield(e, "points"), u, true);
        if (json_is_integer(json_object_get(e, "requested"))) {
            loyd_buf_puts(out, " of ");
            points(out, ifield(e, "requested"), u, false);
            loyd_buf_puts(out, " requested");
        }
        if (json_is_integer(json_object_get(e, "cap"))) {
            loyd_buf_puts(out, " (cap ");
            points(out, ifield(e, "cap"), u, false);
            loyd_buf_puts(out, ")");
        }
        reason(out, e);
    } else if (strcmp(kind, "reverse") == 0) {
        loyd_buf_printf(out, "reverse %.64s: ", sfield(e, "ref") ? sfield(e, "ref") : "?");
        points(out, -ifield(e, "reversed"), u, true);
        loyd_buf_puts(out, " taken back");
        if (ifield(e, "returned") != 0) {
            loyd_buf_puts(out, ", +");
            points(out, ifield(e, "returned"), u, false);
            loyd_buf_puts(out, " paid with given back");
        }
        if (ifield(e, "shortfall") > 0) {
            loyd_buf_puts(out, ", ");
            points(out, ifield(e, "shortfall"), u, false);
            loyd_buf_puts(out, " already spent");
        }
        size_t n = json_array_size(json_object_get(e, "revoked"));
        if (n > 0)
            loyd_buf_printf(out, ", %zu offer%s revoked", n, n == 1 ? "" : "s");
    } else if (strcmp(kind, "set_tier") == 0) {
        loyd_buf_printf(out, "tier → %.40s", sfield(e, "tier") ? sfield(e, "tier") : "?");
    } else if (strcmp(kind, "offer") == 0) {
        loyd_buf_printf(out, "offer %.40s", sfield(e, "code") ? sfield(e, "code") : "?");
        if (json_is_integer(json_object_get(e, "discount_pct")))
            loyd_buf_printf(out, " (%" PRId64 " %% off", ifield(e, "discount_pct"));
        else
            loyd_buf_printf(out, " (%" PRId64 " off", ifield(e, "discount_amount"));
        if (sfield(e, "valid_until") != NULL)
            loyd_buf_printf(out, ", valid until %.10s", sfield(e, "valid_until"));
        loyd_buf_puts(out, ")");
    } else if (strcmp(kind, "note") == 0) {
        loyd_buf_puts(out, "note on the card");
    } else if (strcmp(kind, "task") == 0) {
        loyd_buf_puts(out, "task \"");
        text(out, sfield(e, "title") ? sfield(e, "title") : "");
        loyd_buf_puts(out, "\"");
    } else if (strcmp(kind, "set_field") == 0) {
        loyd_buf_printf(out, "field %.40s", sfield(e, "name") ? sfield(e, "name") : "?");
        if (json_is_false(json_object_get(e, "crm")))
            loyd_buf_puts(out, " (kept in loyd)");
    } else if (strcmp(kind, "count") == 0) {
        loyd_buf_printf(out, "counter %.40s %" PRId64 " → %" PRId64,
                        sfield(e, "name") ? sfield(e, "name") : "?", ifield(e, "from"),
                        ifield(e, "value"));
    } else {
        loyd_buf_printf(out, "%.40s", kind);
    }
}

bool loyd_applied_words(const json_t *event, const json_t *trace, const struct loyd_points_unit *u,
                        struct loyd_buf *out)
{
    const json_t *deal = json_object_get(event, "deal");
    const char *member = sfield(json_object_get(event, "contact"), "id");
    const json_t *accepted = json_object_get(trace, "accepted");
    const json_t *rejected = json_object_get(trace, "rejected");
    const json_t *x;
    size_t i, n = 0;

    if (member == NULL)
        member = sfield(deal, "contact_id");
    if (member == NULL)
        member = sfield(event, "member_id");
    loyd_buf_printf(out, "%.40s member=%.64s", sfield(event, "type") ? sfield(event, "type") : "?",
                    member ? member : "?");
    if (sfield(deal, "id") != NULL)
        loyd_buf_printf(out, " deal=%.64s", sfield(deal, "id"));
    loyd_buf_puts(out, ": ");
    json_array_foreach(accepted, i, x)
    {
        if (n++ > 0)
            loyd_buf_puts(out, "; ");
        loyd_applied_effect_words(x, u, out);
    }
    json_array_foreach(rejected, i, x)
    {
        if (n++ > 0)
            loyd_buf_puts(out, "; ");
        const char *kind = sfield(json_object_get(x, "effect"), "kind");
        loyd_buf_printf(out, "refused %.40s", kind ? kind : "effect");
        if (sfield(x, "reason") != NULL) {
            loyd_buf_puts(out, ": ");
            text(out, sfield(x, "reason"));
        }
    }
    int64_t before = ifield(trace, "balance_before"), after = ifield(trace, "balance");
    bool moved = before != after;
    if (moved) {
        loyd_buf_puts(out, n++ > 0 ? "; balance " : "balance ");
        points(out, before, u, false);
        loyd_buf_puts(out, " → ");
        points(out, after, u, true);
    }
    if (n == 0)
        loyd_buf_puts(out, "no effects");
    return n > 0;
}
