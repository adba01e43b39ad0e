/* SPDX-License-Identifier: MIT */
/* `loyd campaigns` (see cli_campaigns.h). */
#include "cli_campaigns.h"

#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include "campaign.h"
#include "cli_common.h"
#include "ledger.h"

static const char usage[] =
    "usage: loyd campaigns [-c FILE] [--date YYYY-MM-DD] [--json] TENANT\n"
    "\n"
    "Lists TENANT's campaigns: the ones its pack's `campaigns` settings declare (with the\n"
    "tenant's overrides), then any other campaign name with a budget in `budgets` or points in\n"
    "the ledger.  For each: the window (both days count), the weekdays, the bonus (x2, or\n"
    "+50%), the budget, what awards of the campaign drew so far across all members (net of\n"
    "reversals) and what is left, in the pack's points unit, and whether it runs today in the\n"
    "tenant's time zone.\n"
    "\n"
    "  -c, --config FILE   the daemon config, as given to `loyd serve -c` "
    "(default " LOYD_CLI_DEFAULT_CONFIG ")\n"
    "  --date YYYY-MM-DD   say whether each campaign runs on that day instead of today\n"
    "  --json              one JSON object: integer ledger units plus display strings\n"
    "\n"
    "The store is opened read-only: safe while `loyd serve` runs.\n"
    "Exit status: 0 listed (maybe none); 1 the config, pack, settings or store cannot be used;\n"
    "2 usage error.\n";

static const char *const day_names[] = {"",         "Monday", "Tuesday",  "Wednesday",
                                        "Thursday", "Friday", "Saturday", "Sunday"};

/* "Sat, Sun"; "every day" without weekdays. */
static void weekdays_text(const json_t *wd, char *out, size_t size)
{
    size_t n = 0, i;
    json_t *x;

    out[0] = '\0';
    if (!json_is_array(wd) || json_array_size(wd) == 0) {
        snprintf(out, size, "every day");
        return;
    }
    json_array_foreach(wd, i, x)
    {
        json_int_t d = json_integer_value(x);
        if (d >= 1 && d <= 7 && n < size)
            n += (size_t)snprintf(out + n, size - n, "%s%.3s", i > 0 ? ", " : "", day_names[d]);
    }
}

static void window_text(const json_t *c, char *out, size_t size)
{
    const char *from = json_string_value(json_object_get(c, "from"));
    const char *to = json_string_value(json_object_get(c, "to"));

    if (from != NULL && to != NULL)
        snprintf(out, size, "%s .. %s", from, to);
    else if (from != NULL)
        snprintf(out, size, "from %s", from);
    else if (to != NULL)
        snprintf(out, size, "until %s", to);
    else
        snprintf(out, size, "always");
}

static void bonus_text(const json_t *c, char *out, size_t size)
{
    json_t *m = json_object_get(c, "multiplier"), *bp = json_object_get(c, "bonus_bp");

    if (json_is_integer(m)) {
        snprintf(out, size, "x%lld", (long long)json_integer_value(m));
    } else if (json_is_integer(bp)) {
        long long v = json_integer_value(bp);
        if (v % 100 == 0)
            snprintf(out, size, "+%lld%%", v / 100);
        else
            snprintf(out, size, "+%lld.%02lld%%", v / 100, v % 100);
    } else {
        snprintf(out, size, "-");
    }
}

/* "running", "starts 2026-11-20", "ended 2026-11-30", "not on Wednesdays". */
static const char *state_text(enum loyd_campaign_state st, const json_t *c, const char *date,
                              char *out, size_t size)
{
    switch (st) {
    case LOYD_CAMPAIGN_ACTIVE:
        snprintf(out, size, "running");
        break;
    case LOYD_CAMPAIGN_NOT_STARTED:
        snprintf(out, size, "starts %s", json_string_value(json_object_get(c, "from")));
        break;
    case LOYD_CAMPAIGN_ENDED:
        snprintf(out, size, "ended %s", json_string_value(json_object_get(c, "to")));
        break;
    case LOYD_CAMPAIGN_OFF_DAY:
        snprintf(out, size, "not on %ss", day_names[loyd_iso_weekday(date)]);
        break;
    }
    return out;
}

static const char *state_name(enum loyd_campaign_state st)
{
    switch (st) {
    case LOYD_CAMPAIGN_ACTIVE:
        return "running";
    case LOYD_CAMPAIGN_NOT_STARTED:
        return "not_started";
    case LOYD_CAMPAIGN_ENDED:
        return "ended";
    default:
        return "off_day";
    }
}

/* Names in the order shown: declared ones first, then budgets' keys, then the ledger's. */
static void add_name(json_t *names, const char *n)
{
    size_t i;
    json_t *x;
    json_array_foreach(names, i, x)
    {
        if (strcmp(json_string_value(x), n) == 0)
            return;
    }
    json_array_append_new(names, json_string(n));
}

static int show(struct loyd_cli *c, const char *date, bool as_json)
{
    struct loyd_buf err = {0};
    json_t *settings = NULL, *totals = NULL, *declared = NULL, *names = json_array();
    json_t *rows = json_array();
    int rc = 1;

    if (loyd_pack_settings(c->pack, c->tenant->settings, c->tenant->path, &settings, &err) != 0) {
        loyd_cli_fail_lines(&err);
        loyd_cli_fail(c, "the settings of tenant '%s' do not fit its pack '%s'", c->tenant->name,
                      c->pack->name);
        goto out;
    }
    int src = loyd_store_campaign_totals(c->store, c->tenant->name, &totals);
    if (src != 0) {
        rc = loyd_cli_store_failed(c, "the campaign totals", src);
        goto out;
    }
    declared = loyd_campaigns_declared(c->pack->schema, settings);
    size_t i;
    json_t *x;
    const char *k;
    json_array_foreach(declared, i, x)
        add_name(names, json_string_value(json_object_get(x, "name")));
    json_t *budgets = json_object_get(settings, "budgets");
    /* Sorted, so that runs compare: object key order is not the file's. */
    json_t *extra = json_array();
    json_object_foreach(json_is_object(budgets) ? budgets : NULL, k, x) add_name(extra, k);
    json_object_foreach(totals, k, x) add_name(extra, k);
    size_t n = json_array_size(extra);
    const char **sorted = loyd_xcalloc(n + 1, sizeof(*sorted));
    for (i = 0; i < n; i++)
        sorted[i] = json_string_value(json_array_get(extra, i));
    for (size_t a = 1; a < n; a++)
        for (size_t b = a; b > 0 && strcmp(sorted[b - 1], sorted[b]) > 0; b--) {
            const char *t = sorted[b];
            sorted[b] = sorted[b - 1];
            sorted[b - 1] = t;
        }
    for (i = 0; i < n; i++)
        add_name(names, sorted[i]);
    free(sorted);

    struct loyd_cli_table t = {.ncols = 8, .align = "llllrrrl"};
    char on[32];
    snprintf(on, sizeof(on), "on %s", date);
    loyd_cli_table_add(&t, (const char *const[]){"campaign", "window", "weekdays", "bonus",
                                                 "budget", "spent", "remaining", on});
    json_array_foreach(names, i, x)
    {
        const char *name = json_string_value(x);
        const json_t *camp = NULL;
        size_t j;
        json_t *d;
        json_array_foreach(declared, j, d)
        {
            if (strcmp(json_string_value(json_object_get(d, "name")), name) == 0) {
                camp = d;
                break;
            }
        }
        int64_t spent = json_integer_value(json_object_get(totals, name)), budget = 0;
        bool has_budget = loyd_campaign_budget(c->pack->schema, settings, name, &budget);
        int64_t left = has_budget ? (budget > spent ? budget - spent : 0) : 0;
        char win[64] = "-", wd[64] = "-", bonus[32] = "-", pb[80] = "no limit", ps[80],
             pr[80] = "-", state[64] = "not declared";
        loyd_cli_fmt_points(c, spent, false, ps);
        if (has_budget) {
            loyd_cli_fmt_points(c, budget, false, pb);
            loyd_cli_fmt_points(c, left, false, pr);
        }
        enum loyd_campaign_state st = LOYD_CAMPAIGN_ENDED;
        if (camp != NULL) {
            window_text(camp, win, sizeof(win));
            weekdays_text(json_object_get(camp, "weekdays"), wd, sizeof(wd));
            bonus_text(camp, bonus, sizeof(bonus));
            st = loyd_campaign_state(camp, date);
            state_text(st, camp, date, state, sizeof(state));
            if (st == LOYD_CAMPAIGN_ACTIVE && has_budget && left == 0)
                snprintf(state, sizeof(state), "running, budget spent");
        }
        if (!as_json) {
            loyd_cli_table_add(&t, (const char *const[]){name, win, wd, bonus, pb, ps, pr, state});
            continue;
        }
        json_t *o = json_pack("{s:s, s:b, s:I, s:s}", "name", name, "declared", camp != NULL,
                              "spent", (json_int_t)spent, "spent_display", ps);
        if (has_budget) {
            json_object_set_new(o, "budget", json_integer(budget));
            json_object_set_new(o, "budget_display", json_string(pb));
            json_object_set_new(o, "remaining", json_integer(left));
            json_object_set_new(o, "remaining_display", json_string(pr));
        } else {
            json_object_set_new(o, "budget", json_null());
            json_object_set_new(o, "remaining", json_null());
        }
        if (camp != NULL) {
            static const char *const keep[] = {"from", "to", "weekdays", "multiplier", "bonus_bp"};
            for (size_t f = 0; f < LOYD_ARRAY_SIZE(keep); f++)
                if (json_object_get(camp, keep[f]) != NULL)
                    json_object_set(o, keep[f], json_object_get(camp, keep[f]));
            json_object_set_new(o, "bonus_display", json_string(bonus));
            json_object_set_new(o, "active", json_boolean(st == LOYD_CAMPAIGN_ACTIVE));
            json_object_set_new(o, "state", json_string(state_name(st)));
        } else {
            json_object_set_new(o, "active", json_false());
        }
        json_array_append_new(rows, o);
    }

    if (as_json) {
        json_t *out =
            json_pack("{s:s, s:s, s:s, s:s, s:s, s:{s:s, s:I}, s:O}", "tenant", c->tenant->name,
                      "pack", c->pack->name, "timezone", c->tenant->timezone, "date", date,
                      "weekday", day_names[loyd_iso_weekday(date)], "unit", "name", c->unit.unit,
                      "minor", (json_int_t)c->unit.minor, "campaigns", rows);
        loyd_cli_print_json(out);
        json_decref(out);
    } else {
        printf("tenant  %s  (pack %s %s; %s, %s, %s)\n", c->tenant->name, c->pack->name,
               c->pack->version, date, day_names[loyd_iso_weekday(date)], c->tenant->timezone);
        if (json_array_size(names) == 0) {
            printf("no campaigns: the pack's settings declare none, and no award carries one\n");
        } else {
            loyd_cli_table_print(&t, "", stdout);
        }
    }
    /* The table's cells are freed by print; a JSON run never prints it. */
    if (t.nrows > 0) {
        for (size_t r = 0; r < t.nrows * t.ncols; r++)
            free(t.cells[r]);
        free(t.cells);
    }
    json_decref(extra);
    rc = 0;
out:
    loyd_buf_free(&err);
    json_decref(settings);
    json_decref(totals);
    json_decref(declared);
    json_decref(names);
    json_decref(rows);
    return rc;
}

int loyd_cmd_campaigns(int argc, char **argv)
{
    struct loyd_cli c = {.verb = "campaigns"};
    const char *tenant = NULL, *date = NULL;
    bool as_json = false;
    char today[16];
    int rc;

    for (int i = 1; i < argc; i++) {
        const char *o = argv[i];
        if (strcmp(o, "--help") == 0 || strcmp(o, "-h") == 0) {
            fputs(usage, stdout);
            return 0;
        } else if (strcmp(o, "-c") == 0 || strcmp(o, "--config") == 0 || strcmp(o, "--date") == 0) {
            if (i + 1 >= argc) {
                fprintf(stderr, "loyd campaigns: %s needs a value (see loyd campaigns --help)\n",
                        o);
                return 2;
            }
            if (o[2] == 'd')
                date = argv[++i];
            else
                c.config_path = argv[++i];
        } else if (strcmp(o, "--json") == 0) {
            as_json = true;
        } else if (o[0] == '-' && o[1] != '\0') {
            fprintf(stderr, "loyd campaigns: unknown option '%s' (see loyd campaigns --help)\n", o);
            return 2;
        } else if (tenant == NULL) {
            tenant = o;
        } else {
            fprintf(stderr,
                    "loyd campaigns: unexpected argument '%s' (see loyd campaigns --help)\n", o);
            return 2;
        }
    }
    if (tenant == NULL || tenant[0] == '\0') {
        fprintf(stderr, "loyd campaigns: which tenant?\n%s", usage);
        return 2;
    }
    if (date != NULL && loyd_iso_weekday(date) == 0) {
        fprintf(stderr, "loyd campaigns: --date '%s': expected a date YYYY-MM-DD\n", date);
        return 2;
    }
    if ((rc = loyd_cli_open(&c, tenant)) == 0) {
        if (date == NULL) {
            loyd_date_format((int64_t)loyd_wall_ms(), c.tz_offset_min, today);
            date = today;
        }
        rc = show(&c, date, as_json);
    }
    loyd_cli_close(&c);
    fflush(stdout);
    return rc;
}
