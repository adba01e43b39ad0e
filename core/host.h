/* SPDX-License-Identifier: MIT */
/*
 * The host API given to plugins (struct loyd_host_api), implemented over the daemon's loop,
 * HTTP client, HTTP server and store.  Each caller gets its own context (plugin + tenant), so
 * log lines carry [plugin:<name>:<tenant>] and kv is scoped to the tenant.
 */
#ifndef LOYD_HOST_H
#define LOYD_HOST_H

#include <uv.h>

#include "loyd/plugin.h"

struct loyd_http_client;
struct loyd_store;

struct loyd_host {
    uv_loop_t *loop;
    struct loyd_http_client *client; /* borrowed */
    struct loyd_store *store;        /* borrowed; may be NULL (emulator-only processes) */
    int64_t clock_offset_ms;         /* added to the wall clock; the demo moves time */
    struct host_timer *timers;       /* live timers, for cancellation and shutdown */
    struct host_server *servers;     /* listeners opened through http_listen */
    uint64_t next_timer_id;
    /* During loyd_host_close: handles still closing, and whom to tell when none are left. */
    unsigned closing;
    void (*closed_cb)(void *arg);
    void *closed_arg;
};

struct loyd_host_ctx {
    struct loyd_host *host;
    char *plugin; /* owned */
    char *tenant; /* owned, may be NULL */
    /* While a connector opens a tenant: the tenant file and its key -> line map (borrowed),
     * so that an error the connector logs about "crm.KEY" names the file and line. */
    const char *origin_file;
    const json_t *origin_lines;
};

extern const struct loyd_host_api loyd_host_api;

void loyd_host_init(struct loyd_host *h, uv_loop_t *loop, struct loyd_http_client *client,
                    struct loyd_store *store);
/** @return new context; free with loyd_host_ctx_destroy. */
struct loyd_host_ctx *loyd_host_ctx_create(struct loyd_host *h, const char *plugin,
                                           const char *tenant);
void loyd_host_ctx_destroy(struct loyd_host_ctx *c);
/** The daemon's wall clock in ms (real time plus the offset). */
uint64_t loyd_host_now_ms(const struct loyd_host *h);
/** Cancels every timer and closes every listener plugins opened; cb when their handles closed. */
void loyd_host_close(struct loyd_host *h, void (*cb)(void *arg), void *arg);

#endif
