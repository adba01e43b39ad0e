/* SPDX-License-Identifier: MIT */
/*
 * The rule engine (see rules.h): a pack's rule files in a sandbox, the trusted prelude that
 * gives rules their effect constructors, evaluation of one event (handlers -> proposed effects
 * -> validation against ledger math, caps and budgets -> rows, updates, write-backs, trace) and
 * the lint pass behind `loyd check`.
 */
#include "rules.h"

#include <errno.h>
#include <stdlib.h>
#include <string.h>

#include "ledger.h"
#include "log.h"

#define MAX_EFFECTS 256 /* per event, all handlers together */
#define MAX_TEXT 4096   /* note / task text */
#define MAX_REASON 256
#define MAX_POINTS 1000000000LL

const char *const loyd_rules_events[] = {
    "contact.created", "contact.updated", "deal.won", "deal.reopened",
    "deal.updated",    "birthday",        "tick",     NULL};

/*
 * Trusted Lua run before the environment is frozen.  Constructors copy the caller's table and
 * tag it with its kind, so `return { award{points = 100, reason = "welcome"} }` is a list of
 * plain tables the host can validate.  note may also take a bare string.
 */
static const char prelude_src[] =
    "local pairs, type, error = pairs, type, error\n"
    "local function ctor(kind, text_field)\n"
    "  return function(t)\n"
    "    if text_field ~= nil and type(t) == 'string' then return { kind = kind, [text_field] = t "
    "} end\n"
    "    if type(t) ~= 'table' then error(kind .. '{...} expects a table of fields', 2) end\n"
    "    local e = {}\n"
    "    for k, v in pairs(t) do e[k] = v end\n"
    "    e.kind = kind\n"
    "    return e\n"
    "  end\n"
    "end\n"
    "award = ctor('award')\n"
    "redeem = ctor('redeem')\n"
    "reverse = ctor('reverse')\n"
    "set_tier = ctor('set_tier')\n"
    "offer = ctor('offer')\n"
    "note = ctor('note', 'text')\n"
    "task = ctor('task', 'title')\n"
    "set_field = ctor('set_field')\n"
    "function loyd.percent(amount, bp) return amount * bp // 10000 end\n"
    "function loyd.is_leap(year) return (year % 4 == 0 and year % 100 ~= 0) or year % 400 == 0 "
    "end\n";

/*
 * loyd.format_points(n): ledger units as people read them ("1,455.5 points"), in the unit the
 * pack declares (points.h; the same text loyd_points_format writes), and loyd.points_unit.
 */
static const char points_prelude_fmt[] =
    "local MINOR, DECIMALS, UNIT = %lld, %u, %s\n"
    "local mtype, tostring, fmt, error = math.type, tostring, string.format, error\n"
    "loyd.points_unit = { unit = UNIT, minor = MINOR }\n"
    "function loyd.format_points(n)\n"
    "  if mtype(n) ~= 'integer' then\n"
    "    error('loyd.format_points expects an integer number of ledger units', 2)\n"
    "  end\n"
    "  local neg = n < 0\n"
    "  local whole, frac = n // MINOR, n %% MINOR\n"
    "  if neg and frac ~= 0 then whole, frac = whole + 1, MINOR - frac end\n"
    "  local digits = tostring(neg and -whole or whole)\n"
    "  local s = digits:reverse():gsub('(%%d%%d%%d)', '%%1,'):reverse()\n"
    "  if s:sub(1, 1) == ',' then s = s:sub(2) end\n"
    "  if frac ~= 0 then s = s .. '.' .. fmt('%%0' .. DECIMALS .. 'd', frac):gsub('0+$', '') end\n"
    "  return (neg and '-' or '') .. s .. ' ' .. UNIT\n"
    "end\n";

static int points_prelude(struct loyd_sandbox *sb, const struct loyd_points_unit *u,
                          struct loyd_buf *err)
{
    /* The unit name is data from pack.conf: quoted with %q semantics by hand (no newlines are
     * allowed in it, points.c checks), so it cannot become code. */
    struct loyd_buf q = {0};
    loyd_buf_puts(&q, "\"");
    for (const char *c = u->unit; *c; c++) {
        if (*c == '"' || *c == '\\')
            loyd_buf_puts(&q, "\\");
        loyd_buf_append(&q, c, 1);
    }
    loyd_buf_puts(&q, "\"");
    char *src = loyd_xasprintf(points_prelude_fmt, (long long)u->minor, u->decimals, q.data);
    int rc = loyd_sandbox_prelude(sb, "=loyd/points", src, strlen(src), err);
    free(src);
    loyd_buf_free(&q);
    return rc;
}

struct handler {
    size_t file; /* index into pack->rules */
    char *event;
};

struct loyd_rules {
    const struct loyd_pack *pack;
    struct loyd_sandbox *sb;
    struct handler *h;
    size_t nh;
};

bool loyd_rules_event_known(const char *type)
{
    for (size_t i = 0; type != NULL && loyd_rules_events[i] != NULL; i++)
        if (strcmp(type, loyd_rules_events[i]) == 0)
            return true;
    return false;
}

struct loyd_sandbox *loyd_rules_sandbox(struct loyd_rules *r)
{
    return r->sb;
}

size_t loyd_rules_handler_count(const struct loyd_rules *r)
{
    return r->nh;
}

bool loyd_rules_handles(const struct loyd_rules *r, const char *type)
{
    for (size_t i = 0; i < r->nh; i++)
        if (strcmp(r->h[i].event, type) == 0)
            return true;
    return false;
}

void loyd_rules_destroy(struct loyd_rules *r)
{
    if (r == NULL)
        return;
    for (size_t i = 0; i < r->nh; i++)
        free(r->h[i].event);
    free(r->h);
    loyd_sandbox_destroy(r->sb);
    free(r);
}

int loyd_rules_create(const struct loyd_pack *pack, const struct loyd_sandbox_limits *lim,
                      struct loyd_rules **out, struct loyd_buf *err)
{
    struct loyd_rules *r = loyd_xcalloc(1, sizeof(*r));
    int rc, first = 0;

    *out = NULL;
    r->pack = pack;
    if ((rc = loyd_sandbox_create(pack->name, lim, &r->sb)) != 0)
        goto fail;
    if ((rc = loyd_sandbox_prelude(r->sb, "=loyd/prelude", prelude_src, sizeof(prelude_src) - 1,
                                   err)) != 0)
        goto fail;
    if ((rc = points_prelude(r->sb, &pack->points, err)) != 0)
        goto fail;
    if ((rc = loyd_sandbox_freeze(r->sb, err)) != 0)
        goto fail;
    for (size_t i = 0; i < pack->nrules; i++) {
        const struct loyd_pack_file *f = &pack->rules[i];
        struct loyd_buf e = {0};
        int frc = loyd_sandbox_load(r->sb, f->module, f->src, f->len, &e);
        if (frc != 0) {
            /* Keep going so `loyd check` reports every broken file at once. */
            const char *m = e.data != NULL ? e.data : loyd_strerror(frc);
            if (strncmp(m, f->module, strlen(f->module)) == 0)
                loyd_buf_printf(err, "%s\n", m);
            else
                loyd_buf_printf(err, "%s:1: %s\n", f->path, m);
            loyd_buf_free(&e);
            if (first == 0)
                first = frc;
            continue;
        }
        loyd_buf_free(&e);
        json_t *names = NULL;
        if ((rc = loyd_sandbox_handlers(r->sb, f->module, &names)) != 0)
            goto fail;
        size_t k;
        json_t *n;
        json_array_foreach(names, k, n)
        {
            if (!loyd_rules_event_known(json_string_value(n)))
                continue;
            r->h = loyd_xrealloc(r->h, (r->nh + 1) * sizeof(*r->h));
            r->h[r->nh++] =
                (struct handler){.file = i, .event = loyd_xstrdup(json_string_value(n))};
        }
        json_decref(names);
    }
    if (first != 0) {
        rc = first;
        goto fail;
    }
    *out = r;
    return 0;
fail:
    loyd_rules_destroy(r);
    return rc;
}

/* ---- effect shapes ------------------------------------------------------------------------ */

enum ftype { F_INT, F_STR, F_BOOL, F_REF, F_ANY, F_DATEMS };

struct field_spec {
    const char *name;
    enum ftype type;
    bool required;
};

struct effect_spec {
    const char *kind;
    struct field_spec f[8];
};

static const struct effect_spec effect_specs[] = {
    {"award",
     {{"points", F_INT, true},
      {"reason", F_STR, true},
      {"expires_in_days", F_INT, false},
      {"expires_at", F_DATEMS, false},
      {"ref", F_REF, false},
      {"campaign", F_STR, false},
      {"member", F_REF, false}}},
    {"redeem",
     {{"points", F_INT, true},
      {"reason", F_STR, true},
      {"ref", F_REF, false},
      {"cap", F_INT, false},
      {"partial", F_BOOL, false}}},
    {"reverse", {{"ref", F_REF, true}, {"reason", F_STR, false}}},
    {"set_tier", {{"tier", F_STR, true}, {"reason", F_STR, false}}},
    {"offer",
     {{"code", F_STR, true},
      {"discount_pct", F_INT, false},
      {"discount_amount", F_INT, false},
      {"valid_days", F_INT, true},
      {"reason", F_STR, false},
      {"birthday", F_BOOL, false}}},
    {"note", {{"text", F_STR, true}}},
    {"task", {{"title", F_STR, true}, {"text", F_STR, false}, {"due_in_days", F_INT, false}}},
    {"set_field", {{"name", F_STR, true}, {"value", F_ANY, true}, {"crm", F_BOOL, false}}},
};

static const char *const effect_kinds[] = {"award", "redeem", "reverse", "set_tier",
                                           "offer", "note",   "task",    "set_field"};

static const struct effect_spec *find_spec(const char *kind)
{
    for (size_t i = 0; kind != NULL && i < LOYD_ARRAY_SIZE(effect_specs); i++)
        if (strcmp(effect_specs[i].kind, kind) == 0)
            return &effect_specs[i];
    return NULL;
}

static bool is_ident(const char *s, size_t max)
{
    size_t n = strlen(s);
    if (n == 0 || n > max ||
        !((s[0] >= 'a' && s[0] <= 'z') || (s[0] >= 'A' && s[0] <= 'Z') || s[0] == '_'))
        return false;
    for (size_t i = 1; i < n; i++)
        if (!((s[i] >= 'a' && s[i] <= 'z') || (s[i] >= 'A' && s[i] <= 'Z') ||
              (s[i] >= '0' && s[i] <= '9') || s[i] == '_' || s[i] == '-'))
            return false;
    return true;
}

int loyd_rules_check_effect(const json_t *e, struct loyd_buf *err)
{
    if (!json_is_object(e)) {
        loyd_buf_printf(err,
                        "an effect must be a table made by award{...}, redeem{...}, ...; got "
                        "%s",
                        json_is_array(e) ? "a list" : "a plain value");
        return -EINVAL;
    }
    const char *kind = json_string_value(json_object_get(e, "kind"));
    const struct effect_spec *sp = find_spec(kind);
    if (sp == NULL) {
        if (kind == NULL) {
            loyd_buf_puts(err, "effect has no kind: build it with award{...}, note{...}, ...");
        } else {
            const char *s = loyd_suggest(kind, effect_kinds, LOYD_ARRAY_SIZE(effect_kinds));
            loyd_buf_printf(err, "unknown effect kind '%s'", kind);
            if (s != NULL)
                loyd_buf_printf(err, " (did you mean '%s'?)", s);
        }
        return -EINVAL;
    }
    const char *names[9];
    size_t nn = 0;
    for (size_t i = 0; i < 8 && sp->f[i].name != NULL; i++)
        names[nn++] = sp->f[i].name;
    const char *k;
    json_t *v;
    json_object_foreach((json_t *)e, k, v)
    {
        if (strcmp(k, "kind") == 0)
            continue;
        const struct field_spec *fs = NULL;
        for (size_t i = 0; i < nn; i++)
            if (strcmp(sp->f[i].name, k) == 0)
                fs = &sp->f[i];
        if (fs == NULL) {
            const char *s = loyd_suggest(k, names, nn);
            loyd_buf_printf(err, "%s: unknown field '%s'", kind, k);
            if (s != NULL)
                loyd_buf_printf(err, " (did you mean '%s'?)", s);
            return -EINVAL;
        }
        bool ok = true;
        const char *want = "";
        switch (fs->type) {
        case F_INT:
            ok = json_is_integer(v);
            want = "an integer";
            if (json_is_real(v)) {
                loyd_buf_printf(err,
                                "%s: '%s' must be an integer, got %g (use // or "
                                "math.floor: points and money are whole numbers)",
                                kind, k, json_real_value(v));
                return -EINVAL;
            }
            break;
        case F_STR:
            ok = json_is_string(v) && json_string_length(v) > 0 &&
                 json_string_length(v) <= (strcmp(k, "text") == 0 ? MAX_TEXT : MAX_REASON);
            want = "a non-empty string (reasonable length)";
            break;
        case F_BOOL:
            ok = json_is_boolean(v);
            want = "true or false";
            break;
        case F_REF:
            ok = (json_is_string(v) && json_string_length(v) > 0 &&
                  json_string_length(v) <= MAX_REASON) ||
                 json_is_integer(v);
            want = "a string or an integer id";
            break;
        case F_DATEMS:
            ok = json_is_integer(v) || json_is_string(v);
            want = "a date \"YYYY-MM-DD\" or milliseconds";
            break;
        case F_ANY:
            ok = json_is_string(v) || json_is_integer(v) || json_is_boolean(v) || json_is_null(v);
            want = "a string, integer, boolean or loyd.null";
            break;
        }
        if (!ok) {
            loyd_buf_printf(err, "%s: '%s' must be %s", kind, k, want);
            return -EINVAL;
        }
    }
    for (size_t i = 0; i < nn; i++) {
        if (sp->f[i].required && json_object_get(e, sp->f[i].name) == NULL) {
            loyd_buf_printf(err, "%s: missing required field '%s'", kind, sp->f[i].name);
            return -EINVAL;
        }
    }
    if (strcmp(kind, "offer") == 0 && (json_object_get(e, "discount_pct") == NULL) ==
                                          (json_object_get(e, "discount_amount") == NULL)) {
        loyd_buf_puts(err, "offer: give exactly one of 'discount_pct' and 'discount_amount'");
        return -EINVAL;
    }
    if (strcmp(kind, "award") == 0 && json_object_get(e, "expires_in_days") != NULL &&
        json_object_get(e, "expires_at") != NULL) {
        loyd_buf_puts(err, "award: give at most one of 'expires_in_days' and 'expires_at'");
        return -EINVAL;
    }
    return 0;
}

/* ---- member view -------------------------------------------------------------------------- */

static void set_if(json_t *o, const char *k, json_t *v)
{
    if (v != NULL && !json_is_null(v))
        json_object_set(o, k, v);
}

/* The view from an already built ledger; @p ledger_state must have been expired to now. */
static json_t *build_view(const json_t *member, const struct loyd_ledger *lg,
                          const struct loyd_spend *sp, int64_t now_ms, int tz)
{
    json_t *v = json_object();
    char d[11];

    set_if(v, "id", json_object_get(member, "id"));
    json_object_set_new(v, "balance", json_integer(lg->balance));
    set_if(v, "tier", json_object_get(member, "tier"));
    json_object_set_new(v, "lots", loyd_ledger_lots_json(lg, now_ms, tz));
    json_object_set_new(v, "spend",
                        json_pack("{s:I, s:I, s:I}", "d30", (json_int_t)sp->d30, "d365",
                                  (json_int_t)sp->d365, "total", (json_int_t)sp->total));
    json_object_set_new(v, "purchases",
                        json_pack("{s:I, s:I, s:I}", "d30", (json_int_t)sp->n30, "d365",
                                  (json_int_t)sp->n365, "total", (json_int_t)sp->ntotal));
    if (sp->first_ms != 0) {
        json_object_set_new(v, "first_purchase_at", json_integer(sp->first_ms));
        loyd_date_format(sp->first_ms, tz, d);
        json_object_set_new(v, "first_purchase_on", json_string(d));
        json_object_set_new(v, "last_purchase_at", json_integer(sp->last_ms));
        loyd_date_format(sp->last_ms, tz, d);
        json_object_set_new(v, "last_purchase_on", json_string(d));
    }
    set_if(v, "birthday", json_object_get(member, "birthday"));
    set_if(v, "referrer", json_object_get(member, "referrer"));
    set_if(v, "last_birthday_offer_year", json_object_get(member, "last_birthday_offer_year"));
    json_t *attrs = json_object_get(member, "attributes");
    json_object_set_new(v, "attributes",
                        json_is_object(attrs) ? json_deep_copy(attrs) : json_object());
    return v;
}

static int check_member(const json_t *member, struct loyd_buf *err)
{
    static const char *const strs[] = {"id", "tier", "birthday", "referrer"};

    if (!json_is_object(member)) {
        loyd_buf_puts(err, "member must be an object");
        return -EINVAL;
    }
    for (size_t i = 0; i < LOYD_ARRAY_SIZE(strs); i++) {
        json_t *v = json_object_get(member, strs[i]);
        if (v != NULL && !json_is_null(v) && !json_is_string(v)) {
            loyd_buf_printf(err, "member.%s must be a string", strs[i]);
            return -EINVAL;
        }
    }
    if (!json_is_string(json_object_get(member, "id"))) {
        loyd_buf_puts(err, "member.id is required");
        return -EINVAL;
    }
    json_t *a = json_object_get(member, "attributes");
    if (a != NULL && !json_is_null(a) && !json_is_object(a)) {
        loyd_buf_puts(err, "member.attributes must be an object");
        return -EINVAL;
    }
    return 0;
}

int loyd_rules_member_view(const json_t *member, const json_t *ledger, const json_t *purchases,
                           int64_t now_ms, int tz_offset_min, json_t **out, struct loyd_buf *err)
{
    struct loyd_ledger lg;
    struct loyd_spend sp;
    int rc;

    *out = NULL;
    if ((rc = check_member(member, err)) != 0)
        return rc;
    if ((rc = loyd_ledger_init(&lg, json_string_value(json_object_get(member, "id")), ledger,
                               err)) != 0)
        goto done;
    if ((rc = loyd_ledger_expire(&lg, now_ms, NULL, NULL, err)) != 0)
        goto done;
    if ((rc = loyd_ledger_spend(purchases, now_ms, &sp, err)) != 0)
        goto done;
    *out = build_view(member, &lg, &sp, now_ms, tz_offset_min);
done:
    loyd_ledger_deinit(&lg);
    return rc;
}

/* ---- evaluation ---------------------------------------------------------------------------- */

struct eval {
    struct loyd_rules *r;
    const struct loyd_rules_input *in;
    struct loyd_ledger lg;
    int64_t at;
    char today[11];
    const json_t *settings;
    bool allow_negative;
    json_t *res; /* the result object */
    json_t *accepted, *rejected, *rows, *outbox, *notes, *member_upd, *campaigns;
    char *tier; /* current tier (owned), may be NULL */
    bool tier_changed, fields_changed;
    json_t *fields; /* set_field values for the contact.fields write-back */
    int64_t awarded_this_event;
    bool birthday_offer_done;
};

static void note(struct eval *ev, const char *fmt, ...) LOYD_PRINTF(2, 3);
static void note(struct eval *ev, const char *fmt, ...)
{
    va_list ap;
    va_start(ap, fmt);
    char buf[512];
    vsnprintf(buf, sizeof(buf), fmt, ap);
    va_end(ap);
    json_array_append_new(ev->notes, json_string(buf));
}

static void reject(struct eval *ev, const json_t *effect, const char *file, const char *reason)
{
    json_t *o = json_pack("{s:O, s:s}", "effect", effect, "reason", reason);
    if (file != NULL)
        json_object_set_new(o, "file", json_string(file));
    json_array_append_new(ev->rejected, o);
}

static int64_t setting_int(const json_t *settings, const char *map, const char *key)
{
    json_t *m = json_object_get(settings, map);
    return json_integer_value(json_object_get(m, key));
}

/* Points a cap still allows (INT64_MAX when unlimited); *which names the binding cap. */
static int64_t cap_allowance(struct eval *ev, const char **which, int64_t *used_out,
                             int64_t *limit_out)
{
    int64_t best = INT64_MAX, from, to;
    static const char *const names[] = {"award_per_event", "award_per_day", "award_per_month"};

    *which = NULL;
    for (size_t i = 0; i < LOYD_ARRAY_SIZE(names); i++) {
        int64_t limit = setting_int(ev->settings, "caps", names[i]), used;
        if (limit <= 0)
            continue;
        if (i == 0) {
            used = ev->awarded_this_event;
        } else {
            if (i == 1)
                loyd_date_day_bounds(ev->at, ev->in->tz_offset_min, &from, &to);
            else
                loyd_date_month_bounds(ev->at, ev->in->tz_offset_min, &from, &to);
            used = loyd_ledger_awarded_between(&ev->lg, from, to);
        }
        int64_t left = limit > used ? limit - used : 0;
        if (left < best) {
            best = left;
            *which = names[i];
            *used_out = used;
            *limit_out = limit;
        }
    }
    return best;
}

static char *ref_string(const json_t *v)
{
    if (json_is_string(v))
        return loyd_xstrdup(json_string_value(v));
    if (json_is_integer(v))
        return loyd_xasprintf("%lld", (long long)json_integer_value(v));
    return NULL;
}

static const char *str_field(const json_t *e, const char *k)
{
    return json_string_value(json_object_get(e, k));
}

static int apply_award(struct eval *ev, json_t *e, const char *file, struct loyd_buf *why)
{
    int64_t points = json_integer_value(json_object_get(e, "points"));
    char *ref = ref_string(json_object_get(e, "ref"));
    char *target = ref_string(json_object_get(e, "member"));
    const char *campaign = str_field(e, "campaign");
    const char *self = json_string_value(json_object_get(ev->in->member, "id"));
    int64_t expires = 0;
    int rc = -EINVAL;
    json_t *x;

    if (points <= 0 || points > MAX_POINTS) {
        loyd_buf_printf(why, "award: points must be 1..%lld, got %lld", MAX_POINTS,
                        (long long)points);
        goto out;
    }
    if ((x = json_object_get(e, "expires_in_days")) != NULL) {
        int64_t days = json_integer_value(x);
        if (days < 1 || days > 36500) {
            loyd_buf_printf(why, "award: expires_in_days must be 1..36500, got %lld",
                            (long long)days);
            goto out;
        }
        /* Valid through the day N days from today (tenant's calendar), expiring at midnight:
         * people count expiry in days, not in hours since the purchase. */
        int64_t from, to;
        loyd_date_day_bounds(ev->at, ev->in->tz_offset_min, &from, &to);
        expires = to + days * LOYD_DAY_MS;
    } else if ((x = json_object_get(e, "expires_at")) != NULL) {
        if (json_is_string(x)) {
            if (loyd_date_parse(json_string_value(x), ev->in->tz_offset_min, &expires) != 0) {
                loyd_buf_printf(why, "award: expires_at \"%s\" is not a valid date",
                                json_string_value(x));
                goto out;
            }
            expires += LOYD_DAY_MS; /* valid through that day */
        } else {
            expires = json_integer_value(x);
        }
        if (expires <= ev->at) {
            loyd_buf_puts(why, "award: expires_at is not in the future");
            goto out;
        }
    }
    if (target != NULL && self != NULL && strcmp(target, self) == 0) {
        free(target);
        target = NULL;
    }
    if (target != NULL) {
        const char *referrer = json_string_value(json_object_get(ev->in->member, "referrer"));
        if (referrer == NULL || strcmp(referrer, target) != 0) {
            loyd_buf_printf(why,
                            "award: points may go to another member only when it is this "
                            "member's referrer (member '%s')",
                            target);
            goto out;
        }
    }
    /* Per-member caps bind this member's awards; the referrer's ledger is not loaded here. */
    if (target == NULL) {
        const char *which;
        int64_t used = 0, limit = 0;
        int64_t left = cap_allowance(ev, &which, &used, &limit);
        if (left <= 0) {
            loyd_buf_printf(why, "cap %s reached (%lld of %lld points already awarded)", which,
                            (long long)used, (long long)limit);
            goto out;
        }
        if (points > left) {
            note(ev, "%s: award of %lld points cut to %lld by cap %s", file, (long long)points,
                 (long long)left, which);
            json_object_set_new(e, "capped_from", json_integer(points));
            points = left;
        }
    }
    if (campaign != NULL) {
        json_t *b = json_object_get(json_object_get(ev->settings, "budgets"), campaign);
        if (json_is_integer(b)) {
            int64_t used = json_integer_value(json_object_get(ev->campaigns, campaign));
            int64_t left = json_integer_value(b) - used;
            if (left <= 0) {
                loyd_buf_printf(why, "budget of campaign '%s' exhausted (%lld of %lld points)",
                                campaign, (long long)used, (long long)json_integer_value(b));
                goto out;
            }
            if (points > left) {
                note(ev, "%s: award of %lld points cut to %lld by the budget of campaign '%s'",
                     file, (long long)points, (long long)left, campaign);
                json_object_set_new(e, "capped_from", json_integer(points));
                points = left;
            }
        }
    }
    const char *reason = str_field(e, "reason");
    if (target != NULL) {
        json_t *row =
            json_pack("{s:s, s:s, s:I, s:I, s:s, s:I, s:I}", "member_id", target, "kind", "award",
                      "points", (json_int_t)points, "at", (json_int_t)ev->at, "reason", reason,
                      "expires_ms", (json_int_t)expires, "lot_id", (json_int_t)0);
        if (ref != NULL)
            json_object_set_new(row, "ref", json_string(ref));
        if (campaign != NULL)
            json_object_set_new(row, "campaign", json_string(campaign));
        json_array_append_new(ev->rows, row);
        json_array_append_new(ev->outbox,
                              json_pack("{s:s, s:s}", "op", "member.refresh", "member_id", target));
    } else {
        rc = loyd_ledger_award(&ev->lg, points, reason, ref, campaign, expires, ev->at, ev->rows,
                               why);
        if (rc != 0)
            goto out;
        ev->awarded_this_event += points;
    }
    if (campaign != NULL) {
        int64_t used = json_integer_value(json_object_get(ev->campaigns, campaign));
        json_object_set_new(ev->campaigns, campaign, json_integer(used + points));
    }
    json_object_set_new(e, "points", json_integer(points));
    if (ref != NULL)
        json_object_set_new(e, "ref", json_string(ref));
    if (expires != 0) {
        char d[11];
        loyd_date_format(expires - 1, ev->in->tz_offset_min, d);
        json_object_set_new(e, "expires_on", json_string(d));
    }
    rc = 0;
out:
    free(ref);
    free(target);
    return rc;
}

static int apply_redeem(struct eval *ev, json_t *e, struct loyd_buf *why)
{
    int64_t points = json_integer_value(json_object_get(e, "points"));
    json_t *cap = json_object_get(e, "cap");
    char *ref = ref_string(json_object_get(e, "ref"));
    int rc = -EINVAL;

    if (points <= 0 || points > MAX_POINTS) {
        loyd_buf_printf(why, "redeem: points must be 1..%lld, got %lld", MAX_POINTS,
                        (long long)points);
        goto out;
    }
    if (cap != NULL) {
        int64_t c = json_integer_value(cap);
        if (c <= 0) {
            loyd_buf_printf(why, "redeem: cap is %lld, nothing may be redeemed", (long long)c);
            goto out;
        }
        if (points > c) {
            json_object_set_new(e, "requested", json_integer(points));
            points = c;
        }
    }
    if (json_is_true(json_object_get(e, "partial")) && !ev->allow_negative) {
        int64_t avail = ev->lg.balance > 0 ? ev->lg.balance : 0;
        json_t *lots = loyd_ledger_lots_json(&ev->lg, ev->at, 0);
        int64_t open = 0;
        size_t i;
        json_t *l;
        json_array_foreach(lots, i, l) open += json_integer_value(json_object_get(l, "points"));
        json_decref(lots);
        if (open < avail)
            avail = open;
        if (avail <= 0) {
            loyd_buf_puts(why, "insufficient balance: nothing to redeem");
            goto out;
        }
        if (points > avail) {
            if (json_object_get(e, "requested") == NULL)
                json_object_set_new(e, "requested", json_integer(points));
            points = avail;
        }
    }
    rc = loyd_ledger_redeem(&ev->lg, points, str_field(e, "reason"), ref, ev->allow_negative,
                            ev->at, ev->rows, why);
    if (rc != 0)
        goto out;
    json_object_set_new(e, "points", json_integer(points));
    if (ref != NULL)
        json_object_set_new(e, "ref", json_string(ref));
out:
    free(ref);
    return rc;
}

static int apply_reverse(struct eval *ev, json_t *e, const char *file, struct loyd_buf *why)
{
    char *ref = ref_string(json_object_get(e, "ref"));
    const char *reason = str_field(e, "reason");
    struct loyd_reversal rv;
    char dflt[300];

    snprintf(dflt, sizeof(dflt), "reversal of %s", ref);
    int rc = loyd_ledger_reverse(&ev->lg, ref, reason != NULL ? reason : dflt, ev->allow_negative,
                                 ev->at, ev->rows, &rv, why);
    if (rc == 0) {
        json_object_set_new(e, "ref", json_string(ref));
        json_object_set_new(e, "reversed", json_integer(rv.reversed));
        json_object_set_new(e, "returned", json_integer(rv.returned));
        json_object_set_new(e, "shortfall", json_integer(rv.shortfall));
        if (rv.shortfall > 0)
            note(ev,
                 "%s: reversal of '%s': %lld points were already spent and are not taken "
                 "back (allow_negative_balance is off)",
                 file, ref, (long long)rv.shortfall);
    }
    free(ref);
    return rc;
}

static bool tier_known(struct eval *ev, const char *tier, const char **hint)
{
    json_t *tiers = json_object_get(ev->settings, "tiers");
    size_t n = json_array_size(tiers), i;
    json_t *t;

    *hint = NULL;
    if (!json_is_array(tiers) || n == 0)
        return true;
    const char **c = loyd_xcalloc(n, sizeof(*c));
    bool found = false;
    json_array_foreach(tiers, i, t)
    {
        c[i] = json_is_string(t) ? json_string_value(t) : "";
        found = found || strcmp(c[i], tier) == 0;
    }
    if (!found)
        *hint = loyd_suggest(tier, c, n);
    free(c);
    return found;
}

static int apply_effect(struct eval *ev, json_t *e, const char *file, struct loyd_buf *why)
{
    const char *kind = str_field(e, "kind");

    if (strcmp(kind, "award") == 0)
        return apply_award(ev, e, file, why);
    if (strcmp(kind, "redeem") == 0)
        return apply_redeem(ev, e, why);
    if (strcmp(kind, "reverse") == 0)
        return apply_reverse(ev, e, file, why);
    if (strcmp(kind, "set_tier") == 0) {
        const char *tier = str_field(e, "tier"), *hint;
        if (!is_ident(tier, 32)) {
            loyd_buf_printf(why, "set_tier: '%s' is not a tier name (letters, digits, _ and -)",
                            tier);
            return -EINVAL;
        }
        if (!tier_known(ev, tier, &hint)) {
            loyd_buf_printf(why, "set_tier: '%s' is not in settings.tiers", tier);
            if (hint != NULL)
                loyd_buf_printf(why, " (did you mean '%s'?)", hint);
            return -EINVAL;
        }
        if (ev->tier != NULL && strcmp(ev->tier, tier) == 0) {
            loyd_buf_printf(why, "set_tier: member is already in tier '%s'", tier);
            return -EALREADY;
        }
        free(ev->tier);
        ev->tier = loyd_xstrdup(tier);
        ev->tier_changed = true;
        json_object_set_new(ev->member_upd, "tier", json_string(tier));
        return 0;
    }
    if (strcmp(kind, "offer") == 0) {
        const char *code = str_field(e, "code");
        int64_t days = json_integer_value(json_object_get(e, "valid_days"));
        json_t *pct = json_object_get(e, "discount_pct"),
               *amt = json_object_get(e, "discount_amount");
        if (!is_ident(code, 64)) {
            loyd_buf_printf(why, "offer: code '%s' must be 1..64 letters, digits, _ or -", code);
            return -EINVAL;
        }
        if (pct != NULL && (json_integer_value(pct) < 1 || json_integer_value(pct) > 100)) {
            loyd_buf_puts(why, "offer: discount_pct must be 1..100");
            return -EINVAL;
        }
        if (amt != NULL && json_integer_value(amt) < 1) {
            loyd_buf_puts(why, "offer: discount_amount must be positive (minor units)");
            return -EINVAL;
        }
        if (days < 1 || days > 3650) {
            loyd_buf_puts(why, "offer: valid_days must be 1..3650");
            return -EINVAL;
        }
        int year = atoi(ev->today);
        if (json_is_true(json_object_get(e, "birthday"))) {
            json_t *last = json_object_get(ev->in->member, "last_birthday_offer_year");
            if (ev->birthday_offer_done ||
                (json_is_integer(last) && json_integer_value(last) == year)) {
                loyd_buf_printf(why, "offer: a birthday offer was already given in %d", year);
                return -EALREADY;
            }
            ev->birthday_offer_done = true;
            json_object_set_new(ev->member_upd, "last_birthday_offer_year", json_integer(year));
        }
        char until[11];
        loyd_date_format(ev->at + days * LOYD_DAY_MS, ev->in->tz_offset_min, until);
        json_object_set_new(e, "valid_until", json_string(until));
        json_t *o = json_pack("{s:s, s:s, s:s}", "op", "offer", "code", code, "valid_until", until);
        if (pct != NULL)
            json_object_set(o, "discount_pct", pct);
        if (amt != NULL)
            json_object_set(o, "discount_amount", amt);
        if (str_field(e, "reason") != NULL)
            json_object_set(o, "reason", json_object_get(e, "reason"));
        json_array_append_new(ev->outbox, o);
        return 0;
    }
    if (strcmp(kind, "note") == 0) {
        json_array_append_new(
            ev->outbox, json_pack("{s:s, s:O}", "op", "note", "text", json_object_get(e, "text")));
        return 0;
    }
    if (strcmp(kind, "task") == 0) {
        json_t *due = json_object_get(e, "due_in_days");
        int64_t days = due != NULL ? json_integer_value(due) : 1;
        if (days < 0 || days > 365) {
            loyd_buf_puts(why, "task: due_in_days must be 0..365");
            return -EINVAL;
        }
        char on[11];
        loyd_date_format(ev->at + days * LOYD_DAY_MS, ev->in->tz_offset_min, on);
        json_t *o = json_pack("{s:s, s:O, s:s}", "op", "task", "title", json_object_get(e, "title"),
                              "due_on", on);
        if (json_object_get(e, "text") != NULL)
            json_object_set(o, "text", json_object_get(e, "text"));
        json_array_append_new(ev->outbox, o);
        json_object_set_new(e, "due_on", json_string(on));
        return 0;
    }
    /* set_field */
    const char *name = str_field(e, "name");
    if (!is_ident(name, 64) || strchr(name, '-') != NULL) {
        loyd_buf_printf(why, "set_field: '%s' is not a field name (letters, digits and _)", name);
        return -EINVAL;
    }
    if (strcmp(name, "balance") == 0 || strcmp(name, "tier") == 0) {
        loyd_buf_printf(why, "set_field: '%s' is owned by the ledger (use %s)", name,
                        name[0] == 'b' ? "award/redeem" : "set_tier");
        return -EINVAL;
    }
    json_t *attrs = json_object_get(ev->member_upd, "attributes");
    if (attrs == NULL) {
        attrs = json_object();
        json_object_set_new(ev->member_upd, "attributes", attrs);
    }
    json_object_set(attrs, name, json_object_get(e, "value"));
    /* crm = false: the pack's own bookkeeping, which has no place on a manager's card. */
    if (json_is_false(json_object_get(e, "crm")))
        return 0;
    json_object_set(ev->fields, name, json_object_get(e, "value"));
    ev->fields_changed = true;
    return 0;
}

static int check_input(const struct loyd_rules_input *in, struct loyd_buf *err)
{
    const json_t *e = in->event;

    if (!json_is_object(e)) {
        loyd_buf_puts(err, "event must be an object");
        return -EINVAL;
    }
    const char *type = str_field(e, "type");
    if (type == NULL || !loyd_rules_event_known(type)) {
        loyd_buf_printf(err, "event.type '%s' is not a canonical event", type ? type : "(none)");
        return -EINVAL;
    }
    json_t *at = json_object_get(e, "at");
    if (!json_is_integer(at) || json_integer_value(at) < 0) {
        loyd_buf_puts(err, "event.at must be a non-negative integer (ms since the epoch)");
        return -EINVAL;
    }
    json_t *deal = json_object_get(e, "deal");
    if (strncmp(type, "deal.", 5) == 0) {
        if (!json_is_object(deal) || !json_is_string(json_object_get(deal, "id"))) {
            loyd_buf_printf(err, "%s: event.deal.id is required (a string)", type);
            return -EINVAL;
        }
        json_t *amount = json_object_get(deal, "amount");
        if (amount != NULL && (!json_is_integer(amount) || json_integer_value(amount) < 0)) {
            loyd_buf_printf(err,
                            "%s: event.deal.amount must be a non-negative integer (minor "
                            "units)",
                            type);
            return -EINVAL;
        }
    }
    if (in->settings != NULL && !json_is_object(in->settings)) {
        loyd_buf_puts(err, "settings must be an object");
        return -EINVAL;
    }
    if (in->tz_offset_min < -1440 || in->tz_offset_min > 1440) {
        loyd_buf_puts(err, "tz offset must be -1440..1440 minutes");
        return -EINVAL;
    }
    return check_member(in->member, err);
}

/* Is the handler result a list of effect tables?  An empty table is an empty list. */
static bool is_effect_list(const json_t *v)
{
    return json_is_null(v) || json_is_array(v) || (json_is_object(v) && json_object_size(v) == 0);
}

static const char *type_name(const json_t *v)
{
    switch (json_typeof(v)) {
    case JSON_OBJECT:
        return json_object_get(v, "kind") != NULL ? "a single effect (wrap it: return { ... })"
                                                  : "a table that is not a list";
    case JSON_STRING:
        return "a string";
    case JSON_INTEGER:
    case JSON_REAL:
        return "a number";
    case JSON_TRUE:
    case JSON_FALSE:
        return "a boolean";
    default:
        return "something else";
    }
}

/* The handlers' shared arguments end with the evaluation; stable settings stay built. */
static void forget_args(struct loyd_rules *r, json_t *const args[3], bool keep_settings)
{
    loyd_sandbox_forget_shared(r->sb, args[0]);
    loyd_sandbox_forget_shared(r->sb, args[1]);
    if (!keep_settings)
        loyd_sandbox_forget_shared(r->sb, args[2]);
}

int loyd_rules_eval(struct loyd_rules *r, const struct loyd_rules_input *in, json_t **result)
{
    struct eval ev = {.r = r, .in = in};
    struct loyd_buf err = {0};
    json_t *proposed = json_array(), *handlers = json_array(), *view = NULL;
    json_t *args[3], *own_settings = NULL;
    int rc = 0;
    int64_t balance_before;

    ev.res = json_object();
    ev.accepted = json_array();
    ev.rejected = json_array();
    ev.rows = json_array();
    ev.outbox = json_array();
    ev.notes = json_array();
    ev.member_upd = json_object();
    ev.fields = json_object();
    *result = ev.res;
    json_object_set_new(ev.res, "dry_run", json_boolean(in->dry_run));
    if ((rc = check_input(in, &err)) != 0)
        goto fail;
    const char *type = str_field(in->event, "type");
    const char *mid = str_field(in->member, "id");
    ev.at = json_integer_value(json_object_get(in->event, "at"));
    ev.settings = in->settings;
    if (ev.settings == NULL)
        ev.settings = own_settings = json_object();
    ev.allow_negative = json_is_true(json_object_get(ev.settings, "allow_negative_balance"));
    ev.campaigns = in->campaign_totals != NULL && json_is_object(in->campaign_totals)
                       ? json_deep_copy(in->campaign_totals)
                       : json_object();
    loyd_date_format(ev.at, in->tz_offset_min, ev.today);
    const char *tier = str_field(in->member, "tier");
    ev.tier = tier != NULL ? loyd_xstrdup(tier) : NULL;
    json_object_set_new(ev.res, "event",
                        json_pack("{s:s, s:I}", "type", type, "at", (json_int_t)ev.at));
    if (str_field(in->event, "key") != NULL)
        json_object_set(json_object_get(ev.res, "event"), "key", json_object_get(in->event, "key"));
    json_object_set_new(ev.res, "member_id", json_string(mid));

    if ((rc = loyd_ledger_init(&ev.lg, mid, in->ledger, &err)) != 0)
        goto fail;
    balance_before = ev.lg.balance;
    /* Lots past their expiry go first, at every event, so no rule sees or spends them. */
    int64_t expired = 0;
    if ((rc = loyd_ledger_expire(&ev.lg, ev.at, ev.rows, &expired, &err)) != 0)
        goto fail;
    if (expired > 0) {
        char shown[64];
        loyd_points_format(expired, &r->pack->points, LOYD_POINTS_GROUP | LOYD_POINTS_UNIT,
                           shown, sizeof(shown));
        note(&ev, "host: %s expired (%lld ledger units)", shown, (long long)expired);
    }
    struct loyd_spend sp;
    if ((rc = loyd_ledger_spend(in->purchases, ev.at, &sp, &err)) != 0)
        goto fail;
    view = build_view(in->member, &ev.lg, &sp, ev.at, in->tz_offset_min);

    args[0] = (json_t *)in->event;
    args[1] = view;
    args[2] = (json_t *)ev.settings;
    const struct loyd_pack *pack = r->pack;
    for (size_t i = 0; i < r->nh; i++) {
        if (strcmp(r->h[i].event, type) != 0)
            continue;
        const struct loyd_pack_file *f = &pack->rules[r->h[i].file];
        struct loyd_sandbox_call c = {
            .module = f->module,
            .handler = type,
            .args = args,
            .nargs = 3,
            .now_ms = (uint64_t)ev.at,
            .tz_offset_min = in->tz_offset_min,
            .seed = in->seed ^ (uint64_t)i,
            /* The event, the view and the settings stay as they are until every handler
             * has run: their Lua tables are built once for all of them (most of the cost). */
            .shared_args = 7u,
        };
        json_t *res = NULL, *log = NULL;
        struct loyd_buf cerr = {0};
        int crc = loyd_sandbox_call(r->sb, &c, &res, &log, &cerr);
        json_t *h = json_pack("{s:s, s:s}", "file", f->path, "event", type);
        json_object_set_new(h, "log", log != NULL ? log : json_array());
        json_array_append_new(handlers, h);
        if (crc == 0 && !is_effect_list(res)) {
            loyd_buf_printf(&cerr,
                            "%s: handler '%s' returned %s; it must return a list of "
                            "effects or nil",
                            f->path, type, type_name(res));
            crc = LOYD_EEFFECT;
        }
        if (crc == 0 && json_array_size(proposed) + json_array_size(res) > MAX_EFFECTS) {
            loyd_buf_printf(&cerr, "%s: more than %d effects for one event", f->path, MAX_EFFECTS);
            crc = LOYD_EEFFECT;
        }
        if (crc != 0) {
            /* Fail closed: no effect of any handler is applied. */
            json_object_set_new(h, "error", json_string(cerr.data ? cerr.data : "?"));
            loyd_buf_printf(&err, "%s", cerr.data != NULL ? cerr.data : loyd_strerror(crc));
            loyd_buf_free(&cerr);
            json_decref(res);
            rc = crc;
            loyd_log_info(LUA, "pack %s: %s failed for %s: %s", pack->name, f->path, type,
                          loyd_strerror(rc));
            forget_args(r, args, in->settings_stable && in->settings != NULL);
            goto fail;
        }
        loyd_buf_free(&cerr);
        size_t k;
        json_t *e;
        json_object_set_new(h, "effects", json_integer((json_int_t)json_array_size(res)));
        json_array_foreach(res, k, e)
        {
            json_array_append_new(proposed, json_pack("{s:O, s:s}", "effect", e, "file", f->path));
        }
        json_decref(res);
    }
    forget_args(r, args, in->settings_stable && in->settings != NULL);

    size_t k;
    json_t *p;
    json_array_foreach(proposed, k, p)
    {
        json_t *e = json_deep_copy(json_object_get(p, "effect"));
        const char *file = str_field(p, "file");
        struct loyd_buf why = {0};
        int erc = loyd_rules_check_effect(e, &why);
        if (erc == 0)
            erc = apply_effect(&ev, e, file, &why);
        if (erc != 0) {
            reject(&ev, json_object_get(p, "effect"), file, why.data ? why.data : "rejected");
        } else {
            json_array_append(ev.accepted, e);
        }
        json_decref(e);
        loyd_buf_free(&why);
    }

    /* Host bookkeeping that does not depend on the pack. */
    json_t *deal = json_object_get(in->event, "deal");
    if (strcmp(type, "deal.won") == 0) {
        json_t *pu = json_pack("{s:s, s:O, s:I}", "op", "add", "deal_id",
                               json_object_get(deal, "id"), "at", (json_int_t)ev.at);
        json_t *amount = json_object_get(deal, "amount");
        json_object_set_new(pu, "amount", json_integer(json_integer_value(amount)));
        if (json_object_get(deal, "currency") != NULL)
            json_object_set(pu, "currency", json_object_get(deal, "currency"));
        json_object_set_new(ev.res, "purchase", pu);
    } else if (strcmp(type, "deal.reopened") == 0) {
        json_object_set_new(
            ev.res, "purchase",
            json_pack("{s:s, s:O}", "op", "remove", "deal_id", json_object_get(deal, "id")));
    }
    if (ev.lg.balance != balance_before || ev.tier_changed || ev.fields_changed) {
        json_t *fields = json_deep_copy(ev.fields);
        json_object_set_new(fields, "balance", json_integer(ev.lg.balance));
        if (ev.tier != NULL)
            json_object_set_new(fields, "tier", json_string(ev.tier));
        /* The card shows the balance and tier first: put the write-back first. */
        json_array_insert_new(ev.outbox, 0,
                              json_pack("{s:s, s:o}", "op", "contact.fields", "fields", fields));
    }
    json_object_set_new(ev.res, "ok", json_true());
    json_object_set(ev.res, "accepted", ev.accepted);
    json_object_set(ev.res, "rejected", ev.rejected);
    json_object_set(ev.res, "ledger", ev.rows);
    json_object_set(ev.res, "outbox", ev.outbox);
    json_object_set(ev.res, "member", ev.member_upd);
    json_object_set_new(ev.res, "balance_before", json_integer(balance_before));
    json_object_set_new(ev.res, "balance", json_integer(ev.lg.balance));
    if (ev.tier != NULL)
        json_object_set_new(ev.res, "tier", json_string(ev.tier));
    json_object_set_new(ev.res, "trace",
                        json_pack("{s:O, s:O, s:O}", "handlers", handlers, "proposed", proposed,
                                  "notes", ev.notes));
    rc = 0;
    goto done;

fail:
    /* Fail closed: the result carries the error and the trace, nothing to apply. */
    json_object_set_new(ev.res, "ok", json_false());
    json_object_set_new(ev.res, "error", json_string(err.data != NULL ? err.data : "error"));
    json_object_set_new(ev.res, "accepted", json_array());
    json_object_set_new(ev.res, "rejected", json_array());
    json_object_set_new(ev.res, "ledger", json_array());
    json_object_set_new(ev.res, "outbox", json_array());
    json_object_set_new(ev.res, "member", json_object());
    json_object_set_new(ev.res, "trace",
                        json_pack("{s:O, s:O, s:O}", "handlers", handlers, "proposed", proposed,
                                  "notes", ev.notes));
done:
    json_decref(own_settings);
    loyd_buf_free(&err);
    json_decref(view);
    json_decref(proposed);
    json_decref(handlers);
    json_decref(ev.accepted);
    json_decref(ev.rejected);
    json_decref(ev.rows);
    json_decref(ev.outbox);
    json_decref(ev.notes);
    json_decref(ev.member_upd);
    json_decref(ev.fields);
    json_decref(ev.campaigns);
    free(ev.tier);
    if (ev.lg.rows != NULL)
        loyd_ledger_deinit(&ev.lg);
    return rc;
}

/* ---- lint --------------------------------------------------------------------------------- */

/* Synthetic inputs for one dry call per handler. */
static json_t *sample_event(const char *type, int64_t at)
{
    json_t *ev =
        json_pack("{s:s, s:s, s:I}", "type", type, "key", "check:sample", "at", (json_int_t)at);
    json_t *contact =
        json_pack("{s:s, s:s, s:s, s:s, s:{s:b}}", "id", "1", "name", "Sample", "phone",
                  "+10000000000", "birthday", "1990-05-17", "attributes", "review_left", 1);
    json_object_set_new(ev, "contact", contact);
    if (strncmp(type, "deal.", 5) == 0)
        json_object_set_new(ev, "deal",
                            json_pack("{s:s, s:I, s:s, s:s, s:I}", "id", "100", "amount",
                                      (json_int_t)125000, "currency", "RUB", "contact_id", "1",
                                      "redeem_points", (json_int_t)0));
    return ev;
}

static json_t *sample_member(const json_t *settings, int64_t at)
{
    json_t *tiers = json_object_get(settings, "tiers");
    const char *tier = json_string_value(json_array_get(tiers, 0));
    json_t *m = json_pack("{s:s, s:s, s:s, s:{}}", "id", "1", "birthday", "1990-05-17", "referrer",
                          "2", "attributes");
    if (tier != NULL)
        json_object_set_new(m, "tier", json_string(tier));
    (void)at;
    return m;
}

size_t loyd_rules_lint(struct loyd_rules *r, const json_t *settings, struct loyd_buf *out)
{
    const struct loyd_pack *pack = r->pack;
    size_t problems = 0;
    /* A fixed instant: checks must not depend on the day they run (2026-05-17 12:00 UTC). */
    const int64_t at = 1779019200000LL;

    for (size_t i = 0; i < pack->nrules; i++) {
        const struct loyd_pack_file *f = &pack->rules[i];
        /* Describe every key of the file's table, functions or not, through a wrapper module
         * that keeps line numbers (nothing is added before the first line's text). */
        struct loyd_buf src = {0}, e = {0};
        loyd_buf_puts(&src, "local __loyd_m = (function(...) ");
        loyd_buf_append(&src, f->src, f->len);
        loyd_buf_puts(&src, "\nend)(...)\n"
                            "return { describe = function()\n"
                            "  local out = {}\n"
                            "  if type(__loyd_m) ~= 'table' then return out end\n"
                            "  for k, v in pairs(__loyd_m) do\n"
                            "    out[#out + 1] = { key = tostring(k), type = type(v) }\n"
                            "  end\n"
                            "  return out\n"
                            "end }\n");
        char *mod = loyd_xasprintf("lint:%s", f->module);
        json_t *keys = NULL;
        if (loyd_sandbox_load(r->sb, mod, src.data, src.len, &e) == 0) {
            struct loyd_sandbox_call c = {.module = mod, .handler = "describe", .now_ms = at};
            json_t *log = NULL;
            if (loyd_sandbox_call(r->sb, &c, &keys, &log, NULL) != 0) {
                json_decref(keys);
                keys = NULL;
            }
            json_decref(log);
        }
        free(mod);
        loyd_buf_free(&src);
        loyd_buf_free(&e);
        size_t k;
        json_t *d;
        json_array_foreach(keys, k, d)
        {
            const char *key = str_field(d, "key"), *t = str_field(d, "type");
            int line = loyd_pack_line_of(f->src, key);
            if (!loyd_rules_event_known(key)) {
                const char *s = loyd_suggest(key, loyd_rules_events, 7);
                loyd_buf_printf(out, "%s:%d: '%s' is not an event name", f->path, line, key);
                if (s != NULL)
                    loyd_buf_printf(out, " (did you mean '%s'?)", s);
                else
                    loyd_buf_puts(out, " (events: contact.created, contact.updated, deal.won, "
                                       "deal.reopened, deal.updated, birthday, tick)");
                loyd_buf_puts(out, "\n");
                problems++;
            } else if (strcmp(t, "function") != 0) {
                loyd_buf_printf(out, "%s:%d: handler '%s' is a %s, not a function\n", f->path, line,
                                key, t);
                problems++;
            }
        }
        json_decref(keys);
    }

    /* One dry call per handler: the result must be nil or a list of well-formed effects. */
    json_t *member = sample_member(settings, at);
    json_t *ledger =
        json_pack("[{s:I, s:s, s:I, s:I, s:I, s:s}]", "id", (json_int_t)1, "kind", "award",
                  "points", (json_int_t)1000, "at", (json_int_t)(at - 10 * LOYD_DAY_MS),
                  "expires_ms", (json_int_t)(at + 20 * LOYD_DAY_MS), "reason", "sample");
    json_t *purchases = json_pack("[{s:s, s:I, s:I}]", "deal_id", "99", "amount", (json_int_t)50000,
                                  "at", (json_int_t)(at - 40 * LOYD_DAY_MS));
    json_t *view = NULL;
    struct loyd_buf verr = {0};
    if (loyd_rules_member_view(member, ledger, purchases, at, 0, &view, &verr) != 0)
        view = json_object();
    loyd_buf_free(&verr);
    for (size_t i = 0; i < r->nh; i++) {
        const struct loyd_pack_file *f = &pack->rules[r->h[i].file];
        const char *type = r->h[i].event;
        json_t *ev = sample_event(type, at);
        json_t *args[3] = {ev, view, (json_t *)settings};
        struct loyd_sandbox_call c = {
            .module = f->module, .handler = type, .args = args, .nargs = 3, .now_ms = at};
        json_t *res = NULL, *log = NULL;
        struct loyd_buf cerr = {0};
        int line = loyd_pack_line_of(f->src, type);
        int crc = loyd_sandbox_call(r->sb, &c, &res, &log, &cerr);
        if (crc != 0) {
            loyd_buf_printf(out, "%s:%d: handler '%s' failed on a sample %s event: %s\n", f->path,
                            line, type, type, cerr.data != NULL ? cerr.data : loyd_strerror(crc));
            problems++;
        } else if (!is_effect_list(res)) {
            loyd_buf_printf(out,
                            "%s:%d: handler '%s' returned %s; it must return a list of "
                            "effects or nil\n",
                            f->path, line, type, type_name(res));
            problems++;
        } else {
            size_t k;
            json_t *e;
            json_array_foreach(res, k, e)
            {
                struct loyd_buf why = {0};
                if (loyd_rules_check_effect(e, &why) != 0) {
                    loyd_buf_printf(out, "%s:%d: handler '%s', effect %zu: %s\n", f->path, line,
                                    type, k + 1, why.data);
                    problems++;
                }
                loyd_buf_free(&why);
            }
        }
        loyd_buf_free(&cerr);
        json_decref(res);
        json_decref(log);
        json_decref(ev);
    }
    json_decref(view);
    json_decref(member);
    json_decref(ledger);
    json_decref(purchases);
    return problems;
}
