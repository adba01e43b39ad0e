/* SPDX-License-Identifier: MIT */
/* SHA-256 (FIPS 180-4) and HMAC-SHA-256: idempotency keys for stored webhooks, CRM signatures. */
#ifndef LOYD_SHA256_H
#define LOYD_SHA256_H

#include <stddef.h>
#include <stdint.h>

#define LOYD_SHA256_LEN 32

struct loyd_sha256 {
    uint32_t h[8];
    uint64_t total;
    uint8_t block[64];
    size_t used;
};

void loyd_sha256_init(struct loyd_sha256 *c);
void loyd_sha256_update(struct loyd_sha256 *c, const void *p, size_t n);
void loyd_sha256_final(struct loyd_sha256 *c, uint8_t out[LOYD_SHA256_LEN]);
void loyd_sha256(const void *p, size_t n, uint8_t out[LOYD_SHA256_LEN]);
void loyd_hmac_sha256(const void *key, size_t klen, const void *msg, size_t mlen,
                      uint8_t out[LOYD_SHA256_LEN]);
/** Lower-case hex of n bytes into out (2n + 1 bytes). */
void loyd_hex(const uint8_t *p, size_t n, char *out);

#endif
