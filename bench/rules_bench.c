/* SPDX-License-Identifier: MIT */
/*
 * The cost of evaluating one event with a rule pack: loads the pack as the daemon does (same
 * sandbox limits), then evaluates N deal.won events for a member with a ledger and a purchase
 * history, timing the whole of loyd_rules_eval (member view, expiry, every handler, effect
 * validation, ledger rows).  Prints one line: "rules <pack> <n> events <ns> ns/event".
 *
 *   rules_bench PACK_DIR [N]
 */
#include <inttypes.h>
#include <stdio.h>
#include <stdlib.h>
#include <time.h>

#include <jansson.h>

#include "pack.h"
#include "rules.h"
#include "util.h"

static uint64_t mono_ns(void)
{
    struct timespec ts;
    clock_gettime(CLOCK_MONOTONIC, &ts);
    return (uint64_t)ts.tv_sec * 1000000000u + (uint64_t)ts.tv_nsec;
}

int main(int argc, char **argv)
{
    struct loyd_pack *pack = NULL;
    struct loyd_rules *rules = NULL;
    struct loyd_buf err = {0};
    json_t *settings = NULL;

    if (argc < 2) {
        fprintf(stderr, "usage: rules_bench PACK_DIR [N]\n");
        return 2;
    }
    long n = argc > 2 ? atol(argv[2]) : 100000;
    if (loyd_pack_load(argv[1], NULL, &pack, &err) != 0 ||
        loyd_pack_settings(pack, NULL, NULL, &settings, &err) != 0) {
        fprintf(stderr, "rules_bench: %s\n", err.data ? err.data : "cannot load the pack");
        return 1;
    }
    if (loyd_rules_create(pack, NULL, &rules, &err) != 0) { /* the default limits */
        fprintf(stderr, "rules_bench: %s\n", err.data ? err.data : "cannot compile the rules");
        return 1;
    }
    /* A member a year into the programme: a welcome bonus and 12 purchases with cashback. */
    const int64_t t0 = 1767225600000; /* 2026-01-01 */
    json_t *ledger = json_array(), *purchases = json_array();
    json_array_append_new(ledger, json_pack("{s:I, s:s, s:s, s:I, s:I, s:s}", "id", (json_int_t)1,
                                            "member_id", "43", "kind", "award", "points",
                                            (json_int_t)500, "at", (json_int_t)t0, "reason",
                                            "welcome bonus"));
    for (int i = 0; i < 12; i++) {
        int64_t at = t0 + (int64_t)i * 30 * 86400000;
        char deal[16];
        snprintf(deal, sizeof(deal), "%d", 100 + i);
        json_array_append_new(ledger, json_pack("{s:I, s:s, s:s, s:I, s:I, s:s, s:s}", "id",
                                                (json_int_t)(2 + i), "member_id", "43", "kind",
                                                "award", "points", (json_int_t)3000, "at",
                                                (json_int_t)at, "reason", "cashback", "ref", deal));
        json_array_append_new(purchases, json_pack("{s:s, s:I, s:I}", "deal_id", deal, "amount",
                                                   (json_int_t)100000, "at", (json_int_t)at));
    }
    json_t *member = json_pack("{s:s, s:s, s:s}", "id", "43", "tier", "bronze", "birthday",
                               "1990-05-17");
    json_t *event = json_pack("{s:s, s:s, s:I, s:{s:s, s:I, s:s, s:s}}", "type", "deal.won",
                              "key", "deal:7:won:1", "at", (json_int_t)(t0 + 360LL * 86400000),
                              "deal", "id", "7", "amount", (json_int_t)1250050, "currency",
                              "RUB", "contact_id", "43");
    struct loyd_rules_input in = {.event = event,
                                  .member = member,
                                  .ledger = ledger,
                                  .purchases = purchases,
                                  .settings = settings,
                                  .settings_stable = true, /* as the daemon's engine */
                                  .tz_offset_min = 180};
    /* Warm up, and make sure the event is accepted as the daemon would see it. */
    json_t *res = NULL;
    int rc = loyd_rules_eval(rules, &in, &res);
    if (rc != 0 || !json_is_true(json_object_get(res, "ok")) ||
        json_array_size(json_object_get(res, "accepted")) == 0) {
        char *text = json_dumps(res, JSON_COMPACT);
        fprintf(stderr, "rules_bench: the event was not accepted: %s\n", text ? text : "?");
        return 1;
    }
    size_t effects = json_array_size(json_object_get(res, "accepted"));
    json_decref(res);
    /* Two members: one a year in (13 ledger rows, 12 purchases), and a new one. */
    for (int variant = 0; variant < 2; variant++) {
        in.ledger = variant == 0 ? ledger : NULL;
        in.purchases = variant == 0 ? purchases : NULL;
        uint64_t start = mono_ns();
        for (long i = 0; i < n; i++) {
            in.seed = (uint64_t)i;
            if (loyd_rules_eval(rules, &in, &res) != 0) {
                fprintf(stderr, "rules_bench: evaluation %ld failed\n", i);
                return 1;
            }
            json_decref(res);
        }
        uint64_t ns = mono_ns() - start;
        printf("rules %s deal.won %s: %" PRIu64 " ns/event over %ld events (%zu effects)\n",
               argv[1], variant == 0 ? "member with 13 ledger rows" : "new member",
               ns / (uint64_t)n, n, effects);
    }
    json_decref(event);
    json_decref(member);
    json_decref(ledger);
    json_decref(purchases);
    json_decref(settings);
    loyd_rules_destroy(rules);
    loyd_pack_destroy(pack);
    loyd_buf_free(&err);
    return 0;
}
