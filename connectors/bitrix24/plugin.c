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
#include "rest.h"
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
    {LOYD_FIELD_STRING, "rate", "standard", false,
     "the portal's request limit: \"standard\" (2 requests/s, burst 50) or \"enterprise\" "
     "(5/s, burst 250)"},
    {LOYD_FIELD_TABLE, "attributes", NULL, false,
     "member attributes read from contact fields: { review_left = \"UF_CRM_REVIEW_LEFT\" }"},
    {LOYD_FIELD_STRING, "redeem_field", NULL, false,
     "deal field holding the points a customer pays with (UF_CRM_...)"},
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
    t->redeem_field = dup_opt(crm, "redeem_field");
    const json_t *attrs = json_object_get(crm, "attributes");
    t->attributes = json_is_object(attrs) ? json_deep_copy(attrs) : json_object();
    const char *k;
    json_t *v;
    json_object_foreach(t->attributes, k, v)
    {
        if (!json_is_string(v) || strncmp(json_string_value(v), "UF_", 3) != 0) {
            p->host->log(hctx, LOYD_LOG_ERR, "crm.attributes.%s: expected a field name UF_...", k);
            b24_tenant_close(t);
            return LOYD_ECONFIG;
        }
    }
    const char *rate = json_string_value(json_object_get(crm, "rate"));
    struct b24_rest_limits lim = {2000, 50};
    if (rate != NULL && strcmp(rate, "enterprise") == 0) {
        lim = (struct b24_rest_limits){5000, 250};
    } else if (rate != NULL && strcmp(rate, "standard") != 0) {
        p->host->log(hctx, LOYD_LOG_ERR, "crm.rate: expected \"standard\" or \"enterprise\"");
        b24_tenant_close(t);
        return LOYD_ECONFIG;
    }
    if (t->webhook_url != NULL) {
        size_t n = strlen(t->webhook_url);
        if ((strncmp(t->webhook_url, "https://", 8) != 0 &&
             strncmp(t->webhook_url, "http://", 7) != 0) ||
            strstr(t->webhook_url, "/rest/") == NULL) {
            p->host->log(hctx, LOYD_LOG_ERR,
                         "crm.webhook_url: expected https://<portal>/rest/<user>/<code>/");
            b24_tenant_close(t);
            return LOYD_ECONFIG;
        }
        char *base = malloc(n + 2);
        if (base == NULL)
            abort();
        snprintf(base, n + 2, "%s%s", t->webhook_url, t->webhook_url[n - 1] == '/' ? "" : "/");
        t->rest = b24_rest_create(p->host, hctx, base, &lim);
        free(base);
    }
    char *known = NULL;
    if (p->host->kv_get(hctx, "uf:known", &known) == 0 && known != NULL)
        t->uf_known = json_loads(known, 0, NULL);
    free(known);
    if (!json_is_object(t->uf_known)) {
        json_decref(t->uf_known);
        t->uf_known = json_object();
    }
    *out = t;
    return 0;
}

void b24_tenant_close(void *tenant)
{
    struct b24_tenant *t = tenant;
    b24_rest_close(t->rest); /* queued reads and writes end with -ECANCELED */
    json_decref(t->attributes);
    json_decref(t->uf_known);
    free(t->redeem_field);
    free(t->webhook_url);
    free(t->app_token);
    free(t->member_id);
    free(t->learned_member);
    free(t->learned_token);
    free(t);
}

static void b24_rate_policy(void *tenant, struct loyd_rate_policy *out)
{
    (void)tenant;
    /* The REST client paces itself; the host sends one batch's worth per write. */
    *out = (struct loyd_rate_policy){.per_sec_milli = 2000, .burst = 50, .max_batch = 50};
}

static const struct loyd_connector_ops b24_ops = {
    .tenant_open = b24_tenant_open,
    .tenant_close = b24_tenant_close,
    .webhook_parse = b24_webhook_parse,
    .enrich = b24_enrich,
    .write = b24_write,
    .rate_policy = b24_rate_policy,
    .sync = b24_sync,
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
