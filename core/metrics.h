/* SPDX-License-Identifier: MIT */
/*
 * Daemon metrics in Prometheus text format: requests by route and status, queue depths, rule
 * errors, CRM calls by outcome.  Counters live here; gauges are read at render time.
 */
#ifndef LOYD_METRICS_H
#define LOYD_METRICS_H

#include <stdint.h>

#include "util.h"

enum loyd_route { LOYD_ROUTE_HEALTHZ, LOYD_ROUTE_METRICS, LOYD_ROUTE_HOOKS, LOYD_ROUTE_OTHER,
                  LOYD_ROUTE_COUNT };

#define LOYD_METRICS_STATUSES 24

struct loyd_metrics {
    struct {
        int status;
        uint64_t count;
    } requests[LOYD_ROUTE_COUNT][LOYD_METRICS_STATUSES];
    uint64_t webhooks_stored, webhooks_duplicate, webhooks_rejected;
};

/* Gauges and foreign counters sampled when /metrics is asked for. */
struct loyd_metrics_sample {
    int64_t inbox_pending, outbox_pending, dead_letters;
    uint64_t crm_ok, crm_4xx, crm_5xx, crm_timeout, crm_too_big, crm_transport, crm_cancelled;
    uint64_t http_open_connections, http_rejected_busy, http_timeouts;
    uint64_t tenants;
    /* The workers' counters (worker.h), summed over tenants. */
    uint64_t events_applied, events_duplicate, rule_errors, rows_dead;
    uint64_t events_refused, events_skipped;
    uint64_t writebacks_done, writebacks_retried, writebacks_dead, writebacks_skipped;
    uint64_t write_calls;
    uint64_t fields_repaired, catchups;
};

void loyd_metrics_request(struct loyd_metrics *m, enum loyd_route route, int status);
uint64_t loyd_metrics_requests(const struct loyd_metrics *m, enum loyd_route route, int status);
void loyd_metrics_render(const struct loyd_metrics *m, const struct loyd_metrics_sample *s,
                         struct loyd_buf *out);

#endif
