/* SPDX-License-Identifier: MIT */
/*
 * The host step: applies one canonical event for one tenant, exactly once.  A struct
 * loyd_engine holds a tenant's loaded pack (its rules sandbox), effective settings, time zone
 * offset and pack version.  loyd_engine_process() reads the member, its ledger and purchase
 * history from the store, evaluates the rules (rules.h) and writes the result with ONE
 * loyd_store_apply(): the event row (unique per tenant and event key: a second delivery is a
 * no-op reported as LOYD_EDUP), the ledger rows (new rows' provisional ids are remapped by the
 * store, see struct loyd_ledger_entry), the member row, the write-backs and the trace.
 *
 * The member is named by the event: contact.id, else deal.contact_id, else member_id.
 * The member row's profile JSON holds {tier, birthday, referrer, attributes,
 * last_birthday_offer_year, offers:[{code, status, ref, valid_until, ...}], purchases:[{deal_id,
 * amount, currency, at}]}.  The CRM owns the birthday: an event's contact birthday replaces the
 * stored one; the referrer (a member id: the worker resolves the contact's "referred by" CRM
 * field to one, contact_match.h) is taken from the event's contact when the profile has none,
 * and kept from then on.  A reverse{ref} reaches the rows of every member under the ref
 * (loyd_store_ledger_by_ref), so a referrer's bonus goes with the friend's purchase.
 *
 * Ledger, event and outbox rows are stamped with the event's "at" (the daemon's clock, which
 * the demo moves), so dates the rules compute and dates the store shows agree.  A deal.won or
 * deal.reopened also queues {"op":"deal.mark","deal_id","awarded","redeemed"}: the points the
 * deal earned and the points it was paid with (ledger units, both net of reversals), written
 * to the deal card.
 *
 * Threading: the loop thread (the store's), one engine used by one thread at a time.
 */
#ifndef LOYD_ENGINE_H
#define LOYD_ENGINE_H

#include <jansson.h>
#include <stdint.h>

#include "loyd/error.h"
#include "points.h"
#include "sandbox.h"
#include "store.h"
#include "util.h"

struct loyd_engine;

/**
 * Loads the pack in @p pack_dir (extends resolved through @p search_path, may be NULL), applies
 * @p settings_overrides (borrowed, may be NULL) and loads the rules into a sandbox with @p lim
 * (may be NULL: defaults).  @p tenant is copied.
 * @return 0 and *out; the pack/settings/rules error (LOYD_EPARSE, LOYD_ECONFIG, LOYD_ERULE, ...)
 *         with lines in @p err; -EINVAL (missing tenant or dir).
 */
LOYD_MUST_CHECK int loyd_engine_create(const char *tenant, const char *pack_dir,
                                       const char *search_path, const json_t *settings_overrides,
                                       int tz_offset_min, const struct loyd_sandbox_limits *lim,
                                       struct loyd_engine **out, struct loyd_buf *err);
/** Accepts NULL. */
void loyd_engine_destroy(struct loyd_engine *e);

/** Whether the pack handles @p type (an event nobody handles need not be applied). */
bool loyd_engine_handles(const struct loyd_engine *e, const char *type);
/** The tenant's UTC offset in minutes (its calendar: birthdays, expiry dates). */
int loyd_engine_tz_offset_min(const struct loyd_engine *e);

/** Borrowed: the tenant name, the effective settings, the pack version. */
const char *loyd_engine_tenant(const struct loyd_engine *e);
const json_t *loyd_engine_settings(const struct loyd_engine *e);
const char *loyd_engine_pack_version(const struct loyd_engine *e);
/** Borrowed: how people count the pack's points (points.h). */
const struct loyd_points_unit *loyd_engine_points_unit(const struct loyd_engine *e);

/**
 * Processes @p event (borrowed canonical event {type, key, at, deal?, contact?}; "at" defaults
 * to now) that came from inbox row @p inbox_id (0: none, e.g. the scheduler).
 * On success the whole result is submitted as one loyd_store_apply and @p cb(@p arg, err) runs
 * after the commit with 0, LOYD_EDUP (the event was applied before: nothing changed, the inbox
 * row is marked done) or the store's error.
 * When a rule fails (raises, runs out of instructions/time/memory, returns a bad value) nothing
 * is applied: a dead letter (kind "event", ref = the event key, payload = the event, error =
 * message and traceback) is written and @p cb gets LOYD_ERULE, LOYD_EBUDGET, LOYD_ERULEMEM or
 * LOYD_EEFFECT after it is stored.  When the event cannot be applied as it is (the rules refuse
 * its fields or the member's stored data, a ledger row the store would refuse, the store
 * refuses the transaction) nothing is applied either: the reason is logged at error level, it
 * is a dead letter the same way and @p cb gets -EINVAL after that is stored.  The inbox row is
 * left as it is (the caller finishes it).  The engine stays usable after any failure.
 * @return 0 (cb will be called exactly once); -EINVAL (not an event: no type/key/member id,
 *         unknown event type; nothing written, cb not called); a store read error;
 *         -ECANCELED (store closing).
 */
LOYD_MUST_CHECK int loyd_engine_process(struct loyd_engine *e, struct loyd_store *s,
                                        const json_t *event, int64_t inbox_id, loyd_store_cb cb,
                                        void *arg);

/** The member @p event is about (contact.id, deal.contact_id, member_id), or NULL (borrowed). */
const char *loyd_engine_event_member(const json_t *event);

/**
 * The store entries of the ledger rows one rules evaluation wrote (@p rows: its "ledger"; new
 * ones only), each checked with the store's rules (loyd_ledger_entry_check() and a member): the
 * step from rules to store that the daemon and `loyd test` share, so that a row `loyd test`
 * accepts is one the daemon can store.  Entries borrow @p rows' strings; @p member_id is the
 * apply's member (rows of other members keep theirs).
 * @return 0 and *out (free(); n entries); -EINVAL (message naming the row and why in @p err).
 */
LOYD_MUST_CHECK int loyd_engine_ledger_entries(const json_t *rows, const char *member_id,
                                               struct loyd_ledger_entry **out, size_t *n,
                                               struct loyd_buf *err);

/**
 * loyd_engine_process that also stores the CRM state the event was derived from (derive.h)
 * in the same transaction (struct loyd_apply.state_key/state_json; both may be NULL).  A
 * failing rule stores no state: the caller decides.
 */
LOYD_MUST_CHECK int loyd_engine_process_state(struct loyd_engine *e, struct loyd_store *s,
                                              const json_t *event, int64_t inbox_id,
                                              const char *state_key, const char *state_json,
                                              loyd_store_cb cb, void *arg);

#endif
