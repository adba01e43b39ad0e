/* SPDX-License-Identifier: MIT */
/*
 * The Bitrix24 connector plugin: per-tenant settings, webhook verification (webhook.c) and
 * the emulator (`loyd emulate bitrix24`).  Its plugin-level state is the host handle.
 */
#include <arpa/inet.h>
#include <errno.h>
#include <stdbool.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <strings.h>

#include "b24.h"
#include "emu.h"
#include "oauth.h"
#include "rest.h"
#include "loyd/plugin.h"

struct b24_plugin {
    const struct loyd_host_api *host;
    void *hctx;
    struct b24_portals *portals; /* one leaky bucket per portal, whichever tenant calls */
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
    p->portals = b24_portals_new();
    *state = p;
    return 0;
}

static void b24_destroy(void *state)
{
    struct b24_plugin *p = state;
    b24_portals_free(p->portals);
    free(p);
}

const struct loyd_config_field b24_tenant_config[] = {
    {LOYD_FIELD_STRING, "webhook_url", NULL, false,
     "the portal's inbound-webhook REST URL, https://<portal>/rest/<user>/<code>/"},
    {LOYD_FIELD_SECRET, "application_token", NULL, false,
     "the token Bitrix24 sends in auth[application_token] (outgoing webhook settings); "
     "without it, the token delivered by ONAPPINSTALL is used"},
    {LOYD_FIELD_STRING, "member_id", NULL, false,
     "accept events only from this portal (auth[member_id])"},
    {LOYD_FIELD_STRING, "client_id", NULL, false,
     "OAuth app instead of a webhook URL: the app's client_id (local or market app)"},
    {LOYD_FIELD_SECRET, "client_secret", NULL, false, "OAuth app: the app's client_secret"},
    {LOYD_FIELD_STRING, "oauth_url", "https://oauth.bitrix.info/oauth/token/", false,
     "OAuth app: the token endpoint (https://oauth.bitrix24.tech/oauth/token/ for .ru portals)"},
    {LOYD_FIELD_STRING, "rest_url", NULL, false,
     "OAuth app: the portal's REST base, https://<portal>/rest/; without it, the "
     "client_endpoint of ONAPPINSTALL and of each refresh is used"},
    {LOYD_FIELD_SECRET, "access_token", NULL, false,
     "OAuth app: a first access token; ONAPPINSTALL delivers one too"},
    {LOYD_FIELD_SECRET, "refresh_token", NULL, false,
     "OAuth app: a first refresh token (single use: the rotated ones are kept in the store)"},
    {LOYD_FIELD_STRING, "rate", "standard", false,
     "the portal's request limit: \"standard\" (2 requests/s, burst 50) or \"enterprise\" "
     "(5/s, burst 250)"},
    {LOYD_FIELD_INT, "rate_per_sec", NULL, false,
     "overrides rate: requests per second the portal allows (on-premise installs set their "
     "own limits)"},
    {LOYD_FIELD_INT, "rate_burst", NULL, false, "overrides rate: the portal's burst"},
    {LOYD_FIELD_INT, "timeout_ms", "30000", false,
     "how long one REST call may take before it counts as failed"},
    {LOYD_FIELD_TABLE, "attributes", NULL, false,
     "member attributes read from contact fields: { review_left = \"UF_CRM_REVIEW_LEFT\" }"},
    {LOYD_FIELD_STRING, "redeem_field", NULL, false,
     "deal field holding the points a customer pays with (UF_CRM_...)"},
    {LOYD_FIELD_STRING, "referrer_field", "UF_CRM_LOYD_REFERRED_BY", false,
     "contact field naming who referred the contact (member.referrer); the default is loyd's "
     "own \"Loyalty: referred by\" field; \"\" turns referrals by CRM field off"},
    {LOYD_FIELD_STRING, "referrer_match", "phone", false,
     "what referrer_field holds: \"phone\" (any format), \"email\", \"contact_id\" or "
     "\"code\" (the referrer's code from their \"Loyalty: referral code\" field)"},
    {LOYD_FIELD_STRING, "offer_code_field", "UF_CRM_LOYD_OFFER_CODE", false,
     "deal field with the offer code the customer used (offer.redeemed when the deal is won); "
     "the default is loyd's own \"Loyalty: offer code used\" field; \"\" turns it off"},
    {0},
};

/*
 * Whether the host of an http:// URL (after the scheme) is a loopback address: 127.0.0.0/8,
 * ::1 or localhost.  Plain http is for the emulator and a local proxy on this machine only;
 * anywhere else it would carry the webhook code or the OAuth tokens in the clear.
 */
static bool loopback_host(const char *rest)
{
    char host[256];
    size_t n = strcspn(rest, "/?#");
    if (n >= sizeof(host))
        return false;
    memcpy(host, rest, n);
    host[n] = '\0';
    char *h = strrchr(host, '@'); /* http://127.0.0.1@elsewhere/ goes elsewhere */
    h = h != NULL ? h + 1 : host;
    if (*h == '[') {
        char *end = strchr(h, ']');
        if (end == NULL || (end[1] != '\0' && end[1] != ':'))
            return false;
        *end = '\0';
        struct in6_addr a6;
        return inet_pton(AF_INET6, h + 1, &a6) == 1 && memcmp(&a6, &in6addr_loopback, 16) == 0;
    }
    char *colon = strchr(h, ':');
    if (colon != NULL)
        *colon = '\0';
    struct in_addr a4;
    if (inet_pton(AF_INET, h, &a4) == 1)
        return (ntohl(a4.s_addr) >> 24) == 127;
    return strcasecmp(h, "localhost") == 0;
}

/* @return 0, or LOYD_ECONFIG having logged what is wrong with crm.@p key. */
static int check_url(const struct b24_plugin *p, void *hctx, const char *key, const char *u)
{
    if (u == NULL || *u == '\0' || strncasecmp(u, "https://", 8) == 0)
        return 0;
    if (strncasecmp(u, "http://", 7) == 0) {
        if (loopback_host(u + 7))
            return 0;
        p->host->log(hctx, LOYD_LOG_ERR,
                     "crm.%s: http:// is accepted only for a loopback address (127.0.0.1, ::1, "
                     "localhost); use https://",
                     key);
        return LOYD_ECONFIG;
    }
    p->host->log(hctx, LOYD_LOG_ERR, "crm.%s: expected an https:// URL", key);
    return LOYD_ECONFIG;
}

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
    /* Absent keys (a caller that skipped the schema's defaults) mean the defaults; "" is off. */
    const json_t *rf = json_object_get(crm, "referrer_field");
    t->referrer_field =
        rf == NULL ? strdup("UF_CRM_LOYD_REFERRED_BY") : dup_opt(crm, "referrer_field");
    const json_t *of = json_object_get(crm, "offer_code_field");
    t->offer_code_field =
        of == NULL ? strdup("UF_CRM_LOYD_OFFER_CODE") : dup_opt(crm, "offer_code_field");
    const char *match = json_string_value(json_object_get(crm, "referrer_match"));
    static const char *const matches[] = {"phone", "email", "contact_id", "code"};
    t->referrer_match = B24_REF_PHONE;
    for (size_t i = 0; match != NULL && i < sizeof(matches) / sizeof(matches[0]); i++)
        if (strcmp(match, matches[i]) == 0)
            t->referrer_match = (enum b24_referrer_match)i;
    if (match != NULL && strcmp(match, matches[t->referrer_match]) != 0) {
        p->host->log(hctx, LOYD_LOG_ERR,
                     "crm.referrer_match: expected \"phone\", \"email\", \"contact_id\" or "
                     "\"code\", got \"%.40s\"",
                     match);
        b24_tenant_close(t);
        return LOYD_ECONFIG;
    }
    static const char *const ufs[] = {"referrer_field", "offer_code_field"};
    for (size_t i = 0; i < sizeof(ufs) / sizeof(ufs[0]); i++) {
        const char *f = i == 0 ? t->referrer_field : t->offer_code_field;
        if (f != NULL && strncmp(f, "UF_", 3) != 0) {
            p->host->log(hctx, LOYD_LOG_ERR, "crm.%s: expected a field name UF_..., got \"%.40s\"",
                         ufs[i], f);
            b24_tenant_close(t);
            return LOYD_ECONFIG;
        }
    }
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
    const json_t *per_sec = json_object_get(crm, "rate_per_sec");
    const json_t *burst = json_object_get(crm, "rate_burst");
    if (per_sec != NULL) {
        if (!json_is_integer(per_sec) || json_integer_value(per_sec) < 1 ||
            json_integer_value(per_sec) > 1000) {
            p->host->log(hctx, LOYD_LOG_ERR, "crm.rate_per_sec: expected 1..1000");
            b24_tenant_close(t);
            return LOYD_ECONFIG;
        }
        lim.drain_milli = (uint32_t)json_integer_value(per_sec) * 1000;
    }
    if (burst != NULL) {
        if (!json_is_integer(burst) || json_integer_value(burst) < 1 ||
            json_integer_value(burst) > 10000) {
            p->host->log(hctx, LOYD_LOG_ERR, "crm.rate_burst: expected 1..10000");
            b24_tenant_close(t);
            return LOYD_ECONFIG;
        }
        lim.burst = (uint32_t)json_integer_value(burst);
    }
    t->lim = lim;
    static const char *const urls[] = {"webhook_url", "rest_url", "oauth_url"};
    for (size_t i = 0; i < sizeof(urls) / sizeof(urls[0]); i++) {
        if (check_url(p, hctx, urls[i], json_string_value(json_object_get(crm, urls[i]))) != 0) {
            b24_tenant_close(t);
            return LOYD_ECONFIG;
        }
    }
    struct b24_rest_config rc = {.portals = p->portals, .lim = lim};
    const json_t *timeout = json_object_get(crm, "timeout_ms");
    if (timeout != NULL) {
        if (!json_is_integer(timeout) || json_integer_value(timeout) < 100 ||
            json_integer_value(timeout) > 600000) {
            p->host->log(hctx, LOYD_LOG_ERR, "crm.timeout_ms: expected 100..600000");
            b24_tenant_close(t);
            return LOYD_ECONFIG;
        }
        rc.timeout_ms = (uint32_t)json_integer_value(timeout);
    }
    char *client_id = dup_opt(crm, "client_id");
    if (t->webhook_url != NULL) {
        size_t n = strlen(t->webhook_url);
        if (strstr(t->webhook_url, "/rest/") == NULL) {
            p->host->log(hctx, LOYD_LOG_ERR,
                         "crm.webhook_url: expected https://<portal>/rest/<user>/<code>/");
            free(client_id);
            b24_tenant_close(t);
            return LOYD_ECONFIG;
        }
        char *base = malloc(n + 2);
        if (base == NULL)
            abort();
        snprintf(base, n + 2, "%s%s", t->webhook_url, t->webhook_url[n - 1] == '/' ? "" : "/");
        rc.webhook_url = base;
        t->rest = b24_rest_create(p->host, hctx, &rc);
        free(base);
    } else if (client_id != NULL) {
        const char *oauth_url = json_string_value(json_object_get(crm, "oauth_url"));
        struct b24_oauth_config oc = {
            .client_id = client_id,
            .client_secret = json_string_value(json_object_get(crm, "client_secret")),
            .oauth_url = oauth_url != NULL && *oauth_url ? oauth_url : NULL,
            .rest_url = json_string_value(json_object_get(crm, "rest_url")),
            .access_token = json_string_value(json_object_get(crm, "access_token")),
            .refresh_token = json_string_value(json_object_get(crm, "refresh_token")),
        };
        rc.oauth = b24_oauth_open(p->host, hctx, &oc);
        t->rest = b24_rest_create(p->host, hctx, &rc);
    }
    free(client_id);
    char *known = NULL;
    if (p->host->kv_get(hctx, "uf:known", &known) == 0 && known != NULL)
        t->uf_known = json_loads(known, 0, NULL);
    free(known);
    if (!json_is_object(t->uf_known)) {
        json_decref(t->uf_known);
        t->uf_known = json_object();
    }
    if (t->rest == NULL)
        /* Said once here, with what is missing: the worker's reads then wait without a word
         * (they fail with LOYD_ECONFIG until a reload brings the setting). */
        p->host->log(hctx, LOYD_LOG_WARN,
                     "neither crm.webhook_url (an inbound webhook) nor crm.client_id (an OAuth "
                     "app) is set: loyd cannot read or write the portal; its webhooks are kept "
                     "and wait until one is set (then reload: SIGHUP)");
    b24_redeem_field_check(t);
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
    free(t->referrer_field);
    free(t->offer_code_field);
    free(t->webhook_url);
    free(t->app_token);
    free(t->member_id);
    free(t->learned_member);
    free(t->learned_token);
    free(t);
}

static void b24_rate_policy(void *tenant, struct loyd_rate_policy *out)
{
    struct b24_tenant *t = tenant;
    /* The REST client paces itself; the host sends one batch's worth per write. */
    *out = (struct loyd_rate_policy){
        .per_sec_milli = t->lim.drain_milli, .burst = t->lim.burst, .max_batch = 50};
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
