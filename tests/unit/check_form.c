/* SPDX-License-Identifier: MIT */
/*
 * Tests of the form-body parser and encoder: the documented Bitrix24 payloads as they travel
 * on the wire (the .form files in tests/data/bitrix24 against their .json), the captured
 * amoCRM payload, escapes, every limit, malformed input, encode->parse round trips, random
 * garbage and injected allocation failures.
 */
#include <check.h>
#include <errno.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include "form.h"

static char *slurp(const char *rel, size_t *len)
{
    const char *src = getenv("LOYD_SRC");
    char path[1024];
    snprintf(path, sizeof(path), "%s/%s", src != NULL ? src : ".", rel);
    FILE *f = fopen(path, "rb");
    ck_assert_msg(f != NULL, "cannot open %s", path);
    fseek(f, 0, SEEK_END);
    long n = ftell(f);
    fseek(f, 0, SEEK_SET);
    char *buf = malloc((size_t)n + 1);
    ck_assert(fread(buf, 1, (size_t)n, f) == (size_t)n);
    buf[n] = '\0';
    fclose(f);
    *len = (size_t)n;
    return buf;
}

static json_t *parse_ok(const char *body)
{
    json_t *out = NULL;
    struct loyd_buf err = {0};
    int rc = loyd_form_parse(body, strlen(body), NULL, &out, &err);
    ck_assert_msg(rc == 0, "parse failed (%d): %s", rc, err.data ? err.data : "");
    loyd_buf_free(&err);
    return out;
}

/* Parses expecting failure `want`; @return the message (static copy). */
static const char *parse_fail(const char *body, size_t len, const struct loyd_form_limits *lim,
                              int want)
{
    static char msg[256];
    json_t *out = (json_t *)1;
    struct loyd_buf err = {0};
    int rc = loyd_form_parse(body, len, lim, &out, &err);
    ck_assert_int_eq(rc, want);
    ck_assert_ptr_null(out);
    ck_assert_ptr_nonnull(err.data);
    snprintf(msg, sizeof(msg), "%s", err.data);
    loyd_buf_free(&err);
    return msg;
}

static void assert_json_eq(const json_t *got, const json_t *want)
{
    if (!json_equal((json_t *)got, (json_t *)want)) {
        char *g = json_dumps(got, JSON_SORT_KEYS), *w = json_dumps(want, JSON_SORT_KEYS);
        ck_abort_msg("json differs:\n got  %s\n want %s", g, w);
    }
}

static void check_fixture(const char *name)
{
    char rel[256];
    size_t flen, jlen;
    snprintf(rel, sizeof(rel), "tests/data/bitrix24/%s.form", name);
    char *form = slurp(rel, &flen);
    snprintf(rel, sizeof(rel), "tests/data/bitrix24/%s.json", name);
    char *js = slurp(rel, &jlen);
    json_error_t jerr;
    json_t *want = json_loadb(js, jlen, 0, &jerr);
    ck_assert_ptr_nonnull(want);
    /* On the wire the keys are percent-encoded: the fixture must show that. */
    ck_assert_ptr_nonnull(strstr(form, "%5B"));
    json_t *got = NULL;
    struct loyd_buf err = {0};
    ck_assert_int_eq(loyd_form_parse(form, flen, NULL, &got, &err), 0);
    assert_json_eq(got, want);
    json_decref(got);
    json_decref(want);
    loyd_buf_free(&err);
    free(form);
    free(js);
}

START_TEST(test_bitrix_deal_update)
{
    check_fixture("oncrmdealupdate");
    /* Spot-check the fields the connector relies on, independent of the golden file. */
    size_t n;
    char *form = slurp("tests/data/bitrix24/oncrmdealupdate.form", &n);
    json_t *o = NULL;
    ck_assert_int_eq(loyd_form_parse(form, n, NULL, &o, NULL), 0);
    ck_assert_str_eq(json_string_value(json_object_get(o, "event")), "ONCRMDEALUPDATE");
    json_t *id = json_object_get(json_object_get(json_object_get(o, "data"), "FIELDS"), "ID");
    ck_assert_str_eq(json_string_value(id), "759");
    json_t *auth = json_object_get(o, "auth");
    ck_assert_str_eq(json_string_value(json_object_get(auth, "member_id")),
                     "a223c6b3710f85df22e9377d6c4f7553");
    ck_assert_str_eq(json_string_value(json_object_get(auth, "client_endpoint")),
                     "https://some-domain.bitrix24.com/rest/");
    json_decref(o);
    free(form);
}
END_TEST

START_TEST(test_bitrix_other_payloads)
{
    check_fixture("onappinstall");
    check_fixture("oncrmdealadd_webhook");
    check_fixture("onappuninstall");
}
END_TEST

/* The captured amoCRM lead-status payload (amocrm-zoho.md A1), encoded as on the wire. */
START_TEST(test_amocrm_payload)
{
    const char *decoded =
        "leads[status][0][id]=10701093&leads[status][0][name]=Семинар:+Пропитание+в+фитнесе+"
        "на+результат&leads[status][0][status_id]=142&leads[status][0][old_status_id]=20067736"
        "&leads[status][0][price]=22500&leads[status][0][responsible_user_id]=2079676"
        "&leads[status][0][last_modified]=1539782664&leads[status][0][modified_user_id]=2079718"
        "&leads[status][0][created_user_id]=2076025&leads[status][0][date_create]=1539782209"
        "&leads[status][0][pipeline_id]=9217056&leads[status][0][tags][0][id]=80147"
        "&leads[status][0][tags][0][name]=повторное+обращение&leads[status][0][account_id]="
        "17769199&leads[status][0][custom_fields][0][id]=66339&leads[status][0][custom_fields]"
        "[0][name]=Источник&leads[status][0][custom_fields][0][values][0][value]=Сайт"
        "&leads[status][0][custom_fields][0][values][0][enum]=139517&leads[status][0]"
        "[custom_fields][2][id]=72333&leads[status][0][custom_fields][2][name]=Дата+проведения"
        "&leads[status][0][custom_fields][2][values][0]=1542067200&account[subdomain]=apfitness";
    /* Percent-encode everything but '&', '=' and '+' as a real sender does. */
    struct loyd_buf wire = {0};
    for (const char *p = decoded; *p; p++) {
        if (*p == '&' || *p == '=' || *p == '+')
            loyd_buf_append(&wire, p, 1);
        else
            loyd_form_escape(&wire, p, 1);
    }
    ck_assert_ptr_nonnull(strstr(wire.data, "leads%5Bstatus%5D%5B0%5D%5Bid%5D=10701093"));
    json_t *o = parse_ok(wire.data);
    json_t *lead = json_object_get(json_object_get(json_object_get(o, "leads"), "status"), "0");
    ck_assert_str_eq(json_string_value(json_object_get(lead, "id")), "10701093");
    ck_assert_str_eq(json_string_value(json_object_get(lead, "name")),
                     "Семинар: Пропитание в фитнесе на результат");
    json_t *cf = json_object_get(lead, "custom_fields");
    ck_assert(json_is_object(cf)); /* sparse indices 0 and 2 survive as keys */
    ck_assert_int_eq(json_object_size(cf), 2);
    json_t *cf2 = json_object_get(cf, "2");
    ck_assert_str_eq(json_string_value(json_object_get(cf2, "name")), "Дата проведения");
    ck_assert_str_eq(
        json_string_value(json_object_get(json_object_get(cf2, "values"), "0")), "1542067200");
    json_t *v0 = json_object_get(json_object_get(json_object_get(cf, "0"), "values"), "0");
    ck_assert_str_eq(json_string_value(json_object_get(v0, "value")), "Сайт");
    ck_assert_str_eq(json_string_value(json_object_get(v0, "enum")), "139517");
    ck_assert_str_eq(json_string_value(json_object_get(json_object_get(o, "account"),
                                                       "subdomain")), "apfitness");
    json_decref(o);
    loyd_buf_free(&wire);
}
END_TEST

START_TEST(test_scalar_and_subtree_last_wins)
{
    json_t *o = parse_ok("x[type]=3&x[type][uuid]=u");
    ck_assert_str_eq(json_string_value(json_object_get(
                         json_object_get(json_object_get(o, "x"), "type"), "uuid")), "u");
    json_decref(o);
    o = parse_ok("x[type][uuid]=u&x[type]=3");
    ck_assert_str_eq(json_string_value(json_object_get(json_object_get(o, "x"), "type")), "3");
    json_decref(o);
    o = parse_ok("a=1&a=2");
    ck_assert_str_eq(json_string_value(json_object_get(o, "a")), "2");
    json_decref(o);
    /* The amoCRM note shape (amocrm-zoho.md A1). */
    o = parse_ok("contacts[note][0][note][type]=3&contacts[note][0][note][type][message_uuid]=m1");
    json_t *t = json_object_get(json_object_get(json_object_get(json_object_get(
                    json_object_get(o, "contacts"), "note"), "0"), "note"), "type");
    ck_assert_str_eq(json_string_value(json_object_get(t, "message_uuid")), "m1");
    json_decref(o);
}
END_TEST

START_TEST(test_append_and_numeric)
{
    json_t *o = parse_ok("a[]=x&a[]=y&b[5]=p&b[]=q&c[][k]=1&c[][k]=2&d[]=");
    json_t *want = json_pack("{s:{s:s,s:s},s:{s:s,s:s},s:{s:{s:s},s:{s:s}},s:{s:s}}", "a", "0",
                             "x", "1", "y", "b", "5", "p", "6", "q", "c", "0", "k", "1", "1",
                             "k", "2", "d", "0", "");
    assert_json_eq(o, want);
    json_decref(want);
    json_decref(o);
    /* Non-canonical numbers ("007", "-1") are plain keys and do not move the index. */
    o = parse_ok("a[007]=x&a[-1]=y&a[]=z");
    ck_assert_str_eq(json_string_value(json_object_get(json_object_get(o, "a"), "0")), "z");
    json_decref(o);
}
END_TEST

START_TEST(test_escapes)
{
    json_t *o = parse_ok("na%6De=J%C3%B6rg+M%c3%bcller&k+1=a%2Bb%26c%3Dd&e&q[a+b]=%20");
    ck_assert_str_eq(json_string_value(json_object_get(o, "name")), "Jörg Müller");
    ck_assert_str_eq(json_string_value(json_object_get(o, "k 1")), "a+b&c=d");
    ck_assert_str_eq(json_string_value(json_object_get(o, "e")), "");
    ck_assert_str_eq(json_string_value(json_object_get(json_object_get(o, "q"), "a b")), " ");
    json_decref(o);
    /* Raw UTF-8 (not escaped) is fine too, and empty pairs are skipped. */
    o = parse_ok("&&имя=Иван&&");
    ck_assert_int_eq(json_object_size(o), 1);
    ck_assert_str_eq(json_string_value(json_object_get(o, "имя")), "Иван");
    json_decref(o);
    o = parse_ok("");
    ck_assert(json_is_object(o));
    ck_assert_int_eq(json_object_size(o), 0);
    json_decref(o);
}
END_TEST

START_TEST(test_bad_escapes)
{
    const char *m = parse_fail("ab=1&cd=x%4", 11, NULL, LOYD_EPARSE);
    ck_assert_msg(strstr(m, "percent-escape at byte 9") != NULL, "%s", m);
    m = parse_fail("a%zz=1", 6, NULL, LOYD_EPARSE);
    ck_assert_msg(strstr(m, "byte 1") != NULL && strstr(m, "key") != NULL, "%s", m);
    m = parse_fail("a=%", 3, NULL, LOYD_EPARSE);
    ck_assert_msg(strstr(m, "byte 2") != NULL, "%s", m);
    m = parse_fail("a=%C3%28", 8, NULL, LOYD_EPARSE);
    ck_assert_msg(strstr(m, "not UTF-8") != NULL, "%s", m);
    m = parse_fail("a=%ED%A0%80", 11, NULL, LOYD_EPARSE); /* a UTF-16 surrogate */
    ck_assert_msg(strstr(m, "not UTF-8") != NULL, "%s", m);
    m = parse_fail("a=%C0%AF", 8, NULL, LOYD_EPARSE);     /* overlong '/' */
    ck_assert_msg(strstr(m, "not UTF-8") != NULL, "%s", m);
    m = parse_fail("a%00b=1", 7, NULL, LOYD_EPARSE);
    ck_assert_msg(strstr(m, "NUL") != NULL, "%s", m);
}
END_TEST

START_TEST(test_malformed_keys)
{
    const char *m = parse_fail("a[b=1", 5, NULL, LOYD_EPARSE);
    ck_assert_msg(strstr(m, "unbalanced '['") != NULL, "%s", m);
    m = parse_fail("ok=1&=1", 7, NULL, LOYD_EPARSE);
    ck_assert_msg(strstr(m, "empty key in pair 2") != NULL, "%s", m);
    m = parse_fail("[a]=1", 5, NULL, LOYD_EPARSE);
    ck_assert_msg(strstr(m, "empty key name") != NULL, "%s", m);
    m = parse_fail("a[b]c=1", 7, NULL, LOYD_EPARSE);
    ck_assert_msg(strstr(m, "after ']'") != NULL, "%s", m);
    m = parse_fail("a%5Bb%5D%5Bc=1", 14, NULL, LOYD_EPARSE); /* escaped brackets count too */
    ck_assert_msg(strstr(m, "unbalanced") != NULL, "%s", m);
}
END_TEST

START_TEST(test_limits)
{
    struct loyd_buf b = {0};
    const char *m;

    /* Body. */
    for (size_t i = 0; i < LOYD_FORM_MAX_BODY / 8 + 1; i++)
        loyd_buf_puts(&b, "abcdefgh");
    m = parse_fail(b.data, b.len, NULL, LOYD_ELIMIT);
    ck_assert_msg(strstr(m, "body") != NULL, "%s", m);
    loyd_buf_reset(&b);
    /* Pairs: exactly 1000 pass, 1001 fail. */
    for (int i = 0; i < 1000; i++)
        loyd_buf_printf(&b, "%sk%d=v", i ? "&" : "", i);
    json_t *o = parse_ok(b.data);
    ck_assert_int_eq(json_object_size(o), 1000);
    json_decref(o);
    loyd_buf_puts(&b, "&one=more");
    m = parse_fail(b.data, b.len, NULL, LOYD_ELIMIT);
    ck_assert_msg(strstr(m, "pairs") != NULL, "%s", m);
    loyd_buf_reset(&b);
    /* Key length: 256 decoded bytes pass (even when sent escaped), 257 fail. */
    for (int i = 0; i < 256; i++)
        loyd_buf_puts(&b, "%41");
    loyd_buf_puts(&b, "=1");
    o = parse_ok(b.data);
    json_decref(o);
    loyd_buf_reset(&b);
    for (int i = 0; i < 257; i++)
        loyd_buf_puts(&b, "k");
    loyd_buf_puts(&b, "=1");
    m = parse_fail(b.data, b.len, NULL, LOYD_ELIMIT);
    ck_assert_msg(strstr(m, "key of pair 1") != NULL && strstr(m, "256") != NULL, "%s", m);
    loyd_buf_reset(&b);
    /* Depth: 8 subscripts pass, 9 fail. */
    o = parse_ok("a[1][2][3][4][5][6][7][8]=x");
    json_decref(o);
    m = parse_fail("a[1][2][3][4][5][6][7][8][9]=x", 30, NULL, LOYD_ELIMIT);
    ck_assert_msg(strstr(m, "nests deeper") != NULL, "%s", m);
    /* Value: 64 KiB pass, one more byte fails. */
    loyd_buf_puts(&b, "v=");
    for (size_t i = 0; i < LOYD_FORM_MAX_VALUE; i++)
        loyd_buf_puts(&b, "x");
    o = parse_ok(b.data);
    json_decref(o);
    loyd_buf_puts(&b, "x");
    m = parse_fail(b.data, b.len, NULL, LOYD_ELIMIT);
    ck_assert_msg(strstr(m, "value of pair 1") != NULL, "%s", m);
    /* Caller-chosen limits apply; zero members keep the defaults. */
    struct loyd_form_limits lim = {.max_pairs = 2, .max_depth = 1};
    m = parse_fail("a=1&b=2&c=3", 11, &lim, LOYD_ELIMIT);
    ck_assert_msg(strstr(m, "limit of 2 pairs") != NULL, "%s", m);
    m = parse_fail("a[b][c]=1", 9, &lim, LOYD_ELIMIT);
    ck_assert_msg(strstr(m, "1 subscripts") != NULL, "%s", m);
    loyd_buf_free(&b);
}
END_TEST

START_TEST(test_encode)
{
    json_t *src = json_pack("{s:s,s:{s:{s:s}},s:[s,s],s:i,s:f,s:b,s:b,s:n,s:{},s:s}", "event",
                            "ONCRMDEALUPDATE", "data", "FIELDS", "ID", "759", "list", "p", "q",
                            "n", 42, "r", 1250.5, "t", 1, "f", 0, "nil", "empty", "sp",
                            "a b&c=d/é");
    struct loyd_buf b = {0};
    ck_assert_int_eq(loyd_form_encode(src, &b), 0);
    ck_assert_str_eq(b.data, "event=ONCRMDEALUPDATE&data%5BFIELDS%5D%5BID%5D=759"
                             "&list%5B0%5D=p&list%5B1%5D=q&n=42&r=1250.5&t=1&f=0"
                             "&sp=a%20b%26c%3Dd%2F%C3%A9");
    loyd_form_add(&b, "auth[member_id]", "abc");
    ck_assert_ptr_nonnull(strstr(b.data, "&auth%5Bmember_id%5D=abc"));
    json_decref(src);
    loyd_buf_free(&b);
    /* Keys that cannot be a bracket path are refused, and so is a non-object. */
    json_t *bad = json_pack("{s:{s:s}}", "a", "x]y", "1");
    ck_assert_int_eq(loyd_form_encode(bad, &b), -EINVAL);
    json_decref(bad);
    bad = json_pack("{s:s}", "", "1");
    ck_assert_int_eq(loyd_form_encode(bad, &b), -EINVAL);
    json_decref(bad);
    bad = json_array();
    ck_assert_int_eq(loyd_form_encode(bad, &b), -EINVAL);
    json_decref(bad);
    loyd_buf_free(&b);
}
END_TEST

START_TEST(test_round_trip)
{
    /* Everything a string, objects only: parse(encode(x)) == x. */
    json_t *src = json_pack(
        "{s:s,s:{s:{s:s,s:s}},s:{s:s,s:{s:s}},s:s,s:s}", "event", "ONCRMCONTACTUPDATE", "data",
        "FIELDS", "ID", "89", "NAME", "Анна-Мария & Co. 100%", "auth", "domain", "x.bitrix24.com",
        "deep", "0", "[]=+", "empty", "", "utf", "日本語 ✓");
    struct loyd_buf b = {0};
    ck_assert_int_eq(loyd_form_encode(src, &b), 0);
    json_t *back = parse_ok(b.data);
    assert_json_eq(back, src);
    json_decref(back);
    json_decref(src);
    loyd_buf_free(&b);
    /* And the fixtures: parse -> encode -> parse gives the same tree. */
    size_t n;
    char *form = slurp("tests/data/bitrix24/onappinstall.form", &n);
    json_t *o = NULL;
    ck_assert_int_eq(loyd_form_parse(form, n, NULL, &o, NULL), 0);
    struct loyd_buf b2 = {0};
    ck_assert_int_eq(loyd_form_encode(o, &b2), 0);
    back = parse_ok(b2.data);
    assert_json_eq(back, o);
    json_decref(back);
    json_decref(o);
    loyd_buf_free(&b2);
    free(form);
}
END_TEST

/* Random bytes (biased towards the characters that matter) never crash or leak. */
START_TEST(test_garbage)
{
    static const char alphabet[] = "%[]=&+aZ09\x80\xc3\xff";
    uint32_t seed = 12345;
    char buf[256];
    int ok = 0, bad = 0;

    for (int it = 0; it < 10000; it++) {
        size_t n = 0;
        seed = seed * 1103515245u + 12345u;
        size_t len = (seed >> 16) % sizeof(buf);
        for (; n < len; n++) {
            seed = seed * 1103515245u + 12345u;
            uint32_t r = seed >> 16;
            buf[n] = (r & 1) ? alphabet[(r >> 1) % (sizeof(alphabet) - 1)] : (char)(r >> 3);
        }
        json_t *o = NULL;
        struct loyd_buf err = {0};
        int rc = loyd_form_parse(buf, n, NULL, &o, &err);
        if (rc == 0) {
            ck_assert(json_is_object(o));
            char *dump = json_dumps(o, 0); /* the tree must be valid JSON (UTF-8) */
            ck_assert_ptr_nonnull(dump);
            free(dump);
            json_decref(o);
            ok++;
        } else {
            ck_assert(rc == LOYD_EPARSE || rc == LOYD_ELIMIT);
            ck_assert_ptr_null(o);
            ck_assert(err.len > 0);
            bad++;
        }
        loyd_buf_free(&err);
    }
    ck_assert_int_gt(ok, 0);
    ck_assert_int_gt(bad, 0);
}
END_TEST

/* jansson allocations fail from the n-th on: every failure is -ENOMEM, never a crash or leak. */
static long alloc_left;

static void *failing_malloc(size_t n)
{
    if (alloc_left-- <= 0)
        return NULL;
    return malloc(n);
}

START_TEST(test_oom)
{
    size_t n;
    char *form = slurp("tests/data/bitrix24/oncrmdealupdate.form", &n);
    int rc = -ENOMEM, fails = 0;

    json_set_alloc_funcs(failing_malloc, free);
    for (long k = 0; rc != 0 && k < 10000; k++) {
        json_t *o = NULL;
        struct loyd_buf err = {0};
        alloc_left = k;
        rc = loyd_form_parse(form, n, NULL, &o, &err);
        if (rc != 0) {
            ck_assert_int_eq(rc, -ENOMEM);
            ck_assert_ptr_null(o);
            fails++;
        } else {
            alloc_left = 1L << 30;
            ck_assert_str_eq(json_string_value(json_object_get(o, "event")), "ONCRMDEALUPDATE");
            json_decref(o);
        }
        loyd_buf_free(&err);
    }
    json_set_alloc_funcs(malloc, free);
    ck_assert_int_eq(rc, 0);
    ck_assert_int_gt(fails, 10);
    free(form);
}
END_TEST

Suite *form_suite(void)
{
    Suite *s = suite_create("form");
    TCase *tc = tcase_create("parse");
    tcase_set_timeout(tc, 30);
    tcase_add_test(tc, test_bitrix_deal_update);
    tcase_add_test(tc, test_bitrix_other_payloads);
    tcase_add_test(tc, test_amocrm_payload);
    tcase_add_test(tc, test_scalar_and_subtree_last_wins);
    tcase_add_test(tc, test_append_and_numeric);
    tcase_add_test(tc, test_escapes);
    tcase_add_test(tc, test_bad_escapes);
    tcase_add_test(tc, test_malformed_keys);
    tcase_add_test(tc, test_limits);
    tcase_add_test(tc, test_encode);
    tcase_add_test(tc, test_round_trip);
    tcase_add_test(tc, test_garbage);
    tcase_add_test(tc, test_oom);
    suite_add_tcase(s, tc);
    return s;
}
