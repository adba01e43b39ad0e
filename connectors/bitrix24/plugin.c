/* SPDX-License-Identifier: MIT */
/*
 * The Bitrix24 connector plugin.  For now it offers only the emulator (`loyd emulate
 * bitrix24`, `loyd demo`, connector tests); webhook parsing, enrichment and write-back join
 * the same ops struct in a later task.  Its state is just the host handle the daemon gave it.
 */
#include <errno.h>
#include <stdlib.h>

#include "emu.h"
#include "loyd/plugin.h"

struct b24_plugin {
    const struct loyd_host_api *host;
    void *hctx;
};

static int b24_init(const struct loyd_host_api *host, void *hctx, const json_t *config,
                    void **state)
{
    struct b24_plugin *p = calloc(1, sizeof(*p));

    (void)config;
    if (p == NULL)
        return -ENOMEM;
    p->host = host;
    p->hctx = hctx;
    *state = p;
    return 0;
}

static void b24_destroy(void *state)
{
    free(state);
}

static const struct loyd_connector_ops b24_ops = {
    .emulator = &b24emu_emulator,
};

LOYD_EXPORT const struct loyd_plugin loyd_plugin_bitrix24 = {
    .abi = LOYD_PLUGIN_ABI,
    .size = sizeof(struct loyd_plugin),
    .name = "bitrix24",
    .version = "0.1.0",
    .kind = LOYD_PLUGIN_CONNECTOR,
    .init = b24_init,
    .destroy = b24_destroy,
    .connector = &b24_ops,
};
