/* SPDX-License-Identifier: MIT */
/* Civil date <-> day number since 1970-01-01, proleptic Gregorian (H. Hinnant's algorithms). */
#ifndef LOYD_CIVIL_DATE_H
#define LOYD_CIVIL_DATE_H

#include <stdint.h>

int64_t loyd_days_from_civil(int64_t y, unsigned m, unsigned d);
void loyd_civil_from_days(int64_t z, int64_t *y, unsigned *m, unsigned *d);
/** "2026-12-04 21:05:09" for @p ms since the epoch at @p tz_offset_min from UTC. */
void loyd_time_format(int64_t ms, int tz_offset_min, char out[40]);

#endif
