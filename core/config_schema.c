/* SPDX-License-Identifier: MIT */
/*
 * The schemas of loyd's configuration files, as data: every key of the daemon file
 * (loyd.conf) and of a tenant file (tenants.d/<name>.conf) with its type, default, bounds and
 * one line of help.  config.c validates against them, and the reference in docs/CONFIG.md is
 * generated from them (loyd_config_reference_markdown; the config test keeps the two equal).
 */
#include <stdlib.h>
#include <string.h>

#include "config.h"

/* Where `make install` puts the stock packs: the build should pass
 * -DLOYD_PACKS_DIR='"$(PREFIX)/share/loyd/rules"'; this fallback matches the default PREFIX. */
#ifndef LOYD_PACKS_DIR
#define LOYD_PACKS_DIR "/usr/local/share/loyd/rules"
#endif

/* ---- string checks ----------------------------------------------------------------------- */

static bool all_in(const char *s, const char *extra)
{
    for (; *s != '\0'; s++) {
        if (!((*s >= 'a' && *s <= 'z') || (*s >= '0' && *s <= '9') || strchr(extra, *s) != NULL))
            return false;
    }
    return true;
}

static const char *check_nonempty(const char *s)
{
    return s[0] == '\0' ? "must not be empty" : NULL;
}

/* "HOST:PORT" with an IPv4 address or host name, or "[IPv6]:PORT"; the port is 0..65535. */
static const char *check_listen(const char *s)
{
    const char *colon;
    size_t hostlen;

    if (s[0] == '[') {
        const char *close = strchr(s, ']');
        if (close == NULL || close[1] != ':' || close == s + 1)
            return "expected HOST:PORT or [IPV6]:PORT";
        colon = close + 1;
    } else {
        colon = strrchr(s, ':');
        if (colon == NULL || colon == s || memchr(s, ':', (size_t)(colon - s)) != NULL)
            return "expected HOST:PORT or [IPV6]:PORT";
    }
    hostlen = (size_t)(colon - s);
    if (hostlen > 255)
        return "host is too long";
    const char *p = colon + 1;
    long port = 0;
    if (*p == '\0')
        return "missing port after ':'";
    for (; *p != '\0'; p++) {
        if (*p < '0' || *p > '9')
            return "port must be a number 0..65535";
        port = port * 10 + (*p - '0');
        if (port > 65535)
            return "port must be a number 0..65535";
    }
    return NULL;
}

static const char *check_plugin_name(const char *s)
{
    if (s[0] == '\0' || strlen(s) > 64 || !all_in(s, "_"))
        return "must be 1-64 characters of a-z, 0-9 and _";
    return NULL;
}

/* An IANA zone name such as "Europe/Moscow" or "UTC"; the scheduler resolves it. */
static const char *check_timezone(const char *s)
{
    size_t n = strlen(s);
    if (n == 0 || n > 64 || s[0] == '/' || strstr(s, "..") != NULL || s[n - 1] == '/')
        return "expected a time zone name such as \"Europe/Moscow\" or \"UTC\"";
    for (; *s != '\0'; s++) {
        if (!((*s >= 'a' && *s <= 'z') || (*s >= 'A' && *s <= 'Z') || (*s >= '0' && *s <= '9') ||
              strchr("/_+-", *s) != NULL))
            return "expected a time zone name such as \"Europe/Moscow\" or \"UTC\"";
    }
    return NULL;
}

/* The secret in /hooks/<tenant>/<secret>: URL-safe and long enough not to be guessed. */
static const char *check_path_secret(const char *s)
{
    size_t n = strlen(s);
    if (n < 16 || n > 128)
        return "must be 16-128 characters long";
    for (; *s != '\0'; s++) {
        if (!((*s >= 'a' && *s <= 'z') || (*s >= 'A' && *s <= 'Z') || (*s >= '0' && *s <= '9') ||
              *s == '_' || *s == '-'))
            return "may only hold A-Z, a-z, 0-9, _ and -";
    }
    return NULL;
}

static const char *check_pack(const char *s)
{
    if (s[0] == '\0')
        return "must not be empty";
    if (strchr(s, '/') != NULL)
        return NULL; /* a path */
    if (strlen(s) > 64 || !all_in(s, "_-"))
        return "a pack name is 1-64 characters of a-z, 0-9, _ and - (or write a path with '/')";
    return NULL;
}

/* ---- the daemon file --------------------------------------------------------------------- */

static const char *const log_levels[] = {"err", "warn", "notice", "info", "debug", NULL};

#define KIB(n) ((int64_t)(n) << 10)
#define MIB(n) ((int64_t)(n) << 20)
#define GIB(n) ((int64_t)(n) << 30)

static const struct loyd_cfg_field limits_fields[] = {
    {"max_header_bytes", LOYD_CFG_BYTES, "16384", LOYD_CFG_RANGE(KIB(1), MIB(1)),
     .help = "largest request head (request line and headers) the HTTP server accepts"},
    {"max_body_bytes", LOYD_CFG_BYTES, "1048576", LOYD_CFG_RANGE(KIB(1), MIB(64)),
     .help = "largest webhook body accepted; bigger requests get 413"},
    {"max_connections", LOYD_CFG_INT, "10000", LOYD_CFG_RANGE(1, 1000000),
     .help = "open client connections at most; further ones are closed at once"},
    {"idle_timeout_ms", LOYD_CFG_MS, "30000", LOYD_CFG_RANGE(1, 86400000),
     .help = "a keep-alive connection idle this long is closed"},
    {"read_timeout_ms", LOYD_CFG_MS, "10000", LOYD_CFG_RANGE(1, 3600000),
     .help = "a request must arrive completely within this time"},
    {0},
};

static const struct loyd_cfg_field client_fields[] = {
    {"timeout_ms", LOYD_CFG_MS, "30000", LOYD_CFG_RANGE(1, 600000),
     .help = "whole-transfer timeout of a CRM API call"},
    {"connect_timeout_ms", LOYD_CFG_MS, "10000", LOYD_CFG_RANGE(1, 600000),
     .help = "connection (DNS, TCP, TLS) timeout of a CRM API call"},
    {"max_response_bytes", LOYD_CFG_BYTES, "8388608", LOYD_CFG_RANGE(KIB(1), MIB(256)),
     .help = "largest CRM response body read; bigger ones fail the call"},
    {0},
};

static const struct loyd_cfg_field rules_fields[] = {
    {"memory_bytes", LOYD_CFG_BYTES, "16777216", LOYD_CFG_RANGE(MIB(1), GIB(1)),
     .help = "memory cap of one tenant's Lua rule state"},
    {"instructions", LOYD_CFG_INT, "10000000", LOYD_CFG_RANGE(1000, 10000000000LL),
     .help = "Lua instructions one rule evaluation may run"},
    {"wall_ms", LOYD_CFG_MS, "100", LOYD_CFG_RANGE(1, 60000),
     .help = "wall-clock budget of one rule evaluation"},
    {0},
};

static const struct loyd_cfg_field worker_fields[] = {
    {"batch", LOYD_CFG_INT, "64", LOYD_CFG_RANGE(1, 1000),
     .help = "stored webhooks one tenant reads and enriches together (their CRM reads share "
             "batch calls)"},
    {"max_attempts", LOYD_CFG_INT, "50", LOYD_CFG_RANGE(1, 10000),
     .help = "tries of a webhook's CRM read or of a write-back before it becomes a dead letter"},
    {"retry_max_ms", LOYD_CFG_MS, "60000", LOYD_CFG_RANGE(10, 3600000),
     .help = "longest wait between two tries after a CRM error (the wait doubles from 250 ms)"},
    {"poll_ms", LOYD_CFG_MS, "1000", LOYD_CFG_RANGE(10, 600000),
     .help = "how often an idle tenant looks for due retries and daily jobs"},
    {"sweep_interval_ms", LOYD_CFG_MS, "600000", LOYD_CFG_RANGE(0, 86400000),
     .help = "how often the CRM is read for changes whose webhooks never came (0: never)"},
    {"sync_on_start", LOYD_CFG_BOOL, "true",
     .help = "read every contact once when a tenant is first seen (birthdays, balances "
             "already on the cards)"},
    {0},
};

static const struct loyd_cfg_field plugin_fields[] = {
    {"name", LOYD_CFG_STRING, NULL, .required = true, .check = check_plugin_name,
     .help = "plugin name: the built-in plugin, or the shared object's `loyd_plugin_<name>`"},
    {"path", LOYD_CFG_STRING, NULL, .check = check_nonempty,
     .help = "shared object to dlopen, relative to the config file; absent: a built-in plugin"},
    {"config", LOYD_CFG_ANY, "{}",
     .help = "the plugin's own settings, validated against the plugin's schema"},
    {0},
};

static const struct loyd_cfg_field plugin_item = {"plugin", LOYD_CFG_TABLE, NULL,
                                                  .fields = plugin_fields, .help = "one plugin"};

const struct loyd_cfg_field loyd_config_daemon_schema[] = {
    {"listen", LOYD_CFG_STRING, "127.0.0.1:8080", .check = check_listen,
     .help = "address of the webhook HTTP server: `\"HOST:PORT\"` or `\"[IPV6]:PORT\"` "
             "(port 0: the OS chooses)"},
    {"store", LOYD_CFG_STRING, "loyd.db", .check = check_nonempty,
     .help = "SQLite database file, relative to the config file's directory"},
    {"tenants", LOYD_CFG_STRING, "tenants.d", .check = check_nonempty,
     .help = "directory of tenant files (each `*.conf` is one tenant named after the file), "
             "relative to the config file's directory"},
    {"packs", LOYD_CFG_STRING, LOYD_PACKS_DIR, .check = check_nonempty,
     .help = "directory where rule packs named by tenants are found, relative to the config "
             "file's directory",
     .doc_def = "the installed stock packs, `PREFIX/share/loyd/rules`"},
    {"log_level", LOYD_CFG_ENUM, "info", .choices = log_levels,
     .help = "least important messages logged"},
    {"limits", LOYD_CFG_TABLE, NULL, .fields = limits_fields,
     .help = "bounds of the webhook HTTP server"},
    {"client", LOYD_CFG_TABLE, NULL, .fields = client_fields,
     .help = "bounds of outgoing CRM API calls"},
    {"rules", LOYD_CFG_TABLE, NULL, .fields = rules_fields,
     .help = "budgets of the Lua rule sandbox"},
    {"worker", LOYD_CFG_TABLE, NULL, .fields = worker_fields,
     .help = "processing of stored webhooks, write-backs and daily jobs"},
    {"plugins", LOYD_CFG_ARRAY, "{}", .elem = &plugin_item,
     .help = "extra plugins to load, in order"},
    {"shutdown_timeout_ms", LOYD_CFG_MS, "10000", LOYD_CFG_RANGE(0, 600000),
     .help = "on SIGTERM, how long in-flight work may finish before loyd exits anyway"},
    {0},
};

/* ---- a tenant file ----------------------------------------------------------------------- */

static const char *const connectors[] = {"bitrix24", "amocrm", "zoho", NULL};

const struct loyd_cfg_field loyd_config_tenant_schema[] = {
    {"connector", LOYD_CFG_ENUM, NULL, .required = true, .choices = connectors,
     .help = "the tenant's CRM"},
    {"crm", LOYD_CFG_ANY, "{}",
     .help = "the connector's settings (base URL, tokens...); see the connector's README"},
    {"pack", LOYD_CFG_STRING, NULL, .required = true, .check = check_pack,
     .help = "rule pack: a name looked up in the daemon's `packs` directory, or a path "
             "(containing '/') relative to this file"},
    {"settings", LOYD_CFG_ANY, "{}",
     .help = "overrides of the pack's settings, validated against the pack's schema"},
    {"timezone", LOYD_CFG_STRING, "UTC", .check = check_timezone,
     .help = "IANA time zone of the tenant's daily jobs (birthdays, expiry)"},
    {"path_secret", LOYD_CFG_STRING, NULL, .secret = true, .check = check_path_secret,
     .help = "secret webhook path segment: hooks go to `/hooks/<tenant>/<path_secret>` "
             "(amoCRM needs it); 16-128 of `A-Z a-z 0-9 _ -`"},
    {"enabled", LOYD_CFG_BOOL, "true",
     .help = "false keeps the tenant configured but answers its webhooks with 404"},
    {0},
};

/* ---- the generated reference ------------------------------------------------------------- */

static void md_type(struct loyd_buf *out, const struct loyd_cfg_field *f)
{
    switch (f->type) {
    case LOYD_CFG_STRING:
        loyd_buf_puts(out, f->secret ? "string (secret)" : "string");
        break;
    case LOYD_CFG_INT:
        loyd_buf_puts(out, "integer");
        break;
    case LOYD_CFG_BOOL:
        loyd_buf_puts(out, "boolean");
        break;
    case LOYD_CFG_ENUM:
        loyd_buf_puts(out, "one of");
        for (const char *const *c = f->choices; *c != NULL; c++)
            loyd_buf_printf(out, "%s `\"%s\"`", c == f->choices ? "" : ",", *c);
        break;
    case LOYD_CFG_MS:
        loyd_buf_puts(out, "milliseconds (integer)");
        break;
    case LOYD_CFG_BYTES:
        loyd_buf_puts(out, "bytes (integer)");
        break;
    case LOYD_CFG_TABLE:
        loyd_buf_puts(out, "table");
        break;
    case LOYD_CFG_ANY:
        loyd_buf_puts(out, "table (free-form)");
        break;
    case LOYD_CFG_ARRAY:
        if (f->elem->type == LOYD_CFG_TABLE) {
            loyd_buf_puts(out, "list of tables");
        } else {
            loyd_buf_puts(out, "list of ");
            md_type(out, f->elem);
        }
        break;
    case LOYD_CFG_MAP:
        loyd_buf_puts(out, "table of name = ");
        md_type(out, f->elem);
        break;
    case LOYD_CFG_END:
        break;
    }
    if (f->ranged)
        loyd_buf_printf(out, ", %lld..%lld", (long long)f->min, (long long)f->max);
}

static void md_rows(struct loyd_buf *out, const char *prefix, const struct loyd_cfg_field *fields)
{
    for (const struct loyd_cfg_field *f = fields; f->name != NULL; f++) {
        loyd_buf_printf(out, "| `%s%s` | ", prefix, f->name);
        md_type(out, f);
        loyd_buf_puts(out, " | ");
        if (f->required)
            loyd_buf_puts(out, "required");
        else if (f->doc_def != NULL)
            loyd_buf_puts(out, f->doc_def);
        else if (f->def == NULL && f->type == LOYD_CFG_TABLE)
            loyd_buf_puts(out, "see below");
        else if (f->def == NULL)
            loyd_buf_puts(out, "none");
        else if (f->type == LOYD_CFG_STRING || f->type == LOYD_CFG_ENUM)
            loyd_buf_printf(out, "`\"%s\"`", f->def);
        else
            loyd_buf_printf(out, "`%s`", f->def);
        loyd_buf_printf(out, " | %s |\n", f->help);

        char *sub = NULL;
        if (f->type == LOYD_CFG_TABLE) {
            sub = loyd_xasprintf("%s%s.", prefix, f->name);
            md_rows(out, sub, f->fields);
        } else if ((f->type == LOYD_CFG_ARRAY || f->type == LOYD_CFG_MAP) &&
                   f->elem->type == LOYD_CFG_TABLE) {
            sub = loyd_xasprintf("%s%s%s.", prefix, f->name,
                                 f->type == LOYD_CFG_ARRAY ? "[]" : ".NAME");
            md_rows(out, sub, f->elem->fields);
        }
        free(sub);
    }
}

void loyd_config_reference_markdown(struct loyd_buf *out)
{
    static const char head[] = "| Key | Type | Default | Meaning |\n|---|---|---|---|\n";

    loyd_buf_puts(out, "### Daemon file (`loyd.conf`)\n\n");
    loyd_buf_puts(out, head);
    md_rows(out, "", loyd_config_daemon_schema);
    loyd_buf_puts(out, "\n### Tenant file (`tenants.d/<name>.conf`)\n\n");
    loyd_buf_puts(out, head);
    md_rows(out, "", loyd_config_tenant_schema);
}
