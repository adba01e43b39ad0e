/* SPDX-License-Identifier: MIT */
/*
 * Campaigns as data: the `campaigns` setting type of pack.conf.  A campaign is declared once,
 *
 *   { name = "bf2026", from = "2026-11-20", to = "2026-11-30", weekdays = { 6, 7 },
 *     multiplier = 2, budget = 5000000 }
 *
 * (or bonus_bp = 5000 for +50 % instead of a multiplier), and used three ways: the rule helper
 * loyd.campaign_awards (rules.c) turns it into award effects carrying campaign = name, the host
 * enforces its budget on those awards tenant-wide, and `loyd campaigns` shows it.  This file
 * owns what they share: validation with the entry's line, the calendar test, and the budget the
 * host applies (the smaller of the campaign's own `budget` and the older settings.budgets map).
 *
 * Dates are the tenant's calendar days "YYYY-MM-DD"; both ends of the window count; weekdays
 * are ISO (1 = Monday .. 7 = Sunday).  Pure functions: any thread.
 */
#ifndef LOYD_CAMPAIGN_H
#define LOYD_CAMPAIGN_H

#include <jansson.h>
#include <stdbool.h>
#include <stdint.h>

#include "loyd/error.h"
#include "util.h"

#define LOYD_CAMPAIGN_MAX_MULTIPLIER 100
#define LOYD_CAMPAIGN_MAX_BONUS_BP 1000000 /* +10000 %: the same ceiling as multiplier 101 */
#define LOYD_CAMPAIGN_MAX_NAME 64

/* Where a pack.conf declares a campaigns list, so messages can name each entry's own line. */
struct loyd_campaigns_where {
    const char *file;  /* "rules/retail/pack.conf" */
    const char *src;   /* its text */
    int line;          /* the setting's line: entries are looked for from there on */
    const char *label; /* "setting 'campaigns': default" */
};

/**
 * Validates a campaigns list (a list of records; an empty {} is an empty list).  Every problem
 * gets one line in @p err, "@p path[N] (\"name\"): message", or with @p where (may be NULL)
 * "file:LINE: label[N] (\"name\"): message" on the entry's line.
 * @return 0; -EINVAL.
 */
LOYD_MUST_CHECK int loyd_campaigns_check(const json_t *v, const char *path,
                                         const struct loyd_campaigns_where *where,
                                         struct loyd_buf *err);

/** ISO weekday of a valid "YYYY-MM-DD": 1 (Monday) .. 7 (Sunday); 0 when it is not a date. */
int loyd_iso_weekday(const char *date);

enum loyd_campaign_state {
    LOYD_CAMPAIGN_ACTIVE,
    LOYD_CAMPAIGN_NOT_STARTED, /* before `from` */
    LOYD_CAMPAIGN_ENDED,       /* after `to` */
    LOYD_CAMPAIGN_OFF_DAY,     /* inside the window, on a weekday it does not run */
};

/** Whether validated campaign @p c runs on @p date ("YYYY-MM-DD"), and if not, why. */
enum loyd_campaign_state loyd_campaign_state(const json_t *c, const char *date);

/**
 * The campaigns declared in @p settings: the entries of every setting whose type in @p schema
 * (the pack's) is "campaigns", in setting-name order.  @return a new array whose entries are
 * the settings' own (borrowed values, referenced by the array).
 */
json_t *loyd_campaigns_declared(const json_t *schema, const json_t *settings);

/**
 * The budget the host enforces on awards carrying campaign = @p name: the smaller of
 * settings.budgets[name] and the `budget` of each declared campaign of that name.
 * @return false when there is none (no limit).
 */
bool loyd_campaign_budget(const json_t *schema, const json_t *settings, const char *name,
                          int64_t *budget);

#endif
