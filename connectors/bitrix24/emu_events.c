/* SPDX-License-Identifier: MIT */
/*
 * The emulator's event subscriptions: event.bind, event.unbind and event.get, the way an app
 * registers its handlers at install time.  A handler URL is one subscriber with the list of
 * events it wants; handlers given as options at start-up behave the same.  (A real portal
 * takes event.bind from apps only; the emulator also takes it through the inbound webhook so
 * that a test or `loyd demo` can subscribe a daemon whose port it learns after start.)
 */
#include <stdlib.h>
#include <string.h>

#include "emu_int.h"

static struct b24_handler *handler_find(struct b24emu *e, const char *url)
{
    for (size_t i = 0; i < e->n_handlers; i++)
        if (strcmp(e->handlers[i].url, url) == 0)
            return &e->handlers[i];
    return NULL;
}

static bool event_name_ok(const char *ev)
{
    size_t n = strlen(ev);
    if (n < 3 || n > 64 || strncmp(ev, "ON", 2) != 0)
        return false;
    for (const char *p = ev; *p; p++)
        if (!((*p >= 'A' && *p <= 'Z') || (*p >= '0' && *p <= '9') || *p == '_'))
            return false;
    return true;
}

static bool args(struct b24_call *c, const json_t *p, char ev[72], const char **url)
{
    const char *e = json_string_value(json_object_get(p, "event"));
    *url = json_string_value(json_object_get(p, "handler"));
    if (e == NULL || *url == NULL) {
        b24_fail(c, 400, "ERROR_ARGUMENT", "event and handler are required");
        return false;
    }
    if (strncmp(*url, "http://", 7) != 0 && strncmp(*url, "https://", 8) != 0) {
        b24_fail(c, 400, "ERROR_ARGUMENT", "handler must be an http(s) URL");
        return false;
    }
    snprintf(ev, 72, "%s", e);
    for (char *q = ev; *q; q++)
        if (*q >= 'a' && *q <= 'z')
            *q = (char)(*q - 'a' + 'A');
    if (!event_name_ok(ev)) {
        b24_fail(c, 400, "ERROR_EVENT_NOT_FOUND", "Event not found");
        return false;
    }
    return true;
}

void b24_m_event_bind(struct b24_call *c, const json_t *p)
{
    struct b24emu *e = c->e;
    const char *url;
    char ev[72];

    if (!args(c, p, ev, &url))
        return;
    struct b24_handler *h = handler_find(e, url);
    if (h == NULL) {
        struct b24_handler *hs = realloc(e->handlers, (e->n_handlers + 2) * sizeof(*hs));
        if (hs == NULL)
            abort();
        e->handlers = hs;
        h = &e->handlers[e->n_handlers++];
        memset(h, 0, sizeof(*h) * 2);
        char id[32];
        snprintf(id, sizeof(id), "%zu", 200 + e->n_handlers);
        h->url = b24_strdup(url);
        h->id = b24_strdup(id);
        h->events = json_array();
    } else if (h->events == NULL) {
        b24_ok(c, json_true()); /* already receives every event */
        return;
    }
    size_t i;
    json_t *v;
    json_array_foreach(h->events, i, v)
    {
        if (b24_streq(json_string_value(v), ev)) {
            b24_fail(c, 400, "ERROR_EVENT_ALREADY_BOUND", "Handler already binded");
            return;
        }
    }
    json_array_append_new(h->events, json_string(ev));
    b24_ok(c, json_true());
}

void b24_m_event_unbind(struct b24_call *c, const json_t *p)
{
    const char *url;
    char ev[72];
    int count = 0;

    if (!args(c, p, ev, &url))
        return;
    struct b24_handler *h = handler_find(c->e, url);
    if (h != NULL && h->events != NULL) {
        for (size_t i = json_array_size(h->events); i-- > 0;) {
            if (b24_streq(json_string_value(json_array_get(h->events, i)), ev)) {
                json_array_remove(h->events, i);
                count++;
            }
        }
    }
    b24_ok(c, json_pack("{s:i}", "count", count));
}

void b24_m_event_get(struct b24_call *c, const json_t *p)
{
    struct b24emu *e = c->e;
    json_t *out = json_array();
    (void)p;
    for (size_t i = 0; i < e->n_handlers; i++) {
        struct b24_handler *h = &e->handlers[i];
        size_t j;
        json_t *v;
        if (h->events == NULL) {
            json_array_append_new(out, json_pack("{s:s, s:s}", "event", "*", "handler", h->url));
            continue;
        }
        json_array_foreach(h->events, j, v)
            json_array_append_new(out, json_pack("{s:O, s:s}", "event", v, "handler", h->url));
    }
    b24_ok(c, out);
}
