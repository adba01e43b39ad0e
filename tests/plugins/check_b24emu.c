/* SPDX-License-Identifier: MIT */
/*
 * Tests of the Bitrix24 emulator core (connectors/bitrix24/emu.c): the pure b24emu_call()
 * entry point with an injected clock, so the rate limits are driven without sleeping.
 */
#include <check.h>
#include <stdarg.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include "../../connectors/bitrix24/emu.h"
#include "form.h"

#define T0 1736405807000ull /* 2025-01-09T06:56:47Z */
#define HOOK "1/secretcode/"

static struct b24emu *emu;
static uint64_t now;

static int form_parse(void *ctx, const char *body, size_t len, json_t **out,
                      struct loyd_errbuf *err)
{
    struct loyd_buf b = {0};
    int rc = loyd_form_parse(body, len, NULL, out, &b);
    (void)ctx;
    if (rc != 0 && err != NULL && err->size > 0)
        snprintf(err->msg, err->size, "%s", b.data != NULL ? b.data : "");
    loyd_buf_free(&b);
    return rc;
}

static void make(const char *opts_json)
{
    json_error_t jerr;
    json_t *o = json_loads(opts_json, 0, &jerr);
    char msg[256] = "";
    struct loyd_errbuf eb = {msg, sizeof(msg)};
    ck_assert_msg(o != NULL, "bad test options: %s", jerr.text);
    now = T0;
    ck_assert_msg(b24emu_create(o, form_parse, NULL, now, &emu, &eb) == 0, "%s", msg);
    json_decref(o);
}

static void setup(void)
{
    make("{\"portal\":\"shop.bitrix24.test\",\"member_id\":\"a223c6b3710f85df22e9377d6c4f7553\","
         "\"application_token\":\"51856fefc120afa4b628cc82d3935cce\",\"webhook_user\":\"1\","
         "\"webhook_code\":\"secretcode\",\"handlers\":[\"http://127.0.0.1:1/hooks/t1\","
         "\"http://127.0.0.1:1/hooks/t2\"],\"seed\":42,\"rate\":{\"burst\":1000000}}");
}

static void teardown(void)
{
    b24emu_destroy(emu);
    emu = NULL;
}

/* Calls `method` with params given as a jansson pack format; @return the response (owned). */
static json_t *callv(const char *method, int want_status, const char *fmt, va_list ap)
{
    json_error_t jerr;
    json_t *p = fmt != NULL ? json_vpack_ex(&jerr, 0, fmt, ap) : json_object();
    ck_assert_msg(p != NULL, "pack: %s", fmt != NULL ? jerr.text : "");
    int status = 0;
    json_t *r = NULL;
    ck_assert_int_eq(b24emu_call(emu, method, p, now, &status, &r), 0);
    json_decref(p);
    if (status != want_status) {
        char *d = json_dumps(r, 0);
        ck_abort_msg("%s: status %d, wanted %d: %s", method, status, want_status, d);
    }
    ck_assert_ptr_nonnull(json_object_get(r, "time"));
    return r;
}

static json_t *call(const char *method, int want_status, const char *fmt, ...)
{
    va_list ap;
    va_start(ap, fmt);
    json_t *r = callv(method, want_status, fmt, ap);
    va_end(ap);
    return r;
}

static json_t *call_form(const char *method, int want_status, const char *form)
{
    json_t *p = NULL;
    ck_assert_int_eq(loyd_form_parse(form, strlen(form), NULL, &p, NULL), 0);
    int status = 0;
    json_t *r = NULL;
    ck_assert_int_eq(b24emu_call(emu, method, p, now, &status, &r), 0);
    json_decref(p);
    ck_assert_int_eq(status, want_status);
    return r;
}

static const char *rstr(const json_t *r, const char *field)
{
    const char *s = json_string_value(json_object_get(json_object_get(r, "result"), field));
    ck_assert_msg(s != NULL, "result.%s is not a string", field);
    return s;
}

static const char *err_of(const json_t *r)
{
    return json_string_value(json_object_get(r, "error"));
}

static long long add_contact(const char *name, const char *birthdate)
{
    json_t *r = call(HOOK "crm.contact.add", 200, "{s:{s:s,s:s}}", "fields", "NAME", name,
                     "BIRTHDATE", birthdate);
    long long id = json_integer_value(json_object_get(r, "result"));
    ck_assert_int_gt(id, 0);
    json_decref(r);
    return id;
}

static void drain_events(void)
{
    char *url;
    json_t *p;
    while (b24emu_event_pop(emu, &url, &p)) {
        free(url);
        json_decref(p);
    }
}

START_TEST(test_contact_add_get_update)
{
    json_t *r = call(HOOK "crm.contact.add.json", 200, "{s:{s:s,s:s,s:s,s:[{s:s,s:s}]}}",
                     "fields", "NAME", "Анна", "LAST_NAME", "Петрова", "BIRTHDATE",
                     "1990-02-28", "PHONE", "VALUE", "+79990001122", "VALUE_TYPE", "WORK");
    ck_assert(json_is_integer(json_object_get(r, "result")));
    long long id = json_integer_value(json_object_get(r, "result"));
    json_t *t = json_object_get(r, "time");
    ck_assert_ptr_nonnull(json_object_get(t, "start"));
    ck_assert_ptr_nonnull(json_object_get(t, "date_start"));
    ck_assert_ptr_nonnull(json_object_get(t, "operating_reset_at"));
    ck_assert_ptr_nonnull(json_object_get(t, "operating"));
    json_decref(r);

    /* Both `id` spellings, number or string. */
    r = call(HOOK "crm.contact.get", 200, "{s:s}", "ID", "1");
    ck_assert_str_eq(rstr(r, "ID"), "1");
    ck_assert_str_eq(rstr(r, "NAME"), "Анна");
    ck_assert_str_eq(rstr(r, "BIRTHDATE"), "1990-02-28T03:00:00+03:00");
    ck_assert_str_eq(rstr(r, "DATE_MODIFY"), "2025-01-09T09:56:47+03:00");
    ck_assert_str_eq(rstr(r, "HAS_PHONE"), "Y");
    json_t *ph = json_array_get(json_object_get(json_object_get(r, "result"), "PHONE"), 0);
    ck_assert_str_eq(json_string_value(json_object_get(ph, "VALUE")), "+79990001122");
    ck_assert_str_eq(json_string_value(json_object_get(ph, "TYPE_ID")), "PHONE");
    json_decref(r);

    now += 60000;
    r = call(HOOK "crm.contact.update", 200, "{s:I,s:{s:s,s:s,s:s}}", "id", (json_int_t)id,
             "fields", "NAME", "Анна-Мария", "BIRTHDATE", "11.11.1999", "NO_SUCH_FIELD", "x");
    ck_assert(json_is_true(json_object_get(r, "result")));
    json_decref(r);
    r = call(HOOK "crm.contact.get", 200, "{s:I}", "id", (json_int_t)id);
    ck_assert_str_eq(rstr(r, "NAME"), "Анна-Мария");
    ck_assert_str_eq(rstr(r, "BIRTHDATE"), "1999-11-11T03:00:00+03:00");
    ck_assert_str_eq(rstr(r, "DATE_MODIFY"), "2025-01-09T09:57:47+03:00");
    ck_assert_ptr_null(json_object_get(json_object_get(r, "result"), "NO_SUCH_FIELD"));
    json_decref(r);

    /* Not found: HTTP 400 with an empty error code. */
    r = call(HOOK "crm.contact.get", 400, "{s:i}", "id", 999);
    ck_assert_str_eq(err_of(r), "");
    ck_assert_str_eq(json_string_value(json_object_get(r, "error_description")), "Not found");
    json_decref(r);
    r = call(HOOK "crm.contact.update", 400, "{s:i,s:{s:s}}", "id", 999, "fields", "NAME", "x");
    ck_assert_str_eq(err_of(r), "");
    ck_assert_str_eq(json_string_value(json_object_get(r, "error_description")),
                     "Contact is not found");
    json_decref(r);
    r = call(HOOK "crm.contact.get", 400, "{s:s}", "id", "abc");
    ck_assert_str_eq(json_string_value(json_object_get(r, "error_description")),
                     "ID is not defined or invalid.");
    json_decref(r);
}
END_TEST

START_TEST(test_deal_money_and_stage)
{
    long long c1 = add_contact("A", ""), c2 = add_contact("B", "");
    json_t *r = call(HOOK "crm.deal.add", 200, "{s:{s:s,s:s,s:s,s:[I,I]}}", "fields", "TITLE",
                     "Order 1", "OPPORTUNITY", "1250.5", "CURRENCY_ID", "RUB", "CONTACT_IDS",
                     (json_int_t)c2, (json_int_t)c1);
    long long d = json_integer_value(json_object_get(r, "result"));
    json_decref(r);
    r = call(HOOK "crm.deal.get", 200, "{s:I}", "id", (json_int_t)d);
    ck_assert_str_eq(rstr(r, "OPPORTUNITY"), "1250.50");
    ck_assert_str_eq(rstr(r, "STAGE_ID"), "NEW");
    ck_assert_str_eq(rstr(r, "STAGE_SEMANTIC_ID"), "P");
    ck_assert_str_eq(rstr(r, "CLOSED"), "N");
    ck_assert_str_eq(rstr(r, "CONTACT_ID"), "2"); /* the first bound contact */
    json_decref(r);
    r = call(HOOK "crm.deal.contact.items.get", 200, "{s:I}", "id", (json_int_t)d);
    json_t *items = json_object_get(r, "result");
    ck_assert_int_eq(json_array_size(items), 2);
    ck_assert_int_eq(json_integer_value(json_object_get(json_array_get(items, 0), "CONTACT_ID")),
                     c2);
    ck_assert_str_eq(json_string_value(json_object_get(json_array_get(items, 0), "IS_PRIMARY")),
                     "Y");
    ck_assert_str_eq(json_string_value(json_object_get(json_array_get(items, 1), "IS_PRIMARY")),
                     "N");
    json_decref(r);
    /* A number, a string with 3 decimals, a negative: all become 2-decimal strings. */
    r = call(HOOK "crm.deal.update", 200, "{s:I,s:{s:f,s:s}}", "id", (json_int_t)d, "fields",
             "OPPORTUNITY", 99.999, "STAGE_ID", "WON");
    json_decref(r);
    r = call(HOOK "crm.deal.get", 200, "{s:I}", "id", (json_int_t)d);
    ck_assert_str_eq(rstr(r, "OPPORTUNITY"), "100.00");
    ck_assert_str_eq(rstr(r, "STAGE_SEMANTIC_ID"), "S");
    ck_assert_str_eq(rstr(r, "CLOSED"), "Y");
    json_decref(r);
    r = call(HOOK "crm.deal.update", 200, "{s:I,s:{s:s,s:s}}", "id", (json_int_t)d, "fields",
             "OPPORTUNITY", "1000000", "STAGE_ID", "C1:LOSE");
    json_decref(r);
    r = call(HOOK "crm.deal.get", 200, "{s:I}", "id", (json_int_t)d);
    ck_assert_str_eq(rstr(r, "OPPORTUNITY"), "1000000.00");
    ck_assert_str_eq(rstr(r, "STAGE_SEMANTIC_ID"), "F");
    json_decref(r);
    /* An empty deal-contact list is [] (PHP serialises an empty array as a list). */
    r = call(HOOK "crm.deal.add", 200, "{s:{s:s}}", "fields", "TITLE", "no contacts");
    long long d2 = json_integer_value(json_object_get(r, "result"));
    json_decref(r);
    r = call(HOOK "crm.deal.contact.items.get", 200, "{s:I}", "id", (json_int_t)d2);
    ck_assert(json_is_array(json_object_get(r, "result")));
    ck_assert_int_eq(json_array_size(json_object_get(r, "result")), 0);
    json_decref(r);
}
END_TEST

START_TEST(test_list_paging)
{
    for (int i = 0; i < 120; i++) {
        char name[16];
        snprintf(name, sizeof(name), "C%03d", i);
        add_contact(name, "");
    }
    json_t *r = call(HOOK "crm.contact.list", 200, "{s:{s:s},s:[s,s]}", "order", "ID", "ASC",
                     "select", "ID", "NAME");
    ck_assert_int_eq(json_array_size(json_object_get(r, "result")), 50);
    ck_assert_int_eq(json_integer_value(json_object_get(r, "total")), 120);
    ck_assert_int_eq(json_integer_value(json_object_get(r, "next")), 50);
    json_t *first = json_array_get(json_object_get(r, "result"), 0);
    ck_assert_int_eq(json_object_size(first), 2); /* select honoured */
    json_decref(r);
    r = call(HOOK "crm.contact.list", 200, "{s:{s:s},s:i}", "order", "ID", "ASC", "start", 100);
    ck_assert_int_eq(json_array_size(json_object_get(r, "result")), 20);
    ck_assert_ptr_null(json_object_get(r, "next"));
    ck_assert_int_eq(json_integer_value(json_object_get(r, "total")), 120);
    json_decref(r);
    /* The docs' fast export: >ID with start=-1: no total, no next. */
    r = call(HOOK "crm.contact.list", 200, "{s:{s:s},s:{s:s},s:i}", "order", "ID", "ASC",
             "filter", ">ID", "100", "start", -1);
    ck_assert_int_eq(json_array_size(json_object_get(r, "result")), 20);
    ck_assert_str_eq(json_string_value(json_object_get(json_array_get(json_object_get(r, "result"),
                                                                      0), "ID")), "101");
    ck_assert_ptr_null(json_object_get(r, "total"));
    ck_assert_ptr_null(json_object_get(r, "next"));
    json_decref(r);
    /* Descending order, and the same call form-encoded as a GET query would be. */
    r = call_form(HOOK "crm.contact.list", 200,
                  "order%5BID%5D=DESC&filter%5B%3C%3DID%5D=10&select%5B%5D=ID");
    ck_assert_int_eq(json_array_size(json_object_get(r, "result")), 10);
    ck_assert_str_eq(json_string_value(json_object_get(json_array_get(json_object_get(r, "result"),
                                                                      0), "ID")), "10");
    json_decref(r);
    /* No match: result is []. */
    r = call(HOOK "crm.contact.list", 200, "{s:{s:s}}", "filter", "NAME", "nobody");
    ck_assert(json_is_array(json_object_get(r, "result")));
    ck_assert_int_eq(json_array_size(json_object_get(r, "result")), 0);
    ck_assert_int_eq(json_integer_value(json_object_get(r, "total")), 0);
    json_decref(r);
}
END_TEST

START_TEST(test_list_date_modify_filter)
{
    add_contact("old", "");
    now += 3600 * 1000;
    add_contact("new", "");
    /* Watermark between the two, in another zone than the portal's. */
    json_t *r = call(HOOK "crm.deal.list", 200, "{}");
    json_decref(r);
    r = call(HOOK "crm.contact.list", 200, "{s:{s:s}}", "filter", ">DATE_MODIFY",
             "2025-01-09T07:30:00+00:00");
    ck_assert_int_eq(json_array_size(json_object_get(r, "result")), 1);
    ck_assert_str_eq(json_string_value(json_object_get(json_array_get(json_object_get(r, "result"),
                                                                      0), "NAME")), "new");
    json_decref(r);
    /* emu.clock moves DATE_MODIFY. */
    r = call("loyd.emu.clock", 200, "{s:I}", "now_ms", (json_int_t)1780000000000LL);
    json_decref(r);
    r = call(HOOK "crm.contact.update", 200, "{s:i,s:{s:s}}", "id", 1, "fields", "NAME", "x");
    json_decref(r);
    r = call(HOOK "crm.contact.get", 200, "{s:i}", "id", 1);
    ck_assert_str_eq(rstr(r, "DATE_MODIFY"), "2026-05-28T23:26:40+03:00");
    json_decref(r);
}
END_TEST

START_TEST(test_userfields)
{
    json_t *r = call(HOOK "crm.contact.userfield.add", 200, "{s:{s:s,s:s,s:s}}", "fields",
                     "USER_TYPE_ID", "double", "FIELD_NAME", "loyalty_balance", "XML_ID", "LB");
    ck_assert(json_is_integer(json_object_get(r, "result")));
    json_decref(r);
    /* MANAGER_NOTE, UF_MANAGER_NOTE and UF_CRM_MANAGER_NOTE name the same field. */
    r = call(HOOK "crm.contact.userfield.add", 200, "{s:{s:s,s:s}}", "fields", "USER_TYPE_ID",
             "string", "FIELD_NAME", "UF_MANAGER_NOTE");
    json_decref(r);
    r = call(HOOK "crm.contact.userfield.add", 400, "{s:{s:s,s:s}}", "fields", "USER_TYPE_ID",
             "string", "FIELD_NAME", "UF_CRM_MANAGER_NOTE");
    ck_assert_str_eq(err_of(r), "");
    ck_assert_ptr_nonnull(strstr(json_string_value(json_object_get(r, "error_description")),
                                 "already exists"));
    json_decref(r);
    r = call(HOOK "crm.contact.userfield.add", 400, "{s:{s:s,s:s}}", "fields", "USER_TYPE_ID",
             "string", "FIELD_NAME", "bad-name");
    ck_assert_str_eq(err_of(r), "ERROR_CORE");
    json_decref(r);
    /* 50 characters with the prefix pass, 51 fail. */
    char code[64];
    memset(code, 'A', 43);
    code[43] = '\0';
    r = call(HOOK "crm.contact.userfield.add", 200, "{s:{s:s,s:s}}", "fields", "USER_TYPE_ID",
             "string", "FIELD_NAME", code);
    json_decref(r);
    strcat(code, "B");
    r = call(HOOK "crm.contact.userfield.add", 400, "{s:{s:s,s:s}}", "fields", "USER_TYPE_ID",
             "string", "FIELD_NAME", code);
    ck_assert_str_eq(err_of(r), "ERROR_CORE");
    json_decref(r);
    r = call(HOOK "crm.contact.userfield.list", 200, "{s:{s:s}}", "filter", "FIELD_NAME",
             "UF_CRM_LOYALTY_BALANCE");
    json_t *items = json_object_get(r, "result");
    ck_assert_int_eq(json_array_size(items), 1);
    json_t *u = json_array_get(items, 0);
    ck_assert_str_eq(json_string_value(json_object_get(u, "ENTITY_ID")), "CRM_CONTACT");
    ck_assert_str_eq(json_string_value(json_object_get(u, "USER_TYPE_ID")), "double");
    ck_assert_int_eq(json_integer_value(json_object_get(json_object_get(u, "SETTINGS"),
                                                        "PRECISION")), 2);
    json_decref(r);
    /* The new field is writable on contacts; an undefined UF is silently ignored. */
    long long id = add_contact("U", "");
    r = call(HOOK "crm.contact.update", 200, "{s:I,s:{s:f,s:s}}", "id", (json_int_t)id, "fields",
             "UF_CRM_LOYALTY_BALANCE", 1250.5, "UF_CRM_UNDEFINED", "x");
    json_decref(r);
    r = call(HOOK "crm.contact.get", 200, "{s:I}", "id", (json_int_t)id);
    ck_assert_str_eq(rstr(r, "UF_CRM_LOYALTY_BALANCE"), "1250.5");
    ck_assert_ptr_null(json_object_get(json_object_get(r, "result"), "UF_CRM_UNDEFINED"));
    json_decref(r);
    /* Deals have their own set. */
    r = call(HOOK "crm.deal.userfield.list", 200, "{s:{s:s}}", "filter", "FIELD_NAME",
             "UF_CRM_LOYALTY_BALANCE");
    ck_assert_int_eq(json_array_size(json_object_get(r, "result")), 0);
    json_decref(r);
    r = call(HOOK "crm.deal.userfield.add", 200, "{s:{s:s,s:s}}", "fields", "USER_TYPE_ID",
             "boolean", "FIELD_NAME", "LOYALTY_AWARDED");
    json_decref(r);
}
END_TEST

START_TEST(test_timeline_and_todo)
{
    long long id = add_contact("T", "");
    json_t *r = call(HOOK "crm.timeline.comment.add", 200, "{s:{s:I,s:s,s:s}}", "fields",
                     "ENTITY_ID", (json_int_t)id, "ENTITY_TYPE", "contact", "COMMENT",
                     "+150 points");
    ck_assert_int_gt(json_integer_value(json_object_get(r, "result")), 0);
    json_decref(r);
    /* Upper-case FIELDS is not accepted since crm 23.100.0. */
    r = call(HOOK "crm.timeline.comment.add", 400, "{s:{s:I,s:s,s:s}}", "FIELDS", "ENTITY_ID",
             (json_int_t)id, "ENTITY_TYPE", "contact", "COMMENT", "x");
    json_decref(r);
    r = call(HOOK "crm.timeline.comment.add", 400, "{s:{s:i,s:s,s:s}}", "fields", "ENTITY_ID",
             777, "ENTITY_TYPE", "deal", "COMMENT", "x");
    ck_assert_str_eq(err_of(r), "OWNER_NOT_FOUND");
    json_decref(r);
    r = call(HOOK "crm.timeline.comment.add", 400, "{s:{s:I,s:s,s:s}}", "fields", "ENTITY_ID",
             (json_int_t)id, "ENTITY_TYPE", "contact", "COMMENT", "");
    ck_assert_str_eq(err_of(r), "INVALID_ARG_VALUE");
    json_decref(r);
    r = call(HOOK "crm.activity.todo.add", 200, "{s:i,s:I,s:s,s:s}", "ownerTypeId", 3,
             "ownerId", (json_int_t)id, "deadline", "2025-02-03T15:00:00", "title",
             "Call about the birthday offer");
    ck_assert_int_gt(json_integer_value(json_object_get(json_object_get(r, "result"), "id")), 0);
    json_decref(r);
    r = call(HOOK "crm.activity.todo.add", 400, "{s:i,s:I,s:s}", "ownerTypeId", 3, "ownerId",
             (json_int_t)id, "deadline", "tomorrow");
    ck_assert_str_eq(err_of(r), "WRONG_DATETIME_FORMAT");
    json_decref(r);
    r = call("loyd.emu.state", 200, NULL);
    json_t *st = json_object_get(r, "result");
    ck_assert_int_eq(json_array_size(json_object_get(st, "timeline_comments")), 1);
    ck_assert_int_eq(json_array_size(json_object_get(st, "activities")), 1);
    json_decref(r);
}
END_TEST

START_TEST(test_batch_references)
{
    long long id = add_contact("Batch", "");
    /* A JSON body batch: cmd values are plain strings with url-encoded params. */
    char c1[128];
    snprintf(c1, sizeof(c1), "crm.deal.add?fields[TITLE]=John%%26Martin&fields[CONTACT_ID]=%lld",
             id);
    json_t *r = call(HOOK "batch", 200, "{s:i,s:{s:s,s:s,s:s,s:s}}", "halt", 0, "cmd", "d", c1,
                     "g", "crm.deal.get?id=$result[d]", "c",
                     "crm.contact.get?id=$result[g][CONTACT_ID]", "l",
                     "crm.contact.list?filter[ID]=$result[c][ID]&select[]=NAME");
    json_t *res = json_object_get(r, "result");
    json_t *inner = json_object_get(res, "result");
    ck_assert_str_eq(json_string_value(json_object_get(json_object_get(inner, "g"), "TITLE")),
                     "John&Martin");
    ck_assert_str_eq(json_string_value(json_object_get(json_object_get(inner, "c"), "NAME")),
                     "Batch");
    ck_assert_int_eq(json_integer_value(json_object_get(json_object_get(res, "result_total"),
                                                        "l")), 1);
    ck_assert(json_is_array(json_object_get(res, "result_error"))); /* empty map -> [] */
    ck_assert(json_is_array(json_object_get(res, "result_next")));
    ck_assert_ptr_nonnull(json_object_get(json_object_get(res, "result_time"), "d"));
    json_decref(r);
    /* A list reference: $result[key][0][ID]. */
    r = call(HOOK "batch", 200, "{s:{s:s,s:s}}", "cmd", "l",
             "crm.contact.list?order[ID]=DESC", "g", "crm.contact.get?id=$result[l][0][ID]");
    inner = json_object_get(json_object_get(r, "result"), "result");
    ck_assert_str_eq(json_string_value(json_object_get(json_object_get(inner, "g"), "NAME")),
                     "Batch");
    json_decref(r);
    /* The docs' form-encoded batch (double-encoded %2526) with numeric keys: a list. */
    r = call_form(HOOK "batch", 200,
                  "cmd%5B0%5D=crm.deal.add%3Ffields%5BTITLE%5D%3DJohn%2526Martin"
                  "&cmd%5B1%5D=crm.deal.get%3Fid%3D%24result%5B0%5D");
    inner = json_object_get(json_object_get(r, "result"), "result");
    ck_assert(json_is_array(inner));
    ck_assert_str_eq(json_string_value(json_object_get(json_array_get(inner, 1), "TITLE")),
                     "John&Martin");
    json_decref(r);
}
END_TEST

START_TEST(test_batch_halt_and_length)
{
    json_t *r = call(HOOK "batch", 200, "{s:i,s:{s:s,s:s,s:s}}", "halt", 1, "cmd", "a",
                     "crm.contact.add?fields[NAME]=A", "b", "crm.contact.get?id=999", "c",
                     "crm.contact.add?fields[NAME]=C");
    json_t *res = json_object_get(r, "result");
    ck_assert_ptr_nonnull(json_object_get(json_object_get(res, "result"), "a"));
    json_t *eb = json_object_get(json_object_get(res, "result_error"), "b");
    ck_assert_str_eq(json_string_value(json_object_get(eb, "error_description")), "Not found");
    ck_assert_ptr_null(json_object_get(json_object_get(res, "result"), "c"));
    json_decref(r);
    /* halt=0 runs on past the error. */
    r = call(HOOK "batch", 200, "{s:i,s:{s:s,s:s}}", "halt", 0, "cmd", "b",
             "crm.contact.get?id=999", "c", "crm.contact.add?fields[NAME]=C");
    res = json_object_get(r, "result");
    ck_assert_ptr_nonnull(json_object_get(json_object_get(res, "result"), "c"));
    json_decref(r);
    /* Nothing succeeded: result is [] like PHP; errors are a map. */
    r = call(HOOK "batch", 200, "{s:{s:s}}", "cmd", "x", "no.such.method");
    res = json_object_get(r, "result");
    ck_assert(json_is_array(json_object_get(res, "result")));
    ck_assert_str_eq(json_string_value(json_object_get(json_object_get(json_object_get(
                         res, "result_error"), "x"), "error")), "ERROR_METHOD_NOT_FOUND");
    json_decref(r);
    /* 50 commands pass, 51 fail as a whole. */
    json_t *cmd = json_object();
    for (int i = 0; i < 51; i++) {
        char k[16];
        snprintf(k, sizeof(k), "c%d", i);
        json_object_set_new(cmd, k, json_string("crm.contact.list?start=-1"));
    }
    int status;
    json_t *p = json_pack("{s:O}", "cmd", cmd);
    ck_assert_int_eq(b24emu_call(emu, HOOK "batch", p, now, &status, &r), 0);
    ck_assert_int_eq(status, 400);
    ck_assert_str_eq(err_of(r), "ERROR_BATCH_LENGTH_EXCEEDED");
    json_decref(r);
    json_decref(p);
    json_object_del(cmd, "c50");
    p = json_pack("{s:O}", "cmd", cmd);
    ck_assert_int_eq(b24emu_call(emu, HOOK "batch", p, now, &status, &r), 0);
    ck_assert_int_eq(status, 200);
    json_decref(r);
    json_decref(p);
    json_decref(cmd);
    /* Nested batch is refused. */
    r = call(HOOK "batch", 200, "{s:{s:s}}", "cmd", "n", "batch?cmd[x]=crm.contact.list");
    ck_assert_str_eq(json_string_value(json_object_get(json_object_get(json_object_get(
                         json_object_get(r, "result"), "result_error"), "n"), "error")),
                     "ERROR_BATCH_METHOD_NOT_ALLOWED");
    json_decref(r);
}
END_TEST

START_TEST(test_leaky_bucket)
{
    teardown();
    make("{\"webhook_code\":\"secretcode\"}"); /* the default plan: drain 2/s, burst 50 */
    /* Burst 50: the 51st back-to-back call is refused, with the documented body. */
    for (int i = 0; i < 50; i++)
        json_decref(call(HOOK "crm.contact.list", 200, "{s:i}", "start", -1));
    json_t *r = call(HOOK "crm.contact.list", 503, "{}");
    ck_assert_str_eq(err_of(r), "QUERY_LIMIT_EXCEEDED");
    ck_assert_str_eq(json_string_value(json_object_get(r, "error_description")),
                     "Too many requests");
    json_decref(r);
    /* A batch is one request too. */
    json_decref(call(HOOK "batch", 503, "{s:{s:s}}", "cmd", "a", "crm.contact.list"));
    /* Drain 2/s: after 499 ms still full, after 500 ms one call fits, then full again. */
    now += 499;
    json_decref(call(HOOK "crm.contact.list", 503, "{}"));
    now += 1;
    json_decref(call(HOOK "crm.contact.list", 200, "{}"));
    json_decref(call(HOOK "crm.contact.list", 503, "{}"));
    /* After 25 s it is empty again: another full burst. */
    now += 25000;
    for (int i = 0; i < 50; i++)
        json_decref(call(HOOK "crm.contact.list", 200, "{}"));
    json_decref(call(HOOK "crm.contact.list", 503, "{}"));
    /* Control methods are never limited; the five refusals were counted. */
    r = call("loyd.emu.calls", 200, NULL);
    ck_assert_int_eq(json_integer_value(json_object_get(json_object_get(r, "result"), "refused")),
                     5);
    json_decref(r);
}
END_TEST

/* loyd.emu.seed: contacts with won deals, read back like added ones, outside the limits. */
START_TEST(test_seed)
{
    teardown();
    make("{\"webhook_code\":\"secretcode\"}");
    json_t *r = call("loyd.emu.seed", 200, "{s:i, s:i, s:s}", "contacts", 60, "deals", 2,
                     "amount", "1500.50");
    ck_assert_int_eq(json_integer_value(json_object_get(json_object_get(r, "result"),
                                                        "last_contact")),
                     60);
    json_decref(r);
    r = call(HOOK "crm.deal.get", 200, "{s:i}", "id", 120);
    ck_assert_str_eq(rstr(r, "CONTACT_ID"), "60");
    ck_assert_str_eq(rstr(r, "STAGE_SEMANTIC_ID"), "S");
    ck_assert_str_eq(rstr(r, "OPPORTUNITY"), "1500.50");
    json_decref(r);
    /* 180 records made and the limit untouched: with the deal read above, 50 calls fit. */
    for (int i = 0; i < 49; i++)
        json_decref(call(HOOK "crm.contact.get", 200, "{s:i}", "id", i + 1));
    json_decref(call("loyd.emu.seed", 400, "{s:i}", "contacts", -1));
}
END_TEST

START_TEST(test_enterprise_rate_and_503_fault)
{
    teardown();
    make("{\"webhook_code\":\"secretcode\",\"rate\":{\"drain\":5,\"burst\":250}}");
    for (int i = 0; i < 250; i++)
        json_decref(call(HOOK "crm.contact.list", 200, "{}"));
    json_decref(call(HOOK "crm.contact.list", 503, "{}"));
    now += 200; /* 5/s: one slot per 200 ms */
    json_decref(call(HOOK "crm.contact.list", 200, "{}"));
    /* The fault: 503 for N seconds whatever the bucket says, then normal again. */
    now += 60000;
    json_decref(call("loyd.emu.fault", 200, "{s:s,s:i}", "mode", "503_burst", "seconds", 30));
    json_decref(call(HOOK "crm.contact.list", 503, "{}"));
    now += 29999;
    json_decref(call(HOOK "crm.contact.list", 503, "{}"));
    now += 1;
    json_decref(call(HOOK "crm.contact.list", 200, "{}"));
}
END_TEST

START_TEST(test_operating_limit)
{
    teardown();
    make("{\"webhook_code\":\"secretcode\",\"rate\":{\"burst\":1000},"
         "\"operating_limit_ms\":1000,\"operating_cost_ms\":300}");
    /* 300 ms per call: calls 1..4 run (sum 0, 300, 600, 900 < 1000), the 5th is blocked. */
    for (int i = 0; i < 4; i++) {
        json_t *r = call(HOOK "crm.contact.list", 200, "{}");
        if (i == 3) {
            json_t *t = json_object_get(r, "time");
            ck_assert(json_real_value(json_object_get(t, "operating")) > 1.19);
        }
        json_decref(r);
    }
    json_t *r = call(HOOK "crm.contact.list", 429, "{}");
    ck_assert_str_eq(err_of(r), "OPERATION_TIME_LIMIT");
    long long reset = json_integer_value(json_object_get(json_object_get(r, "time"),
                                                         "operating_reset_at"));
    /* The oldest basket is this minute's: it drops out 10 minutes after it started. */
    ck_assert_int_eq(reset, (long long)((T0 / 60000 + 10) * 60));
    json_decref(r);
    /* Other methods keep working. */
    json_decref(call(HOOK "crm.contact.add", 200, "{s:{s:s}}", "fields", "NAME", "x"));
    /* At operating_reset_at the method works again. */
    now = (uint64_t)reset * 1000 - 1;
    json_decref(call(HOOK "crm.contact.list", 429, "{}"));
    now = (uint64_t)reset * 1000;
    json_decref(call(HOOK "crm.contact.list", 200, "{}"));
}
END_TEST

START_TEST(test_webhook_and_oauth_auth)
{
    json_t *r = call("1/wrongcode/crm.contact.list", 401, "{}");
    ck_assert_str_eq(err_of(r), "NO_AUTH_FOUND");
    json_decref(r);
    json_decref(call("2/secretcode/crm.contact.list", 401, "{}")); /* another user */
    json_decref(call("crm.contact.list", 401, "{}"));              /* no auth at all */
    json_decref(call("1/secretcode/no.such.method", 404, "{}"));

    /* OAuth: install issues a pair; the access token works as auth=. */
    r = call("loyd.emu.install", 200, NULL);
    char at[64], rt[64];
    snprintf(at, sizeof(at), "%s", rstr(r, "access_token"));
    snprintf(rt, sizeof(rt), "%s", rstr(r, "refresh_token"));
    json_decref(r);
    json_decref(call("crm.contact.list", 200, "{s:s}", "auth", at));
    /* After token_ttl (3600 s) it has expired. */
    now += 3600 * 1000;
    r = call("crm.contact.list", 401, "{s:s}", "auth", at);
    ck_assert_str_eq(err_of(r), "expired_token");
    json_decref(r);

    /* Refresh rotates: the new pair works, the old refresh token is refused. */
    int status;
    json_t *p = json_pack("{s:s,s:s}", "grant_type", "refresh_token", "refresh_token", rt);
    ck_assert_int_eq(b24emu_oauth_token(emu, p, now, &status, &r), 0);
    ck_assert_int_eq(status, 200);
    const char *nat = json_string_value(json_object_get(r, "access_token"));
    const char *nrt = json_string_value(json_object_get(r, "refresh_token"));
    ck_assert_str_ne(nat, at);
    ck_assert_str_ne(nrt, rt);
    ck_assert_int_eq(json_integer_value(json_object_get(r, "expires_in")), 3600);
    ck_assert_str_eq(json_string_value(json_object_get(r, "member_id")),
                     "a223c6b3710f85df22e9377d6c4f7553");
    json_decref(call("crm.contact.list", 200, "{s:s}", "auth", nat));
    json_t *r2;
    ck_assert_int_eq(b24emu_oauth_token(emu, p, now, &status, &r2), 0);
    ck_assert_int_eq(status, 400);
    ck_assert_str_eq(err_of(r2), "invalid_grant");
    json_decref(r2);
    json_decref(p);
    /* The new refresh token works exactly once, and kills the access token issued with it. */
    p = json_pack("{s:s,s:s}", "grant_type", "refresh_token", "refresh_token", nrt);
    ck_assert_int_eq(b24emu_oauth_token(emu, p, now, &status, &r2), 0);
    ck_assert_int_eq(status, 200);
    json_decref(call("crm.contact.list", 401, "{s:s}", "auth", nat));
    json_decref(r2);
    ck_assert_int_eq(b24emu_oauth_token(emu, p, now, &status, &r2), 0);
    ck_assert_int_eq(status, 400);
    json_decref(r2);
    json_decref(p);
    json_decref(r);
}
END_TEST

START_TEST(test_oauth_client_check)
{
    teardown();
    make("{\"client_id\":\"app.1\",\"client_secret\":\"s3cr3t\",\"access_token\":\"aaa\","
         "\"refresh_token\":\"rrr\"}");
    json_decref(call("crm.contact.list", 200, "{s:s}", "auth", "aaa"));
    int status;
    json_t *r;
    json_t *p = json_pack("{s:s,s:s,s:s,s:s}", "grant_type", "refresh_token", "client_id",
                          "app.1", "client_secret", "wrong", "refresh_token", "rrr");
    ck_assert_int_eq(b24emu_oauth_token(emu, p, now, &status, &r), 0);
    ck_assert_int_eq(status, 401);
    ck_assert_str_eq(err_of(r), "invalid_client");
    json_decref(r);
    json_object_set_new(p, "client_secret", json_string("s3cr3t"));
    ck_assert_int_eq(b24emu_oauth_token(emu, p, now, &status, &r), 0);
    ck_assert_int_eq(status, 200); /* the failed attempt did not burn the refresh token */
    json_decref(r);
    json_decref(p);
}
END_TEST

START_TEST(test_events_queued)
{
    long long id = add_contact("E", "");
    ck_assert_int_eq(b24emu_events_pending(emu), 2); /* ONCRMCONTACTADD x 2 handlers */
    drain_events();
    json_t *r = call(HOOK "crm.deal.add", 200, "{s:{s:s,s:I}}", "fields", "TITLE", "D",
                     "CONTACT_ID", (json_int_t)id);
    long long d = json_integer_value(json_object_get(r, "result"));
    json_decref(r);
    drain_events();
    /* Even a no-op update fires, as on a portal: loyd's own writes echo. */
    json_decref(call(HOOK "crm.deal.update", 200, "{s:I,s:{}}", "id", (json_int_t)d, "fields"));
    ck_assert_int_eq(b24emu_events_pending(emu), 2);
    char *url;
    json_t *ev;
    const char *want_urls[] = {"http://127.0.0.1:1/hooks/t1", "http://127.0.0.1:1/hooks/t2"};
    for (int i = 0; i < 2; i++) {
        ck_assert(b24emu_event_pop(emu, &url, &ev));
        ck_assert_str_eq(url, want_urls[i]);
        ck_assert_str_eq(json_string_value(json_object_get(ev, "event")), "ONCRMDEALUPDATE");
        char ids[24];
        snprintf(ids, sizeof(ids), "%lld", d);
        ck_assert_str_eq(json_string_value(json_object_get(json_object_get(
                             json_object_get(ev, "data"), "FIELDS"), "ID")), ids);
        ck_assert_str_eq(json_string_value(json_object_get(ev, "event_handler_id")),
                         i == 0 ? "201" : "202");
        char ts[24];
        snprintf(ts, sizeof(ts), "%llu", (unsigned long long)(now / 1000));
        ck_assert_str_eq(json_string_value(json_object_get(ev, "ts")), ts);
        json_t *auth = json_object_get(ev, "auth");
        ck_assert_str_eq(json_string_value(json_object_get(auth, "application_token")),
                         "51856fefc120afa4b628cc82d3935cce");
        ck_assert_str_eq(json_string_value(json_object_get(auth, "member_id")),
                         "a223c6b3710f85df22e9377d6c4f7553");
        ck_assert_str_eq(json_string_value(json_object_get(auth, "domain")),
                         "shop.bitrix24.test");
        ck_assert_str_eq(json_string_value(json_object_get(auth, "client_endpoint")),
                         "https://shop.bitrix24.test/rest/");
        /* The payload encodes to the documented wire form and parses back unchanged. */
        struct loyd_buf b = {0};
        ck_assert_int_eq(loyd_form_encode(ev, &b), 0);
        ck_assert_ptr_nonnull(strstr(b.data, "data%5BFIELDS%5D%5BID%5D="));
        json_t *back = NULL;
        ck_assert_int_eq(loyd_form_parse(b.data, b.len, NULL, &back, NULL), 0);
        ck_assert(json_equal(back, ev));
        json_decref(back);
        loyd_buf_free(&b);
        b24emu_event_done(emu, true);
        free(url);
        json_decref(ev);
    }
    ck_assert(!b24emu_event_pop(emu, &url, &ev));
    /* Delete fires too; counters show what happened. */
    json_decref(call(HOOK "crm.deal.delete", 200, "{s:I}", "id", (json_int_t)d));
    ck_assert(b24emu_event_pop(emu, &url, &ev));
    ck_assert_str_eq(json_string_value(json_object_get(ev, "event")), "ONCRMDEALDELETE");
    free(url);
    json_decref(ev);
    r = call("loyd.emu.calls", 200, NULL);
    json_t *res = json_object_get(r, "result");
    ck_assert_int_eq(json_integer_value(json_object_get(json_object_get(res, "calls"),
                                                        "crm.deal.update")), 1);
    ck_assert_int_eq(json_integer_value(json_object_get(res, "updates")), 4);
    ck_assert_int_eq(json_integer_value(json_object_get(res, "events_delivered")), 2);
    ck_assert_int_eq(json_integer_value(json_object_get(res, "events_queued")), 8);
    json_decref(r);
}
END_TEST

START_TEST(test_handler_filter_and_drop_fault)
{
    teardown();
    make("{\"webhook_code\":\"secretcode\",\"seed\":7,\"rate\":{\"burst\":100000},\"handlers\":[{\"url\":\"http://h/1\","
         "\"id\":\"975\",\"events\":[\"ONCRMDEALADD\"]}]}");
    add_contact("no event", "");
    ck_assert_int_eq(b24emu_events_pending(emu), 0);
    json_decref(call(HOOK "crm.deal.add", 200, "{s:{s:s}}", "fields", "TITLE", "x"));
    ck_assert_int_eq(b24emu_events_pending(emu), 1);
    drain_events();
    json_decref(call("loyd.emu.fault", 200, "{s:s,s:f}", "mode", "drop_events", "ratio", 1.0));
    json_decref(call(HOOK "crm.deal.add", 200, "{s:{s:s}}", "fields", "TITLE", "y"));
    ck_assert_int_eq(b24emu_events_pending(emu), 0);
    json_decref(call("loyd.emu.fault", 200, "{s:s,s:f}", "mode", "drop_events", "ratio", 0.5));
    for (int i = 0; i < 200; i++)
        json_decref(call(HOOK "crm.deal.add", 200, "{s:{s:s}}", "fields", "TITLE", "z"));
    size_t kept = b24emu_events_pending(emu);
    ck_assert_msg(kept > 50 && kept < 150, "kept %zu of 200", kept);
    json_decref(call("loyd.emu.fault", 200, "{s:s}", "mode", "none"));
    drain_events();
    json_decref(call(HOOK "crm.deal.add", 200, "{s:{s:s}}", "fields", "TITLE", "w"));
    ck_assert_int_eq(b24emu_events_pending(emu), 1);
    json_decref(call("loyd.emu.fault", 200, "{s:s,s:i}", "mode", "slow", "ms", 250));
    ck_assert_uint_eq(b24emu_slow_ms(emu), 250);
    json_decref(call("loyd.emu.fault", 400, "{s:s}", "mode", "bogus"));
}
END_TEST

START_TEST(test_event_bind)
{
    char *url;
    json_t *p;
    teardown();
    make("{\"webhook_code\":\"secretcode\",\"rate\":{\"burst\":100000}}");
    json_decref(call(HOOK "crm.deal.add", 200, "{s:{s:s}}", "fields", "TITLE", "x"));
    ck_assert_int_eq(b24emu_events_pending(emu), 0); /* nobody subscribed */
    json_decref(call(HOOK "event.bind", 200, "{s:s,s:s}", "event", "onCrmDealAdd", "handler",
                     "http://127.0.0.1:1/hooks/a"));
    json_t *r = call(HOOK "event.bind", 400, "{s:s,s:s}", "event", "ONCRMDEALADD", "handler",
                     "http://127.0.0.1:1/hooks/a");
    ck_assert_str_eq(err_of(r), "ERROR_EVENT_ALREADY_BOUND");
    json_decref(r);
    json_decref(call(HOOK "event.bind", 400, "{s:s,s:s}", "event", "ONCRMDEALADD", "handler",
                     "ftp://x"));
    json_decref(call(HOOK "event.bind", 400, "{s:s}", "event", "ONCRMDEALADD"));
    json_decref(call(HOOK "crm.deal.add", 200, "{s:{s:s}}", "fields", "TITLE", "y"));
    json_decref(call(HOOK "crm.contact.add", 200, "{s:{s:s}}", "fields", "NAME", "n"));
    ck_assert_int_eq(b24emu_events_pending(emu), 1); /* the deal, not the contact */
    ck_assert(b24emu_event_pop(emu, &url, &p));
    ck_assert_str_eq(url, "http://127.0.0.1:1/hooks/a");
    ck_assert_str_eq(json_string_value(json_object_get(p, "event")), "ONCRMDEALADD");
    free(url);
    json_decref(p);
    r = call(HOOK "event.get", 200, NULL);
    ck_assert_uint_eq(json_array_size(json_object_get(r, "result")), 1);
    json_decref(r);
    r = call(HOOK "event.unbind", 200, "{s:s,s:s}", "event", "ONCRMDEALADD", "handler",
             "http://127.0.0.1:1/hooks/a");
    ck_assert_int_eq(json_integer_value(json_object_get(json_object_get(r, "result"), "count")), 1);
    json_decref(r);
    json_decref(call(HOOK "crm.deal.add", 200, "{s:{s:s}}", "fields", "TITLE", "z"));
    ck_assert_int_eq(b24emu_events_pending(emu), 0);
}
END_TEST

START_TEST(test_state_reflects_writes)
{
    json_t *r = call("loyd.emu.state", 200, NULL);
    json_t *st = json_object_get(r, "result");
    ck_assert(json_is_array(json_object_get(st, "contacts")));
    ck_assert_int_eq(json_array_size(json_object_get(st, "contacts")), 0);
    json_decref(r);
    json_decref(call(HOOK "crm.contact.userfield.add", 200, "{s:{s:s,s:s}}", "fields",
                     "USER_TYPE_ID", "string", "FIELD_NAME", "LOYALTY_TIER"));
    long long id = add_contact("S", "1990-02-28");
    json_decref(call(HOOK "crm.contact.update", 200, "{s:I,s:{s:s}}", "id", (json_int_t)id,
                     "fields", "UF_CRM_LOYALTY_TIER", "Gold"));
    r = call("loyd.emu.state", 200, NULL);
    st = json_object_get(r, "result");
    json_t *c = json_array_get(json_object_get(st, "contacts"), 0);
    ck_assert_str_eq(json_string_value(json_object_get(c, "UF_CRM_LOYALTY_TIER")), "Gold");
    ck_assert_str_eq(json_string_value(json_object_get(c, "BIRTHDATE")),
                     "1990-02-28T03:00:00+03:00");
    ck_assert_int_eq(json_array_size(json_object_get(st, "contact_userfields")), 1);
    ck_assert_str_eq(json_string_value(json_object_get(st, "member_id")),
                     "a223c6b3710f85df22e9377d6c4f7553");
    ck_assert_int_eq(json_array_size(json_object_get(st, "events")), 4);
    json_decref(r);
}
END_TEST

START_TEST(test_bad_options)
{
    char msg[256] = "";
    struct loyd_errbuf eb = {msg, sizeof(msg)};
    struct b24emu *x = NULL;
    json_t *o = json_pack("{s:{s:i}}", "rate", "burst", 0);
    ck_assert_int_eq(b24emu_create(o, form_parse, NULL, T0, &x, &eb), LOYD_ECONFIG);
    ck_assert_ptr_nonnull(strstr(msg, "burst"));
    json_decref(o);
    o = json_pack("{s:[s]}", "handlers", "ftp://x");
    ck_assert_int_eq(b24emu_create(o, form_parse, NULL, T0, &x, &eb), LOYD_ECONFIG);
    ck_assert_ptr_nonnull(strstr(msg, "handlers[0]"));
    json_decref(o);
}
END_TEST

Suite *b24emu_suite(void)
{
    Suite *s = suite_create("b24emu");
    TCase *tc = tcase_create("core");
    tcase_add_checked_fixture(tc, setup, teardown);
    tcase_set_timeout(tc, 20);
    tcase_add_test(tc, test_contact_add_get_update);
    tcase_add_test(tc, test_deal_money_and_stage);
    tcase_add_test(tc, test_list_paging);
    tcase_add_test(tc, test_list_date_modify_filter);
    tcase_add_test(tc, test_userfields);
    tcase_add_test(tc, test_timeline_and_todo);
    tcase_add_test(tc, test_batch_references);
    tcase_add_test(tc, test_batch_halt_and_length);
    tcase_add_test(tc, test_leaky_bucket);
    tcase_add_test(tc, test_enterprise_rate_and_503_fault);
    tcase_add_test(tc, test_operating_limit);
    tcase_add_test(tc, test_webhook_and_oauth_auth);
    tcase_add_test(tc, test_oauth_client_check);
    tcase_add_test(tc, test_events_queued);
    tcase_add_test(tc, test_handler_filter_and_drop_fault);
    tcase_add_test(tc, test_event_bind);
    tcase_add_test(tc, test_state_reflects_writes);
    tcase_add_test(tc, test_bad_options);
    tcase_add_test(tc, test_seed);
    suite_add_tcase(s, tc);
    return s;
}
