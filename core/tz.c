/* SPDX-License-Identifier: MIT */
/*
 * Time zone offsets (see tz.h).  The C library only answers for the zone in TZ, so the lookup
 * swaps TZ for the duration of one localtime_r call.  It runs on the loop thread at start-up
 * and reload only; nothing else in loyd reads local time.
 */
#include "tz.h"

#include <errno.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <unistd.h>

static bool zone_name_ok(const char *zone)
{
    /* IANA names: letters, digits, '/', '_', '-', '+'; no "..", no leading '/'. */
    if (zone[0] == '\0' || zone[0] == '/' || strstr(zone, "..") != NULL || strlen(zone) > 64)
        return false;
    for (const char *p = zone; *p; p++)
        if (!((*p >= 'A' && *p <= 'Z') || (*p >= 'a' && *p <= 'z') || (*p >= '0' && *p <= '9') ||
              *p == '/' || *p == '_' || *p == '-' || *p == '+'))
            return false;
    return true;
}

int loyd_tz_offset_min(const char *zone, time_t at, int *out, struct loyd_buf *err)
{
    if (strcmp(zone, "UTC") == 0 || strcmp(zone, "Etc/UTC") == 0) {
        *out = 0;
        return 0;
    }
    char path[128];
    snprintf(path, sizeof(path), "/usr/share/zoneinfo/%s", zone);
    if (!zone_name_ok(zone) || access(path, R_OK) != 0) {
        loyd_buf_printf(err, "unknown time zone '%s' (an IANA name such as Europe/Moscow)",
                        zone);
        return -ENOENT;
    }
    const char *old = getenv("TZ");
    char *saved = old ? loyd_xstrdup(old) : NULL;
    struct tm tm;

    setenv("TZ", zone, 1);
    tzset();
    localtime_r(&at, &tm);
    if (saved != NULL)
        setenv("TZ", saved, 1);
    else
        unsetenv("TZ");
    tzset();
    free(saved);
    *out = (int)(tm.tm_gmtoff / 60);
    return 0;
}
