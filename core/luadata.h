/* SPDX-License-Identifier: MIT */
/*
 * The data-only Lua file loader: config files (loyd.conf, tenant files) and rule-pack manifests
 * (pack.conf) are Lua tables of data.  A file runs in an empty sandbox (text chunks only, no
 * libraries, an instruction budget, a memory cap, a size cap) where only two helpers exist:
 *
 *   env "NAME"   the value of an environment variable (an error names NAME if it is unset)
 *   file "PATH"  the contents of a file relative to the loaded file's directory, one trailing
 *                newline stripped (an error names PATH if it cannot be read)
 *
 * The file either returns a table or assigns top-level keys.  The result is converted to
 * jansson: strings, integers, finite numbers, booleans, arrays (tables with keys 1..n) and
 * objects (tables with string keys), nested at most LOYD_LUADATA_MAX_DEPTH levels.
 *
 * Values that come from env/file are secrets: their paths are reported in `secrets` so the
 * schema layer never prints them, and every error message this loader produces is scrubbed of
 * their text.  `lines` maps paths to the source line where the key was written (best effort,
 * from a small scan of the source), so errors can say FILE:LINE.
 *
 * Paths name a value inside the file: `limits.max_body_bytes`, `plugins[1].config.label`,
 * `crm["odd key"]` (array indexes are 1-based, as the file writes them).
 *
 * This module owns nothing after a call returns except what it hands out.  Any thread, no
 * shared state.
 */
#ifndef LOYD_LUADATA_H
#define LOYD_LUADATA_H

#include <stddef.h>

#include <jansson.h>

#include "util.h"

#define LOYD_LUADATA_MAX_BYTES ((size_t)1 << 20)  /* default source size cap */
#define LOYD_LUADATA_MAX_DEPTH 16                 /* table nesting, the root counts */
#define LOYD_LUADATA_MEMORY ((size_t)8 << 20)     /* Lua allocator cap */
#define LOYD_LUADATA_INSTRUCTIONS 10000000u       /* instruction budget per file */
#define LOYD_LUADATA_FILE_MAX ((size_t)256 << 10) /* cap for what file "PATH" reads */
#define LOYD_LUADATA_MAX_ERRORS 50                /* conversion errors before giving up */

struct loyd_luadata {
    json_t *value;   /* the file's table: an object (or an array if the file returns one) */
    json_t *secrets; /* object: path -> true, for every string that came from env/file */
    json_t *lines;   /* object: path -> line number where the key or table was written */
};

/**
 * Loads and converts one data file.  Every problem found is appended to @err as one line
 * `FILE[:LINE]: message\n`; secrets never appear in it.
 * @param max_bytes  source size cap; 0 means LOYD_LUADATA_MAX_BYTES.
 * @param out        filled with new references on success; zeroed on failure.
 * @return 0, LOYD_ECONFIG (syntax error, runtime error, budget, bad value), or a negated errno
 *         when the file itself cannot be read (the message is in @err either way).
 */
LOYD_MUST_CHECK int loyd_luadata_load_ex(const char *path, size_t max_bytes,
                                         struct loyd_luadata *out, struct loyd_buf *err);

/**
 * Same as loyd_luadata_load_ex() for source already in memory.  @name is used in messages,
 * @dir is where file "PATH" resolves relative paths.
 */
LOYD_MUST_CHECK int loyd_luadata_load_buffer(const char *name, const char *dir, const char *src,
                                             size_t len, struct loyd_luadata *out,
                                             struct loyd_buf *err);

/** Drops the references in @d and zeroes it; accepts a zeroed struct. */
void loyd_luadata_clear(struct loyd_luadata *d);

/**
 * The short form: @out gets a new reference to the value; @secret_paths (may be NULL) a new
 * object of secret paths.  Same errors as loyd_luadata_load_ex().
 */
LOYD_MUST_CHECK int loyd_luadata_load(const char *path, size_t max_bytes, json_t **out,
                                      json_t **secret_paths, struct loyd_buf *err);

/** Appends to @b the path of key @key (length @klen) inside @parent ("" for the root). */
void loyd_luadata_path_key(struct loyd_buf *b, const char *parent, const char *key, size_t klen);
/** Appends to @b the path of 1-based array item @index inside @parent. */
void loyd_luadata_path_index(struct loyd_buf *b, const char *parent, size_t index);

/**
 * Replaces, in @b from offset @from on, every occurrence of a secret string of @value (the
 * strings at the paths listed in @secrets) with "<secret>".  Secrets shorter than
 * LOYD_LUADATA_SCRUB_MIN are left alone: hiding them would mangle ordinary words, and no
 * message prints a secret value in the first place; this is the second line of defence.
 */
#define LOYD_LUADATA_SCRUB_MIN 4
void loyd_luadata_scrub(struct loyd_buf *b, size_t from, const json_t *value,
                        const json_t *secrets);
/** Scrubs one known secret string from @b (from offset @from on). */
void loyd_luadata_scrub_string(struct loyd_buf *b, size_t from, const char *secret, size_t len);

#endif
