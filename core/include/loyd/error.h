/* SPDX-License-Identifier: MIT */
/*
 * Error codes shared by the daemon and plugins.  Fallible functions return 0 or a negative
 * value: -1..-4095 are negated errno values (libuv's codes are the same), project codes sit
 * below -5000 and are listed once in LOYD_ERR_MAP.
 */
#ifndef LOYD_ERROR_H
#define LOYD_ERROR_H

#define LOYD_ERR_MAP(XX)                                                                       \
    XX(EHTTP, -5001, "HTTP transfer failed")                                                   \
    XX(EHTTPSTATUS, -5002, "HTTP peer answered with an error status")                          \
    XX(ETOOBIG, -5003, "response exceeds its size cap")                                        \
    XX(EPARSE, -5004, "malformed input")                                                       \
    XX(EAUTH, -5005, "authentication failed")                                                  \
    XX(ELIMIT, -5006, "input exceeds a limit")                                                 \
    XX(ECLOSED, -5007, "shutting down")                                                        \
    XX(EDB, -5010, "database error")                                                           \
    XX(EDUP, -5011, "duplicate idempotency key")                                               \
    XX(ECONFIG, -5015, "invalid configuration")                                                \
    XX(ERULE, -5020, "rule raised an error")                                                   \
    XX(EBUDGET, -5021, "rule exceeded CPU budget")                                             \
    XX(ERULEMEM, -5022, "rule exceeded memory cap")                                            \
    XX(EEFFECT, -5023, "rule returned an invalid effect")                                      \
    XX(EABI, -5030, "plugin ABI mismatch")                                                     \
    XX(EPLUGIN, -5031, "plugin failed")                                                        \
    XX(ECRM, -5040, "CRM answered with an error")                                              \
    XX(ERATE, -5041, "CRM rate limit reached")                                                 \
    XX(ETOKEN, -5042, "CRM credentials refused: wrong webhook code, or token expired or revoked")

enum loyd_err {
#define XX(name, val, msg) LOYD_##name = (val),
    LOYD_ERR_MAP(XX)
#undef XX
};

/** @return borrowed, never NULL: the text for a loyd code or a negated errno. */
const char *loyd_strerror(int err);

#if defined(__GNUC__)
#define LOYD_MUST_CHECK __attribute__((warn_unused_result))
#define LOYD_PRINTF(f, a) __attribute__((format(printf, f, a)))
#else
#define LOYD_MUST_CHECK
#define LOYD_PRINTF(f, a)
#endif

#endif
