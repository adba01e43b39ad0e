/* SPDX-License-Identifier: MIT */
/*
 * From CRM snapshots to canonical events.  A CRM says what an entity looks like now (a
 * snapshot, see loyd/plugin.h); rules want to hear what happened ("deal.won").  loyd keeps,
 * per entity, the state it last derived from, and compares: a deal that becomes won with a
 * contact is deal.won, a won deal that leaves its won stage (or is deleted) is deal.reopened,
 * a new contact is contact.created, and so on.  The state is stored in the same transaction
 * as the event (struct loyd_apply.state_key), so a crash between them is impossible and a
 * second look at the same snapshot derives nothing.
 *
 * Event keys make every transition exactly-once: a deal's n-th won transition is
 * "deal:<id>:won:<n>", so five more updates of a won deal derive nothing, and a deal won,
 * reopened and won again is awarded twice, on purpose.  Fields that loyd itself writes into
 * the CRM ("fields" of a contact snapshot) and modification times never make an event, which
 * is how the CRM's echo of loyd's own write-back is recognised and does not loop.
 *
 * Pure functions: no I/O, no clock (the caller gives "at").
 */
#ifndef LOYD_DERIVE_H
#define LOYD_DERIVE_H

#include <jansson.h>
#include <stdbool.h>
#include <stdint.h>

#include "loyd/error.h"
#include "util.h"

struct loyd_derived {
    char *state_key; /* "crm:deal:759": the kv key of the entity's state (new) */
    json_t *state;   /* the state to store from now on (new) */
    json_t *event;   /* the canonical event, or NULL when nothing happened (new) */
    bool learned;    /* initial sync met this entity for the first time: no event, the caller
                        records what the CRM already shows (birthday, balance) */
    /* A won deal that carries an offer code it did not carry before (snapshot "offer_code"):
     * {"code", "deal": {id, amount, currency, contact_id, ...}} (new), else NULL.  The caller
     * checks it against the member's open offers and makes the offer.redeemed event, after
     * the deal's own event: whether the code is an offer is the member's business, not the
     * deal's. */
    json_t *offer_use;
};

/**
 * Derives what @p snapshot means against @p prev_state (the stored state, or NULL when the
 * entity was never seen).  @p contact is the snapshot of a deal's contact when the connector
 * read it too (may be NULL): it is copied into deal events.  @p at stamps the event.
 * With @p initial_sync, an entity never seen before is learned (out->learned) rather than
 * announced as created.
 * @return 0 and *out filled (free with loyd_derived_free); -EINVAL (not a snapshot: no kind
 *         or id, an unknown kind) with @p err saying what was wrong.
 */
LOYD_MUST_CHECK int loyd_derive(const json_t *snapshot, const json_t *prev_state,
                                const json_t *contact, uint64_t at, bool initial_sync,
                                struct loyd_derived *out, struct loyd_buf *err);
void loyd_derived_free(struct loyd_derived *d);

/** The kv key under which the state of entity @p kind / @p id is kept (new string). */
char *loyd_derive_state_key(const char *kind, const char *id);

#endif
