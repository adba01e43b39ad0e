/* SPDX-License-Identifier: MIT */
/* Civil dates (see civil_date.h): shared by the ledger and the sandbox's date helpers. */
#include "civil_date.h"

#include <stdio.h>

int64_t loyd_days_from_civil(int64_t y, unsigned m, unsigned d)
{
    y -= m <= 2;
    int64_t era = (y >= 0 ? y : y - 399) / 400;
    unsigned yoe = (unsigned)(y - era * 400);
    unsigned doy = (153 * (m > 2 ? m - 3 : m + 9) + 2) / 5 + d - 1;
    unsigned doe = yoe * 365 + yoe / 4 - yoe / 100 + doy;
    return era * 146097 + (int64_t)doe - 719468;
}

void loyd_civil_from_days(int64_t z, int64_t *y, unsigned *m, unsigned *d)
{
    z += 719468;
    int64_t era = (z >= 0 ? z : z - 146096) / 146097;
    unsigned doe = (unsigned)(z - era * 146097);
    unsigned yoe = (doe - doe / 1460 + doe / 36524 - doe / 146096) / 365;
    unsigned doy = doe - (365 * yoe + yoe / 4 - yoe / 100);
    unsigned mp = (5 * doy + 2) / 153;
    *d = doy - (153 * mp + 2) / 5 + 1;
    *m = mp < 10 ? mp + 3 : mp - 9;
    *y = (int64_t)yoe + era * 400 + (*m <= 2);
}

void loyd_time_format(int64_t ms, int tz_offset_min, char out[40])
{
    int64_t local = ms / 1000 + (int64_t)tz_offset_min * 60, days = local / 86400;
    int64_t rem = local % 86400, y;
    unsigned m, d;
    if (rem < 0) {
        rem += 86400;
        days--;
    }
    loyd_civil_from_days(days, &y, &m, &d);
    snprintf(out, 40, "%04lld-%02u-%02u %02d:%02d:%02d", (long long)y, m, d, (int)(rem / 3600),
             (int)(rem / 60 % 60), (int)(rem % 60));
}
