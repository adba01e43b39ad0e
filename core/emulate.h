/* SPDX-License-Identifier: MIT */
/* `loyd emulate`: a connector's CRM emulator as a standalone process. */
#ifndef LOYD_EMULATE_H
#define LOYD_EMULATE_H

int loyd_cmd_emulate(int argc, char **argv);

#endif
