/* SPDX-License-Identifier: MIT */
/* Time zones by IANA name ("Europe/Moscow"), read from the system's tzdata. */
#ifndef LOYD_TZ_H
#define LOYD_TZ_H

#include <time.h>

#include "util.h"

/**
 * The UTC offset of @p zone at @p at, in minutes east of UTC.  "UTC" needs no tzdata.
 * @return 0, or -ENOENT with err naming the zone when the system does not know it.
 */
int loyd_tz_offset_min(const char *zone, time_t at, int *out, struct loyd_buf *err) LOYD_MUST_CHECK;

#endif
