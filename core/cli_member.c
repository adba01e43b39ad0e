/* SPDX-License-Identifier: MIT */
/*
 * `loyd member` and `loyd ledger` (see cli_member.h).  Output goes to stdout, problems to
 * stderr, one line each, naming what was wrong.
 *
 * Nothing here writes: the store is opened with loyd_store_open_readonly() (no migration, a
 * read-only connection), so an operator can run these beside the daemon at any time.
 */
#include "cli_member.h"

#include <dirent.h>
#include <errno.h>
#include <inttypes.h>
#include <stdarg.h>
#include <stdbool.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <strings.h>
#include <time.h>

#include "cli_common.h"
#include "config.h"
#include "contact_match.h"
#include "ledger.h"
#include "log.h"
#include "pack.h"
#include "points.h"
#include "store.h"
#include "tz.h"
#include "util.h"

#define DEFAULT_CONFIG LOYD_CLI_DEFAULT_CONFIG
#define MEMBER_ROWS 20                /* ledger rows `loyd member` shows without --all */
#define PAGE 1000                     /* rows per store read */
#define CONTACT_PREFIX "crm:contact:" /* the worker's kv key of a contact's CRM state */

static const char member_usage[] =
    "usage: loyd member [-c FILE] [--all] [--json] TENANT ID|PHONE|EMAIL\n"
    "\n"
    "Shows one member of TENANT: contact id, name, tier, balance, the open lots (points left,\n"
    "awarded on, expires on) and the last 20 ledger rows (date in the tenant's time zone,\n"
    "kind, points, reason, event key, the deal's amount).  Points are shown in the unit the\n"
    "tenant's pack declares, money as 15,000.00 RUB.\n"
    "\n"
    "The member is named by its CRM contact id, or by a phone (any format: +7 916 123-45-67,\n"
    "8 (916) 123-45-67) or an email (any case) as loyd last read them from the CRM.\n"
    "\n"
    "  -c, --config FILE  the daemon config, as given to `loyd serve -c` (default " DEFAULT_CONFIG
    ")\n"
    "  --all              every ledger row, not only the last 20\n"
    "  --json             one JSON object: integer ledger units plus display strings\n"
    "\n"
    "The store is opened read-only: safe while `loyd serve` runs.\n"
    "Exit status: 0 found; 1 nothing found, several contacts match, or the config, pack or\n"
    "store cannot be used; 2 usage error.\n";

static const char ledger_usage[] =
    "usage: loyd ledger [-c FILE] [--since YYYY-MM-DD] [--member WHO] [--limit N] [--json]\n"
    "                   TENANT\n"
    "\n"
    "Lists TENANT's points ledger, oldest first, one line per row: date in the tenant's time\n"
    "zone, member, kind, points (in the pack's unit), event key, reason, the deal's amount.\n"
    "\n"
    "  -c, --config FILE   the daemon config, as given to `loyd serve -c` (default " DEFAULT_CONFIG
    ")\n"
    "  --since YYYY-MM-DD  rows from that day on (00:00 in the tenant's time zone)\n"
    "  --member WHO        one member: a contact id, a phone or an email (as `loyd member`)\n"
    "  --limit N           only the newest N rows\n"
    "  --json              a JSON array of rows: integer ledger units plus display strings\n"
    "\n"
    "The store is opened read-only: safe while `loyd serve` runs.\n"
    "Exit status: 0 listed (maybe no rows); 1 the member is not found, or the config, pack or\n"
    "store cannot be used; 2 usage error.\n";

static const char *sfield(const json_t *o, const char *k)
{
    return json_string_value(json_object_get(o, k));
}

/* ---- formatting --------------------------------------------------------------------------- */

static void fmt_datetime(int64_t ms, char out[32])
{
    struct tm tm;
    loyd_cli_local_tm(ms, &tm);
    strftime(out, 32, "%Y-%m-%d %H:%M", &tm);
}

/* ISO 8601 with the zone's offset: "2026-01-10T14:03:00+03:00". */
static void fmt_iso(int64_t ms, char out[40])
{
    struct tm tm;
    loyd_cli_local_tm(ms, &tm);
    long off = tm.tm_gmtoff / 60;
    size_t n = strftime(out, 40, "%Y-%m-%dT%H:%M:%S", &tm);
    snprintf(out + n, 40 - n, "%c%02ld:%02ld", off < 0 ? '-' : '+', labs(off) / 60, labs(off) % 60);
}

/* Minor currency units as "15,000.00 RUB" (two decimals: kopecks, cents). */
static void fmt_money(int64_t minor, const char *currency, char out[64])
{
    uint64_t mag = minor < 0 ? (uint64_t)0 - (uint64_t)minor : (uint64_t)minor;
    char whole[48];
    /* The whole part through the points formatter (grouping); the cents always shown. */
    loyd_points_format((int64_t)(mag / 100), NULL, LOYD_POINTS_GROUP, whole, sizeof(whole));
    snprintf(out, 64, "%s%s.%02u%s%s", minor < 0 ? "-" : "", whole, (unsigned)(mag % 100),
             currency != NULL && currency[0] != '\0' ? " " : "", currency ? currency : "");
}

/* ---- finding a member ----------------------------------------------------------------------- */

/* The first string of a contact field (a string or a list of them), or NULL. */
static const char *field_first(const json_t *v)
{
    return json_is_array(v) ? json_string_value(json_array_get(v, 0)) : json_string_value(v);
}

struct member {
    char *id;
    json_t *contact; /* the stored CRM state, or NULL (a member row only) */
    json_t *row;     /* the member row, or NULL (a contact with no points yet) */
};

static void member_clear(struct member *m)
{
    free(m->id);
    json_decref(m->contact);
    json_decref(m->row);
    memset(m, 0, sizeof(*m));
}

/* Looks @p id up as a contact id: 0 found, -ENOENT, or a store error (printed). */
static int by_id(struct loyd_cli *c, const char *id, struct member *m)
{
    char *key = loyd_xasprintf(CONTACT_PREFIX "%s", id), *text = NULL;
    json_t *row = NULL;
    int rc = loyd_store_member_get(c->store, c->tenant->name, id, &row);

    if (rc != 0 && rc != -ENOENT) {
        free(key);
        loyd_cli_store_failed(c, "a member", rc);
        return rc;
    }
    int krc = loyd_store_kv_get(c->store, c->tenant->name, key, &text);
    free(key);
    if (krc != 0) {
        json_decref(row);
        loyd_cli_store_failed(c, "a contact", krc);
        return krc;
    }
    if (row == NULL && text == NULL)
        return -ENOENT;
    m->id = loyd_xstrdup(id);
    m->row = row;
    m->contact = text != NULL ? json_loads(text, 0, NULL) : NULL;
    free(text);
    return 0;
}

/*
 * Resolves @p who (a contact id, a phone or an email) to one member.  @return 0 found; 1 not
 * found, several found, or a store error (each printed).
 */
static int member_find(struct loyd_cli *c, const char *who, struct member *m)
{
    const char *tenant = c->tenant->name;
    char want[320], digits[32];
    bool email = strchr(who, '@') != NULL, phone = false;
    json_t *matches = json_array(); /* [[id, contact], ...] */
    size_t scanned = 0;
    int rc, ret = 1;

    memset(m, 0, sizeof(*m));
    if ((rc = by_id(c, who, m)) == 0) {
        json_decref(matches);
        return 0;
    }
    if (rc != -ENOENT)
        goto out;
    if (email) {
        while (*who == ' ')
            who++;
        snprintf(want, sizeof(want), "%s", who);
        for (size_t n = strlen(want); n > 0 && want[n - 1] == ' '; n--)
            want[n - 1] = '\0';
    } else if (loyd_phone_digits(who, true, digits)) {
        phone = true;
        snprintf(want, sizeof(want), "%s", digits);
    } else {
        loyd_cli_fail(
            c,
            "tenant '%s' has no member or contact with the id '%s' (and it is not a phone "
            "or an email to search for)",
            tenant, who);
        goto out;
    }

    /* Every contact loyd has read from the CRM (the same match as a "referred by" field). */
    json_decref(matches);
    if ((rc = loyd_contacts_matching(c->store, tenant, phone, want, &matches, &scanned)) != 0) {
        loyd_cli_store_failed(c, "contacts", rc);
        goto out;
    }

    size_t n = json_array_size(matches);
    if (n == 0) {
        if (phone)
            loyd_cli_fail(
                c,
                "no contact of tenant '%s' has the phone %s (compared as the digits %s with "
                "the %zu contacts loyd has read from the CRM), and no member has that id",
                tenant, who, want, scanned);
        else
            loyd_cli_fail(
                c,
                "no contact of tenant '%s' has the email %s (compared ignoring case with the "
                "%zu contacts loyd has read from the CRM), and no member has that id",
                tenant, want, scanned);
        goto out;
    }
    if (n > 1) {
        struct loyd_cli_table t = {.ncols = 4, .align = "llll"};
        size_t i;
        json_t *e;
        loyd_cli_fail(c,
                      "%zu contacts of tenant '%s' have the %s %s; name one by its contact id:", n,
                      tenant, phone ? "phone" : "email", who);
        json_array_foreach(matches, i, e)
        {
            const json_t *st = json_array_get(e, 1);
            const char *cells[] = {json_string_value(json_array_get(e, 0)), sfield(st, "name"),
                                   field_first(json_object_get(st, "phone")),
                                   field_first(json_object_get(st, "email"))};
            loyd_cli_table_add(&t, cells);
        }
        loyd_cli_table_print(&t, "  ", stderr);
        goto out;
    }
    /* One contact: read it as an id, with its member row. */
    rc = by_id(c, json_string_value(json_array_get(json_array_get(matches, 0), 0)), m);
    ret = rc == 0 ? 0 : 1;
out:
    json_decref(matches);
    return ret;
}

/* ---- ledger rows ---------------------------------------------------------------------------- */

/*
 * A store ledger row made readable, in place: "at" (ISO, tenant zone), "points_display",
 * "expires_on", and "deal" {id, amount, currency, amount_display} when the row's event was a
 * deal with an amount.
 */
static void row_enrich(struct loyd_cli *c, json_t *row)
{
    char buf[80], iso[40];
    int64_t at = json_integer_value(json_object_get(row, "created_ms"));
    json_t *exp = json_object_get(row, "expires_ms"), *ev = NULL;

    fmt_iso(at, iso);
    json_object_set_new(row, "at", json_string(iso));
    loyd_cli_fmt_points(c, json_integer_value(json_object_get(row, "points")), true, buf);
    json_object_set_new(row, "points_display", json_string(buf));
    if (json_is_integer(exp)) {
        loyd_cli_fmt_date(json_integer_value(exp), buf);
        json_object_set_new(row, "expires_on", json_string(buf));
    } else {
        json_object_set_new(row, "expires_on", json_null());
    }
    const char *key = sfield(row, "event_key");
    if (key != NULL && loyd_store_event_get(c->store, c->tenant->name, key, &ev) == 0) {
        const json_t *deal = json_object_get(json_object_get(ev, "event"), "deal");
        const json_t *amount = json_object_get(deal, "amount");
        if (json_is_integer(amount)) {
            const char *cur = sfield(deal, "currency");
            fmt_money(json_integer_value(amount), cur, buf);
            json_object_set_new(
                row, "deal",
                json_pack("{s:O?, s:I, s:O?, s:s}", "id", json_object_get(deal, "id"), "amount",
                          (json_int_t)json_integer_value(amount), "currency",
                          json_object_get(deal, "currency"), "amount_display", buf));
        }
    }
    json_decref(ev);
}

/* One enriched row as table cells: date, [member,] kind, points, event, reason, amount. */
static void row_cells(const json_t *row, bool with_member, struct loyd_cli_table *t)
{
    char date[32];
    fmt_datetime(json_integer_value(json_object_get(row, "created_ms")), date);
    const char *amount = sfield(json_object_get(row, "deal"), "amount_display");
    const char *cells[7] = {date,
                            sfield(row, "member_id"),
                            sfield(row, "kind"),
                            sfield(row, "points_display"),
                            sfield(row, "event_key"),
                            sfield(row, "reason"),
                            amount};
    if (!with_member)
        memmove(&cells[1], &cells[2], 5 * sizeof(cells[0]));
    loyd_cli_table_add(t, cells);
}

/* ---- argument parsing ------------------------------------------------------------------------ */

struct args {
    const char *config, *since, *member;
    const char *pos[2];
    size_t npos;
    bool all, json, help;
    long long limit; /* 0: none */
};

/*
 * Parses the options both verbs share plus the ones @p extra allows ("all", "ledger").
 * @return 0; 2 after printing a usage error.
 */
static int args_parse(const char *verb, int argc, char **argv, bool ledger, struct args *a)
{
    memset(a, 0, sizeof(*a));
    for (int i = 1; i < argc; i++) {
        const char *o = argv[i];
        bool has_value = i + 1 < argc;
        if (strcmp(o, "--help") == 0 || strcmp(o, "-h") == 0) {
            a->help = true;
            return 0;
        } else if (strcmp(o, "-c") == 0 || strcmp(o, "--config") == 0) {
            if (!has_value)
                goto missing;
            a->config = argv[++i];
        } else if (strcmp(o, "--json") == 0) {
            a->json = true;
        } else if (!ledger && strcmp(o, "--all") == 0) {
            a->all = true;
        } else if (ledger && strcmp(o, "--since") == 0) {
            if (!has_value)
                goto missing;
            a->since = argv[++i];
        } else if (ledger && strcmp(o, "--member") == 0) {
            if (!has_value)
                goto missing;
            a->member = argv[++i];
            if (a->member[0] == '\0') {
                fprintf(stderr, "loyd %s: --member needs a contact id, a phone or an email\n",
                        verb);
                return 2;
            }
        } else if (ledger && strcmp(o, "--limit") == 0) {
            if (!has_value)
                goto missing;
            char *end;
            errno = 0;
            a->limit = strtoll(argv[++i], &end, 10);
            if (errno != 0 || *end != '\0' || end == argv[i] || a->limit < 1) {
                fprintf(stderr,
                        "loyd %s: --limit '%s': expected a whole number of rows, 1 or "
                        "more\n",
                        verb, argv[i]);
                return 2;
            }
        } else if (o[0] == '-' && o[1] != '\0') {
            fprintf(stderr, "loyd %s: unknown option '%s' (see loyd %s --help)\n", verb, o, verb);
            return 2;
        } else if (a->npos < (ledger ? 1u : 2u)) {
            a->pos[a->npos++] = o;
        } else {
            fprintf(stderr, "loyd %s: unexpected argument '%s' (see loyd %s --help)\n", verb, o,
                    verb);
            return 2;
        }
        continue;
    missing:
        fprintf(stderr, "loyd %s: %s needs a value (see loyd %s --help)\n", verb, o, verb);
        return 2;
    }
    size_t want = ledger ? 1 : 2;
    if (a->npos < want || a->pos[a->npos - 1][0] == '\0') {
        fprintf(stderr, "loyd %s: %s\n%s", verb,
                ledger ? "which tenant?" : "which tenant, and which member (id, phone or email)?",
                ledger ? ledger_usage : member_usage);
        return 2;
    }
    return 0;
}

/* ---- loyd member ---------------------------------------------------------------------------- */

static int member_show(struct loyd_cli *c, const struct member *m, bool all, bool as_json)
{
    const char *tenant = c->tenant->name;
    json_t *lots = NULL, *rows = NULL, *out = NULL;
    int64_t balance = 0;
    char buf[80];
    int rc;

    if ((rc = loyd_store_balance(c->store, tenant, m->id, &balance)) != 0)
        return loyd_cli_store_failed(c, "the balance", rc);
    if ((rc = loyd_store_lots_open(c->store, tenant, m->id, &lots)) != 0)
        return loyd_cli_store_failed(c, "the lots", rc);
    if ((rc = loyd_store_ledger_list(c->store, tenant, m->id, &rows)) != 0) {
        json_decref(lots);
        return loyd_cli_store_failed(c, "the ledger", rc);
    }
    size_t total = json_array_size(rows),
           from = all || total <= MEMBER_ROWS ? 0 : total - MEMBER_ROWS;
    const json_t *profile = json_object_get(m->row, "profile");
    const char *tier = sfield(profile, "tier");
    const char *name = sfield(m->contact, "name");
    const char *phone = field_first(json_object_get(m->contact, "phone"));
    const char *email = field_first(json_object_get(m->contact, "email"));
    bool deleted = json_is_true(json_object_get(m->contact, "deleted"));
    int64_t now = (int64_t)loyd_wall_ms();

    json_t *shown = json_array();
    for (size_t i = from; i < total; i++) {
        json_t *r = json_array_get(rows, i);
        row_enrich(c, r);
        json_array_append(shown, r);
    }

    if (as_json) {
        json_t *jl = json_array();
        size_t i;
        json_t *l;
        json_array_foreach(lots, i, l)
        {
            int64_t pts = json_integer_value(json_object_get(l, "points"));
            int64_t left = json_integer_value(json_object_get(l, "remaining"));
            int64_t at = json_integer_value(json_object_get(l, "created_ms"));
            json_t *exp = json_object_get(l, "expires_ms");
            char d1[16], d2[16], p1[80], p2[80];
            loyd_cli_fmt_date(at, d1);
            loyd_cli_fmt_points(c, pts, false, p1);
            loyd_cli_fmt_points(c, left, false, p2);
            if (json_is_integer(exp))
                loyd_cli_fmt_date(json_integer_value(exp), d2);
            json_array_append_new(
                jl,
                json_pack("{s:O, s:I, s:s, s:I, s:s, s:I, s:s, s:O, s:s?, s:b, s:O, s:O}", "id",
                          json_object_get(l, "id"), "points", (json_int_t)pts, "points_display", p1,
                          "remaining", (json_int_t)left, "remaining_display", p2, "awarded_ms",
                          (json_int_t)at, "awarded_on", d1, "expires_ms", exp, "expires_on",
                          json_is_integer(exp) ? d2 : NULL, "expired",
                          json_is_integer(exp) && json_integer_value(exp) <= now, "reason",
                          json_object_get(l, "reason") ? json_object_get(l, "reason") : json_null(),
                          "event_key", json_object_get(l, "event_key")));
        }
        loyd_cli_fmt_points(c, balance, false, buf);
        out = json_pack("{s:s, s:s, s:s?, s:s?, s:s?, s:b, s:s?, s:{s:s, s:I}, s:I, s:s, s:o, "
                        "s:I, s:O}",
                        "tenant", tenant, "contact_id", m->id, "name", name, "phone", phone,
                        "email", email, "deleted_in_crm", deleted, "tier", tier, "unit", "name",
                        c->unit.unit, "minor", (json_int_t)c->unit.minor, "balance",
                        (json_int_t)balance, "balance_display", buf, "lots", jl, "ledger_total",
                        (json_int_t)total, "ledger", shown);
        loyd_cli_print_json(out);
        goto done;
    }

    printf("tenant    %s\n", tenant);
    printf("contact   %s%s%s%s\n", m->id, name ? "  " : "", name ? name : "",
           deleted              ? "  (deleted in the CRM)"
           : m->contact == NULL ? "  (loyd has not read this contact from the CRM)"
                                : "");
    if (phone != NULL)
        printf("phone     %s\n", phone);
    if (email != NULL)
        printf("email     %s\n", email);
    printf("tier      %s\n", tier ? tier : "-");
    loyd_cli_fmt_points(c, balance, false, buf);
    printf("balance   %s\n", buf);

    if (json_array_size(lots) == 0) {
        printf("lots      none open\n");
    } else {
        struct loyd_cli_table t = {.ncols = 3, .align = "rll"};
        size_t i;
        json_t *l;
        loyd_cli_table_add(&t, (const char *const[]){"points left", "awarded on", "expires on"});
        json_array_foreach(lots, i, l)
        {
            char p[80], d1[16], d2[48];
            json_t *exp = json_object_get(l, "expires_ms");
            loyd_cli_fmt_points(c, json_integer_value(json_object_get(l, "remaining")), false, p);
            loyd_cli_fmt_date(json_integer_value(json_object_get(l, "created_ms")), d1);
            if (json_is_integer(exp)) {
                loyd_cli_fmt_date(json_integer_value(exp), d2);
                if (json_integer_value(exp) <= now)
                    strcat(d2, " (past: not expired yet)");
            } else {
                strcpy(d2, "never");
            }
            loyd_cli_table_add(&t, (const char *const[]){p, d1, d2});
        }
        printf("lots\n");
        loyd_cli_table_print(&t, "  ", stdout);
    }

    if (total == 0) {
        printf("ledger    no rows\n");
    } else {
        struct loyd_cli_table t = {.ncols = 6, .align = "llrlll"};
        size_t i;
        json_t *r;
        if (from > 0)
            printf("ledger    last %d of %zu rows (--all for every row)\n", MEMBER_ROWS, total);
        else
            printf("ledger    %zu row%s\n", total, total == 1 ? "" : "s");
        loyd_cli_table_add(
            &t, (const char *const[]){"date", "kind", "points", "event", "reason", "deal"});
        json_array_foreach(shown, i, r)
        {
            row_cells(r, false, &t);
        }
        loyd_cli_table_print(&t, "  ", stdout);
    }
done:
    json_decref(out);
    json_decref(shown);
    json_decref(lots);
    json_decref(rows);
    return 0;
}

int loyd_cmd_member(int argc, char **argv)
{
    struct loyd_cli c = {.verb = "member"};
    struct member m = {0};
    struct args a;
    int rc = args_parse("member", argc, argv, false, &a);

    if (rc != 0)
        return rc;
    if (a.help) {
        fputs(member_usage, stdout);
        return 0;
    }
    c.config_path = a.config;
    if ((rc = loyd_cli_open(&c, a.pos[0])) == 0 && (rc = member_find(&c, a.pos[1], &m)) == 0)
        rc = member_show(&c, &m, a.all, a.json);
    member_clear(&m);
    loyd_cli_close(&c);
    fflush(stdout);
    return rc;
}

/* ---- loyd ledger ---------------------------------------------------------------------------- */

/* @p s "YYYY-MM-DD" as the ms of 00:00 that day in the tenant's zone.  @return success. */
static bool since_parse(const char *s, uint64_t *out)
{
    int64_t utc;
    struct tm tm;
    if (loyd_date_parse(s, 0, &utc) != 0)
        return false;
    /* The zone's offset on that day (summer time included). */
    loyd_cli_local_tm(utc, &tm);
    int64_t ms = utc - (int64_t)tm.tm_gmtoff * 1000;
    *out = ms > 0 ? (uint64_t)ms : 0;
    return true;
}

/* Prints one page of enriched rows. */
static void ledger_print(struct loyd_cli *c, json_t *rows, bool as_json, size_t *printed)
{
    struct loyd_cli_table t = {.ncols = 7, .align = "lllrlll"}; /* the points read right-aligned */
    size_t i;
    json_t *r;

    json_array_foreach(rows, i, r)
    {
        if (as_json) {
            char *text = json_dumps(r, JSON_COMPACT);
            printf("%s  %s", *printed > 0 ? ",\n" : "", text ? text : "null");
            free(text);
        } else {
            row_cells(r, true, &t);
        }
        (*printed)++;
    }
    if (!as_json)
        loyd_cli_table_print(&t, "", stdout);
}

int loyd_cmd_ledger(int argc, char **argv)
{
    struct loyd_cli c = {.verb = "ledger"};
    struct member m = {0};
    struct loyd_ledger_query q = {0};
    struct args a;
    json_t *page = NULL;
    size_t printed = 0;
    int rc = args_parse("ledger", argc, argv, true, &a);

    if (rc != 0)
        return rc;
    if (a.help) {
        fputs(ledger_usage, stdout);
        return 0;
    }
    if (a.since != NULL) {
        /* Syntax first (a usage error); the zone is applied once the tenant is known. */
        int64_t tmp;
        if (loyd_date_parse(a.since, 0, &tmp) != 0) {
            fprintf(stderr, "loyd ledger: --since '%s': expected a date YYYY-MM-DD\n", a.since);
            return 2;
        }
    }
    c.config_path = a.config;
    if ((rc = loyd_cli_open(&c, a.pos[0])) != 0)
        goto out;
    if (a.since != NULL)
        (void)since_parse(a.since, &q.since_ms);
    if (a.member != NULL) {
        if ((rc = member_find(&c, a.member, &m)) != 0)
            goto out;
        q.member_id = m.id;
    }

    if (a.json)
        fputs("[\n", stdout);
    if (a.limit > 0) {
        /* The newest N: read backwards, print forwards. */
        json_t *all = json_array();
        q.newest_first = true;
        while ((long long)json_array_size(all) < a.limit) {
            long long want = a.limit - (long long)json_array_size(all);
            if ((rc = loyd_store_ledger_query(c.store, c.tenant->name, &q,
                                              want > PAGE ? PAGE : (size_t)want, &page)) != 0)
                break;
            size_t n = json_array_size(page);
            json_array_extend(all, page);
            if (n > 0)
                q.before_id =
                    json_integer_value(json_object_get(json_array_get(page, n - 1), "id"));
            json_decref(page);
            page = NULL;
            if (n == 0 || n < (size_t)(want > PAGE ? PAGE : want))
                break;
        }
        if (rc == 0) {
            json_t *fwd = json_array();
            for (size_t i = json_array_size(all); i-- > 0;) {
                json_t *r = json_array_get(all, i);
                row_enrich(&c, r);
                json_array_append(fwd, r);
            }
            ledger_print(&c, fwd, a.json, &printed);
            json_decref(fwd);
        }
        json_decref(all);
    } else {
        /* Everything, a page at a time: a tenant's ledger may not fit in memory. */
        for (;;) {
            if ((rc = loyd_store_ledger_query(c.store, c.tenant->name, &q, PAGE, &page)) != 0)
                break;
            size_t n = json_array_size(page), i;
            json_t *r;
            json_array_foreach(page, i, r)
            {
                row_enrich(&c, r);
            }
            ledger_print(&c, page, a.json, &printed);
            if (n > 0)
                q.after_id = json_integer_value(json_object_get(json_array_get(page, n - 1), "id"));
            json_decref(page);
            page = NULL;
            if (n < PAGE)
                break;
        }
    }
    if (a.json)
        fputs(printed > 0 ? "\n]\n" : "]\n", stdout);
    if (rc != 0) {
        rc = loyd_cli_store_failed(&c, "the ledger", rc);
    } else if (printed == 0 && !a.json) {
        /* Nothing to list is an answer, not a failure; say it where a person looks. */
        fprintf(stderr, "loyd ledger: tenant '%s' has no ledger rows%s%s%s%s\n", c.tenant->name,
                m.id ? " of member " : "", m.id ? m.id : "", a.since ? " since " : "",
                a.since ? a.since : "");
    }
out:
    member_clear(&m);
    loyd_cli_close(&c);
    fflush(stdout);
    return rc;
}
