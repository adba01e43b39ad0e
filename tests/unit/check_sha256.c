/* SPDX-License-Identifier: MIT */
#include <check.h>
#include <string.h>

#include "sha256.h"

static void hex_of(const char *msg, size_t n, char out[65])
{
    uint8_t d[LOYD_SHA256_LEN];
    loyd_sha256(msg, n, d);
    loyd_hex(d, sizeof(d), out);
}

START_TEST(test_sha256_vectors)
{
    char h[65];
    hex_of("", 0, h);
    ck_assert_str_eq(h, "e3b0c44298fc1c149afbf4c8996fb92427ae41e4649b934ca495991b7852b855");
    hex_of("abc", 3, h);
    ck_assert_str_eq(h, "ba7816bf8f01cfea414140de5dae2223b00361a396177a9cb410ff61f20015ad");
    const char *m = "abcdbcdecdefdefgefghfghighijhijkijkljklmklmnlmnomnopnopq";
    hex_of(m, strlen(m), h);
    ck_assert_str_eq(h, "248d6a61d20638b8e5c026930c3e6039a33ce45964ff2167f6ecedd419db06c1");
}
END_TEST

START_TEST(test_hmac_rfc4231)
{
    uint8_t key[20], d[LOYD_SHA256_LEN];
    char h[65];
    memset(key, 0x0b, sizeof(key));
    loyd_hmac_sha256(key, sizeof(key), "Hi There", 8, d);
    loyd_hex(d, sizeof(d), h);
    ck_assert_str_eq(h, "b0344c61d8db38535ca8afceaf0bf12b881dc200c9833da726e9376c2e32cff7");
    loyd_hmac_sha256("Jefe", 4, "what do ya want for nothing?", 28, d);
    loyd_hex(d, sizeof(d), h);
    ck_assert_str_eq(h, "5bdcc146bf60754e6a042426089575c75a003f089d2739839dec58b964ec3843");
}
END_TEST

Suite *sha256_suite(void)
{
    Suite *s = suite_create("sha256");
    TCase *tc = tcase_create("vectors");
    tcase_add_test(tc, test_sha256_vectors);
    tcase_add_test(tc, test_hmac_rfc4231);
    suite_add_tcase(s, tc);
    return s;
}
