/* SPDX-License-Identifier: MIT */
/*
 * The daemon: one libuv loop that owns the HTTP server, the HTTP client, the store, the loaded
 * plugins and the tenants.  `loyd serve` is loyd_daemon_run; tests and `loyd demo` can create
 * a daemon on their own loop and drive it.
 */
#ifndef LOYD_DAEMON_H
#define LOYD_DAEMON_H

#include <stdbool.h>
#include <uv.h>

#include "config.h"
#include "engine.h"
#include "host.h"
#include "metrics.h"
#include "plugin_loader.h"
#include "worker.h"

struct loyd_tenant {
    struct loyd_tenant_config *cfg;           /* owned */
    const struct loyd_plugin_handle *plugin;  /* borrowed from the daemon's connectors */
    const struct loyd_connector_ops *ops;     /* borrowed, never NULL */
    void *state;                              /* from tenant_open, or NULL */
    struct loyd_host_ctx *hctx;               /* owned */
    struct loyd_engine *engine;               /* owned: the tenant's rule pack, loaded */
    struct loyd_worker *worker;               /* owned; NULL until the tenant goes live */
    struct loyd_daemon *daemon;               /* while retiring */
};

struct loyd_daemon {
    uv_loop_t *loop;                   /* borrowed */
    char *config_path;                 /* owned */
    struct loyd_config *cfg;           /* owned */
    struct loyd_host host;
    struct loyd_httpd *httpd;
    struct loyd_http_client *client;
    struct loyd_store *store;
    struct loyd_host_ctx *plugin_hctx; /* shared by plugin-level (not tenant) calls */
    struct loyd_plugin_handle **plugins; /* generic plugins and connectors */
    size_t n_plugins;
    struct loyd_tenant **tenants;
    size_t n_tenants;
    /* Tenants replaced by a reload, freed once their work in flight has ended. */
    struct loyd_tenant **retiring;
    size_t n_retiring;
    struct loyd_tenant **reaped; /* retired, to free on the next loop turn */
    size_t n_reaped;
    struct loyd_worker_stats retired_stats; /* counters of tenants already freed */
    struct loyd_worker_observer observer;   /* given to every worker (demo, tests) */
    uv_signal_t sigterm, sigint, sighup;
    uv_timer_t drain_timer, deadline_timer;
    uv_timer_t reap_timer;             /* frees retired tenants outside their callbacks */
    struct loyd_metrics metrics;
    int port;                          /* bound HTTP port */
    bool draining, stopped;
    bool workers_closed;               /* drain: workers start nothing new */
    uint64_t writes_drain_until;       /* drain: in-flight write-backs may finish until then */
    int exit_code;
    unsigned closing;                  /* handles still closing at shutdown */
};

/**
 * Loads the config at @p path (all problems go to stderr, naming file and key), opens the
 * store, loads plugins and tenants and starts listening, on @p loop.
 * @return 0, LOYD_ECONFIG for a bad config, or another negative code.
 */
int loyd_daemon_start(uv_loop_t *loop, const char *path, struct loyd_daemon **out) LOYD_MUST_CHECK;
/** Re-reads config and tenants; a bad new config keeps the old one running and says why. */
int loyd_daemon_reload(struct loyd_daemon *d);
/** Starts the graceful drain (what SIGTERM does); the loop ends when everything is closed. */
void loyd_daemon_stop(struct loyd_daemon *d);
/** After the loop has ended: frees @p d.  @return the exit code. */
int loyd_daemon_destroy(struct loyd_daemon *d);
/** Sets the observer of every tenant's worker (now and after reloads). */
void loyd_daemon_set_observer(struct loyd_daemon *d, const struct loyd_worker_observer *o);
/** The tenant called @p name, or NULL. */
struct loyd_tenant *loyd_daemon_tenant(struct loyd_daemon *d, const char *name);
/** Wakes every worker (e.g. after the demo moved the clock). */
void loyd_daemon_kick(struct loyd_daemon *d);
/** True when no worker has work in flight and the inbox and outbox are empty. */
bool loyd_daemon_quiet(struct loyd_daemon *d);
/** The workers' counters summed over tenants (retired ones included). */
void loyd_daemon_worker_stats(struct loyd_daemon *d, struct loyd_worker_stats *out);
/** `loyd serve -c FILE`: runs until SIGTERM/SIGINT.  @return the process exit code. */
int loyd_daemon_run(const char *path);

#endif
