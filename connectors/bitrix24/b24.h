/* SPDX-License-Identifier: MIT */
/* The Bitrix24 connector's per-tenant state, shared by its files (not a public header). */
#ifndef LOYD_B24_H
#define LOYD_B24_H

#include "loyd/plugin.h"
#include "portal.h"

struct b24_rest;
struct wjob;

struct b24_tenant {
    const struct loyd_host_api *host;
    void *hctx;
    struct b24_rest *rest; /* REST access, or NULL without webhook_url or client_id */
    struct b24_rest_limits lim; /* the portal's request limit as configured */
    json_t *attributes;    /* member attribute -> CRM field (crm.attributes) */
    char *redeem_field;    /* deal field with points to redeem, or NULL */
    char *referrer_field;  /* contact field naming who referred the contact, or NULL (none) */
    enum b24_referrer_match {
        B24_REF_PHONE,      /* the referrer's phone, any format */
        B24_REF_EMAIL,      /* the referrer's email */
        B24_REF_CONTACT_ID, /* the referrer's contact id (a "CRM" type field: "7" or "C_7") */
        B24_REF_CODE,       /* the referrer's referral code (loyd/referral.h), shown on their
                               card in UF_CRM_LOYD_REFERRAL_CODE */
    } referrer_match;
    char *offer_code_field; /* deal field with the offer code the customer used, or NULL */
    json_t *uf_known;      /* loyd's fields the portal has ("deal:" prefix for deals) */
    bool prov_busy;        /* provisioning in progress */
    struct wjob *prov_waiting; /* writes waiting for it */
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
int b24_enrich(void *tenant, const json_t *notice, loyd_enrich_cb cb, void *arg);
int b24_write(void *tenant, const json_t *items, loyd_write_cb cb, void *arg);
int b24_sync(void *tenant, const struct loyd_sync_request *req, loyd_sync_cb cb, void *arg);
/**
 * write.c: makes sure the portal has the deal field crm.redeem_field names (one
 * crm.deal.userfield.list when the tenant opens): loyd's own name (UF_CRM_LOYD_...) is created,
 * any other missing name is a warning with the name and what to do.  Asynchronous, no result.
 */
void b24_redeem_field_check(struct b24_tenant *t);

/* snapshot.c: Bitrix24 records -> canonical snapshots (NULL: no usable ID). */
json_t *b24_snapshot_contact(const struct b24_tenant *t, const json_t *raw);
json_t *b24_snapshot_deal(const struct b24_tenant *t, const json_t *raw, const char *contact_id);
/** "referred_by" of a contact snapshot: {"phone"|"email"|"contact_id": text}, or NULL. */
json_t *b24_referred_by(const struct b24_tenant *t, const char *contact_id, const json_t *raw);
/** "125000.50" in @p currency -> minor units; -EINVAL for anything that is not an amount. */
int b24_money_minor(const char *s, const char *currency, int64_t *out);
/** ISO 8601 ("2024-08-30T14:29:00+03:00", "2024-08-30") -> ms since the epoch. */
int b24_iso_ms(const char *s, int64_t *out);
/** ms since the epoch -> "2024-08-30T11:29:00+00:00". */
void b24_format_iso(int64_t ms, char out[40]);

#endif
