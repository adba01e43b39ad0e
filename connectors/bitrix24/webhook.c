/* SPDX-License-Identifier: MIT */
/*
 * Bitrix24 inbound events: verification and parsing of one webhook into notices.
 *
 * Bitrix24 signs nothing: an event proves its origin only by `auth[application_token]`, a
 * shared secret that must equal the value known for `auth[member_id]` (the portal's stable id).
 * That value is the tenant's configured `application_token` (outgoing webhooks show it in the
 * portal's settings) or, for an app, the one its ONAPPINSTALL delivered.  An install is trusted
 * only while no token is known for that portal, so a forged install cannot replace a real one.
 * Every comparison is constant-time.  Events carry only ids; enrichment reads the rest.
 */
#include "b24.h"
#include "oauth.h"
#include "rest.h"

#include <errno.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <strings.h>

static void set_err(struct loyd_errbuf *err, const char *fmt, const char *arg)
{
    if (err != NULL && err->size > 0)
        snprintf(err->msg, err->size, fmt, arg != NULL ? arg : "");
}

/* a[b][c] of the parsed form, or NULL. */
static const char *form_str(const json_t *form, const char *a, const char *b, const char *c)
{
    const json_t *v = json_object_get(form, a);
    if (b != NULL)
        v = json_object_get(v, b);
    if (c != NULL)
        v = json_object_get(v, c);
    return json_string_value(v);
}

/* Constant time in the secret's length (connectors cannot link core's loyd_ct_equal). */
static bool ct_equal(const char *a, const char *b)
{
    size_t la = strlen(a), lb = strlen(b);
    unsigned char diff = la != lb;
    for (size_t i = 0; i < lb; i++)
        diff |= (unsigned char)((i < la ? a[i] : 0) ^ b[i]);
    return diff == 0;
}

static bool member_id_ok(const char *m)
{
    size_t n = strlen(m);
    if (n == 0 || n > 64)
        return false;
    for (size_t i = 0; i < n; i++)
        if (!((m[i] >= '0' && m[i] <= '9') || (m[i] >= 'a' && m[i] <= 'z') ||
              (m[i] >= 'A' && m[i] <= 'Z')))
            return false;
    return true;
}

static bool digits(const char *s)
{
    if (s == NULL || *s == '\0' || strlen(s) > 19)
        return false;
    for (; *s; s++)
        if (*s < '0' || *s > '9')
            return false;
    return true;
}

/* The application token known for a portal: configured, learned this run, or stored. */
static const char *known_token(struct b24_tenant *t, const char *member_id)
{
    if (t->app_token != NULL)
        return t->app_token;
    if (t->learned_member != NULL && strcmp(t->learned_member, member_id) == 0)
        return t->learned_token;
    char key[96], *stored = NULL;
    snprintf(key, sizeof(key), "application_token:%s", member_id);
    if (t->host->kv_get(t->hctx, key, &stored) == 0 && stored != NULL) {
        free(t->learned_member);
        free(t->learned_token);
        t->learned_member = strdup(member_id);
        t->learned_token = stored;
        return t->learned_token;
    }
    free(stored);
    return NULL;
}

static void install_stored(void *arg, int err)
{
    struct b24_tenant *t = arg;
    if (err != 0)
        t->host->log(t->hctx, LOYD_LOG_ERR, "cannot store the installed app's token: %s",
                     loyd_strerror(err));
}

/* ONAPPINSTALL: trusted only while no token is known for the portal. */
static int on_install(struct b24_tenant *t, const json_t *form, const char *member_id,
                      const char *token, struct loyd_errbuf *err)
{
    const char *known = known_token(t, member_id);
    if (known != NULL) {
        if (!ct_equal(token, known)) {
            set_err(err, "ONAPPINSTALL for a portal that already has a different application "
                         "token%s", NULL);
            return LOYD_EAUTH;
        }
        return 0;
    }
    char key[96];
    snprintf(key, sizeof(key), "application_token:%s", member_id);
    free(t->learned_member);
    free(t->learned_token);
    t->learned_member = strdup(member_id);
    t->learned_token = strdup(token);
    /* The writer queue orders this before the webhook's own inbox row. */
    if (t->host->kv_put(t->hctx, key, token, install_stored, t) != 0)
        t->host->log(t->hctx, LOYD_LOG_ERR, "cannot queue the installed app's token");
    /* An OAuth app's first token pair: stored, then used for the REST calls. */
    const char *refresh = form_str(form, "auth", "refresh_token", NULL);
    struct b24_oauth *oauth = b24_rest_oauth(t->rest);
    if (refresh != NULL && *refresh != '\0' && oauth != NULL)
        b24_oauth_install(oauth, form_str(form, "auth", "access_token", NULL), refresh,
                          form_str(form, "auth", "client_endpoint", NULL), install_stored, t);
    t->host->log(t->hctx, LOYD_LOG_NOTICE, "app installed on portal member_id=%s", member_id);
    return 0;
}

static const struct {
    const char *event, *entity, *action;
} event_map[] = {
    {"ONCRMDEALADD", "deal", "add"},          {"ONCRMDEALUPDATE", "deal", "update"},
    {"ONCRMDEALDELETE", "deal", "delete"},    {"ONCRMCONTACTADD", "contact", "add"},
    {"ONCRMCONTACTUPDATE", "contact", "update"}, {"ONCRMCONTACTDELETE", "contact", "delete"},
};

int b24_webhook_parse(void *tenant, const struct loyd_webhook *wh, json_t **notices,
                      struct loyd_errbuf *err)
{
    struct b24_tenant *t = tenant;
    const struct loyd_http_request *req = wh->http;
    json_t *form = NULL;
    int rc;

    for (size_t i = 0; i < req->n_headers; i++) {
        if (strcasecmp(req->headers[i].name, "Content-Type") == 0 &&
            strncasecmp(req->headers[i].value, "application/x-www-form-urlencoded", 33) != 0) {
            set_err(err, "expected application/x-www-form-urlencoded, got %s",
                    req->headers[i].value);
            return LOYD_EPARSE;
        }
    }
    if ((rc = t->host->form_parse(t->hctx, req->body, req->body_len, &form, err)) != 0)
        return rc == LOYD_ELIMIT ? LOYD_ELIMIT : LOYD_EPARSE;

    const char *event = form_str(form, "event", NULL, NULL);
    const char *member_id = form_str(form, "auth", "member_id", NULL);
    const char *token = form_str(form, "auth", "application_token", NULL);
    if (event == NULL || *event == '\0') {
        set_err(err, "no 'event' field: not a Bitrix24 event%s", NULL);
        rc = LOYD_EPARSE;
        goto out;
    }
    if (member_id == NULL || !member_id_ok(member_id) || token == NULL || *token == '\0') {
        set_err(err, "%s without auth[member_id] and auth[application_token]", event);
        rc = LOYD_EAUTH;
        goto out;
    }
    if (t->member_id != NULL && strcmp(member_id, t->member_id) != 0) {
        set_err(err, "event from another portal (member_id %s)", member_id);
        rc = LOYD_EAUTH;
        goto out;
    }
    *notices = json_array();
    if (strcasecmp(event, "ONAPPINSTALL") == 0) {
        if ((rc = on_install(t, form, member_id, token, err)) == 0)
            json_array_append_new(*notices, json_pack("{s:s,s:s,s:s}", "entity", "app",
                                                      "action", "install", "crm_event",
                                                      "ONAPPINSTALL"));
        goto out_notices;
    }
    const char *known = known_token(t, member_id);
    if (known == NULL) {
        set_err(err, "no application token is known for member_id %s: set "
                     "crm.application_token or install the app", member_id);
        rc = LOYD_EAUTH;
        goto out_notices;
    }
    if (!ct_equal(token, known)) {
        set_err(err, "wrong auth[application_token] for member_id %s", member_id);
        rc = LOYD_EAUTH;
        goto out_notices;
    }
    for (size_t i = 0; i < sizeof(event_map) / sizeof(event_map[0]); i++) {
        if (strcasecmp(event, event_map[i].event) != 0)
            continue;
        const char *id = form_str(form, "data", "FIELDS", "ID");
        if (!digits(id)) {
            set_err(err, "%s without a numeric data[FIELDS][ID]", event_map[i].event);
            rc = LOYD_EPARSE;
            goto out_notices;
        }
        const char *ts = form_str(form, "ts", NULL, NULL);
        json_array_append_new(
            *notices, json_pack("{s:s,s:s,s:s,s:s,s:s,s:I}", "entity", event_map[i].entity, "id",
                                id, "action", event_map[i].action, "crm_event",
                                event_map[i].event, "member_id", member_id, "ts",
                                (json_int_t)(digits(ts) ? strtoll(ts, NULL, 10) : 0)));
        break;
    }
    /* Other events (leads, invoices...) are verified and stored, with no notice to act on. */
    rc = 0;
out_notices:
    if (rc != 0) {
        json_decref(*notices);
        *notices = NULL;
    }
out:
    json_decref(form);
    return rc;
}
