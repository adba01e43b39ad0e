/* SPDX-License-Identifier: MIT */
/* Prometheus text rendering of the daemon's counters (see metrics.h). */
#include "metrics.h"

#include <inttypes.h>

static const char *const route_names[LOYD_ROUTE_COUNT] = {"healthz", "metrics", "hooks", "other"};

void loyd_metrics_request(struct loyd_metrics *m, enum loyd_route route, int status)
{
    for (int i = 0; i < LOYD_METRICS_STATUSES; i++) {
        if (m->requests[route][i].status == status || m->requests[route][i].status == 0) {
            m->requests[route][i].status = status;
            m->requests[route][i].count++;
            return;
        }
    }
    /* More distinct statuses than slots cannot happen with the statuses loyd sends; fold any
     * surplus into the last slot rather than lose the count. */
    m->requests[route][LOYD_METRICS_STATUSES - 1].count++;
}

uint64_t loyd_metrics_requests(const struct loyd_metrics *m, enum loyd_route route, int status)
{
    for (int i = 0; i < LOYD_METRICS_STATUSES; i++)
        if (m->requests[route][i].status == status)
            return m->requests[route][i].count;
    return 0;
}

static void counter(struct loyd_buf *out, const char *name, const char *help, uint64_t v)
{
    loyd_buf_printf(out, "# HELP %s %s\n# TYPE %s counter\n%s %" PRIu64 "\n", name, help, name,
                    name, v);
}

static void gauge(struct loyd_buf *out, const char *name, const char *help, int64_t v)
{
    loyd_buf_printf(out, "# HELP %s %s\n# TYPE %s gauge\n%s %" PRId64 "\n", name, help, name, name,
                    v);
}

void loyd_metrics_render(const struct loyd_metrics *m, const struct loyd_metrics_sample *s,
                         struct loyd_buf *out)
{
    loyd_buf_puts(out, "# HELP loyd_http_requests_total HTTP requests answered, by route and "
                       "status.\n# TYPE loyd_http_requests_total counter\n");
    for (int r = 0; r < LOYD_ROUTE_COUNT; r++)
        for (int i = 0; i < LOYD_METRICS_STATUSES && m->requests[r][i].status != 0; i++)
            loyd_buf_printf(out, "loyd_http_requests_total{route=\"%s\",status=\"%d\"} %" PRIu64 "\n",
                            route_names[r], m->requests[r][i].status, m->requests[r][i].count);
    gauge(out, "loyd_http_open_connections", "Open inbound connections.",
          (int64_t)s->http_open_connections);
    counter(out, "loyd_http_rejected_busy_total", "Connections refused over max_connections.",
            s->http_rejected_busy);
    counter(out, "loyd_http_timeouts_total", "Connections cut for slowness or idleness.",
            s->http_timeouts);
    counter(out, "loyd_webhooks_stored_total", "Webhooks durably stored in the inbox.",
            m->webhooks_stored);
    counter(out, "loyd_webhooks_duplicate_total", "Webhooks already stored (same body).",
            m->webhooks_duplicate);
    counter(out, "loyd_webhooks_rejected_total", "Webhooks refused (auth or malformed).",
            m->webhooks_rejected);
    gauge(out, "loyd_inbox_depth", "Stored webhooks not yet processed.", s->inbox_pending);
    gauge(out, "loyd_outbox_depth", "CRM write-backs not yet delivered.", s->outbox_pending);
    gauge(out, "loyd_dead_letters", "Events and write-backs that failed for good.",
          s->dead_letters);
    counter(out, "loyd_events_applied_total", "Events applied (rules, ledger, write-backs).",
            s->events_applied);
    counter(out, "loyd_events_duplicate_total", "Events found applied before (no effect).",
            s->events_duplicate);
    counter(out, "loyd_rule_errors_total", "Events whose rules failed (dead letters).",
            s->rule_errors);
    counter(out, "loyd_events_refused_total",
            "Events that could not be applied as they are: bad stored data, a ledger row the "
            "store refuses (dead letters, the reason logged as an error).",
            s->events_refused);
    counter(out, "loyd_events_skipped_total", "Events that name no member (nothing to apply).",
            s->events_skipped);
    counter(out, "loyd_inbox_dead_total", "Stored webhooks given up on (CRM reads failed).",
            s->rows_dead);
    loyd_buf_puts(out, "# HELP loyd_writebacks_total CRM write-back items by outcome.\n"
                       "# TYPE loyd_writebacks_total counter\n");
    const struct {
        const char *name;
        uint64_t v;
    } wb[] = {{"done", s->writebacks_done},
              {"retried", s->writebacks_retried},
              {"dead", s->writebacks_dead},
              {"unchanged", s->writebacks_skipped}};
    for (size_t i = 0; i < LOYD_ARRAY_SIZE(wb); i++)
        loyd_buf_printf(out, "loyd_writebacks_total{outcome=\"%s\"} %" PRIu64 "\n", wb[i].name,
                        wb[i].v);
    counter(out, "loyd_write_calls_total", "Connector write calls (each one CRM batch).",
            s->write_calls);
    counter(out, "loyd_fields_repaired_total",
            "loyd's CRM fields found changed outside loyd and put back from the ledger.",
            s->fields_repaired);
    counter(out, "loyd_catchups_total", "Reads of CRM changes at once after a start.",
            s->catchups);
    loyd_buf_puts(out, "# HELP loyd_crm_calls_total CRM API calls by outcome.\n"
                       "# TYPE loyd_crm_calls_total counter\n");
    const struct {
        const char *name;
        uint64_t v;
    } calls[] = {{"ok", s->crm_ok},           {"http_4xx", s->crm_4xx},
                 {"http_5xx", s->crm_5xx},    {"timeout", s->crm_timeout},
                 {"too_big", s->crm_too_big}, {"transport_error", s->crm_transport},
                 {"cancelled", s->crm_cancelled}};
    for (size_t i = 0; i < LOYD_ARRAY_SIZE(calls); i++)
        loyd_buf_printf(out, "loyd_crm_calls_total{outcome=\"%s\"} %" PRIu64 "\n", calls[i].name,
                        calls[i].v);
    gauge(out, "loyd_tenants", "Tenants configured.", (int64_t)s->tenants);
}
