/* SPDX-License-Identifier: MIT */
/*
 * Points as people count them.  The ledger keeps points as 64-bit integers in the pack's
 * minor units; a pack declares in pack.conf how many of those make one point a person reads,
 * and what the point is called:
 *
 *   points = { unit = "points", minor = 100 }   -- 100 ledger units are one point
 *
 * Everything a person reads (CRM fields, timeline comments, tasks, `loyd demo`, `loyd member`,
 * logs) goes through loyd_points_format(); nothing divides by hand.  A pack that declares
 * nothing counts whole ledger units (minor = 1, unit "points").  Pure: no I/O, any thread.
 */
#ifndef LOYD_POINTS_H
#define LOYD_POINTS_H

#include <jansson.h>
#include <stdbool.h>
#include <stddef.h>
#include <stdint.h>

#include "util.h"

#define LOYD_POINTS_UNIT_MAX 32 /* bytes of a unit name, NUL included */

struct loyd_points_unit {
    int64_t minor;                   /* ledger units per displayed point: 1, 10, 100 or 1000 */
    unsigned decimals;               /* log10(minor) */
    char unit[LOYD_POINTS_UNIT_MAX]; /* "points" */
};

/** The unit of a pack that declares none: whole ledger units called "points". */
void loyd_points_unit_default(struct loyd_points_unit *u);

/**
 * Reads pack.conf's `points` table (@p spec, borrowed, may be NULL for the default).
 * @return 0; -EINVAL with one line in @p err naming what is wrong ("points.minor: expected 1,
 * 10, 100 or 1000").
 */
LOYD_MUST_CHECK int loyd_points_unit_parse(const json_t *spec, struct loyd_points_unit *u,
                                           struct loyd_buf *err);

/** Flags of loyd_points_format(). */
enum {
    LOYD_POINTS_GROUP = 1 << 0, /* thousands separated by ',' ("45,500"): for text people read */
    LOYD_POINTS_UNIT = 1 << 1,  /* the unit name after a space ("455 points") */
};

/**
 * Writes @p v ledger units as a person reads them: "455", "3.5", "-1,200.25 points".  The
 * fraction is shown only when there is one, without trailing zeros.  Always NUL-terminates;
 * @return the length written (truncated to @p n - 1; 64 bytes always suffice).
 */
size_t loyd_points_format(int64_t v, const struct loyd_points_unit *u, int flags, char *buf,
                          size_t n);

/**
 * The value for a CRM number field: an integer when @p v is a whole number of points, else a
 * real with the unit's decimals.  @return new reference.
 */
json_t *loyd_points_json(int64_t v, const struct loyd_points_unit *u);

/**
 * Parses a displayed amount ("455", "3.5", "455.00", "1,200") back into ledger units.
 * @return true and *out; false for anything else (more decimals than the unit has, overflow).
 */
bool loyd_points_parse(const char *s, const struct loyd_points_unit *u, int64_t *out);

#endif
