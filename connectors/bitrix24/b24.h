/* SPDX-License-Identifier: MIT */
/* The Bitrix24 connector's per-tenant state, shared by its files (not a public header). */
#ifndef LOYD_B24_H
#define LOYD_B24_H

#include "loyd/plugin.h"

struct b24_tenant {
    const struct loyd_host_api *host;
    void *hctx;
    char *webhook_url;   /* inbound-webhook REST URL, or NULL */
    char *app_token;     /* configured application_token, or NULL (learned at install) */
    char *member_id;     /* the portal this tenant accepts events from, or NULL (any) */
    char *learned_member, *learned_token; /* cache of the installed app's token */
};

extern const struct loyd_config_field b24_tenant_config[];

int b24_tenant_open(void *plugin_state, void *hctx, const json_t *crm, void **out);
void b24_tenant_close(void *tenant);
int b24_webhook_parse(void *tenant, const struct loyd_webhook *wh, json_t **notices,
                      struct loyd_errbuf *err);

#endif
