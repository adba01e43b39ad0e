/* SPDX-License-Identifier: MIT */
/*
 * The OAuth tokens of one tenant's Bitrix24 app: an access token that lives an hour and a
 * single-use refresh token that rotates on every refresh.  (Facts: /work/shared/crm/bitrix24.md
 * section 5.)
 *
 * Rules this file keeps:
 *   - one refresh at a time: callers that need a fresh token while one is being fetched wait
 *     for the same answer (two refreshes would spend the refresh token twice, and the portal
 *     would answer the second with invalid_grant and forget the only valid pair);
 *   - the new pair is committed through kv_put (one key, "oauth", so the pair is never torn)
 *     before anything uses it; a crash after the refresh but before the commit loses the pair
 *     and asks for a reinstall, which is the only safe outcome;
 *   - the stored pair wins over the tenant file's seeds, since the seeds are spent after the
 *     first refresh.
 * Loop thread only.
 */
#ifndef LOYD_B24_OAUTH_H
#define LOYD_B24_OAUTH_H

#include <stdbool.h>

#include "loyd/plugin.h"

struct b24_oauth;

struct b24_oauth_config {
    const char *client_id, *client_secret; /* the app's credentials (required to refresh) */
    const char *oauth_url;     /* token endpoint; default https://oauth.bitrix.info/oauth/token/ */
    const char *rest_url;      /* REST base (https://<portal>/rest/); when set, it wins over
                                  the client_endpoint the tokens name */
    const char *access_token, *refresh_token; /* seeds, used only when nothing is stored */
};

struct b24_oauth *b24_oauth_open(const struct loyd_host_api *host, void *hctx,
                                 const struct b24_oauth_config *cfg);
/** Callbacks of a refresh in flight are not called after this. */
void b24_oauth_close(struct b24_oauth *o);

/** The access token, or NULL while none is known (the app is not installed yet). */
const char *b24_oauth_access(const struct b24_oauth *o);
/** The portal's REST base: crm.rest_url, else the newest token's client_endpoint; or NULL. */
const char *b24_oauth_endpoint(const struct b24_oauth *o);
/** True while a refresh or an install is being committed: requests wait for it. */
bool b24_oauth_busy(const struct b24_oauth *o);

/**
 * Gets a new pair (single-flight).  @p cb gets 0 once the new pair is stored and in use,
 * LOYD_ETOKEN when the portal refuses the refresh token (spent, revoked: reinstall the app),
 * LOYD_EHTTP when the token server could not be reached (the old pair is kept).
 */
void b24_oauth_refresh(struct b24_oauth *o, loyd_done_cb cb, void *arg);

/**
 * Tokens an ONAPPINSTALL delivered: stored, then used.  @p cb (may be NULL) gets the commit's
 * outcome.
 */
void b24_oauth_install(struct b24_oauth *o, const char *access, const char *refresh,
                       const char *endpoint, loyd_done_cb cb, void *arg);

struct b24_oauth_stats {
    uint64_t refreshes, refresh_failures;
};
void b24_oauth_stats(const struct b24_oauth *o, struct b24_oauth_stats *out);

#endif
