/* SPDX-License-Identifier: MIT */
/* Finding a contact by phone, email or id (contact_match.h). */
#include "contact_match.h"

#include <errno.h>
#include <stdlib.h>
#include <string.h>
#include <strings.h>

#define PAGE 1000 /* contacts per store read */

bool loyd_phone_digits(const char *s, bool strict, char *out)
{
    size_t n = 0;
    bool plus = false, lead = true;

    for (; *s != '\0'; s++) {
        if (*s >= '0' && *s <= '9') {
            if (n < 31)
                out[n++] = *s;
            lead = false;
        } else if (*s == '+' && lead && !plus) {
            plus = true;
        } else if (strchr(" ()-.\t", *s) == NULL && strict) {
            return false;
        }
    }
    out[n] = '\0';
    if (!plus && n == 11 && out[0] == '8')
        out[0] = '7';
    return n >= (strict ? 5u : 1u);
}

bool loyd_contact_field_has(const json_t *v, const char *want, bool phone)
{
    if (json_is_array(v)) {
        size_t i;
        json_t *e;
        json_array_foreach(v, i, e)
        {
            if (loyd_contact_field_has(e, want, phone))
                return true;
        }
        return false;
    }
    const char *s = json_string_value(v);
    if (s == NULL)
        return false;
    if (phone) {
        char d[32];
        return loyd_phone_digits(s, false, d) && strcmp(d, want) == 0;
    }
    while (*s == ' ')
        s++;
    size_t n = strlen(s);
    while (n > 0 && s[n - 1] == ' ')
        n--;
    return n == strlen(want) && strncasecmp(s, want, n) == 0;
}

int loyd_contacts_matching(struct loyd_store *s, const char *tenant, bool phone, const char *want,
                           json_t **out, size_t *scanned)
{
    json_t *matches = json_array();
    char *after = loyd_xstrdup("");
    int rc = 0;

    *scanned = 0;
    for (;;) {
        json_t *page = NULL, *e;
        size_t i;
        if ((rc = loyd_store_kv_scan(s, tenant, LOYD_CONTACT_PREFIX, after, PAGE, &page)) != 0)
            break;
        json_array_foreach(page, i, e)
        {
            const char *text = json_string_value(json_object_get(e, "value"));
            json_t *st = json_loads(text != NULL ? text : "", 0, NULL);
            (*scanned)++;
            if (st != NULL &&
                loyd_contact_field_has(json_object_get(st, phone ? "phone" : "email"), want, phone))
                json_array_append_new(matches,
                                      json_pack("[s,o]",
                                                json_string_value(json_object_get(e, "key")) +
                                                    strlen(LOYD_CONTACT_PREFIX),
                                                st));
            else
                json_decref(st);
        }
        size_t n = json_array_size(page);
        if (n > 0) {
            free(after);
            after = loyd_xstrdup(
                json_string_value(json_object_get(json_array_get(page, n - 1), "key")));
        }
        json_decref(page);
        if (n < PAGE)
            break;
    }
    free(after);
    if (rc != 0) {
        json_decref(matches);
        matches = NULL;
    }
    *out = matches;
    return rc;
}

/* Whether @p id is a contact loyd knows: a member row, or a CRM state that is not deleted. */
static int contact_known(struct loyd_store *s, const char *tenant, const char *id, bool *known)
{
    json_t *row = NULL;
    char *key, *text = NULL;
    int rc = loyd_store_member_get(s, tenant, id, &row);

    *known = false;
    if (rc == 0) {
        json_decref(row);
        *known = true;
        return 0;
    }
    if (rc != -ENOENT)
        return rc;
    key = loyd_xasprintf(LOYD_CONTACT_PREFIX "%s", id);
    rc = loyd_store_kv_get(s, tenant, key, &text);
    free(key);
    if (rc == 0 && text != NULL) {
        json_t *st = json_loads(text, 0, NULL);
        *known = json_is_object(st) && !json_is_true(json_object_get(st, "deleted"));
        json_decref(st);
    }
    free(text);
    return rc;
}

int loyd_referrer_resolve(struct loyd_store *s, const char *tenant, const char *self,
                          const json_t *referred_by, char **member, struct loyd_buf *why)
{
    const char *kind = NULL, *value = NULL;
    int rc;

    *member = NULL;
    if (json_is_object(referred_by) && json_object_size(referred_by) == 1) {
        const char *k;
        json_t *v;
        json_object_foreach((json_t *)referred_by, k, v)
        {
            kind = k;
            value = json_string_value(v);
        }
    }
    if (kind == NULL || value == NULL || value[0] == '\0' ||
        (strcmp(kind, "contact_id") != 0 && strcmp(kind, "phone") != 0 &&
         strcmp(kind, "email") != 0)) {
        loyd_buf_puts(why, "not a referred_by value ({\"contact_id\"|\"phone\"|\"email\": text})");
        return -EINVAL;
    }
    if (strcmp(kind, "contact_id") == 0) {
        bool known;
        if ((rc = contact_known(s, tenant, value, &known)) != 0)
            return rc;
        if (!known) {
            /* A contact id is no personal data: say which. */
            loyd_buf_printf(why, "no contact with the id '%.64s' is known to loyd", value);
            return -ENOENT;
        }
        if (self != NULL && strcmp(value, self) == 0) {
            loyd_buf_puts(why, "the contact id is the contact's own");
            return -ENOENT;
        }
        *member = loyd_xstrdup(value);
        return 0;
    }
    bool phone = strcmp(kind, "phone") == 0;
    char want[320];
    if (phone) {
        if (!loyd_phone_digits(value, true, want)) {
            loyd_buf_puts(why, "the phone is not a phone number (digits, spaces, ( ) - . and +)");
            return -ENOENT;
        }
    } else {
        while (*value == ' ')
            value++;
        snprintf(want, sizeof(want), "%s", value);
        for (size_t n = strlen(want); n > 0 && want[n - 1] == ' '; n--)
            want[n - 1] = '\0';
        if (strchr(want, '@') == NULL) {
            loyd_buf_puts(why, "the email is not an address (no @)");
            return -ENOENT;
        }
    }
    json_t *matches = NULL, *m;
    size_t scanned = 0, i, n = 0;
    if ((rc = loyd_contacts_matching(s, tenant, phone, want, &matches, &scanned)) != 0)
        return rc;
    const char *found = NULL;
    json_array_foreach(matches, i, m)
    {
        const char *id = json_string_value(json_array_get(m, 0));
        if (self != NULL && strcmp(id, self) == 0)
            continue; /* the friend's own card may show the same number */
        found = id;
        n++;
    }
    if (n == 1)
        *member = loyd_xstrdup(found);
    else if (n == 0)
        loyd_buf_printf(why, "no other contact has that %s (of the %zu contacts loyd has read)",
                        kind, scanned);
    else
        loyd_buf_printf(why, "%zu contacts have that %s: name the referrer by contact id", n, kind);
    json_decref(matches);
    return n == 1 ? 0 : -ENOENT;
}
