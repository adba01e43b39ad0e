/* SPDX-License-Identifier: MIT */
/*
 * The daemon (see daemon.h): start-up, routing of inbound HTTP, durable webhook intake,
 * /healthz and /metrics, SIGHUP reload and the SIGTERM drain.
 *
 * A webhook is answered 200 only from the store's completion callback, that is after its inbox
 * row is committed; the store groups many such rows per commit.
 */
#include "daemon.h"

#include <errno.h>
#include <inttypes.h>
#include <signal.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <time.h>

#include "http_client.h"
#include "httpd.h"
#include "log.h"
#include "sha256.h"
#include "store.h"
#include "tz.h"

/* One webhook waiting for its inbox row to commit. */
struct hook_wait {
    struct loyd_daemon *d;
    struct loyd_http_exchange *ex;
    char tenant[65];
};

static const char *const TEXT_PLAIN[] = {"Content-Type: text/plain; charset=utf-8", NULL};

static void answer(struct loyd_daemon *d, struct loyd_http_exchange *ex, enum loyd_route route,
                   int status, const char *const *headers, const char *body)
{
    loyd_metrics_request(&d->metrics, route, status);
    loyd_httpd_respond(ex, status, headers ? headers : TEXT_PLAIN, body, strlen(body));
}

/* Logs multi-line error text (config problems come one per line) as one log line each. */
static void log_lines(int level, enum loyd_log_group group, const char *prefix, const char *text)
{
    if (level > loyd_log_max_level)
        return;
    for (const char *p = text; p != NULL && *p != '\0';) {
        const char *nl = strchr(p, '\n');
        int n = nl ? (int)(nl - p) : (int)strlen(p);
        if (n > 0)
            loyd_log_write(level, group, "%s%.*s", prefix, n, p);
        p = nl ? nl + 1 : NULL;
    }
}

/* ---- tenants --------------------------------------------------------------------------- */

static struct loyd_tenant *tenant_find(struct loyd_daemon *d, const char *name)
{
    for (size_t i = 0; i < d->n_tenants; i++)
        if (strcmp(d->tenants[i]->cfg->name, name) == 0)
            return d->tenants[i];
    return NULL;
}

struct loyd_tenant *loyd_daemon_tenant(struct loyd_daemon *d, const char *name)
{
    return tenant_find(d, name);
}

static void tenant_free(struct loyd_tenant *t)
{
    if (t == NULL)
        return;
    /* The connector first: after tenant_close no callback reaches the worker. */
    if (t->state != NULL && t->ops->tenant_close != NULL)
        t->ops->tenant_close(t->state);
    loyd_worker_destroy(t->worker);
    loyd_host_ctx_destroy(t->hctx);
    loyd_engine_destroy(t->engine);
    loyd_tenant_config_free(t->cfg);
    free(t);
}

static void tenants_free(struct loyd_tenant **ts, size_t n)
{
    for (size_t i = 0; i < n; i++)
        tenant_free(ts[i]);
    free(ts);
}

/* The loaded connector plugin called @p name, loading the built-in one on first use. */
static int connector_get(struct loyd_daemon *d, const char *name,
                         const struct loyd_plugin_handle **out, struct loyd_buf *err)
{
    struct loyd_plugin_handle *h = NULL;
    int rc;

    for (size_t i = 0; i < d->n_plugins; i++)
        if (strcmp(d->plugins[i]->plugin->name, name) == 0)
            h = d->plugins[i];
    if (h == NULL) {
        if ((rc = loyd_plugin_load(name, NULL, NULL, &loyd_host_api, d->plugin_hctx, &h, err)) != 0)
            return rc;
        d->plugins = loyd_xrealloc(d->plugins, (d->n_plugins + 1) * sizeof(*d->plugins));
        d->plugins[d->n_plugins++] = h;
    }
    if (loyd_plugin_connector(h->plugin) == NULL) {
        loyd_buf_printf(err, "plugin '%s' is not a CRM connector", name);
        return LOYD_ECONFIG;
    }
    *out = h;
    return 0;
}

/* Loads the tenant's rule pack with its settings; a bad pack or setting is a config error. */
static int tenant_engine(const struct loyd_config *cfg, struct loyd_tenant *t, struct loyd_buf *err)
{
    struct loyd_sandbox_limits lim = {.memory_bytes = cfg->rules.memory_bytes,
                                      .instructions = cfg->rules.instructions,
                                      .wall_ms = cfg->rules.wall_ms};
    char *pack_dir = loyd_tenant_pack_dir(cfg, t->cfg);
    int tz, rc;

    if ((rc = loyd_tz_offset_min(t->cfg->timezone, time(NULL), &tz, err)) != 0) {
        loyd_buf_printf(err, " in %s\n", t->cfg->path);
        free(pack_dir);
        return LOYD_ECONFIG;
    }
    rc = loyd_engine_create(t->cfg->name, pack_dir, cfg->packs_dir, t->cfg->settings, tz, &lim,
                            &t->engine, err);
    if (rc != 0)
        loyd_buf_printf(err, "%s: pack '%s' (%s) cannot be used\n", t->cfg->path, t->cfg->pack,
                        pack_dir);
    free(pack_dir);
    return rc != 0 ? LOYD_ECONFIG : 0;
}

/* Builds a live tenant from its config; takes ownership of @p tc even on failure. */
static int tenant_open_take(struct loyd_daemon *d, const struct loyd_config *cfg,
                            struct loyd_tenant_config *tc, struct loyd_tenant **out,
                            struct loyd_buf *err)
{
    struct loyd_tenant *t = loyd_xcalloc(1, sizeof(*t));
    int rc;

    t->cfg = tc;
    if ((rc = tenant_engine(cfg, t, err)) != 0)
        goto fail;
    if ((rc = connector_get(d, tc->connector, &t->plugin, err)) != 0)
        goto fail;
    t->ops = loyd_plugin_connector(t->plugin->plugin);
    if (t->ops->tenant_config != NULL &&
        (rc = loyd_config_validate_fields(tc->path, "crm", t->ops->tenant_config, tc->crm, err)) != 0)
        goto fail;
    t->hctx = loyd_host_ctx_create(&d->host, tc->connector, tc->name);
    t->hctx->origin_file = tc->path;
    t->hctx->origin_lines = tc->lines;
    rc = t->ops->tenant_open != NULL
             ? t->ops->tenant_open(t->plugin->state, t->hctx, tc->crm, &t->state)
             : 0;
    t->hctx->origin_file = NULL;
    t->hctx->origin_lines = NULL;
    if (rc != 0) {
        loyd_buf_printf(err, "%s: connector %s refused the tenant's crm settings: %s\n", tc->path,
                        tc->connector, loyd_strerror(rc));
        t->state = NULL;
        goto fail;
    }
    *out = t;
    return 0;
fail:
    tenant_free(t);
    return rc;
}

/* Opens every tenant of @p tcs (taking them); on any failure none is kept. */
static int tenants_open_take(struct loyd_daemon *d, const struct loyd_config *cfg,
                             struct loyd_tenant_config **tcs, size_t n, struct loyd_tenant ***out,
                             struct loyd_buf *err)
{
    struct loyd_tenant **ts = loyd_xcalloc(n + 1, sizeof(*ts));
    int rc = 0;

    for (size_t i = 0; i < n; i++) {
        int r = tenant_open_take(d, cfg, tcs[i], &ts[i], err);
        if (r != 0)
            rc = r; /* keep going: report every tenant's problem at once */
    }
    free(tcs);
    if (rc != 0) {
        tenants_free(ts, n);
        return rc;
    }
    *out = ts;
    return 0;
}

/* ---- workers ----------------------------------------------------------------------------- */

static void stats_add(struct loyd_worker_stats *to, const struct loyd_worker_stats *s)
{
    uint64_t *a = (uint64_t *)to;
    const uint64_t *b = (const uint64_t *)s;
    for (size_t i = 0; i < sizeof(*s) / sizeof(uint64_t); i++)
        a[i] += b[i];
}

void loyd_daemon_worker_stats(struct loyd_daemon *d, struct loyd_worker_stats *out)
{
    struct loyd_worker_stats s;
    *out = d->retired_stats;
    for (size_t i = 0; i < d->n_tenants; i++) {
        if (d->tenants[i]->worker != NULL) {
            loyd_worker_stats(d->tenants[i]->worker, &s);
            stats_add(out, &s);
        }
    }
    for (size_t i = 0; i < d->n_retiring; i++) {
        loyd_worker_stats(d->retiring[i]->worker, &s);
        stats_add(out, &s);
    }
}

/* Live tenants get their worker once the set of tenants is final (start-up, a good reload). */
static void workers_start(struct loyd_daemon *d)
{
    struct loyd_worker_opts o = {
        .batch = d->cfg->worker.batch,
        .max_attempts = d->cfg->worker.max_attempts,
        .retry_max_ms = d->cfg->worker.retry_max_ms,
        .poll_ms = d->cfg->worker.poll_ms,
        .sweep_interval_ms = d->cfg->worker.sweep_interval_ms,
        .sync_on_start = d->cfg->worker.sync_on_start,
    };
    for (size_t i = 0; i < d->n_tenants; i++) {
        struct loyd_tenant *t = d->tenants[i];
        if (t->worker != NULL || !t->cfg->enabled)
            continue;
        struct loyd_worker_env env = {
            .loop = d->loop,
            .host = &d->host,
            .store = d->store,
            .engine = t->engine,
            .tenant = t->cfg->name,
            .ops = t->ops,
            .conn = t->state,
        };
        t->worker = loyd_worker_create(&env, &o);
        loyd_worker_set_observer(t->worker, &d->observer);
    }
}

static void reap(uv_timer_t *timer)
{
    struct loyd_daemon *d = timer->data;
    for (size_t i = 0; i < d->n_reaped; i++)
        tenant_free(d->reaped[i]);
    d->n_reaped = 0;
}

/* A retired tenant's worker went idle: free it, though not from inside its own callback. */
static void retired(void *arg)
{
    struct loyd_tenant *t = arg;
    struct loyd_daemon *d = t->daemon;
    struct loyd_worker_stats s;

    loyd_worker_stats(t->worker, &s);
    stats_add(&d->retired_stats, &s);
    for (size_t i = 0; i < d->n_retiring; i++) {
        if (d->retiring[i] == t) {
            d->retiring[i] = d->retiring[--d->n_retiring];
            break;
        }
    }
    d->reaped = loyd_xrealloc(d->reaped, (d->n_reaped + 1) * sizeof(*d->reaped));
    d->reaped[d->n_reaped++] = t;
    uv_timer_start(&d->reap_timer, reap, 0, 0);
}

/* Tenants replaced by a reload finish what they started, then go. */
static void tenants_retire(struct loyd_daemon *d, struct loyd_tenant **ts, size_t n)
{
    for (size_t i = 0; i < n; i++) {
        struct loyd_tenant *t = ts[i];
        if (t->worker == NULL) {
            tenant_free(t);
            continue;
        }
        t->daemon = d;
        d->retiring = loyd_xrealloc(d->retiring, (d->n_retiring + 1) * sizeof(*d->retiring));
        d->retiring[d->n_retiring++] = t;
        loyd_worker_close(t->worker, retired, t);
    }
    free(ts);
}

void loyd_daemon_set_observer(struct loyd_daemon *d, const struct loyd_worker_observer *o)
{
    d->observer = o != NULL ? *o : (struct loyd_worker_observer){0};
    for (size_t i = 0; i < d->n_tenants; i++)
        if (d->tenants[i]->worker != NULL)
            loyd_worker_set_observer(d->tenants[i]->worker, &d->observer);
}

void loyd_daemon_kick(struct loyd_daemon *d)
{
    for (size_t i = 0; i < d->n_tenants; i++)
        loyd_worker_kick(d->tenants[i]->worker);
}

bool loyd_daemon_quiet(struct loyd_daemon *d)
{
    int64_t in = 0, out = 0, dead = 0;
    for (size_t i = 0; i < d->n_tenants; i++)
        if (d->tenants[i]->worker != NULL && !loyd_worker_idle(d->tenants[i]->worker))
            return false;
    if (loyd_store_depths(d->store, &in, &out, &dead) != 0)
        return false;
    return in == 0 && out == 0;
}

/* ---- webhooks -------------------------------------------------------------------------- */

static const char *header_get(const struct loyd_http_request *req, const char *name)
{
    for (size_t i = 0; i < req->n_headers; i++)
        if (strcasecmp(req->headers[i].name, name) == 0)
            return req->headers[i].value;
    return NULL;
}

static void hook_stored(void *arg, int err, int64_t id)
{
    struct hook_wait *w = arg;
    struct loyd_daemon *d = w->d;

    if (err == 0 || err == LOYD_EDUP) {
        if (err == 0)
            d->metrics.webhooks_stored++;
        else
            d->metrics.webhooks_duplicate++;
        loyd_log_debug(HTTP, "tenant=%s inbox=%" PRId64 "%s", w->tenant, id,
                       err ? " (already stored)" : "");
        answer(d, w->ex, LOYD_ROUTE_HOOKS, 200, NULL, "ok\n");
        struct loyd_tenant *t = tenant_find(d, w->tenant);
        if (t != NULL && !d->draining)
            loyd_worker_kick(t->worker);
    } else {
        loyd_log_err(DB, "tenant=%s webhook not stored: %s", w->tenant, loyd_strerror(err));
        answer(d, w->ex, LOYD_ROUTE_HOOKS, 503, NULL, "cannot store the webhook now\n");
    }
    free(w);
}

static void on_hook(struct loyd_daemon *d, struct loyd_http_exchange *ex,
                    const struct loyd_http_request *req, const char *name, const char *secret)
{
    static const char *const allow_post[] = {"Allow: POST", "Content-Type: text/plain", NULL};
    struct loyd_tenant *t;
    json_t *notices = NULL;
    char *notices_text = NULL;
    int rc;

    if (strcmp(req->method, "POST") != 0) {
        answer(d, ex, LOYD_ROUTE_HOOKS, 405, allow_post, "webhooks are POSTed\n");
        return;
    }
    t = tenant_find(d, name);
    if (t == NULL || !t->cfg->enabled) {
        answer(d, ex, LOYD_ROUTE_HOOKS, 404, NULL, "unknown tenant\n");
        return;
    }
    if (d->draining) {
        answer(d, ex, LOYD_ROUTE_HOOKS, 503, NULL, "shutting down\n");
        return;
    }
    if (t->cfg->path_secret != NULL ? !loyd_ct_streq(secret, t->cfg->path_secret) : secret != NULL) {
        d->metrics.webhooks_rejected++;
        loyd_log_warn(HTTP, "tenant=%s webhook refused: wrong path secret from %s", name,
                      req->remote_addr);
        answer(d, ex, LOYD_ROUTE_HOOKS, 401, NULL, "unauthorized\n");
        return;
    }
    if (t->ops->webhook_parse != NULL && t->state != NULL) {
        char msg[256] = "";
        struct loyd_errbuf eb = {msg, sizeof(msg)};
        struct loyd_webhook wh = {.tenant = name, .path_secret = secret, .http = req};

        rc = t->ops->webhook_parse(t->state, &wh, &notices, &eb);
        if (rc == LOYD_EAUTH) {
            d->metrics.webhooks_rejected++;
            loyd_log_warn(HTTP, "tenant=%s webhook refused from %s: %s", name, req->remote_addr,
                          msg[0] ? msg : "authentication failed");
            answer(d, ex, LOYD_ROUTE_HOOKS, 401, NULL, "unauthorized\n");
            return;
        }
        if (rc != 0) {
            char body[300];
            d->metrics.webhooks_rejected++;
            snprintf(body, sizeof(body), "%s\n", msg[0] ? msg : loyd_strerror(rc));
            loyd_log_info(HTTP, "tenant=%s webhook refused from %s: %s", name, req->remote_addr,
                          msg[0] ? msg : loyd_strerror(rc));
            answer(d, ex, LOYD_ROUTE_HOOKS, 400, NULL, body);
            return;
        }
        notices_text = json_dumps(notices, JSON_COMPACT);
        json_decref(notices);
    }

    /* A byte-identical delivery is the same webhook: its digest is the inbox key. */
    uint8_t digest[LOYD_SHA256_LEN];
    char key[2 * LOYD_SHA256_LEN + 1];
    loyd_sha256(req->body, req->body_len, digest);
    loyd_hex(digest, sizeof(digest), key);

    struct hook_wait *w = loyd_xcalloc(1, sizeof(*w));
    w->d = d;
    w->ex = ex;
    snprintf(w->tenant, sizeof(w->tenant), "%s", name);
    struct loyd_inbox_row row = {
        .tenant = name,
        .idem_key = key,
        .content_type = header_get(req, "Content-Type"),
        .body = req->body,
        .body_len = req->body_len,
        .notices_json = notices_text,
        .received_ms = loyd_host_now_ms(&d->host),
    };
    rc = loyd_store_inbox_append(d->store, &row, hook_stored, w);
    free(notices_text);
    if (rc != 0) {
        loyd_log_err(DB, "tenant=%s webhook not queued: %s", name, loyd_strerror(rc));
        answer(d, ex, LOYD_ROUTE_HOOKS, 503, NULL, "cannot store the webhook now\n");
        free(w);
    }
}

/* ---- /healthz, /metrics and routing ----------------------------------------------------- */

static void on_metrics(struct loyd_daemon *d, struct loyd_http_exchange *ex)
{
    static const char *const prom[] = {"Content-Type: text/plain; version=0.0.4", NULL};
    struct loyd_metrics_sample s = {.tenants = d->n_tenants};
    struct loyd_http_client_stats cs;
    struct loyd_httpd_stats hs;
    struct loyd_buf out = {0};

    if (loyd_store_depths(d->store, &s.inbox_pending, &s.outbox_pending, &s.dead_letters) != 0)
        s.inbox_pending = s.outbox_pending = s.dead_letters = -1;
    loyd_http_client_stats(d->client, &cs);
    s.crm_ok = cs.ok_2xx, s.crm_4xx = cs.http_4xx, s.crm_5xx = cs.http_5xx;
    s.crm_timeout = cs.timeouts, s.crm_too_big = cs.too_big;
    s.crm_transport = cs.transport_errors, s.crm_cancelled = cs.cancelled;
    loyd_httpd_stats(d->httpd, &hs);
    struct loyd_worker_stats ws;
    loyd_daemon_worker_stats(d, &ws);
    s.events_applied = ws.events_applied;
    s.events_duplicate = ws.events_duplicate;
    s.rule_errors = ws.events_failed;
    s.events_refused = ws.events_refused;
    s.events_skipped = ws.events_skipped;
    s.rows_dead = ws.rows_dead;
    s.writebacks_done = ws.writes_done;
    s.writebacks_retried = ws.writes_retried;
    s.writebacks_dead = ws.writes_dead;
    s.writebacks_skipped = ws.writes_skipped;
    s.write_calls = ws.write_calls;
    s.fields_repaired = ws.fields_repaired;
    s.catchups = ws.catchups;
    s.http_open_connections = hs.open_connections;
    s.http_rejected_busy = hs.rejected_busy;
    s.http_timeouts = hs.timeouts;
    /* Count this request before rendering so the answer includes itself. */
    loyd_metrics_request(&d->metrics, LOYD_ROUTE_METRICS, 200);
    loyd_metrics_render(&d->metrics, &s, &out);
    loyd_httpd_respond(ex, 200, prom, out.data, out.len);
    loyd_buf_free(&out);
}

static void on_request(void *arg, struct loyd_http_exchange *ex, const struct loyd_http_request *req)
{
    static const char *const allow_get[] = {"Allow: GET, HEAD", "Content-Type: text/plain", NULL};
    struct loyd_daemon *d = arg;
    const char *path = req->path;
    bool get = strcmp(req->method, "GET") == 0 || strcmp(req->method, "HEAD") == 0;

    if (strcmp(path, "/healthz") == 0) {
        if (!get)
            answer(d, ex, LOYD_ROUTE_HEALTHZ, 405, allow_get, "use GET\n");
        else if (d->draining)
            answer(d, ex, LOYD_ROUTE_HEALTHZ, 503, NULL, "draining\n");
        else
            answer(d, ex, LOYD_ROUTE_HEALTHZ, 200, NULL, "ok\n");
        return;
    }
    if (strcmp(path, "/metrics") == 0) {
        if (!get)
            answer(d, ex, LOYD_ROUTE_METRICS, 405, allow_get, "use GET\n");
        else
            on_metrics(d, ex);
        return;
    }
    if (strncmp(path, "/hooks/", 7) == 0) {
        /* /hooks/<tenant> or /hooks/<tenant>/<path-secret>, nothing deeper. */
        char name[65], secret[257];
        const char *p = path + 7, *slash = strchr(p, '/');
        size_t nlen = slash ? (size_t)(slash - p) : strlen(p);
        const char *sec = slash ? slash + 1 : NULL;

        if (nlen == 0 || nlen >= sizeof(name) || (sec != NULL && strchr(sec, '/') != NULL) ||
            (sec != NULL && strlen(sec) >= sizeof(secret))) {
            answer(d, ex, LOYD_ROUTE_HOOKS, 404, NULL, "no such webhook endpoint\n");
            return;
        }
        memcpy(name, p, nlen);
        name[nlen] = '\0';
        if (sec != NULL && *sec != '\0')
            snprintf(secret, sizeof(secret), "%s", sec);
        on_hook(d, ex, req, name, sec != NULL && *sec != '\0' ? secret : NULL);
        return;
    }
    answer(d, ex, LOYD_ROUTE_OTHER, 404, NULL, "not found\n");
}

/* ---- start-up, reload, shutdown ---------------------------------------------------------- */

static int load_plugins(struct loyd_daemon *d, struct loyd_buf *err)
{
    size_t i;
    json_t *p;

    json_array_foreach(d->cfg->plugins, i, p) {
        const char *name = json_string_value(json_object_get(p, "name"));
        const char *path = json_string_value(json_object_get(p, "path"));
        struct loyd_plugin_handle *h;
        int rc = loyd_plugin_load(name, path, json_object_get(p, "config"), &loyd_host_api,
                                  d->plugin_hctx, &h, err);
        if (rc != 0)
            return rc;
        d->plugins = loyd_xrealloc(d->plugins, (d->n_plugins + 1) * sizeof(*d->plugins));
        d->plugins[d->n_plugins++] = h;
        loyd_log_info(PLUGIN, "loaded plugin %s %s%s%s", h->plugin->name, h->plugin->version,
                      path ? " from " : " (built in)", path ? path : "");
    }
    return 0;
}

static void apply_limits(struct loyd_daemon *d, struct loyd_httpd_limits *lim)
{
    loyd_httpd_limits_default(lim);
    lim->max_header_bytes = d->cfg->limits.max_header_bytes;
    lim->max_body_bytes = d->cfg->limits.max_body_bytes;
    lim->max_connections = d->cfg->limits.max_connections;
    lim->idle_timeout_ms = d->cfg->limits.idle_timeout_ms;
    lim->read_timeout_ms = d->cfg->limits.read_timeout_ms;
}

static void on_signal(uv_signal_t *sig, int signum)
{
    struct loyd_daemon *d = sig->data;
    if (signum == SIGHUP) {
        loyd_log_notice(CORE, "SIGHUP: reloading %s", d->config_path);
        (void)loyd_daemon_reload(d);
        return;
    }
    loyd_log_notice(CORE, "%s: draining", signum == SIGTERM ? "SIGTERM" : "SIGINT");
    loyd_daemon_stop(d);
}

int loyd_daemon_start(uv_loop_t *loop, const char *path, struct loyd_daemon **out)
{
    struct loyd_daemon *d = loyd_xcalloc(1, sizeof(*d));
    struct loyd_tenant_config **tcs = NULL;
    struct loyd_http_client_opts copts = {0};
    struct loyd_httpd_limits lim;
    struct loyd_buf err = {0};
    size_t n = 0;
    int rc;

    *out = NULL;
    d->loop = loop;
    d->config_path = loyd_xstrdup(path);
    if ((rc = loyd_config_load(path, &d->cfg, &err)) != 0)
        goto fail_early;
    loyd_log_set_level(d->cfg->log_level);
    if ((rc = loyd_tenants_load_dir(d->cfg->tenants_dir, &tcs, &n, &err)) != 0)
        goto fail_early;
    if ((rc = loyd_store_open(loop, d->cfg->store, &d->store)) != 0) {
        loyd_buf_printf(&err, "cannot open the store %s: %s", d->cfg->store, loyd_strerror(rc));
        loyd_tenants_free(tcs, n);
        goto fail_early;
    }
    copts.default_timeout_ms = d->cfg->client.timeout_ms;
    copts.connect_timeout_ms = d->cfg->client.connect_timeout_ms;
    copts.default_max_response = d->cfg->client.max_response_bytes;
    copts.max_redirects = 3;
    if ((rc = loyd_http_client_create(loop, &copts, &d->client)) != 0) {
        loyd_tenants_free(tcs, n);
        goto fail;
    }
    loyd_host_init(&d->host, loop, d->client, d->store);
    d->plugin_hctx = loyd_host_ctx_create(&d->host, "core", NULL);
    if ((rc = load_plugins(d, &err)) != 0) {
        loyd_tenants_free(tcs, n);
        goto fail;
    }
    if ((rc = tenants_open_take(d, d->cfg, tcs, n, &d->tenants, &err)) != 0)
        goto fail;
    d->n_tenants = n;
    apply_limits(d, &lim);
    if ((rc = loyd_httpd_create(loop, &lim, on_request, d, &d->httpd)) != 0)
        goto fail;
    if ((rc = loyd_httpd_listen(d->httpd, d->cfg->listen_host, d->cfg->listen_port, &d->port)) != 0) {
        loyd_buf_printf(&err, "cannot listen on %s:%d: %s", d->cfg->listen_host,
                        d->cfg->listen_port, loyd_strerror(rc));
        goto fail;
    }
    uv_signal_init(loop, &d->sigterm);
    uv_signal_init(loop, &d->sigint);
    uv_signal_init(loop, &d->sighup);
    d->sigterm.data = d->sigint.data = d->sighup.data = d;
    uv_signal_start(&d->sigterm, on_signal, SIGTERM);
    uv_signal_start(&d->sigint, on_signal, SIGINT);
    uv_signal_start(&d->sighup, on_signal, SIGHUP);
    uv_timer_init(loop, &d->drain_timer);
    uv_timer_init(loop, &d->deadline_timer);
    uv_timer_init(loop, &d->reap_timer);
    d->drain_timer.data = d->deadline_timer.data = d->reap_timer.data = d;
    loyd_log_notice(HTTP, "listening on %s:%d (%zu tenants)", d->cfg->listen_host, d->port,
                    d->n_tenants);
    workers_start(d);
    *out = d;
    return 0;

fail_early:
    log_lines(LOYD_LOG_ERR, LOYD_LOG_CONFIG, "", err.data);
    loyd_buf_free(&err);
    loyd_config_free(d->cfg);
    free(d->config_path);
    free(d);
    return rc;
fail:
    /* Resources exist that close asynchronously: hand them to the regular shutdown path. */
    log_lines(LOYD_LOG_ERR, LOYD_LOG_CORE, "", err.data);
    loyd_buf_free(&err);
    d->exit_code = rc == LOYD_ECONFIG ? 2 : 1;
    loyd_daemon_stop(d);
    *out = d;
    return rc;
}

int loyd_daemon_reload(struct loyd_daemon *d)
{
    struct loyd_config *nc = NULL;
    struct loyd_tenant_config **tcs = NULL;
    struct loyd_tenant **ts = NULL;
    struct loyd_httpd_limits lim;
    struct loyd_buf err = {0};
    size_t n = 0;
    int rc;

    if (d->draining)
        return -ECANCELED;
    if ((rc = loyd_config_load(d->config_path, &nc, &err)) != 0 ||
        (rc = loyd_tenants_load_dir(nc->tenants_dir, &tcs, &n, &err)) != 0 ||
        (rc = tenants_open_take(d, nc, tcs, n, &ts, &err)) != 0) {
        log_lines(LOYD_LOG_ERR, LOYD_LOG_CONFIG, "reload refused, the running config stays: ",
                  err.data);
        loyd_buf_free(&err);
        loyd_config_free(nc);
        return rc;
    }
    if (strcmp(nc->listen_host, d->cfg->listen_host) != 0 || nc->listen_port != d->cfg->listen_port)
        loyd_log_warn(CONFIG, "listen changed: takes effect at the next restart");
    if (strcmp(nc->store, d->cfg->store) != 0)
        loyd_log_warn(CONFIG, "store changed: takes effect at the next restart");
    if (!json_equal(nc->plugins, d->cfg->plugins))
        loyd_log_warn(CONFIG, "plugins changed: take effect at the next restart");
    tenants_retire(d, d->tenants, d->n_tenants);
    d->tenants = ts;
    d->n_tenants = n;
    loyd_config_free(d->cfg);
    d->cfg = nc;
    workers_start(d);
    loyd_log_set_level(nc->log_level);
    apply_limits(d, &lim);
    loyd_httpd_set_limits(d->httpd, &lim);
    loyd_log_notice(CONFIG, "reloaded %s (%zu tenants)", d->config_path, n);
    return 0;
}

static void handle_closed(uv_handle_t *h)
{
    struct loyd_daemon *d = h->data;
    if (--d->closing == 0)
        d->stopped = true;
}

static void close_handle(struct loyd_daemon *d, uv_handle_t *h)
{
    if (h->loop == NULL || uv_is_closing(h))
        return;
    h->data = d;
    d->closing++;
    uv_close(h, handle_closed);
}

static void httpd_closed(void *arg)
{
    struct loyd_daemon *d = arg;
    close_handle(d, (uv_handle_t *)&d->sigterm);
    close_handle(d, (uv_handle_t *)&d->sigint);
    close_handle(d, (uv_handle_t *)&d->sighup);
    close_handle(d, (uv_handle_t *)&d->drain_timer);
    close_handle(d, (uv_handle_t *)&d->deadline_timer);
    close_handle(d, (uv_handle_t *)&d->reap_timer);
}

static void store_closed(void *arg)
{
    struct loyd_daemon *d = arg;
    loyd_log_info(CORE, "store flushed and closed");
    /* Nothing can call into connectors or plugins any more: release them. */
    for (size_t i = 0; i < d->n_retiring; i++) {
        struct loyd_worker_stats s;
        loyd_worker_stats(d->retiring[i]->worker, &s);
        stats_add(&d->retired_stats, &s);
        tenant_free(d->retiring[i]);
    }
    free(d->retiring);
    d->retiring = NULL;
    d->n_retiring = 0;
    for (size_t i = 0; i < d->n_reaped; i++)
        tenant_free(d->reaped[i]);
    free(d->reaped);
    d->reaped = NULL;
    d->n_reaped = 0;
    tenants_free(d->tenants, d->n_tenants);
    d->tenants = NULL;
    d->n_tenants = 0;
    for (size_t i = 0; i < d->n_plugins; i++)
        loyd_plugin_unload(d->plugins[i]);
    free(d->plugins);
    d->plugins = NULL;
    d->n_plugins = 0;
    if (d->httpd != NULL)
        loyd_httpd_close(d->httpd, httpd_closed, d);
    else
        httpd_closed(d);
}

static void host_closed(void *arg)
{
    struct loyd_daemon *d = arg;

    /* The store flushes what workers queued (their callbacks see them closing). */
    if (d->store != NULL)
        loyd_store_close(d->store, store_closed, d);
    else
        store_closed(d);
}

static void client_closed(void *arg)
{
    struct loyd_daemon *d = arg;
    loyd_host_close(&d->host, host_closed, d);
}

static void drain_poll(uv_timer_t *t)
{
    struct loyd_daemon *d = t->data;

    /* Webhooks still waiting for their inbox commit are answered before anything closes. */
    if (d->httpd != NULL && loyd_httpd_pending(d->httpd) > 0)
        return;
    /* Workers start nothing new. */
    if (!d->workers_closed) {
        d->workers_closed = true;
        for (size_t i = 0; i < d->n_tenants; i++)
            if (d->tenants[i]->worker != NULL)
                loyd_worker_close(d->tenants[i]->worker, NULL, NULL);
        for (size_t i = 0; i < d->n_retiring; i++)
            loyd_worker_close(d->retiring[i]->worker, NULL, NULL);
        d->writes_drain_until = loyd_mono_ms() + d->cfg->shutdown_timeout_ms / 2;
    }
    /* A write-back in flight may already be applied on the CRM: wait for its answer and for
     * its "done" to be stored, or the next start would send it again.  Reads need no wait. */
    size_t writing = 0;
    for (size_t i = 0; i < d->n_tenants; i++)
        writing += d->tenants[i]->worker != NULL && loyd_worker_writing(d->tenants[i]->worker);
    for (size_t i = 0; i < d->n_retiring; i++)
        writing += loyd_worker_writing(d->retiring[i]->worker);
    if (writing > 0 && loyd_mono_ms() < d->writes_drain_until)
        return;
    uv_timer_stop(t);
    if (writing > 0)
        loyd_log_warn(CORE, "%zu tenant(s) still writing to the CRM after %" PRIu64 " ms; those "
                      "write-backs are checked before they are sent again at the next start",
                      writing, d->cfg->shutdown_timeout_ms / 2);
    loyd_log_info(CORE, "drained; closing");
    /* Closing the client cancels the CRM calls still in flight. */
    if (d->client != NULL)
        loyd_http_client_close(d->client, client_closed, d);
    else
        client_closed(d);
}

static void walk_print(uv_handle_t *h, void *arg)
{
    (void)arg;
    loyd_log_err(CORE, "still open: %s handle%s", uv_handle_type_name(uv_handle_get_type(h)),
                 uv_is_closing(h) ? " (closing)" : "");
}

static void deadline_hit(uv_timer_t *t)
{
    struct loyd_daemon *d = t->data;
    loyd_log_err(CORE, "shutdown did not finish within %" PRIu64 " ms",
                 d->cfg->shutdown_timeout_ms);
    uv_walk(d->loop, walk_print, NULL);
    d->exit_code = 1;
    uv_stop(d->loop);
}

void loyd_daemon_stop(struct loyd_daemon *d)
{
    if (d->draining)
        return;
    d->draining = true;
    if (d->httpd != NULL)
        loyd_httpd_stop_accepting(d->httpd);
    if (d->drain_timer.loop == NULL) {
        /* Start-up failed before the timers existed. */
        uv_timer_init(d->loop, &d->drain_timer);
        uv_timer_init(d->loop, &d->deadline_timer);
        d->drain_timer.data = d->deadline_timer.data = d;
    }
    uv_timer_start(&d->drain_timer, drain_poll, 0, 10);
    uv_timer_start(&d->deadline_timer, deadline_hit, d->cfg->shutdown_timeout_ms, 0);
    uv_unref((uv_handle_t *)&d->deadline_timer);
}

int loyd_daemon_destroy(struct loyd_daemon *d)
{
    int code = d->exit_code;

    if (d->httpd != NULL)
        loyd_httpd_destroy(d->httpd);
    if (d->client != NULL)
        loyd_http_client_destroy(d->client);
    if (d->store != NULL)
        loyd_store_destroy(d->store);
    loyd_host_ctx_destroy(d->plugin_hctx);
    loyd_config_free(d->cfg);
    free(d->config_path);
    free(d);
    return code;
}

int loyd_daemon_run(const char *path)
{
    uv_loop_t loop;
    struct loyd_daemon *d = NULL;
    int rc, code;

    signal(SIGPIPE, SIG_IGN);
    if ((rc = uv_loop_init(&loop)) != 0) {
        loyd_log_err(CORE, "uv_loop_init: %s", uv_strerror(rc));
        return 1;
    }
    rc = loyd_daemon_start(&loop, path, &d);
    if (d == NULL) {
        /* A config that is wrong, missing or unreadable is the operator's to fix: exit 2. */
        uv_loop_close(&loop);
        return rc == LOYD_ECONFIG || rc == -ENOENT || rc == -EACCES ? 2 : 1;
    }
    uv_run(&loop, UV_RUN_DEFAULT);
    bool clean = d->stopped;
    code = loyd_daemon_destroy(d);
    if ((rc = uv_loop_close(&loop)) != 0) {
        uv_walk(&loop, walk_print, NULL);
        loyd_log_err(CORE, "event loop did not close: %s", uv_strerror(rc));
        return 1;
    }
    if (code == 0 && clean)
        loyd_log_notice(CORE, "stopped cleanly");
    return code != 0 ? code : (clean ? 0 : 1);
}
