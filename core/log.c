/* SPDX-License-Identifier: MIT */
/* The log sink: formats one line and writes it to stderr in a single write(2). */
#include "log.h"

#include <stdio.h>
#include <string.h>
#include <unistd.h>

int loyd_log_max_level = LOYD_LOG_INFO;

static const char *const group_names[] = {
    [LOYD_LOG_CORE] = "core",     [LOYD_LOG_HTTP] = "http", [LOYD_LOG_CLIENT] = "client",
    [LOYD_LOG_DB] = "db",         [LOYD_LOG_CONFIG] = "config", [LOYD_LOG_LUA] = "lua",
    [LOYD_LOG_PLUGIN] = "plugin", [LOYD_LOG_WORKER] = "worker",
};

void loyd_log_set_level(int level)
{
    loyd_log_max_level = level;
}

int loyd_log_level_parse(const char *name)
{
    static const struct {
        const char *name;
        int level;
    } names[] = {{"err", LOYD_LOG_ERR},   {"error", LOYD_LOG_ERR}, {"warn", LOYD_LOG_WARN},
                 {"notice", LOYD_LOG_NOTICE}, {"info", LOYD_LOG_INFO}, {"debug", LOYD_LOG_DEBUG}};
    for (size_t i = 0; i < sizeof(names) / sizeof(names[0]); i++)
        if (strcmp(names[i].name, name) == 0)
            return names[i].level;
    return -1;
}

void loyd_log_vwrite(int level, const char *tag, const char *fmt, va_list ap)
{
    char line[2048];
    int n = snprintf(line, sizeof(line), "<%d>[%s] ", level, tag);
    if (n < 0)
        return;
    int m = vsnprintf(line + n, sizeof(line) - (size_t)n, fmt, ap);
    size_t len = (size_t)n + (m < 0 ? 0 : (size_t)m);
    if (len > sizeof(line) - 2)
        len = sizeof(line) - 2; /* truncated: keep one line per event */
    /* Control characters from outside input must not forge extra log lines. */
    for (size_t i = (size_t)n; i < len; i++)
        if ((unsigned char)line[i] < 0x20 && line[i] != '\t')
            line[i] = ' ';
    line[len++] = '\n';
    ssize_t w = write(STDERR_FILENO, line, len);
    (void)w;
}

void loyd_log_write(int level, enum loyd_log_group group, const char *fmt, ...)
{
    va_list ap;
    va_start(ap, fmt);
    loyd_log_vwrite(level, group_names[group], fmt, ap);
    va_end(ap);
}
