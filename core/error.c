/* SPDX-License-Identifier: MIT */
/* Text for error codes: loyd's own table first, then the C library's strerror. */
#include "loyd/error.h"

#include <string.h>

const char *loyd_strerror(int err)
{
    switch (err) {
#define XX(name, val, msg)                                                                     \
    case val:                                                                                  \
        return msg;
        LOYD_ERR_MAP(XX)
#undef XX
    case 0:
        return "success";
    }
    if (err < 0 && err > -4096)
        return strerror(-err);
    return "unknown error";
}
