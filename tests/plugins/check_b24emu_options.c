/* SPDX-License-Identifier: MIT */
/*
 * The Bitrix24 emulator's options are documented in one place, connectors/bitrix24/README.md
 * ("The emulator"), and that table and the keys b24emu_create takes are the same list; a key
 * outside it is refused with the nearest one, in the object and in its nested tables.
 */
#include <check.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include <jansson.h>

#include "../../connectors/bitrix24/emu.h"
#include "util.h"

static char *slurp(const char *rel)
{
    char path[1024];
    const char *src = getenv("LOYD_SRC");
    snprintf(path, sizeof(path), "%s/%s", src != NULL ? src : ".", rel);
    FILE *f = fopen(path, "r");
    ck_assert_msg(f != NULL, "cannot read %s", path);
    struct loyd_buf b = {0};
    char chunk[4096];
    size_t n;
    while ((n = fread(chunk, 1, sizeof(chunk), f)) > 0)
        loyd_buf_append(&b, chunk, n);
    fclose(f);
    return b.data;
}

/* The keys in the first column of the README's emulator table: "| `a`, `b` | ...". */
static json_t *documented(void)
{
    char *doc = slurp("connectors/bitrix24/README.md");
    const char *sec = strstr(doc, "\n## The emulator\n");
    ck_assert_msg(sec != NULL, "connectors/bitrix24/README.md has no \"## The emulator\"");
    const char *table = strstr(sec, "\n| option |");
    ck_assert_ptr_nonnull(table);
    json_t *keys = json_object();
    for (const char *p = strchr(table + 1, '\n'); p != NULL && p[1] == '|';
         p = strchr(p + 1, '\n')) {
        const char *end = strchr(p + 2, '|');
        for (const char *k = strchr(p + 2, '`'); k != NULL && k < end; k = strchr(k + 1, '`')) {
            const char *close = strchr(k + 1, '`');
            char *key = loyd_xstrndup(k + 1, (size_t)(close - k - 1));
            json_object_set_new(keys, key, json_true());
            free(key);
            k = close;
        }
    }
    free(doc);
    return keys;
}

static int form_parse(void *ctx, const char *body, size_t len, json_t **out,
                      struct loyd_errbuf *err)
{
    (void)ctx;
    (void)body;
    (void)len;
    (void)err;
    *out = json_object();
    return 0;
}

START_TEST(test_readme_lists_every_option)
{
    json_t *doc = documented();
    size_t n = 0;
    for (const char *const *k = b24emu_option_keys; *k != NULL; k++, n++)
        ck_assert_msg(json_object_get(doc, *k) != NULL,
                      "option '%s' is not in connectors/bitrix24/README.md \"The emulator\"", *k);
    const char *k;
    json_t *v;
    json_object_foreach(doc, k, v)
    {
        bool known = false;
        for (const char *const *o = b24emu_option_keys; *o != NULL; o++)
            known = known || strcmp(*o, k) == 0;
        ck_assert_msg(known, "the README documents '%s', which the emulator does not take", k);
    }
    ck_assert_uint_eq(json_object_size(doc), n);
    json_decref(doc);
}
END_TEST

static int create(const char *options, char *msg, size_t size)
{
    json_t *o = json_loads(options, 0, NULL);
    struct loyd_errbuf eb = {msg, size};
    struct b24emu *e = NULL;
    msg[0] = '\0';
    ck_assert_ptr_nonnull(o);
    int rc = b24emu_create(o, form_parse, NULL, 1760000000000ULL, &e, &eb);
    b24emu_destroy(e);
    json_decref(o);
    return rc;
}

START_TEST(test_unknown_options_refused)
{
    char msg[256];
    ck_assert_int_eq(create("{\"webhook_code\":\"c\",\"webhook_user\":\"3\",\"rate\":{\"drain\":"
                            "4,\"burst\":9},\"handlers\":[{\"url\":\"http://127.0.0.1:1/h\","
                            "\"id\":\"9\",\"events\":[\"ONCRMDEALADD\"]}]}",
                            msg, sizeof(msg)),
                     0);
    ck_assert_int_eq(create("{\"aplication_token\":\"t\"}", msg, sizeof(msg)), LOYD_ECONFIG);
    ck_assert_str_eq(msg, "bitrix24 emulator: unknown option 'aplication_token'; did you mean "
                          "'application_token'? (every option: connectors/bitrix24/README.md, "
                          "\"The emulator\")");
    ck_assert_int_eq(create("{\"rate\":{\"burts\":3}}", msg, sizeof(msg)), LOYD_ECONFIG);
    ck_assert_ptr_nonnull(strstr(msg, "'rate.burts'; did you mean 'rate.burst'?"));
    ck_assert_int_eq(create("{\"handlers\":[{\"uri\":\"http://x/\"}]}", msg, sizeof(msg)),
                     LOYD_ECONFIG);
    ck_assert_ptr_nonnull(strstr(msg, "'handlers[0].uri'; did you mean 'handlers[0].url'?"));
    /* Nothing near: no guess. */
    ck_assert_int_eq(create("{\"zzzzzzzzzzzz\":1}", msg, sizeof(msg)), LOYD_ECONFIG);
    ck_assert_ptr_nonnull(strstr(msg, "unknown option 'zzzzzzzzzzzz' (every option"));
}
END_TEST

Suite *b24emu_options_suite(void)
{
    Suite *s = suite_create("b24emu_options");
    TCase *tc = tcase_create("options");
    tcase_add_test(tc, test_readme_lists_every_option);
    tcase_add_test(tc, test_unknown_options_refused);
    suite_add_tcase(s, tc);
    return s;
}
