/* SPDX-License-Identifier: MIT */
/* `loyd demo`: the emulated Bitrix24 portal, the daemon and the retail pack, with a story. */
#ifndef LOYD_DEMO_H
#define LOYD_DEMO_H

int loyd_cmd_demo(int argc, char **argv);

#endif
