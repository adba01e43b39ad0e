/* SPDX-License-Identifier: MIT */
/*
 * `loyd emulate CRM --listen HOST:PORT`: runs a connector's offline CRM emulator on its own loop
 * until SIGINT or SIGTERM.  Core knows no CRM: it finds the emulator through the connector's
 * entry in the plugin registry.
 */
#include "emulate.h"

#include <errno.h>
#include <signal.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include "host.h"
#include "http_client.h"
#include "log.h"
#include "plugin_loader.h"

struct emulate {
    uv_loop_t loop;
    uv_signal_t sigint, sigterm;
    struct loyd_host host;
    struct loyd_http_client *client;
    struct loyd_host_ctx *hctx;
    struct loyd_plugin_handle *plugin;
    const struct loyd_emulator *emu;
    void *state;
};

static void closed_noop(uv_handle_t *h)
{
    (void)h;
}

static void host_closed(void *arg)
{
    struct emulate *e = arg;
    uv_close((uv_handle_t *)&e->sigint, closed_noop);
    uv_close((uv_handle_t *)&e->sigterm, closed_noop);
}

static void client_closed(void *arg)
{
    struct emulate *e = arg;
    loyd_host_close(&e->host, host_closed, e);
}

static void on_signal(uv_signal_t *sig, int signum)
{
    struct emulate *e = sig->data;
    (void)signum;
    uv_signal_stop(&e->sigint);
    uv_signal_stop(&e->sigterm);
    if (e->state != NULL)
        e->emu->stop(e->state);
    e->state = NULL;
    loyd_http_client_close(e->client, client_closed, e);
}

static int usage(FILE *f)
{
    fprintf(f, "usage: loyd emulate CRM [--listen HOST:PORT] [--options FILE.json] "
               "[--handler URL]...\n\n"
               "Runs an offline stand-in for a CRM's REST API and webhooks.  CRM is a built-in\n"
               "connector with an emulator (bitrix24).  PORT 0 lets the system choose.  At the\n"
               "start it logs (stderr) the address it listens on and what a tenant file needs to\n"
               "reach it: the inbound-webhook URL with its user and code, the member_id and the\n"
               "application token its events carry, the OAuth endpoints.\n"
               "\n"
               "  --listen HOST:PORT    where to listen (default 127.0.0.1:0)\n"
               "  --options FILE.json   a JSON object of the emulator's options; an unknown key\n"
               "                        is refused.  bitrix24: webhook_code, webhook_user,\n"
               "                        member_id, application_token, client_id, client_secret,\n"
               "                        access_token, refresh_token, handlers, rate, clock_ms,\n"
               "                        ...: every key, its default and meaning is in\n"
               "                        connectors/bitrix24/README.md, \"The emulator\"\n"
               "  --handler URL         a URL that receives the CRM's events (repeatable)\n");
    return f == stdout ? 0 : 2;
}

int loyd_cmd_emulate(int argc, char **argv)
{
    const char *crm = NULL, *listen = "127.0.0.1:0", *options_path = NULL;
    json_t *options = NULL, *handlers = json_array();
    struct loyd_buf err = {0};
    struct emulate e = {0};
    int port = 0, rc, code = 1;

    for (int i = 1; i < argc; i++) {
        if (strcmp(argv[i], "--help") == 0 || strcmp(argv[i], "-h") == 0) {
            json_decref(handlers);
            return usage(stdout);
        } else if (strcmp(argv[i], "--listen") == 0 && i + 1 < argc) {
            listen = argv[++i];
        } else if (strcmp(argv[i], "--options") == 0 && i + 1 < argc) {
            options_path = argv[++i];
        } else if (strcmp(argv[i], "--handler") == 0 && i + 1 < argc) {
            json_array_append_new(handlers, json_string(argv[++i]));
        } else if (argv[i][0] != '-' && crm == NULL) {
            crm = argv[i];
        } else {
            fprintf(stderr, "loyd emulate: unexpected argument '%s'\n", argv[i]);
            json_decref(handlers);
            return usage(stderr);
        }
    }
    if (crm == NULL) {
        json_decref(handlers);
        return usage(stderr);
    }
    if (options_path != NULL) {
        json_error_t jerr;
        FILE *of = fopen(options_path, "r");
        if (of == NULL) {
            /* jansson would say "-1:-1: unable to open": name the file and the reason. */
            fprintf(stderr, "loyd emulate: %s: cannot read: %s\n", options_path, strerror(errno));
            json_decref(handlers);
            return 2;
        }
        options = json_loadf(of, JSON_REJECT_DUPLICATES, &jerr);
        fclose(of);
        if (options == NULL || !json_is_object(options)) {
            fprintf(stderr, "loyd emulate: %s:%d:%d: %s\n", options_path, jerr.line, jerr.column,
                    options ? "options must be a JSON object" : jerr.text);
            json_decref(options);
            json_decref(handlers);
            return 2;
        }
    } else {
        options = json_object();
    }
    if (json_array_size(handlers) > 0)
        json_object_set(options, "handlers", handlers);
    json_decref(handlers);

    signal(SIGPIPE, SIG_IGN);
    if (uv_loop_init(&e.loop) != 0 || loyd_http_client_create(&e.loop, NULL, &e.client) != 0) {
        fprintf(stderr, "loyd emulate: cannot set up the event loop\n");
        json_decref(options);
        return 1;
    }
    loyd_host_init(&e.host, &e.loop, e.client, NULL);
    e.hctx = loyd_host_ctx_create(&e.host, crm, NULL);
    rc = loyd_plugin_load(crm, NULL, NULL, &loyd_host_api, e.hctx, &e.plugin, &err);
    if (rc == 0) {
        const struct loyd_connector_ops *ops = loyd_plugin_connector(e.plugin->plugin);
        e.emu = ops != NULL ? ops->emulator : NULL;
        if (e.emu == NULL) {
            loyd_buf_printf(&err, "'%s' has no emulator", crm);
            rc = -ENOTSUP;
        }
    }
    if (rc == 0)
        rc = e.emu->start(&loyd_host_api, e.hctx, listen, options, &e.state, &port);
    json_decref(options);
    uv_signal_init(&e.loop, &e.sigint);
    uv_signal_init(&e.loop, &e.sigterm);
    e.sigint.data = e.sigterm.data = &e;
    if (rc != 0) {
        /* The emulator logged the option it refused (LOYD_ECONFIG) on the line above. */
        fprintf(stderr, "loyd emulate: %s%s%s\n", err.data ? err.data : loyd_strerror(rc),
                err.data == NULL && rc == LOYD_ECONFIG && options_path != NULL ? " in " : "",
                err.data == NULL && rc == LOYD_ECONFIG && options_path != NULL ? options_path
                                                                               : "");
        e.state = NULL;
        on_signal(&e.sigint, SIGTERM); /* the same orderly close as a signal */
        code = 2;
    } else {
        const char *colon = strrchr(listen, ':');
        loyd_log_notice(CORE, "emulator %s listening on %.*s:%d", crm,
                        (int)(colon ? colon - listen : 0), listen, port);
        uv_signal_start(&e.sigint, on_signal, SIGINT);
        uv_signal_start(&e.sigterm, on_signal, SIGTERM);
        code = 0;
    }
    uv_run(&e.loop, UV_RUN_DEFAULT);
    loyd_plugin_unload(e.plugin);
    loyd_host_ctx_destroy(e.hctx);
    loyd_http_client_destroy(e.client);
    loyd_buf_free(&err);
    if (uv_loop_close(&e.loop) != 0) {
        loyd_log_err(CORE, "event loop did not close");
        return 1;
    }
    return code;
}
