/* SPDX-License-Identifier: MIT */
/*
 * Rule packs on disk.  A struct loyd_pack owns what a pack directory holds once `extends` is
 * resolved: its name and version, the merged settings schema and defaults, the rule files in
 * run order (base pack's first; a child file with the same name replaces the base's in place)
 * and the pack's own test files.  It does not run rules: rules.c does, in a sandbox.
 *
 *   PACK_DIR/pack.conf     Lua data: name, version, extends, description, points, settings,
 *                          windows, counters
 *                          (points = { unit = "points", minor = 100 }: see points.h;
 *                           windows = { "d90", "since:2026-01-01" }: see ledger.h;
 *                           counters = { stamps = { crm = true } }: names the count effect may
 *                           use, and which of them are written to the CRM card)
 *   PACK_DIR/rules/NAME.lua  rule files (run in file-name order)
 *   PACK_DIR/tests/NAME.lua  offline tests (see pack_test.c)
 *
 * pack.conf is read by a small data-only loader: an empty environment (no functions at all),
 * text chunks only, an instruction and a memory cap.  Settings schema entries:
 *   key = { type = "int|string|bool|percent_bp|days|date|list|map|table", default = ...,
 *           help = "...", of = "<type of list items / map values>", min = n, max = n }
 * A child pack may restate only `default` (and `help`) of an inherited setting.
 *
 * Errors name the file, a line when one can be found, the setting and the nearest valid name:
 *   rules/retail/pack.conf:14: setting 'cashback_bp': unknown type 'percnt_bp' (did you mean
 *   'percent_bp'?)
 * Loop thread or any thread: no shared state.
 */
#ifndef LOYD_PACK_H
#define LOYD_PACK_H

#include <jansson.h>
#include <stddef.h>

#include "loyd/error.h"
#include "points.h"
#include "util.h"

#define LOYD_PACK_MAX_FILE (1024u * 1024) /* bytes per pack.conf / rule / test file */
#define LOYD_PACK_MAX_FILES 256u          /* rule or test files per pack */
#define LOYD_PACK_MAX_DEPTH 8             /* extends chain length */

struct loyd_pack_file {
    char *path;   /* as on disk, e.g. "rules/retail/rules/20_purchase.lua" (owned) */
    char *name;   /* "20_purchase.lua" (owned) */
    char *module; /* sandbox module / chunk name: the path when short enough (owned) */
    char *pack;   /* name of the pack that contributed the file (owned) */
    char *src;    /* owned, NUL-terminated */
    size_t len;
};

struct loyd_pack {
    char *dir;                          /* as given (owned) */
    char *conf_path;                    /* dir + "/pack.conf" (owned) */
    char *name, *version, *description; /* owned; description may be NULL */
    char *extends;                      /* as written in pack.conf, or NULL (owned) */
    struct loyd_points_unit points;     /* how people count the ledger's units (base's if unset) */
    json_t *windows;  /* ["d90", "since:2026-01-01", ...]: purchase windows beyond d30/d365/total
                         (ledger.h), the base's first; never NULL (owned) */
    json_t *counters; /* {name: {crm: bool}}: the counters pack.conf declares (a child's merged
                         over its base's), or NULL when no pack in the chain declares any (owned) */
    json_t *schema;   /* {key: {type, default, help, of, min, max}} merged (owned) */
    json_t *defaults; /* {key: default} (owned) */
    struct loyd_pack_file *rules;
    size_t nrules;
    struct loyd_pack_file *tests; /* this pack's own tests only */
    size_t ntests;
};

/**
 * Loads @p dir and, recursively, the pack it extends.  A bare `extends = "name"` is looked up
 * in each directory of @p search_path (colon-separated, may be NULL), then next to @p dir; a
 * value containing '/' is a path relative to @p dir.
 * @p err gets one "file[:line]: message" line per problem found.
 * @return 0; LOYD_ECONFIG (invalid pack); -ENOENT (no such directory / pack.conf); -ENOMEM.
 */
LOYD_MUST_CHECK int loyd_pack_load(const char *dir, const char *search_path, struct loyd_pack **out,
                                   struct loyd_buf *err);
/** Accepts NULL. */
void loyd_pack_destroy(struct loyd_pack *p);

/**
 * Effective settings for a tenant: the defaults with @p overrides (borrowed JSON object, may be
 * NULL) applied.  Maps merge key by key over the default; every other type replaces.  Every
 * problem is reported: unknown setting (with the nearest valid name), wrong type, out of range.
 * @p origin labels the messages (e.g. the tenant file name), NULL = "settings".
 * @return 0 and a new object in @p out; LOYD_ECONFIG.
 */
LOYD_MUST_CHECK int loyd_pack_settings(const struct loyd_pack *p, const json_t *overrides,
                                       const char *origin, json_t **out, struct loyd_buf *err);

/**
 * Checks @p value against a schema entry (type/of/min/max).  @p path labels the message
 * ("setting 'caps.award_per_day'").  @return 0; -EINVAL with one line in @p err.
 */
LOYD_MUST_CHECK int loyd_pack_check_value(const json_t *spec, const json_t *value, const char *path,
                                          struct loyd_buf *err);

/**
 * The candidate closest to @p word by edit distance, if it is close enough to be a plausible
 * typo (at most max(1, strlen(word) / 3) edits, and never more than 3), else NULL.
 * @return borrowed from @p cands.
 */
const char *loyd_suggest(const char *word, const char *const *cands, size_t n);

/**
 * The data-only Lua loader used for pack.conf (and usable for any Lua data file): evaluates
 * @p src in an empty environment under caps and converts the returned value to JSON
 * (tables with keys 1..n become arrays, an empty table an empty object, floats must be
 * integral).  @p chunkname labels messages ("file:line: ...").
 * @return 0 and a new value; LOYD_ECONFIG with the message.
 */
LOYD_MUST_CHECK int loyd_pack_load_data(const char *chunkname, const char *src, size_t len,
                                        json_t **out, struct loyd_buf *err);

/** Finds the first line of @p src that assigns @p key ("key =" or ["key"]); 1 if none. */
int loyd_pack_line_of(const char *src, const char *key);

#endif
