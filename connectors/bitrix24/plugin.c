/* SPDX-License-Identifier: MIT */
/*
 * The Bitrix24 connector plugin: per-tenant settings, webhook verification (webhook.c) and
 * the emulator (`loyd emulate bitrix24`).  Its plugin-level state is the host handle.
 */
#include <errno.h>
#include <stdlib.h>
#include <string.h>

#include "b24.h"
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

const struct loyd_config_field b24_tenant_config[] = {
    {LOYD_FIELD_STRING, "webhook_url", NULL, false,
     "the portal's inbound-webhook REST URL, https://<portal>/rest/<user>/<code>/"},
    {LOYD_FIELD_SECRET, "application_token", NULL, false,
     "the token Bitrix24 sends in auth[application_token] (outgoing webhook settings); "
     "without it, the token delivered by ONAPPINSTALL is used"},
    {LOYD_FIELD_STRING, "member_id", NULL, false,
     "accept events only from this portal (auth[member_id])"},
    {0},
};

static char *dup_opt(const json_t *crm, const char *key)
{
    const char *v = json_string_value(json_object_get(crm, key));
    return v != NULL && *v != '\0' ? strdup(v) : NULL;
}

int b24_tenant_open(void *plugin_state, void *hctx, const json_t *crm, void **out)
{
    struct b24_plugin *p = plugin_state;
    struct b24_tenant *t = calloc(1, sizeof(*t));

    if (t == NULL)
        return -ENOMEM;
    t->host = p->host;
    t->hctx = hctx;
    t->webhook_url = dup_opt(crm, "webhook_url");
    t->app_token = dup_opt(crm, "application_token");
    t->member_id = dup_opt(crm, "member_id");
    *out = t;
    return 0;
}

void b24_tenant_close(void *tenant)
{
    struct b24_tenant *t = tenant;
    free(t->webhook_url);
    free(t->app_token);
    free(t->member_id);
    free(t->learned_member);
    free(t->learned_token);
    free(t);
}

static const struct loyd_connector_ops b24_ops = {
    .tenant_open = b24_tenant_open,
    .tenant_close = b24_tenant_close,
    .webhook_parse = b24_webhook_parse,
    .emulator = &b24emu_emulator,
    .tenant_config = b24_tenant_config,
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
