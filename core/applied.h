/* SPDX-License-Identifier: MIT */
/*
 * An applied event in words, on one line, in the pack's display units: what the daemon logs
 * at info level for each event the rules acted on, and what `loyd tick` prints.
 *
 *   deal.won member=7 deal=3: redeem 3,000 points of 5,000 requested (cap 3,000);
 *   +140 points (cashback, deal 3); balance 5,200 → 2,340 points
 *
 * (one line; wrapped here).  Free text from the rules (reasons, titles) is cut to a few dozen
 * characters and its line breaks become spaces, so one event is always one greppable line.
 * Pure: no I/O, any thread.
 */
#ifndef LOYD_APPLIED_H
#define LOYD_APPLIED_H

#include <jansson.h>
#include <stdbool.h>

#include "points.h"
#include "util.h"

/**
 * Appends to @p out the event's type, member and deal, then ": " and the effects of @p trace
 * (the stored trace of loyd_store_event_get: accepted, rejected, balance_before, balance),
 * points through @p u.  @return whether the rules did anything (an effect accepted or refused,
 * or the balance moved): an event they ignored reads "no effects".
 */
bool loyd_applied_words(const json_t *event, const json_t *trace, const struct loyd_points_unit *u,
                        struct loyd_buf *out);

/** Appends the words of one accepted effect (as in trace.accepted) to @p out. */
void loyd_applied_effect_words(const json_t *effect, const struct loyd_points_unit *u,
                               struct loyd_buf *out);

#endif
