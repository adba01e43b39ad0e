/* SPDX-License-Identifier: MIT */
/* Snapshot -> event derivation: the exactly-once and echo rules of derive.h. */
#include <check.h>
#include <errno.h>
#include <string.h>

#include "derive.h"

/* Derives @p snap_text against @p state (updated in place, as the worker stores it). */
static json_t *step(json_t **state, const char *snap_text, const char *contact_text, bool sync,
                    bool *learned)
{
    json_error_t je;
    json_t *snap = json_loads(snap_text, 0, &je);
    json_t *contact = contact_text ? json_loads(contact_text, 0, &je) : NULL;
    struct loyd_buf err = {0};
    struct loyd_derived d;
    ck_assert_ptr_nonnull(snap);
    ck_assert_int_eq(loyd_derive(snap, *state, contact, 1000, sync, &d, &err), 0);
    ck_assert_ptr_nonnull(d.state);
    ck_assert_ptr_nonnull(d.state_key);
    json_decref(*state);
    *state = json_incref(d.state);
    json_t *ev = json_incref(d.event);
    if (learned != NULL)
        *learned = d.learned;
    loyd_derived_free(&d);
    json_decref(snap);
    json_decref(contact);
    loyd_buf_free(&err);
    return ev;
}

static const char *etype(const json_t *ev)
{
    return json_string_value(json_object_get(ev, "type"));
}

static const char *ekey(const json_t *ev)
{
    return json_string_value(json_object_get(ev, "key"));
}

#define WON "{\"kind\":\"deal\",\"id\":\"759\",\"won\":true,\"stage\":\"WON\",\"amount\":125000," \
            "\"currency\":\"RUB\",\"contact_id\":\"43\",\"modified_at\":%d}"

START_TEST(test_deal_lifecycle)
{
    json_t *st = NULL, *ev;
    char buf[512];

    ev = step(&st, "{\"kind\":\"deal\",\"id\":\"759\",\"won\":false,\"stage\":\"NEW\","
                   "\"amount\":125000,\"currency\":\"RUB\",\"contact_id\":\"43\"}",
              NULL, false, NULL);
    ck_assert_ptr_null(ev); /* first sight of an open deal: nothing happened yet */

    snprintf(buf, sizeof(buf), WON, 1);
    ev = step(&st, buf, "{\"kind\":\"contact\",\"id\":\"43\",\"name\":\"Anna\","
                        "\"birthday\":\"1990-05-17\",\"fields\":{\"balance\":0}}",
              false, NULL);
    ck_assert_str_eq(etype(ev), "deal.won");
    ck_assert_str_eq(ekey(ev), "deal:759:won:1");
    json_t *deal = json_object_get(ev, "deal");
    ck_assert_int_eq(json_integer_value(json_object_get(deal, "amount")), 125000);
    ck_assert_str_eq(json_string_value(json_object_get(deal, "contact_id")), "43");
    json_t *c = json_object_get(ev, "contact");
    ck_assert_str_eq(json_string_value(json_object_get(c, "birthday")), "1990-05-17");
    ck_assert_ptr_null(json_object_get(c, "fields")); /* loyd's own fields stay out of rules */
    json_decref(ev);

    /* Five more updates that change nothing a rule sees (loyd's deal mark, the time). */
    for (int i = 2; i < 7; i++) {
        snprintf(buf, sizeof(buf), WON, i);
        ck_assert_ptr_null(step(&st, buf, NULL, false, NULL));
    }
    /* A real change of a won deal is deal.updated, never a second deal.won. */
    ev = step(&st, "{\"kind\":\"deal\",\"id\":\"759\",\"won\":true,\"stage\":\"WON\","
                   "\"amount\":130000,\"currency\":\"RUB\",\"contact_id\":\"43\","
                   "\"modified_at\":9}",
              NULL, false, NULL);
    ck_assert_str_eq(etype(ev), "deal.updated");
    ck_assert_ptr_nonnull(strstr(ekey(ev), "deal:759:updated:9:"));
    json_decref(ev);

    ev = step(&st, "{\"kind\":\"deal\",\"id\":\"759\",\"won\":false,\"stage\":\"LOSE\","
                   "\"amount\":130000,\"currency\":\"RUB\",\"contact_id\":\"43\"}",
              NULL, false, NULL);
    ck_assert_str_eq(etype(ev), "deal.reopened");
    ck_assert_str_eq(ekey(ev), "deal:759:reopened:1");
    json_decref(ev);

    /* Won again: a second, distinct award. */
    snprintf(buf, sizeof(buf), WON, 20);
    ev = step(&st, buf, NULL, false, NULL);
    ck_assert_str_eq(ekey(ev), "deal:759:won:2");
    json_decref(ev);

    /* Deleted while won: reversed, and the member is remembered from the state. */
    ev = step(&st, "{\"kind\":\"deal\",\"id\":\"759\",\"deleted\":true}", NULL, false, NULL);
    ck_assert_str_eq(ekey(ev), "deal:759:reopened:2");
    ck_assert_str_eq(json_string_value(json_object_get(json_object_get(ev, "deal"), "contact_id")),
                     "43");
    json_decref(ev);
    json_decref(st);
}
END_TEST

START_TEST(test_deal_without_contact)
{
    json_t *st = NULL, *ev;
    ev = step(&st, "{\"kind\":\"deal\",\"id\":\"5\",\"won\":true,\"amount\":100}", NULL, false,
              NULL);
    ck_assert_ptr_null(ev); /* nobody to award */
    ev = step(&st, "{\"kind\":\"deal\",\"id\":\"5\",\"won\":true,\"amount\":100,"
                   "\"contact_id\":\"8\"}",
              NULL, false, NULL);
    ck_assert_str_eq(ekey(ev), "deal:5:won:1");
    json_decref(ev);
    json_decref(st);
}
END_TEST

START_TEST(test_contact_echo_and_updates)
{
    json_t *st = NULL, *ev;
    ev = step(&st, "{\"kind\":\"contact\",\"id\":\"43\",\"name\":\"Anna\",\"modified_at\":1}",
              NULL, false, NULL);
    ck_assert_str_eq(etype(ev), "contact.created");
    ck_assert_str_eq(ekey(ev), "contact:43:created");
    json_decref(ev);

    /* loyd wrote the balance: the CRM echoes an update that only changes loyd's fields. */
    ev = step(&st, "{\"kind\":\"contact\",\"id\":\"43\",\"name\":\"Anna\",\"modified_at\":2,"
                   "\"fields\":{\"balance\":3750,\"tier\":\"silver\"}}",
              NULL, false, NULL);
    ck_assert_ptr_null(ev);
    ck_assert_int_eq(
        json_integer_value(json_object_get(json_object_get(st, "fields"), "balance")), 3750);

    ev = step(&st, "{\"kind\":\"contact\",\"id\":\"43\",\"name\":\"Anna\",\"modified_at\":3,"
                   "\"attributes\":{\"review_left\":true}}",
              NULL, false, NULL);
    ck_assert_str_eq(etype(ev), "contact.updated");
    ck_assert(json_is_true(json_object_get(
        json_object_get(json_object_get(ev, "contact"), "attributes"), "review_left")));
    json_decref(ev);

    ev = step(&st, "{\"kind\":\"contact\",\"id\":\"43\",\"deleted\":true}", NULL, false, NULL);
    ck_assert_ptr_null(ev);
    /* Re-created under the same id (restored from the recycle bin): created again. */
    ev = step(&st, "{\"kind\":\"contact\",\"id\":\"43\",\"name\":\"Anna\"}", NULL, false, NULL);
    ck_assert_str_eq(etype(ev), "contact.created");
    json_decref(ev);
    json_decref(st);
}
END_TEST

START_TEST(test_initial_sync_learns)
{
    json_t *st = NULL;
    bool learned = false;
    ck_assert_ptr_null(step(&st, "{\"kind\":\"contact\",\"id\":\"9\",\"birthday\":\"1980-02-29\","
                                 "\"fields\":{\"balance\":500}}",
                            NULL, true, &learned));
    ck_assert(learned);
    /* Known now: a second sync pass derives as usual (nothing changed). */
    ck_assert_ptr_null(step(&st, "{\"kind\":\"contact\",\"id\":\"9\",\"birthday\":\"1980-02-29\"}",
                            NULL, true, &learned));
    ck_assert(!learned);
    json_decref(st);

    st = NULL;
    ck_assert_ptr_null(step(&st, "{\"kind\":\"deal\",\"id\":\"1\",\"won\":true,\"contact_id\":\"9\"}",
                            NULL, true, &learned));
    ck_assert(learned); /* won before loyd came: never awarded */
    ck_assert_ptr_null(step(&st, "{\"kind\":\"deal\",\"id\":\"1\",\"won\":true,\"contact_id\":\"9\"}",
                            NULL, false, NULL));
    json_decref(st);
}
END_TEST

START_TEST(test_bad_snapshots)
{
    struct loyd_buf err = {0};
    struct loyd_derived d;
    json_t *s = json_pack("{s:s}", "kind", "deal");
    ck_assert_int_eq(loyd_derive(s, NULL, NULL, 0, false, &d, &err), -EINVAL);
    ck_assert_ptr_nonnull(strstr(err.data, "id"));
    json_decref(s);
    s = json_pack("{s:s, s:s}", "kind", "lead", "id", "1");
    loyd_buf_reset(&err);
    ck_assert_int_eq(loyd_derive(s, NULL, NULL, 0, false, &d, &err), -EINVAL);
    ck_assert_ptr_nonnull(strstr(err.data, "'lead'"));
    json_decref(s);
    loyd_buf_free(&err);
}
END_TEST

/* Derives like step() and hands back the offer use (new, or NULL) instead of the event. */
static json_t *step_offer(json_t **state, const char *snap_text, const char **type)
{
    json_t *snap = json_loads(snap_text, 0, NULL);
    struct loyd_buf err = {0};
    struct loyd_derived d;
    static char t[32];
    ck_assert_ptr_nonnull(snap);
    ck_assert_int_eq(loyd_derive(snap, *state, NULL, 1000, false, &d, &err), 0);
    json_decref(*state);
    *state = json_incref(d.state);
    snprintf(t, sizeof(t), "%s", d.event != NULL ? etype(d.event) : "");
    *type = t;
    json_t *use = json_incref(d.offer_use);
    loyd_derived_free(&d);
    json_decref(snap);
    loyd_buf_free(&err);
    return use;
}

#define DEAL_CODE(won, code)                                                                   \
    "{\"kind\":\"deal\",\"id\":\"760\",\"won\":" won                                              \
    ",\"amount\":50000,\"currency\":\"RUB\",\"contact_id\":\"43\"" code "}"

START_TEST(test_offer_code_on_won_deal)
{
    json_t *st = NULL, *use;
    const char *type;

    /* A code on an open deal is nothing yet; winning it uses the code, once. */
    use = step_offer(&st, DEAL_CODE("false", ",\"offer_code\":\"NEXT-9\""), &type);
    ck_assert_ptr_null(use);
    use = step_offer(&st, DEAL_CODE("true", ",\"offer_code\":\"NEXT-9\""), &type);
    ck_assert_str_eq(type, "deal.won");
    ck_assert_ptr_nonnull(use);
    ck_assert_str_eq(json_string_value(json_object_get(use, "code")), "NEXT-9");
    json_t *deal = json_object_get(use, "deal");
    ck_assert_str_eq(json_string_value(json_object_get(deal, "id")), "760");
    ck_assert_str_eq(json_string_value(json_object_get(deal, "contact_id")), "43");
    ck_assert_int_eq(json_integer_value(json_object_get(deal, "amount")), 50000);
    json_decref(use);
    use = step_offer(&st, DEAL_CODE("true", ",\"offer_code\":\"NEXT-9\""), &type);
    ck_assert_ptr_null(use); /* seen again: no second use */
    ck_assert_str_eq(type, "");
    /* A code typed after the deal was won (or corrected) is used then. */
    use = step_offer(&st, DEAL_CODE("true", ",\"offer_code\":\"NEXT-10\""), &type);
    ck_assert_ptr_nonnull(use);
    ck_assert_str_eq(json_string_value(json_object_get(use, "code")), "NEXT-10");
    json_decref(use);
    /* No code, or a reopened deal: nothing. */
    use = step_offer(&st, DEAL_CODE("false", ",\"offer_code\":\"NEXT-10\""), &type);
    ck_assert_ptr_null(use);
    ck_assert_str_eq(type, "deal.reopened");
    json_decref(st);
    st = NULL;
    use = step_offer(&st, DEAL_CODE("true", ""), &type);
    ck_assert_ptr_null(use);
    json_decref(st);
}
END_TEST

START_TEST(test_referred_by_changes_contact)
{
    json_t *st = NULL, *ev;
    ev = step(&st, "{\"kind\":\"contact\",\"id\":\"43\",\"name\":\"Anna\"}", NULL, false, NULL);
    ck_assert_str_eq(etype(ev), "contact.created");
    json_decref(ev);
    /* The manager fills "referred by": the rules hear of it with the contact. */
    ev = step(&st, "{\"kind\":\"contact\",\"id\":\"43\",\"name\":\"Anna\","
                   "\"referred_by\":{\"phone\":\"8 916 123-45-67\"}}",
              NULL, false, NULL);
    ck_assert_ptr_nonnull(ev);
    ck_assert_str_eq(etype(ev), "contact.updated");
    ck_assert_str_eq(json_string_value(json_object_get(
                         json_object_get(json_object_get(ev, "contact"), "referred_by"), "phone")),
                     "8 916 123-45-67");
    json_decref(ev);
    /* ... and it is carried into the deal's events, where a first purchase needs it. */
    ev = step(&st, "{\"kind\":\"contact\",\"id\":\"43\",\"name\":\"Anna\","
                   "\"referred_by\":{\"phone\":\"8 916 123-45-67\"}}",
              NULL, false, NULL);
    ck_assert_ptr_null(ev);
    json_t *dst = NULL;
    ev = step(&dst, DEAL_CODE("true", ""),
              "{\"kind\":\"contact\",\"id\":\"43\",\"referred_by\":{\"contact_id\":\"7\"}}", false,
              NULL);
    ck_assert_str_eq(json_string_value(json_object_get(
                         json_object_get(json_object_get(ev, "contact"), "referred_by"),
                         "contact_id")),
                     "7");
    json_decref(ev);
    json_decref(dst);
    json_decref(st);
}
END_TEST

Suite *derive_suite(void)
{
    Suite *s = suite_create("derive");
    TCase *tc = tcase_create("derive");
    tcase_add_test(tc, test_deal_lifecycle);
    tcase_add_test(tc, test_deal_without_contact);
    tcase_add_test(tc, test_contact_echo_and_updates);
    tcase_add_test(tc, test_initial_sync_learns);
    tcase_add_test(tc, test_bad_snapshots);
    tcase_add_test(tc, test_offer_code_on_won_deal);
    tcase_add_test(tc, test_referred_by_changes_contact);
    suite_add_tcase(s, tc);
    return s;
}
