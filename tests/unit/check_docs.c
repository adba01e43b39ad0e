/* SPDX-License-Identifier: MIT */
/*
 * The docs say what is: every tenant file the user guides show (```lua blocks that set `crm`,
 * and tenant files written by heredoc in ```sh blocks) loads as a tenant file, its crm table is
 * what its connector accepts, and a Bitrix24 tenant can reach the portal's REST API (an example
 * copied without webhook_url or client_id would store webhooks forever and award nothing).
 */
#include <check.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/stat.h>
#include <sys/wait.h>

#include "config.h"
#include "plugin_loader.h"

static const char *const guides[] = {"README.md", "docs/CONFIG.md",
                                     "connectors/bitrix24/README.md"};

static char *slurp(const char *rel)
{
    char path[1024];
    const char *src = getenv("LOYD_SRC");
    snprintf(path, sizeof(path), "%s/%s", src != NULL ? src : ".", rel);
    FILE *f = fopen(path, "r");
    ck_assert_msg(f != NULL, "cannot read %s", path);
    struct loyd_buf b = {0};
    char chunk[4096];
    size_t n;
    while ((n = fread(chunk, 1, sizeof(chunk), f)) > 0)
        loyd_buf_append(&b, chunk, n);
    fclose(f);
    return b.data;
}

/* Sets every env "NAME" the example reads, and creates every file "PATH" it reads. */
static void provide_secrets(const char *text, const char *dir)
{
    for (const char *p = text; (p = strstr(p, "env \"")) != NULL; p += 5) {
        char name[128];
        const char *q = strchr(p + 5, '"');
        if (q == NULL || (size_t)(q - p - 5) >= sizeof(name))
            continue;
        memcpy(name, p + 5, (size_t)(q - p - 5));
        name[q - p - 5] = '\0';
        setenv(name, strstr(name, "URL") ? "https://shop.bitrix24.ru/rest/1/code0123456789/"
                                         : "secret0123456789",
               1);
    }
    for (const char *p = text; (p = strstr(p, "file \"")) != NULL; p += 6) {
        char rel[256], path[600];
        const char *q = strchr(p + 6, '"');
        if (q == NULL || (size_t)(q - p - 6) >= sizeof(rel))
            continue;
        memcpy(rel, p + 6, (size_t)(q - p - 6));
        rel[q - p - 6] = '\0';
        snprintf(path, sizeof(path), "%s/%s", dir, rel);
        for (char *s = strchr(path + strlen(dir) + 1, '/'); s != NULL; s = strchr(s + 1, '/')) {
            *s = '\0';
            mkdir(path, 0700);
            *s = '/';
        }
        FILE *f = fopen(path, "w");
        ck_assert_ptr_nonnull(f);
        fputs("secret0123456789\n", f);
        fclose(f);
    }
}

/* Loads one example as tenants.d/<name>.conf and checks it the way `loyd serve` would. */
static void check_example(const char *guide, int line, const char *text, int *checked)
{
    char dir[] = "/tmp/loyd-docs-XXXXXX", path[600];
    struct loyd_buf full = {0}, err = {0};
    struct loyd_tenant_config *t = NULL;

    ck_assert_ptr_nonnull(mkdtemp(dir));
    /* A snippet that shows only the crm table stands for a Bitrix24 tenant of the stock pack. */
    if (strstr(text, "connector =") == NULL)
        loyd_buf_puts(&full, "connector = \"bitrix24\"\npack = \"retail\"\n");
    loyd_buf_puts(&full, text);
    provide_secrets(text, dir);
    snprintf(path, sizeof(path), "%s/shop.conf", dir);
    FILE *f = fopen(path, "w");
    ck_assert_ptr_nonnull(f);
    fputs(full.data, f);
    fclose(f);

    int rc = loyd_tenant_config_load(path, &t, &err);
    ck_assert_msg(rc == 0, "%s:%d: the tenant example does not load:\n%s", guide, line, err.data);
    const struct loyd_plugin *plugin;
    void *dl = NULL;
    ck_assert_int_eq(loyd_plugin_find(t->connector, NULL, &plugin, &dl, &err), 0);
    rc = loyd_tenant_config_validate_crm(t, loyd_plugin_connector(plugin)->tenant_config, &err);
    ck_assert_msg(rc == 0, "%s:%d: the example's crm table is refused:\n%s", guide, line,
                  err.data);
    if (strcmp(t->connector, "bitrix24") == 0)
        ck_assert_msg(json_object_get(t->crm, "webhook_url") != NULL ||
                          json_object_get(t->crm, "client_id") != NULL,
                      "%s:%d: a Bitrix24 tenant example without webhook_url or client_id reaches "
                      "no REST API: loyd would award nothing",
                      guide, line);
    loyd_tenant_config_free(t);
    loyd_buf_free(&full);
    loyd_buf_free(&err);
    char cmd[700];
    snprintf(cmd, sizeof(cmd), "rm -rf '%s'", dir);
    ck_assert_int_eq(system(cmd), 0);
    (*checked)++;
}

static int line_at(const char *doc, const char *p)
{
    int n = 1;
    for (const char *q = doc; q < p; q++)
        n += *q == '\n';
    return n;
}

START_TEST(test_tenant_examples_work_as_copied)
{
    int checked = 0;
    for (size_t g = 0; g < sizeof(guides) / sizeof(guides[0]); g++) {
        char *doc = slurp(guides[g]);
        /* ```lua blocks that set crm = { ... }. */
        for (const char *p = doc; (p = strstr(p, "```lua\n")) != NULL;) {
            const char *body = p + 7, *end = strstr(body, "```");
            ck_assert_ptr_nonnull(end);
            char *text = loyd_xstrndup(body, (size_t)(end - body));
            if (strstr(text, "crm = {") != NULL)
                check_example(guides[g], line_at(doc, body), text, &checked);
            free(text);
            p = end + 3;
        }
        /* Tenant files written in shell examples: cat > .../tenants.d/NAME.conf <<'EOT'. */
        for (const char *p = doc; (p = strstr(p, "tenants.d/")) != NULL; p++) {
            const char *eol = strchr(p, '\n'), *here = strstr(p, "<<'EOT'");
            if (eol == NULL || here == NULL || here > eol)
                continue;
            const char *body = eol + 1, *end = strstr(body, "\nEOT\n");
            ck_assert_ptr_nonnull(end);
            char *text = loyd_xstrndup(body, (size_t)(end - body + 1));
            check_example(guides[g], line_at(doc, body), text, &checked);
            free(text);
        }
        free(doc);
    }
    ck_assert_int_ge(checked, 4); /* the README's two, CONFIG.md's secrets, the connector's */
}
END_TEST

/* Runs `$LOYD_BIN VERB --help`; @return its exit status, -1 when it could not run. */
static int help_exit(const char *verb)
{
    char cmd[1200];
    const char *bin = getenv("LOYD_BIN");
    if (bin == NULL)
        return -1;
    snprintf(cmd, sizeof(cmd), "'%s' %s --help >/dev/null 2>&1", bin, verb);
    int st = system(cmd);
    return st == -1 || !WIFEXITED(st) ? -1 : WEXITSTATUS(st);
}

/*
 * Every `loyd VERB` the guides name is a verb of this loyd, and explains itself: `--help`
 * exits 0.  (The docs once promised verbs that did not exist.)
 */
START_TEST(test_named_verbs_exist)
{
    static const char *const docs[] = {"README.md",        "docs/RULES.md",  "docs/CONFIG.md",
                                       "docs/ARCHITECTURE.md", "docs/STORE.md",
                                       "connectors/bitrix24/README.md"};
    ck_assert_msg(getenv("LOYD_BIN") != NULL, "LOYD_BIN is not set (run through make check)");
    json_t *seen = json_object();
    for (size_t d = 0; d < sizeof(docs) / sizeof(docs[0]); d++) {
        char *doc = slurp(docs[d]);
        for (const char *p = doc; (p = strstr(p, "`loyd ")) != NULL; p++) {
            char verb[32];
            size_t n = strspn(p + 6, "abcdefghijklmnopqrstuvwxyz");
            if (n == 0 || n >= sizeof(verb))
                continue;
            memcpy(verb, p + 6, n);
            verb[n] = '\0';
            if (json_object_get(seen, verb) != NULL)
                continue;
            json_object_set_new(seen, verb, json_true());
            int code = strcmp(verb, "version") == 0 ? 0 : help_exit(verb);
            ck_assert_msg(code == 0, "%s:%d: names `loyd %s`, but `loyd %s --help` exits %d",
                          docs[d], line_at(doc, p), verb, verb, code);
        }
        free(doc);
    }
    ck_assert_int_ge(json_object_size(seen), 6);
    json_decref(seen);
}
END_TEST

Suite *docs_suite(void)
{
    Suite *s = suite_create("docs");
    TCase *tc = tcase_create("examples");
    tcase_add_test(tc, test_tenant_examples_work_as_copied);
    tcase_add_test(tc, test_named_verbs_exist);
    suite_add_tcase(s, tc);
    return s;
}
