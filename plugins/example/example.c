/* SPDX-License-Identifier: MIT */
/*
 * The example plugin: the smallest complete plugin, kept as living documentation of the ABI.
 *
 * It is a generic plugin (not a connector).  It reads one setting, `label`, and counts the
 * events the host tells it about, logging each through the host (plugins never write to stderr
 * themselves).  It builds into the daemon and also as a shared object loaded with dlopen:
 *
 *   cc -fPIC -shared -fvisibility=hidden -Icore/include -o example.so plugins/example/example.c
 *
 * With -fvisibility=hidden the exported `loyd_plugin_example` is the only visible symbol.
 */
#include <stdlib.h>
#include <string.h>

#include "loyd/plugin.h"

/* The build makes a second copy with a wrong number to prove the loader refuses it. */
#ifndef LOYD_EXAMPLE_ABI
#define LOYD_EXAMPLE_ABI LOYD_PLUGIN_ABI
#endif
/* The shared-object build is named example_so: one process never holds two plugins of one
 * name (the built-in copy is linked into the daemon and the tests). */
#ifndef LOYD_EXAMPLE_NAME
#define LOYD_EXAMPLE_NAME example
#endif
#define EXAMPLE_STR_(x) #x
#define EXAMPLE_STR(x) EXAMPLE_STR_(x)
#define EXAMPLE_CAT_(a, b) a##b
#define EXAMPLE_CAT(a, b) EXAMPLE_CAT_(a, b)

struct example {
    const struct loyd_host_api *host;
    void *hctx;
    char *label;
    long events;
};

static const struct loyd_config_field example_config[] = {
    {LOYD_FIELD_STRING, "label", "example", false, "a word put in front of each log line"},
    {0},
};

static int example_init(const struct loyd_host_api *host, void *hctx, const json_t *config,
                        void **state)
{
    /* The host has validated config against example_config and filled in defaults. */
    const char *label = json_string_value(json_object_get(config, "label"));
    struct example *ex = calloc(1, sizeof(*ex));

    if (ex == NULL)
        return LOYD_EPLUGIN;
    ex->host = host;
    ex->hctx = hctx;
    ex->label = strdup(label != NULL ? label : "example");
    if (ex->label == NULL) {
        free(ex);
        return LOYD_EPLUGIN;
    }
    host->log(hctx, LOYD_LOG_INFO, "%s: ready", ex->label);
    *state = ex;
    return 0;
}

static void example_destroy(void *state)
{
    struct example *ex = state;

    ex->host->log(ex->hctx, LOYD_LOG_INFO, "%s: saw %ld events", ex->label, ex->events);
    free(ex->label);
    free(ex);
}

static void example_on_event(void *state, const json_t *event, const json_t *effects)
{
    struct example *ex = state;
    const char *type = json_string_value(json_object_get(event, "type"));

    ex->events++;
    ex->host->log(ex->hctx, LOYD_LOG_DEBUG, "%s: event %s with %zu effects", ex->label,
                  type != NULL ? type : "?", json_array_size(effects));
}

LOYD_EXPORT const struct loyd_plugin EXAMPLE_CAT(loyd_plugin_, LOYD_EXAMPLE_NAME) = {
    .abi = LOYD_EXAMPLE_ABI,
    .size = sizeof(struct loyd_plugin),
    .name = EXAMPLE_STR(LOYD_EXAMPLE_NAME),
    .version = "1.0.0",
    .kind = LOYD_PLUGIN_GENERIC,
    .config = example_config,
    .init = example_init,
    .destroy = example_destroy,
    .on_event = example_on_event,
};
