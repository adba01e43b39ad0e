/* SPDX-License-Identifier: MIT */
/*
 * Configuration: the daemon file (loyd.conf) and one file per tenant (tenants.d/<name>.conf),
 * each a Lua table of data loaded by luadata.c, then validated against a static schema
 * (config_schema.c).  The same schema engine validates plugin and connector settings
 * (struct loyd_config_field from the plugin ABI) and, later, rule-pack manifests.
 *
 * Every problem is reported, not just the first, one per line:
 *   loyd.conf:7: key 'limits.max_bdy': unknown key; did you mean 'max_body_bytes'?
 *   loyd.conf:3: key 'listen': expected string, got integer
 *   tenants.d/shop.conf: key 'connector': required key is missing
 * Secret values (from env "NAME" / file "PATH", or keys the schema marks secret) never appear
 * in a message.
 *
 * Loading is synchronous file I/O: call it before the loop starts or from a work thread.  The
 * structs are plain data owned by whoever loaded them.
 */
#ifndef LOYD_CONFIG_H
#define LOYD_CONFIG_H

#include <stdbool.h>
#include <stddef.h>
#include <stdint.h>

#include <jansson.h>

#include "loyd/plugin.h"
#include "util.h"

/* ---- the schema engine -------------------------------------------------------------------- */

enum loyd_cfg_type {
    LOYD_CFG_END = 0,
    LOYD_CFG_STRING, /* text; .check may restrict it further */
    LOYD_CFG_INT,    /* integer (Lua integer; a float is an error) */
    LOYD_CFG_BOOL,
    LOYD_CFG_ENUM,  /* one of .choices */
    LOYD_CFG_MS,    /* integer milliseconds */
    LOYD_CFG_BYTES, /* integer bytes */
    LOYD_CFG_TABLE, /* a table of named keys described by .fields */
    LOYD_CFG_ANY,   /* any table of named keys, validated later by its consumer */
    LOYD_CFG_ARRAY, /* a list whose items .elem describes */
    LOYD_CFG_MAP,   /* named keys of free choice whose values .elem describes */
};

struct loyd_cfg_field {
    const char *name;
    enum loyd_cfg_type type;
    const char *def; /* default written as Lua would: "30000", "true", "info", "{}"; or NULL */
    bool required;
    bool secret; /* never printed (tokens, passwords) */
    bool ranged; /* min/max apply (integers) */
    int64_t min, max;
    const char *const *choices;          /* ENUM: NULL-terminated */
    const struct loyd_cfg_field *fields; /* TABLE: nested fields, ended by {0} */
    const struct loyd_cfg_field *elem;   /* ARRAY, MAP: what one item is (name unused) */
    /* STRING: extra check; @return NULL if fine, else a static reason ("expected HOST:PORT"). */
    const char *(*check)(const char *value);
    const char *help;    /* one line for docs/CONFIG.md */
    const char *doc_def; /* the default as docs show it, when it depends on the build */
};

#define LOYD_CFG_RANGE(lo, hi) .ranged = true, .min = (lo), .max = (hi)

/* Inputs of one validation run; lines and secrets may be NULL. */
struct loyd_cfg_source {
    const char *file;      /* name used in messages */
    const json_t *lines;   /* path -> line (from luadata) */
    const json_t *secrets; /* path -> true (from luadata) */
};

/**
 * Validates @obj (the table at path @prefix, "" for the root) against @fields: unknown keys
 * (with the nearest valid key), wrong types, ranges, enum values, missing required keys.
 * Defaults are filled into @obj in place and empty tables where a list is expected become
 * arrays.  Every problem is appended to @err, one line each.
 * @return 0 or LOYD_ECONFIG.
 */
LOYD_MUST_CHECK int loyd_cfg_validate(const struct loyd_cfg_source *src, const char *prefix,
                                      const struct loyd_cfg_field *fields, json_t *obj,
                                      struct loyd_buf *err);

/**
 * Validates a plugin's settings table against its ABI schema (plugin.h): same messages as
 * loyd_cfg_validate(), defaults filled in place (INT defaults parsed as integers, BOOL as
 * true/false, TABLE as JSON text), LOYD_FIELD_SECRET values never printed.
 * @param file    the config file, for messages.
 * @param prefix  where @obj sits in that file ("crm", "plugins[2].config").
 * @return 0 or LOYD_ECONFIG.
 */
LOYD_MUST_CHECK int loyd_config_validate_fields(const char *file, const char *prefix,
                                                const struct loyd_config_field *fields, json_t *obj,
                                                struct loyd_buf *err);
/** Same, with line numbers and secret paths from the loaded file (either may be NULL). */
LOYD_MUST_CHECK int loyd_config_validate_fields_src(const struct loyd_cfg_source *src,
                                                    const char *prefix,
                                                    const struct loyd_config_field *fields,
                                                    json_t *obj, struct loyd_buf *err);

/**
 * The key of @candidates (NULL-terminated) nearest to @key by edit distance (transpositions
 * count once; a typo of a prefix, as in max_bdy for max_body_bytes, counts too), or NULL when
 * none is close enough to be a plausible typo.  @return borrowed from @candidates.
 */
const char *loyd_cfg_nearest(const char *key, const char *const *candidates);

/* ---- the daemon file ---------------------------------------------------------------------- */

struct loyd_config {
    char *path, *dir;  /* the file and its directory */
    char *listen_host; /* "127.0.0.1", "::1" (no brackets), "0.0.0.0" */
    int listen_port;   /* 0..65535; 0 lets the OS choose */
    char *store;       /* resolved against dir */
    char *tenants_dir; /* resolved against dir */
    char *packs_dir;   /* resolved against dir */
    int log_level;     /* enum loyd_log_level */
    struct {
        size_t max_header_bytes, max_body_bytes;
        unsigned max_connections;
        uint64_t idle_timeout_ms, read_timeout_ms;
    } limits;
    struct {
        uint32_t timeout_ms, connect_timeout_ms;
        size_t max_response_bytes;
    } client;
    struct {
        size_t memory_bytes;
        uint64_t instructions, wall_ms;
    } rules;
    struct {
        uint32_t batch, max_attempts;
        uint64_t retry_max_ms, poll_ms, sweep_interval_ms;
        bool sync_on_start;
    } worker;
    uint64_t shutdown_timeout_ms;
    json_t *plugins; /* array of {name, path (resolved, absent: built-in), config (object)} */
    json_t *raw;     /* the whole validated file with defaults filled in */
    json_t *secrets; /* path -> true for values that must never be printed */
    json_t *lines;   /* path -> line */
};

/**
 * Loads and validates the daemon file.  All problems go to @err, one per line.
 * @param out  new, free with loyd_config_free(); NULL on failure.
 * @return 0, LOYD_ECONFIG, or a negated errno if the file cannot be read.
 */
LOYD_MUST_CHECK int loyd_config_load(const char *path, struct loyd_config **out,
                                     struct loyd_buf *err);
void loyd_config_free(struct loyd_config *c);

/**
 * Validates plugin @index's `config` table (0-based into c->plugins) against the plugin's
 * schema, filling defaults; messages name the daemon file and `plugins[N].config.KEY`.
 */
LOYD_MUST_CHECK int loyd_config_validate_plugin(const struct loyd_config *c, size_t index,
                                                const struct loyd_config_field *fields,
                                                struct loyd_buf *err);

/* ---- tenant files ------------------------------------------------------------------------- */

struct loyd_tenant_config {
    char *name;        /* from the file name: [a-z0-9_-]{1,64} */
    char *path, *dir;  /* the file and its directory */
    char *connector;   /* "bitrix24" | "amocrm" | "zoho" */
    json_t *crm;       /* the connector's table, validated by loyd_tenant_config_validate_crm */
    char *pack;        /* as written: a pack name, or a path (contains '/') */
    json_t *settings;  /* the pack's settings overrides, validated against the pack schema */
    char *timezone;    /* IANA name, "UTC" by default */
    char *path_secret; /* may be NULL; never log it */
    bool enabled;
    json_t *raw, *secrets, *lines;
};

/** Loads one tenant file; the tenant's name is the file name without ".conf". */
LOYD_MUST_CHECK int loyd_tenant_config_load(const char *path, struct loyd_tenant_config **out,
                                            struct loyd_buf *err);
void loyd_tenant_config_free(struct loyd_tenant_config *t);

/**
 * Loads every *.conf in @dir in name order, collecting all errors.  An empty directory is
 * fine (no tenants); a missing one is an error naming it.
 * @param out  new array of @n new tenants (free with loyd_tenants_free); NULL on failure.
 * @return 0, LOYD_ECONFIG, or a negated errno when the directory cannot be read.
 */
LOYD_MUST_CHECK int loyd_tenants_load_dir(const char *dir, struct loyd_tenant_config ***out,
                                          size_t *n, struct loyd_buf *err);
void loyd_tenants_free(struct loyd_tenant_config **t, size_t n);

/** Validates t->crm against the connector's schema, filling defaults (messages say crm.KEY). */
LOYD_MUST_CHECK int loyd_tenant_config_validate_crm(struct loyd_tenant_config *t,
                                                    const struct loyd_config_field *fields,
                                                    struct loyd_buf *err);

/**
 * Where the tenant's pack lives: a path pack (contains '/') resolved against the tenant file's
 * directory, else <packs_dir>/<name>.  @return new string.
 */
char *loyd_tenant_pack_dir(const struct loyd_config *c, const struct loyd_tenant_config *t);

/** @return whether @name is a valid tenant name: [a-z0-9_-]{1,64}. */
bool loyd_tenant_name_valid(const char *name);

/* ---- schemas (config_schema.c) ------------------------------------------------------------ */

extern const struct loyd_cfg_field loyd_config_daemon_schema[];
extern const struct loyd_cfg_field loyd_config_tenant_schema[];

/**
 * Appends the generated reference (one Markdown table per file kind, every key with its type,
 * default and meaning) that docs/CONFIG.md carries between its GENERATED markers.
 */
void loyd_config_reference_markdown(struct loyd_buf *out);

#endif
