/* SPDX-License-Identifier: MIT */
/*
 * Logging to stderr, one line per event, with a journald priority prefix and a group tag:
 *   <6>[http] listening on 127.0.0.1:8080
 * The level is checked before any formatting.  Never log secrets or whole bodies.
 */
#ifndef LOYD_CORE_LOG_H
#define LOYD_CORE_LOG_H

#include <stdarg.h>

#include "loyd/error.h"
#include "loyd/log.h"

enum loyd_log_group {
    LOYD_LOG_CORE,
    LOYD_LOG_HTTP,
    LOYD_LOG_CLIENT,
    LOYD_LOG_DB,
    LOYD_LOG_CONFIG,
    LOYD_LOG_LUA,
    LOYD_LOG_PLUGIN,
    LOYD_LOG_WORKER,
};

extern int loyd_log_max_level;

void loyd_log_set_level(int level);
/** Parses "err", "warn", "notice", "info" or "debug"; @return the level or -1. */
int loyd_log_level_parse(const char *name);
void loyd_log_write(int level, enum loyd_log_group group, const char *fmt, ...) LOYD_PRINTF(3, 4);
void loyd_log_vwrite(int level, const char *tag, const char *fmt, va_list ap);

#define loyd_log_(lvl, grp, ...)                                                               \
    do {                                                                                       \
        if ((lvl) <= loyd_log_max_level)                                                       \
            loyd_log_write((lvl), LOYD_LOG_##grp, __VA_ARGS__);                                \
    } while (0)

#define loyd_log_err(grp, ...) loyd_log_(LOYD_LOG_ERR, grp, __VA_ARGS__)
#define loyd_log_warn(grp, ...) loyd_log_(LOYD_LOG_WARN, grp, __VA_ARGS__)
#define loyd_log_notice(grp, ...) loyd_log_(LOYD_LOG_NOTICE, grp, __VA_ARGS__)
#define loyd_log_info(grp, ...) loyd_log_(LOYD_LOG_INFO, grp, __VA_ARGS__)
#define loyd_log_debug(grp, ...) loyd_log_(LOYD_LOG_DEBUG, grp, __VA_ARGS__)

#endif
