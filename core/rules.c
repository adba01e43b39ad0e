/* SPDX-License-Identifier: MIT */
/*
 * The rule engine (see rules.h): a pack's rule files in a sandbox, the trusted prelude that
 * gives rules their effect constructors, evaluation of one event (handlers -> proposed effects
 * -> validation against ledger math, caps and budgets -> rows, updates, write-backs, trace) and
 * the lint pass behind `loyd check`.
 */
#include "rules.h"

#include <errno.h>
#include <lauxlib.h>
#include <stdlib.h>
#include <string.h>

#include "campaign.h"
#include "ledger.h"
#include "log.h"

#define MAX_EFFECTS 256 /* per event, all handlers together */
#define MAX_TEXT 4096   /* note / task text */
#define MAX_REASON 256
#define MAX_POINTS 1000000000LL

const char *const loyd_rules_events[] = {
    "contact.created", "contact.updated", "deal.won",       "deal.reopened",
    "deal.updated",    "birthday",        "tick",           "offer.redeemed",
    NULL};
#define N_EVENTS (LOYD_ARRAY_SIZE(loyd_rules_events) - 1)
#define MAX_OFFERS 50 /* kept per member: every open one, then the newest used or revoked */

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
    "count = ctor('count')\n"
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

/*
 * Campaigns declared with the `campaigns` setting type (campaign.h), as rules use them.  The
 * calendar test mirrors loyd_campaign_state; the weekday is computed here (days from civil,
 * 1970-01-01 a Thursday) so the helper needs nothing else.  Awards carry campaign = name, so
 * the host enforces the budget and `loyd campaigns` counts them.
 */
static const char campaigns_prelude_src[] =
    "local type, mtype, ipairs, pairs, error, tostring, tonumber = type, math.type, ipairs, "
    "pairs, error, tostring, tonumber\n"
    "local function weekday(d)\n"
    "  local y, m, day = tonumber(d:sub(1, 4)), tonumber(d:sub(6, 7)), tonumber(d:sub(9, 10))\n"
    "  if m <= 2 then y = y - 1 end\n"
    "  local era = y // 400\n"
    "  local yoe = y - era * 400\n"
    "  local doy = (153 * ((m + 9) % 12) + 2) // 5 + day - 1\n"
    "  local days = era * 146097 + yoe * 365 + yoe // 4 - yoe // 100 + doy - 719468\n"
    "  return (days + 3) % 7 + 1\n"
    "end\n"
    "local function date_arg(fn, d)\n"
    "  if d == nil then return loyd.today() end\n"
    "  if type(d) ~= 'string' or not d:find('^%d%d%d%d%-%d%d%-%d%d$') then\n"
    "    error(fn .. ': date must be \"YYYY-MM-DD\", got ' .. tostring(d), 3)\n"
    "  end\n"
    "  return d\n"
    "end\n"
    "local function active(c, d)\n"
    "  if c.from ~= nil and d < c.from then return false end\n"
    "  if c.to ~= nil and d > c.to then return false end\n"
    "  if c.weekdays == nil then return true end\n"
    "  local wd = weekday(d)\n"
    "  for _, x in ipairs(c.weekdays) do if x == wd then return true end end\n"
    "  return false\n"
    "end\n"
    "local function list_arg(fn, list)\n"
    "  if type(list) ~= 'table' then\n"
    "    error(fn .. ': expects the campaigns list (e.g. settings.campaigns), got ' .. "
    "type(list), 3)\n"
    "  end\n"
    "end\n"
    "function loyd.campaign_active(c, d)\n"
    "  if type(c) ~= 'table' then error('loyd.campaign_active: expects a campaign', 2) end\n"
    "  return active(c, date_arg('loyd.campaign_active', d))\n"
    "end\n"
    "function loyd.active_campaigns(list, d)\n"
    "  list_arg('loyd.active_campaigns', list)\n"
    "  d = date_arg('loyd.active_campaigns', d)\n"
    "  local out = {}\n"
    "  for _, c in ipairs(list) do if active(c, d) then out[#out + 1] = c end end\n"
    "  return out\n"
    "end\n"
    "local OPTS = { reason = true, ref = true, expires_in_days = true, expires_at = true, "
    "member = true, date = true }\n"
    "function loyd.campaign_awards(list, points, opts)\n"
    "  list_arg('loyd.campaign_awards', list)\n"
    "  if mtype(points) ~= 'integer' then\n"
    "    error('loyd.campaign_awards: points must be an integer number of ledger units, got ' "
    ".. tostring(points), 2)\n"
    "  end\n"
    "  opts = opts or {}\n"
    "  for k in pairs(opts) do\n"
    "    if not OPTS[k] then\n"
    "      error('loyd.campaign_awards: unknown option \\'' .. tostring(k) .. '\\' (options: "
    "reason, ref, expires_in_days, expires_at, member, date)', 2)\n"
    "    end\n"
    "  end\n"
    "  local d = date_arg('loyd.campaign_awards', opts.date)\n"
    "  local out = {}\n"
    "  if points <= 0 then return out end\n"
    "  for _, c in ipairs(list) do\n"
    "    if active(c, d) then\n"
    "      local extra = c.multiplier ~= nil and points * (c.multiplier - 1)\n"
    "                    or points * (c.bonus_bp or 0) // 10000\n"
    "      if extra > 0 then\n"
    "        out[#out + 1] = award{ points = extra, campaign = c.name,\n"
    "          reason = 'campaign ' .. c.name .. (opts.reason ~= nil and (', ' .. opts.reason) "
    "or ''),\n"
    "          ref = opts.ref, expires_in_days = opts.expires_in_days,\n"
    "          expires_at = opts.expires_at, member = opts.member }\n"
    "      end\n"
    "    end\n"
    "  end\n"
    "  return out\n"
    "end\n";

struct handler {
    size_t file; /* index into pack->rules */
    char *event;
};

struct loyd_rules {
    const struct loyd_pack *pack;
    struct loyd_sandbox *sb;
    struct handler *h;
    size_t nh;
    /* While handlers run: what loyd.campaign_remaining reads (borrowed; NULL otherwise). */
    const json_t *ctx_settings, *ctx_totals;
};

/*
 * loyd.campaign_spent(name), loyd.campaign_remaining(name): what awards with campaign = name
 * drew tenant-wide before this event, and what its budget still allows (nil: no budget).
 */
static int campaign_read(lua_State *L, const char *fn, bool remaining)
{
    struct loyd_rules *r = loyd_sandbox_userdata(loyd_sandbox_from_lua(L));
    if (lua_type(L, 1) != LUA_TSTRING)
        return luaL_error(L, "%s expects a campaign name (a string), got %s", fn,
                          luaL_typename(L, 1));
    if (r == NULL || r->ctx_settings == NULL)
        return luaL_error(L, "%s works only inside a handler", fn);
    const char *name = lua_tostring(L, 1);
    int64_t spent = json_integer_value(json_object_get(r->ctx_totals, name)), budget;
    if (!remaining)
        lua_pushinteger(L, spent);
    else if (loyd_campaign_budget(r->pack->schema, r->ctx_settings, name, &budget))
        lua_pushinteger(L, budget > spent ? budget - spent : 0);
    else
        lua_pushnil(L);
    return 1;
}

static int l_rules_campaign_spent(lua_State *L)
{
    return campaign_read(L, "loyd.campaign_spent", false);
}

static int l_rules_campaign_remaining(lua_State *L)
{
    return campaign_read(L, "loyd.campaign_remaining", true);
}

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
    loyd_sandbox_set_userdata(r->sb, r);
    if ((rc = loyd_sandbox_define(r->sb, "campaign_spent", l_rules_campaign_spent)) != 0 ||
        (rc = loyd_sandbox_define(r->sb, "campaign_remaining", l_rules_campaign_remaining)) != 0 ||
        (rc = loyd_sandbox_prelude(r->sb, "=loyd/campaigns", campaigns_prelude_src,
                                   sizeof(campaigns_prelude_src) - 1, err)) != 0)
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
      {"birthday", F_BOOL, false},
      {"ref", F_REF, false}}},
    {"note", {{"text", F_STR, true}}},
    {"task", {{"title", F_STR, true}, {"text", F_STR, false}, {"due_in_days", F_INT, false}}},
    {"set_field", {{"name", F_STR, true}, {"value", F_ANY, true}, {"crm", F_BOOL, false}}},
    {"count",
     {{"name", F_STR, true},
      {"by", F_INT, false},
      {"reset", F_BOOL, false},
      {"ref", F_REF, false},
      {"reason", F_STR, false}}},
};

static const char *const effect_kinds[] = {"award", "redeem", "reverse",   "set_tier", "offer",
                                           "note",  "task",   "set_field", "count"};

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
    if (strcmp(kind, "count") == 0 && json_is_true(json_object_get(e, "reset")) &&
        json_object_get(e, "by") != NULL) {
        loyd_buf_puts(err, "count: give either 'by' or 'reset = true', not both");
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

/* The pack's own purchase windows (pack.conf `windows`) into the spend and purchases tables. */
static void view_windows(json_t *v, const struct loyd_pack *pack, const json_t *purchases,
                         int64_t now_ms, int tz)
{
    json_t *spend = json_object_get(v, "spend"), *count = json_object_get(v, "purchases"), *n;
    size_t i;

    json_array_foreach(pack != NULL ? pack->windows : NULL, i, n)
    {
        struct loyd_window w;
        struct loyd_buf e = {0};
        int64_t amount, cnt;
        /* pack.c checked the names and loyd_ledger_spend the purchases: no error here. */
        if (loyd_ledger_window_parse(json_string_value(n), &w, &e) == 0 &&
            loyd_ledger_spend_window(purchases, &w, now_ms, tz, &amount, &cnt, &e) == 0) {
            json_object_set_new(spend, json_string_value(n), json_integer(amount));
            json_object_set_new(count, json_string_value(n), json_integer(cnt));
        }
        loyd_buf_free(&e);
    }
}

/* member.counters: every counter pack.conf declares (0 until it counts), then the stored ones. */
static json_t *view_counters(const json_t *member, const struct loyd_pack *pack)
{
    json_t *c = json_object(), *x;
    const char *k;

    json_object_foreach(pack != NULL ? pack->counters : NULL, k, x)
        json_object_set_new(c, k, json_integer(0));
    json_object_foreach(json_object_get(member, "counters"), k, x)
    {
        if (json_is_integer(x))
            json_object_set(c, k, x);
    }
    return c;
}

/* The view from an already built ledger; @p ledger_state must have been expired to now. */
static json_t *build_view(const json_t *member, const struct loyd_ledger *lg,
                          const struct loyd_spend *sp, int64_t now_ms, int tz,
                          const json_t *purchases, const struct loyd_pack *pack)
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
    /* The offers a customer can still use: open and not past their last day. */
    json_t *offers = json_array(), *o;
    size_t oi;
    char today[11];
    loyd_date_format(now_ms, tz, today);
    json_array_foreach(json_object_get(member, "offers"), oi, o)
    {
        const char *st = json_string_value(json_object_get(o, "status"));
        const char *until = json_string_value(json_object_get(o, "valid_until"));
        if (st == NULL || strcmp(st, "open") != 0 || (until != NULL && strcmp(until, today) < 0))
            continue;
        json_t *c = json_deep_copy(o);
        json_object_del(c, "status");
        json_array_append_new(offers, c);
    }
    json_object_set_new(v, "offers", offers);
    json_t *attrs = json_object_get(member, "attributes");
    json_object_set_new(v, "attributes",
                        json_is_object(attrs) ? json_deep_copy(attrs) : json_object());
    json_object_set_new(v, "counters", view_counters(member, pack));
    view_windows(v, pack, purchases, now_ms, tz);
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
    json_t *o = json_object_get(member, "offers");
    if (o != NULL && !json_is_null(o) && !json_is_array(o)) {
        loyd_buf_puts(err, "member.offers must be a list");
        return -EINVAL;
    }
    /* Counters are whole non-negative numbers; the change log is the host's own list. */
    json_t *c = json_object_get(member, "counters"), *cv;
    const char *ck;
    if (c != NULL && !json_is_null(c) && !json_is_object(c)) {
        loyd_buf_puts(err, "member.counters must be a record { name = n }");
        return -EINVAL;
    }
    json_object_foreach(c, ck, cv)
    {
        if (!json_is_integer(cv) || json_integer_value(cv) < 0 ||
            json_integer_value(cv) > LOYD_LEDGER_MAX_POINTS) {
            loyd_buf_printf(err, "member.counters.%s must be a non-negative integer", ck);
            return -EINVAL;
        }
    }
    json_t *cl = json_object_get(member, "counter_log");
    if (cl != NULL && !json_is_null(cl) && !json_is_array(cl)) {
        loyd_buf_puts(err, "member.counter_log must be a list");
        return -EINVAL;
    }
    return 0;
}

int loyd_rules_member_view(const json_t *member, const json_t *ledger, const json_t *purchases,
                           int64_t now_ms, int tz_offset_min, json_t **out, struct loyd_buf *err)
{
    return loyd_rules_pack_member_view(NULL, member, ledger, purchases, now_ms, tz_offset_min, out,
                                       err);
}

int loyd_rules_pack_member_view(const struct loyd_pack *pack, const json_t *member,
                                const json_t *ledger, const json_t *purchases, int64_t now_ms,
                                int tz_offset_min, json_t **out, struct loyd_buf *err)
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
    *out = build_view(member, &lg, &sp, now_ms, tz_offset_min, purchases, pack);
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
    json_t *offers; /* the member's offers as this event leaves them (profile "offers") */
    bool offers_changed;
    json_t *counters;    /* {name: value} as this event leaves them (profile "counters") */
    json_t *counter_log; /* [{name, by, ref, at}]: changes a reverse{ref} undoes */
    bool counters_changed;
    struct other_ledger *others; /* other members a reversal reached */
    size_t nothers;
};

/* Another member's ledger that a reverse{ref} reaches (built once per evaluation). */
struct other_ledger {
    char *member_id;
    struct loyd_ledger lg;
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
    /* The campaign's own budget (a `campaigns` setting) and settings.budgets: the smaller. */
    int64_t budget;
    if (campaign != NULL &&
        loyd_campaign_budget(ev->r->pack->schema, ev->settings, campaign, &budget)) {
        int64_t used = json_integer_value(json_object_get(ev->campaigns, campaign));
        int64_t left = budget - used;
        if (left <= 0) {
            char u[64], b[64];
            loyd_points_format(used, &ev->r->pack->points, LOYD_POINTS_GROUP | LOYD_POINTS_UNIT,
                               u, sizeof(u));
            loyd_points_format(budget, &ev->r->pack->points, LOYD_POINTS_GROUP | LOYD_POINTS_UNIT,
                               b, sizeof(b));
            loyd_buf_printf(why, "budget of campaign '%s' exhausted (%s of %s awarded)", campaign,
                            u, b);
            goto out;
        }
        if (points > left) {
            note(ev, "%s: award of %lld points cut to %lld by the budget of campaign '%s'", file,
                 (long long)points, (long long)left, campaign);
            json_object_set_new(e, "capped_from", json_integer(points));
            points = left;
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

/* The member.refresh write-back of another member's card, once per member and event. */
static void refresh_other(struct eval *ev, const char *mid)
{
    size_t i;
    json_t *o;
    json_array_foreach(ev->outbox, i, o)
    {
        const char *op = str_field(o, "op"), *m = str_field(o, "member_id");
        if (op != NULL && strcmp(op, "member.refresh") == 0 && m != NULL && strcmp(m, mid) == 0)
            return;
    }
    json_array_append_new(ev->outbox,
                          json_pack("{s:s, s:s}", "op", "member.refresh", "member_id", mid));
}

/* The ledger of another member, built from @p rows the first time it is needed. */
static struct loyd_ledger *other_ledger(struct eval *ev, const char *mid, const json_t *rows,
                                        struct loyd_buf *why)
{
    for (size_t i = 0; i < ev->nothers; i++)
        if (strcmp(ev->others[i].member_id, mid) == 0)
            return &ev->others[i].lg;
    struct loyd_ledger lg;
    struct loyd_buf e = {0};
    if (loyd_ledger_init(&lg, mid, rows, &e) != 0) {
        loyd_buf_printf(why, "reverse: the ledger of member '%s' does not replay: %s", mid,
                        e.data != NULL ? e.data : "?");
        loyd_buf_free(&e);
        loyd_ledger_deinit(&lg);
        return NULL;
    }
    ev->others = loyd_xrealloc(ev->others, (ev->nothers + 1) * sizeof(*ev->others));
    ev->others[ev->nothers] = (struct other_ledger){loyd_xstrdup(mid), lg};
    return &ev->others[ev->nothers++].lg;
}

/* Open offers with @p ref are withdrawn: what they were given for was undone. */
static json_t *revoke_offers(struct eval *ev, const char *ref, const char *file)
{
    json_t *codes = json_array(), *o;
    size_t i;
    json_array_foreach(ev->offers, i, o)
    {
        const char *st = str_field(o, "status"), *r = str_field(o, "ref");
        if (st == NULL || strcmp(st, "open") != 0 || r == NULL || strcmp(r, ref) != 0)
            continue;
        const char *code = str_field(o, "code");
        json_object_set_new(o, "status", json_string("revoked"));
        json_object_set_new(o, "revoked_on", json_string(ev->today));
        json_array_append_new(codes, json_string(code));
        ev->offers_changed = true;
        note(ev, "%s: offer %s withdrawn: '%s', which it was given for, was reversed", file, code,
             ref);
        char *text = loyd_xasprintf("Personal offer %s is withdrawn: what it was given for (%s) "
                                    "was reversed.",
                                    code, ref);
        json_array_append_new(ev->outbox, json_pack("{s:s, s:s}", "op", "note", "text", text));
        free(text);
    }
    return codes;
}

/*
 * reverse{ref}: everything under the ref, whoever it went to.  This member's lots and
 * redemptions (ledger.h), every other member's awards under the same ref (a referrer's bonus
 * for this member's purchase; their cards are refreshed) and this member's open offers with
 * the ref.  Other members' ledgers are read (and checked) before anything is written, so a
 * failure leaves the event's rows as they were.
 */
static bool undo_counters(struct eval *ev, const char *ref, const char *file, json_t *e);

static int apply_reverse(struct eval *ev, json_t *e, const char *file, struct loyd_buf *why)
{
    char *ref = ref_string(json_object_get(e, "ref"));
    const char *reason = str_field(e, "reason");
    const char *self = json_string_value(json_object_get(ev->in->member, "id"));
    struct loyd_reversal rv, sum = {0};
    struct loyd_buf own = {0};
    json_t *others = NULL, *reached = json_array(), *revoked = NULL;
    struct loyd_ledger **olg = NULL;
    const char **omid = NULL;
    size_t no = 0;
    bool any = false;
    char dflt[300];
    int rc;

    snprintf(dflt, sizeof(dflt), "reversal of %s", ref);
    if (reason == NULL)
        reason = dflt;
    if (ev->in->ref_ledgers != NULL) {
        if ((rc = ev->in->ref_ledgers(ev->in->ref_arg, ref, &others)) != 0) {
            loyd_buf_printf(why, "reverse: cannot read other members' rows with ref '%s': %s",
                            ref, loyd_strerror(rc));
            goto out;
        }
        size_t n = json_object_size(others);
        olg = loyd_xcalloc(n + 1, sizeof(*olg));
        omid = loyd_xcalloc(n + 1, sizeof(*omid));
        const char *mid;
        json_t *rows;
        json_object_foreach(others, mid, rows)
        {
            if (self != NULL && strcmp(mid, self) == 0)
                continue;
            if ((olg[no] = other_ledger(ev, mid, rows, why)) == NULL) {
                rc = -EINVAL;
                goto out;
            }
            omid[no++] = mid;
        }
    }
    rc = loyd_ledger_reverse(&ev->lg, ref, reason, ev->allow_negative, ev->at, ev->rows, &rv,
                             &own);
    if (rc != 0 && rc != -ENOENT) {
        loyd_buf_puts(why, own.data != NULL ? own.data : loyd_strerror(rc));
        goto out;
    }
    if (rc == 0) {
        any = true;
        sum = rv;
        if (rv.shortfall > 0)
            note(ev,
                 "%s: reversal of '%s': %lld points were already spent and are not taken "
                 "back (allow_negative_balance is off)",
                 file, ref, (long long)rv.shortfall);
    }
    for (size_t i = 0; i < no; i++) {
        struct loyd_buf oerr = {0};
        int orc = loyd_ledger_reverse(olg[i], ref, reason, ev->allow_negative, ev->at, ev->rows,
                                      &rv, &oerr);
        if (orc == 0) {
            any = true;
            sum.reversed += rv.reversed;
            sum.returned += rv.returned;
            sum.shortfall += rv.shortfall;
            json_array_append_new(reached, json_string(omid[i]));
            refresh_other(ev, omid[i]);
            if (rv.shortfall > 0)
                note(ev,
                     "%s: reversal of '%s' for member %s: %lld points were already spent and "
                     "are not taken back (allow_negative_balance is off)",
                     file, ref, omid[i], (long long)rv.shortfall);
        } else if (orc != -ENOENT) {
            note(ev, "%s: reversal of '%s' for member %s failed: %s", file, ref, omid[i],
                 oerr.data != NULL ? oerr.data : loyd_strerror(orc));
        }
        loyd_buf_free(&oerr);
    }
    revoked = revoke_offers(ev, ref, file);
    bool counted = undo_counters(ev, ref, file, e);
    if (!any && json_array_size(revoked) == 0 && !counted) {
        loyd_buf_printf(why, "reverse: nothing carries ref '%s' (no points of any member, no "
                        "open offer)", ref);
        rc = -ENOENT;
        goto out;
    }
    json_object_set_new(e, "ref", json_string(ref));
    json_object_set_new(e, "reversed", json_integer(sum.reversed));
    json_object_set_new(e, "returned", json_integer(sum.returned));
    json_object_set_new(e, "shortfall", json_integer(sum.shortfall));
    if (json_array_size(reached) > 0)
        json_object_set(e, "members", reached);
    if (json_array_size(revoked) > 0)
        json_object_set(e, "revoked", revoked);
    rc = 0;
out:
    loyd_buf_free(&own);
    json_decref(others);
    json_decref(reached);
    json_decref(revoked);
    free(olg);
    free(omid);
    free(ref);
    return rc;
}

/* Keeps @p rec (owned) as the member's offer with its code, replacing an older one. */
static void offer_keep(struct eval *ev, json_t *rec)
{
    const char *code = str_field(rec, "code");
    for (size_t i = json_array_size(ev->offers); i-- > 0;)
        if (strcmp(str_field(json_array_get(ev->offers, i), "code"), code) == 0)
            json_array_remove(ev->offers, i);
    json_array_append_new(ev->offers, rec);
    /* Bounded: the oldest used or revoked offers go first, open ones never. */
    for (size_t i = 0;
         json_array_size(ev->offers) > MAX_OFFERS && i < json_array_size(ev->offers);) {
        const char *st = str_field(json_array_get(ev->offers, i), "status");
        if (st != NULL && strcmp(st, "open") != 0)
            json_array_remove(ev->offers, i);
        else
            i++;
    }
    ev->offers_changed = true;
}

/* ---- counters: count{name, by | reset, ref}, and what reverse{ref} undoes of them ---- */

#define MAX_COUNTERS 64           /* per member */
#define MAX_COUNTER_LOG 100       /* changes kept per counter for reverse{ref} */
#define MAX_COUNT_STEP 1000000000 /* |by| */

/* The new value, and the card's field when pack.conf maps the counter (crm = true). */
static void counter_set(struct eval *ev, const char *name, int64_t value)
{
    json_object_set_new(ev->counters, name, json_integer(value));
    ev->counters_changed = true;
    if (json_is_true(json_object_get(json_object_get(ev->r->pack->counters, name), "crm"))) {
        json_object_set_new(ev->fields, name, json_integer(value));
        ev->fields_changed = true;
    }
}

static int apply_count(struct eval *ev, json_t *e, struct loyd_buf *why)
{
    const char *name = str_field(e, "name");
    const json_t *declared = ev->r->pack->counters;
    json_t *byv = json_object_get(e, "by");
    int64_t old = json_integer_value(json_object_get(ev->counters, name)), by;

    if (!is_ident(name, 64) || strchr(name, '-') != NULL || strcmp(name, "balance") == 0 ||
        strcmp(name, "tier") == 0) {
        loyd_buf_printf(why,
                        "count: '%s' is not a counter name (letters, digits and _; not "
                        "balance or tier)",
                        name);
        return -EINVAL;
    }
    if (declared != NULL && json_object_get(declared, name) == NULL) {
        size_t n = json_object_size(declared), i = 0;
        const char **c = loyd_xcalloc(n + 1, sizeof(*c));
        const char *k;
        json_t *x;
        json_object_foreach((json_t *)declared, k, x) c[i++] = k;
        const char *hint = loyd_suggest(name, c, n);
        free(c);
        loyd_buf_printf(why, "count: '%s' is not a counter pack.conf declares", name);
        if (hint != NULL)
            loyd_buf_printf(why, " (did you mean '%s'?)", hint);
        return -EINVAL;
    }
    if (json_is_true(json_object_get(e, "reset"))) {
        by = -old;
    } else {
        by = byv != NULL ? json_integer_value(byv) : 1;
        if (by == 0 || by < -MAX_COUNT_STEP || by > MAX_COUNT_STEP) {
            loyd_buf_printf(why, "count: 'by' must be a non-zero integer within -%d..%d, got %lld",
                            MAX_COUNT_STEP, MAX_COUNT_STEP, (long long)by);
            return -EINVAL;
        }
        if (old + by < 0) {
            loyd_buf_printf(why, "count: counter '%s' is %lld; by = %lld would take it below 0",
                            name, (long long)old, (long long)by);
            return -ERANGE;
        }
        if (old + by > LOYD_LEDGER_MAX_POINTS) {
            loyd_buf_printf(why, "count: counter '%s' would exceed %lld", name,
                            (long long)LOYD_LEDGER_MAX_POINTS);
            return -ERANGE;
        }
    }
    if (json_object_get(ev->counters, name) == NULL &&
        json_object_size(ev->counters) >= MAX_COUNTERS) {
        loyd_buf_printf(why, "count: a member has at most %d counters", MAX_COUNTERS);
        return -ENOSPC;
    }
    counter_set(ev, name, old + by);
    char *ref = ref_string(json_object_get(e, "ref"));
    if (ref != NULL) {
        json_object_set_new(e, "ref", json_string(ref));
        /* Only changes with a ref can be undone, so only they are kept; the oldest go first. */
        if (by != 0) {
            json_array_append_new(ev->counter_log,
                                  json_pack("{s:s, s:I, s:s, s:I}", "name", name, "by",
                                            (json_int_t)by, "ref", ref, "at", (json_int_t)ev->at));
            size_t same = 0, i, first = SIZE_MAX;
            json_t *x;
            json_array_foreach(ev->counter_log, i, x)
            {
                if (str_field(x, "name") != NULL && strcmp(str_field(x, "name"), name) == 0) {
                    if (first == SIZE_MAX)
                        first = i;
                    same++;
                }
            }
            if (same > MAX_COUNTER_LOG)
                json_array_remove(ev->counter_log, first);
        }
        free(ref);
    }
    json_object_set_new(e, "from", json_integer(old));
    json_object_set_new(e, "value", json_integer(old + by));
    return 0;
}

/*
 * reverse{ref}: every counter change made under @p ref is undone and forgotten (a second
 * reversal finds nothing).  A counter never goes below 0: what a later reset already took is
 * not taken again (noted in the trace).  @return whether anything carried the ref; the new
 * values go into the result as counters = {name = value}.
 */
static bool undo_counters(struct eval *ev, const char *ref, const char *file, json_t *e)
{
    json_t *sums = json_object(), *x;
    const char *k;

    for (size_t i = json_array_size(ev->counter_log); i-- > 0;) {
        x = json_array_get(ev->counter_log, i);
        const char *r = str_field(x, "ref"), *name = str_field(x, "name");
        if (r == NULL || name == NULL || strcmp(r, ref) != 0)
            continue;
        int64_t sum = json_integer_value(json_object_get(sums, name));
        json_object_set_new(sums, name,
                            json_integer(sum + json_integer_value(json_object_get(x, "by"))));
        json_array_remove(ev->counter_log, i);
    }
    if (json_object_size(sums) == 0) {
        json_decref(sums);
        return false;
    }
    json_t *now = json_object();
    json_object_foreach(sums, k, x)
    {
        int64_t cur = json_integer_value(json_object_get(ev->counters, k));
        int64_t v = cur - json_integer_value(x);
        if (v < 0) {
            note(ev, "%s: reversal of '%s': counter '%s' is %lld, undoing %lld stops at 0", file,
                 ref, k, (long long)cur, (long long)json_integer_value(x));
            v = 0;
        }
        if (v > LOYD_LEDGER_MAX_POINTS)
            v = LOYD_LEDGER_MAX_POINTS;
        counter_set(ev, k, v);
        json_object_set_new(now, k, json_integer(v));
    }
    json_object_set_new(e, "counters", now);
    json_decref(sums);
    return true;
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
    if (strcmp(kind, "count") == 0)
        return apply_count(ev, e, why);
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
        /* The member keeps it: reverse{ref} withdraws it, a code on a won deal uses it. */
        json_t *rec = json_deep_copy(o);
        json_object_del(rec, "op");
        json_object_set_new(rec, "status", json_string("open"));
        json_object_set_new(rec, "issued_on", json_string(ev->today));
        char *ref = ref_string(json_object_get(e, "ref"));
        if (ref != NULL) {
            json_object_set_new(rec, "ref", json_string(ref));
            json_object_set_new(e, "ref", json_string(ref));
        }
        free(ref);
        offer_keep(ev, rec);
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
    if (strcmp(type, "offer.redeemed") == 0 &&
        !json_is_string(json_object_get(json_object_get(e, "offer"), "code"))) {
        loyd_buf_puts(err, "offer.redeemed: event.offer.code is required (a string)");
        return -EINVAL;
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
    ev.offers = json_array();
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
    if (json_is_array(json_object_get(in->member, "offers"))) {
        json_decref(ev.offers);
        ev.offers = json_deep_copy(json_object_get(in->member, "offers"));
    }
    json_t *mc = json_object_get(in->member, "counters");
    json_t *ml = json_object_get(in->member, "counter_log");
    ev.counters = json_is_object(mc) ? json_deep_copy(mc) : json_object();
    ev.counter_log = json_is_array(ml) ? json_deep_copy(ml) : json_array();
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
    view = build_view(in->member, &ev.lg, &sp, ev.at, in->tz_offset_min, in->purchases, r->pack);

    args[0] = (json_t *)in->event;
    args[1] = view;
    args[2] = (json_t *)ev.settings;
    const struct loyd_pack *pack = r->pack;
    r->ctx_settings = ev.settings; /* loyd.campaign_remaining: totals before this event */
    r->ctx_totals = ev.campaigns;
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
    } else if (strcmp(type, "offer.redeemed") == 0) {
        /* The code is used: it is no open offer any more, whatever the handlers did. */
        const char *code = str_field(json_object_get(in->event, "offer"), "code");
        json_t *o, *found = NULL;
        json_array_foreach(ev.offers, k, o)
        {
            const char *st = str_field(o, "status");
            if (strcmp(str_field(o, "code"), code) == 0 && st != NULL && strcmp(st, "open") == 0)
                found = o;
        }
        if (found != NULL) {
            json_object_set_new(found, "status", json_string("used"));
            json_object_set_new(found, "used_on", json_string(ev.today));
            if (str_field(deal, "id") != NULL)
                json_object_set(found, "deal_id", json_object_get(deal, "id"));
            ev.offers_changed = true;
        } else {
            note(&ev, "host: offer %s is not an open offer of this member: nothing to mark used",
                 code);
        }
    }
    if (ev.counters_changed) {
        json_object_set(ev.member_upd, "counters", ev.counters);
        json_object_set(ev.member_upd, "counter_log", ev.counter_log);
    }
    if (ev.offers_changed)
        json_object_set(ev.member_upd, "offers", ev.offers);
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
    r->ctx_settings = r->ctx_totals = NULL;
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
    json_decref(ev.offers);
    json_decref(ev.counters);
    json_decref(ev.counter_log);
    for (size_t j = 0; j < ev.nothers; j++) {
        free(ev.others[j].member_id);
        loyd_ledger_deinit(&ev.others[j].lg);
    }
    free(ev.others);
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
    if (strcmp(type, "offer.redeemed") == 0) {
        json_object_set_new(ev, "offer",
                            json_pack("{s:s, s:i, s:s, s:s}", "code", "SAMPLE-1", "discount_pct",
                                      10, "valid_until", "2026-05-31", "ref", "99"));
        json_object_set_new(ev, "deal",
                            json_pack("{s:s, s:I, s:s, s:s}", "id", "100", "amount",
                                      (json_int_t)125000, "currency", "RUB", "contact_id", "1"));
    }
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
                const char *s = loyd_suggest(key, loyd_rules_events, N_EVENTS);
                loyd_buf_printf(out, "%s:%d: '%s' is not an event name", f->path, line, key);
                if (s != NULL)
                    loyd_buf_printf(out, " (did you mean '%s'?)", s);
                else
                    loyd_buf_puts(out, " (events: contact.created, contact.updated, deal.won, "
                                       "deal.reopened, deal.updated, birthday, tick, "
                                       "offer.redeemed)");
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
    if (loyd_rules_pack_member_view(r->pack, member, ledger, purchases, at, 0, &view, &verr) != 0)
        view = json_object();
    loyd_buf_free(&verr);
    r->ctx_settings = settings != NULL ? settings : r->pack->defaults; /* nothing spent yet */
    r->ctx_totals = NULL;
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
    r->ctx_settings = NULL;
    json_decref(view);
    json_decref(member);
    json_decref(ledger);
    json_decref(purchases);
    return problems;
}
