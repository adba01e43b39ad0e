/* SPDX-License-Identifier: MIT */
/* Log levels shared by the daemon and plugins; the numbers are syslog priorities (journald). */
#ifndef LOYD_LOG_H
#define LOYD_LOG_H

enum loyd_log_level {
    LOYD_LOG_ERR = 3,
    LOYD_LOG_WARN = 4,
    LOYD_LOG_NOTICE = 5,
    LOYD_LOG_INFO = 6,
    LOYD_LOG_DEBUG = 7,
};

#endif
