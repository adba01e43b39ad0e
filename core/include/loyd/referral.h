/* SPDX-License-Identifier: MIT */
/*
 * A member's referral code, the one scheme every connector shows and reads: "R", the member id
 * (the CRM contact id), "-" and one check letter, e.g. "R43-Q".  The code is derived, not
 * stored: it names its member by itself, so it is unambiguous and needs no look-up table.
 * The check letter is a weighted sum of the id's bytes modulo 23 (weights 1..22 by position):
 * since 23 is prime, a single mistyped character or two swapped neighbours always change it,
 * so a typo is refused instead of crediting some other member.  Codes are read ignoring case
 * and surrounding spaces.  Header-only (connectors are plugins and link no core code).
 */
#ifndef LOYD_REFERRAL_H
#define LOYD_REFERRAL_H

#include <stdbool.h>
#include <stddef.h>
#include <stdio.h>
#include <string.h>

#define LOYD_REFERRAL_CODE_MAX 72 /* "R" + an id of up to 64 bytes + "-X" + NUL, rounded */

static inline char loyd_referral_check(const char *id, size_t n)
{
    static const char letters[] = "TRWAGMYFPDXBNJZSQVHLCKE"; /* 23 */
    unsigned sum = 0;
    for (size_t i = 0; i < n; i++)
        sum = (sum + (unsigned char)id[i] * (unsigned)(i % 22 + 1)) % 23;
    return letters[sum];
}

static inline bool loyd_referral_id_char(char c)
{
    return (c >= '0' && c <= '9') || (c >= 'a' && c <= 'z') || (c >= 'A' && c <= 'Z') || c == '_';
}

/** @p id's code into @p out (LOYD_REFERRAL_CODE_MAX bytes); false for an unusable id. */
static inline bool loyd_referral_code(const char *id, char out[LOYD_REFERRAL_CODE_MAX])
{
    size_t n = id != NULL ? strlen(id) : 0;
    if (n == 0 || n > 64)
        return false;
    for (size_t i = 0; i < n; i++)
        if (!loyd_referral_id_char(id[i]))
            return false;
    snprintf(out, LOYD_REFERRAL_CODE_MAX, "R%s-%c", id, loyd_referral_check(id, n));
    return true;
}

/**
 * The member id a code names, into @p id (65 bytes).  @return false when @p code is not a
 * referral code or its check letter does not fit (a typo).
 */
static inline bool loyd_referral_code_parse(const char *code, char id[65])
{
    if (code == NULL)
        return false;
    while (*code == ' ')
        code++;
    size_t n = strlen(code);
    while (n > 0 && code[n - 1] == ' ')
        n--;
    if (n < 4 || (code[0] != 'R' && code[0] != 'r') || code[n - 2] != '-' || n - 3 > 64)
        return false;
    size_t idn = n - 3;
    for (size_t i = 0; i < idn; i++)
        if (!loyd_referral_id_char(code[1 + i]))
            return false;
    char check = code[n - 1];
    if (check >= 'a' && check <= 'z')
        check = (char)(check - 'a' + 'A');
    if (loyd_referral_check(code + 1, idn) != check)
        return false;
    memcpy(id, code + 1, idn);
    id[idn] = '\0';
    return true;
}

#endif
