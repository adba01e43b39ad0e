/* SPDX-License-Identifier: MIT */
/*
 * Finding a contact by what people know of it: a phone in any format, an email in any case,
 * a contact id.  `loyd member` names a member this way, and the worker resolves a contact's
 * "referred by" CRM field to the referring member the same way, so that both agree on what
 * "the same phone" is.  The contacts searched are the CRM states the worker stores in kv
 * ("crm:contact:<id>", derive.h), i.e. every contact loyd has read from the CRM.
 *
 * Threading: the loop thread (store reads are synchronous).
 */
#ifndef LOYD_CONTACT_MATCH_H
#define LOYD_CONTACT_MATCH_H

#include <jansson.h>
#include <stdbool.h>
#include <stddef.h>

#include "loyd/error.h"
#include "store.h"
#include "util.h"

#define LOYD_CONTACT_PREFIX "crm:contact:" /* kv key prefix of a contact's CRM state */

/**
 * The digits a phone is compared on, into @p out (at least 32 bytes): "+7 916 123-45-67" and
 * "8 (916) 123-45-67" are both "79161234567" (a Russian trunk 8 is the country code 7; not
 * after a '+', where 8 starts other countries' codes).  With @p strict, @p s must look like a
 * phone: digits, spaces, ( ) - . and one leading +, at least 5 digits.
 */
bool loyd_phone_digits(const char *s, bool strict, char *out);

/**
 * Whether a contact field (a string, or a list of them) holds the phone whose digits are
 * @p want (@p phone) or the email @p want (compared ignoring case and surrounding spaces).
 */
bool loyd_contact_field_has(const json_t *v, const char *want, bool phone);

/**
 * Every stored contact whose "phone" (@p phone true; @p want: loyd_phone_digits) or "email"
 * (@p want: the address) matches: *out gets a new array of [id, state] pairs, *scanned the
 * number of contacts looked at.  @return 0 or the store's error.
 */
LOYD_MUST_CHECK int loyd_contacts_matching(struct loyd_store *s, const char *tenant, bool phone,
                                           const char *want, json_t **out, size_t *scanned);

/**
 * Resolves a contact's "referred by" value (a snapshot's "referred_by": {"contact_id" |
 * "phone" | "email": "<value>"}, loyd/plugin.h) to the member id of the referrer, into
 * *member (new string).  A contact id must be a contact loyd knows (a member row, or a stored
 * CRM state that is not deleted); a phone or an email must match exactly one stored contact;
 * nobody refers themselves (@p self).
 * @return 0 and *member; -ENOENT with *why saying what was not found, naming the kind of value
 *         but never repeating a phone or an email (personal data); -EINVAL (not a
 *         referred_by value; @p why too); or the store's error.
 */
LOYD_MUST_CHECK int loyd_referrer_resolve(struct loyd_store *s, const char *tenant,
                                          const char *self, const json_t *referred_by,
                                          char **member, struct loyd_buf *why);

#endif
