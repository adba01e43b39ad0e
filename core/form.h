/* SPDX-License-Identifier: MIT */
/*
 * application/x-www-form-urlencoded bodies with PHP-style bracket keys, both ways.
 *
 * Bitrix24 and amoCRM post their webhooks as form bodies whose keys are percent-encoded PHP
 * paths (`data%5BFIELDS%5D%5BID%5D=759`); Bitrix24 REST calls and `batch` commands use the same
 * encoding.  loyd_form_parse() turns such a body into a JSON object the way PHP's parse_str()
 * builds $_POST, within fixed bounds; loyd_form_encode() does the reverse (http_build_query).
 *
 * The shape of the parsed tree, chosen to match PHP and documented once here:
 *   - Every value is a JSON string, whatever it looks like ("759", "1250.50", "").
 *   - Every level is a JSON object with string keys, also for numeric subscripts:
 *     `leads[status][0][id]=1` gives {"leads":{"status":{"0":{"id":"1"}}}}.  PHP arrays are
 *     ordered maps, and amoCRM sends sparse indices (custom_fields[0], custom_fields[2]), so a
 *     JSON array would lose information.  Keys keep their first-insertion order.
 *   - `a[]=x&a[]=y` appends: the new key is one more than the largest non-negative integer key
 *     already present ("0", "1", ...), as in PHP.
 *   - A key that is both a scalar and a subtree (amoCRM: `x[type]=3&x[type][uuid]=u`): the
 *     last pair wins, replacing the string by an object or the object by a string.  PHP does
 *     the same.  A repeated key (`a=1&a=2`) also keeps the last value.
 *   - Unknown keys are kept.  Names are not mangled (PHP turns '.' and ' ' in the top-level
 *     name into '_'; no CRM payload depends on that).
 *   - Pairs are split on '&'; empty pairs (`a=1&&b=2`) are skipped, a pair without '=' has the
 *     value "".  '+' decodes to a space in keys and values.
 *
 * Rejected with LOYD_EPARSE (message names the byte offset or pair): invalid %XX escapes,
 * bytes that are not UTF-8 after decoding, NUL in a key, an empty key or empty base name
 * (`=1`, `[a]=1`), an unclosed '[' (`a[b=1`), text after a ']' that does not open another
 * subscript (`a[b]c=1`).  Rejected with LOYD_ELIMIT (message names the limit): the body size,
 * the pair count, a decoded key or value length, the subscript depth.
 */
#ifndef LOYD_FORM_H
#define LOYD_FORM_H

#include <stddef.h>

#include <jansson.h>

#include "loyd/error.h"
#include "util.h"

/* Bounds of one parse.  A member left 0 takes its default. */
struct loyd_form_limits {
    size_t max_body;  /* bytes of the raw body; default 1 MiB */
    size_t max_pairs; /* key=value pairs; default 1000 */
    size_t max_key;   /* bytes of a decoded key, subscripts included; default 256 */
    size_t max_depth; /* bracket subscripts in one key (a[b][c] has 2); default 8 */
    size_t max_value; /* bytes of a decoded value; default 64 KiB */
};

#define LOYD_FORM_MAX_BODY (1024u * 1024u)
#define LOYD_FORM_MAX_PAIRS 1000u
#define LOYD_FORM_MAX_KEY 256u
#define LOYD_FORM_MAX_DEPTH 8u
#define LOYD_FORM_MAX_VALUE (64u * 1024u)

/**
 * Parses a form body.
 * @param body  borrowed, need not be NUL-terminated; may be NULL when len is 0
 * @param lim   borrowed, or NULL for the defaults
 * @param out   on success a new JSON object (an empty body gives {})
 * @param err   may be NULL; on failure reset and filled with one line naming what was wrong
 *              (never the body itself)
 * @return 0, LOYD_EPARSE, LOYD_ELIMIT or -ENOMEM (jansson allocation failed).
 */
LOYD_MUST_CHECK int loyd_form_parse(const char *body, size_t len,
                                    const struct loyd_form_limits *lim, json_t **out,
                                    struct loyd_buf *err);

/**
 * Appends `obj` to `out` as form pairs the way PHP's http_build_query() does:
 * {"a":{"b":"x"},"n":5,"l":["p","q"]} gives `a%5Bb%5D=x&n=5&l%5B0%5D=p&l%5B1%5D=q`.
 * Strings go verbatim, integers in decimal, reals in the shortest form that reads back equal,
 * true as "1", false as "0"; null and empty objects or arrays produce no pair.  A '&' is put
 * in front when `out` is not empty.
 * @return 0, or -EINVAL when obj is not an object, nests deeper than 32 levels, or has a key
 *         that cannot be written as a bracket path (empty, or containing '[' / ']').
 *         On failure `out` may hold some of the pairs.
 */
LOYD_MUST_CHECK int loyd_form_encode(const json_t *obj, struct loyd_buf *out);

/** Appends one pair `key=value`, both escaped, with '&' in front when `out` is not empty. */
void loyd_form_add(struct loyd_buf *out, const char *key, const char *value);

/** Appends s percent-escaped: everything but A-Z a-z 0-9 - _ . ~ becomes %XX. */
void loyd_form_escape(struct loyd_buf *out, const char *s, size_t n);

#endif
