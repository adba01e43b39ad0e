/* SPDX-License-Identifier: MIT */
/* Plugin discovery, verification and initialisation (see plugin_loader.h). */
#include "plugin_loader.h"

#include <dlfcn.h>
#include <errno.h>
#include <stdlib.h>
#include <string.h>

#include "config.h"
#include "log.h"

/* A descriptor shorter than this predates members we require: it cannot be used. */
#define MIN_PLUGIN_SIZE (offsetof(struct loyd_plugin, destroy) + sizeof(void (*)(void *)))

static bool valid_name(const char *name)
{
    if (name == NULL || *name == '\0' || strlen(name) > 64)
        return false;
    for (const char *p = name; *p; p++)
        if (!((*p >= 'a' && *p <= 'z') || (*p >= '0' && *p <= '9') || *p == '_'))
            return false;
    return true;
}

/* True when the descriptor is long enough to hold the member ending at @p end. */
static bool has_member(const struct loyd_plugin *p, size_t end)
{
    return p->size >= end;
}

int loyd_plugin_verify(const struct loyd_plugin *p, const char *origin, struct loyd_buf *err)
{
    if (p->abi != LOYD_PLUGIN_ABI) {
        loyd_buf_printf(err, "%s: plugin ABI %u, this loyd speaks ABI %u; rebuild the plugin",
                        origin, p->abi, LOYD_PLUGIN_ABI);
        return LOYD_EABI;
    }
    if (p->size < MIN_PLUGIN_SIZE) {
        loyd_buf_printf(err, "%s: plugin descriptor is %u bytes, at least %zu are required",
                        origin, p->size, (size_t)MIN_PLUGIN_SIZE);
        return LOYD_EABI;
    }
    if (!valid_name(p->name)) {
        loyd_buf_printf(err, "%s: plugin name must match [a-z0-9_]+", origin);
        return LOYD_EPLUGIN;
    }
    if (p->init == NULL || p->destroy == NULL) {
        loyd_buf_printf(err, "%s: plugin '%s' lacks init or destroy", origin, p->name);
        return LOYD_EPLUGIN;
    }
    if (p->kind != LOYD_PLUGIN_GENERIC && p->kind != LOYD_PLUGIN_CONNECTOR) {
        loyd_buf_printf(err, "%s: plugin '%s' has unknown kind %d", origin, p->name, (int)p->kind);
        return LOYD_EPLUGIN;
    }
    if (p->kind == LOYD_PLUGIN_CONNECTOR && loyd_plugin_connector(p) == NULL) {
        loyd_buf_printf(err, "%s: connector '%s' has no connector ops", origin, p->name);
        return LOYD_EPLUGIN;
    }
    return 0;
}

const struct loyd_connector_ops *loyd_plugin_connector(const struct loyd_plugin *p)
{
    size_t end = offsetof(struct loyd_plugin, connector) + sizeof(p->connector);
    if (p->kind != LOYD_PLUGIN_CONNECTOR || !has_member(p, end))
        return NULL;
    return p->connector;
}

static int find_shared(const char *name, const char *path, const struct loyd_plugin **out,
                       void **dl_out, struct loyd_buf *err)
{
    char sym[96];
    void *dl = dlopen(path, RTLD_NOW | RTLD_LOCAL);

    if (dl == NULL) {
        const char *why = dlerror();
        loyd_buf_printf(err, "plugin '%s': cannot load %s: %s", name, path, why ? why : "?");
        return -ENOENT;
    }
    snprintf(sym, sizeof(sym), "loyd_plugin_%s", name);
    const struct loyd_plugin *p = dlsym(dl, sym);
    if (p == NULL) {
        loyd_buf_printf(err, "plugin '%s': %s does not export %s", name, path, sym);
        dlclose(dl);
        return LOYD_EPLUGIN;
    }
    *out = p;
    *dl_out = dl;
    return 0;
}

int loyd_plugin_find(const char *name, const char *path, const struct loyd_plugin **out,
                     void **dl_out, struct loyd_buf *err)
{
    const struct loyd_plugin *p = NULL;
    void *dl = NULL;
    int rc;

    if (!valid_name(name)) {
        loyd_buf_printf(err, "plugin name '%s' must match [a-z0-9_]+", name ? name : "");
        return LOYD_EPLUGIN;
    }
    if (path != NULL) {
        if ((rc = find_shared(name, path, &p, &dl, err)) != 0)
            return rc;
    } else {
        for (size_t i = 0; loyd_builtin_plugins[i] != NULL; i++)
            if (strcmp(loyd_builtin_plugins[i]->name, name) == 0)
                p = loyd_builtin_plugins[i];
        if (p == NULL) {
            loyd_buf_printf(err, "no built-in plugin named '%s' (built in:", name);
            for (size_t i = 0; loyd_builtin_plugins[i] != NULL; i++)
                loyd_buf_printf(err, " %s", loyd_builtin_plugins[i]->name);
            loyd_buf_puts(err, "); give its shared object with path = \"...\"");
            return -ENOENT;
        }
    }
    /* Verify before reading anything else: a mismatched descriptor may have any layout. */
    if ((rc = loyd_plugin_verify(p, path ? path : "built-in", err)) != 0)
        goto fail;
    if (strcmp(p->name, name) != 0) {
        loyd_buf_printf(err, "plugin '%s': descriptor calls itself '%s'", name, p->name);
        rc = LOYD_EPLUGIN;
        goto fail;
    }
    *out = p;
    *dl_out = dl;
    return 0;
fail:
    if (dl != NULL)
        dlclose(dl);
    return rc;
}

int loyd_plugin_load(const char *name, const char *path, const json_t *config,
                     const struct loyd_host_api *host, void *hctx,
                     struct loyd_plugin_handle **out, struct loyd_buf *err)
{
    const struct loyd_plugin *p;
    void *dl;
    int rc = loyd_plugin_find(name, path, &p, &dl, err);

    if (rc != 0)
        return rc;
    struct loyd_plugin_handle *h = loyd_xcalloc(1, sizeof(*h));
    h->plugin = p;
    h->dl = dl;
    h->config = config != NULL ? json_deep_copy(config) : json_object();
    if (h->config == NULL || !json_is_object(h->config)) {
        loyd_buf_printf(err, "plugin '%s': config must be a table", name);
        rc = LOYD_ECONFIG;
        goto fail;
    }
    if (p->config != NULL) {
        char prefix[96];
        snprintf(prefix, sizeof(prefix), "plugins.%s.config", name);
        if ((rc = loyd_config_validate_fields(path ? path : "built-in", prefix, p->config,
                                              h->config, err)) != 0)
            goto fail;
    } else if (json_object_size(h->config) > 0) {
        loyd_buf_printf(err, "plugin '%s' takes no config", name);
        rc = LOYD_ECONFIG;
        goto fail;
    }
    if ((rc = p->init(host, hctx, h->config, &h->state)) != 0) {
        loyd_buf_printf(err, "plugin '%s': init failed: %s", name, loyd_strerror(rc));
        goto fail; /* init failed: destroy must never be called */
    }
    h->live = true;
    *out = h;
    return 0;
fail:
    loyd_plugin_unload(h);
    return rc < 0 ? rc : LOYD_EPLUGIN;
}

void loyd_plugin_unload(struct loyd_plugin_handle *h)
{
    if (h == NULL)
        return;
    if (h->live)
        h->plugin->destroy(h->state);
    json_decref(h->config);
    if (h->dl != NULL)
        dlclose(h->dl);
    free(h);
}
