/* SPDX-License-Identifier: MIT */
/*
 * Tests of configuration loading: the data-only Lua sandbox (luadata.c), the schema engine and
 * its messages, the daemon and tenant loaders, plugin-schema validation, and that
 * docs/CONFIG.md carries the reference generated from the schema.
 */
#include <check.h>
#include <ftw.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/stat.h>
#include <unistd.h>

#include "config.h"
#include "pack.h"
#include "plugin_loader.h"
#include "luadata.h"

static char tmpdir[256];

static void setup(void)
{
    snprintf(tmpdir, sizeof(tmpdir), "/tmp/loyd-config-XXXXXX");
    ck_assert_ptr_nonnull(mkdtemp(tmpdir));
}

static int rm_one(const char *p, const struct stat *st, int flag, struct FTW *ftw)
{
    (void)st;
    (void)flag;
    (void)ftw;
    return remove(p);
}

static void teardown(void)
{
    nftw(tmpdir, rm_one, 16, FTW_DEPTH | FTW_PHYS);
}

/* Writes @text to tmpdir/@name; @return the new path (static buffer, valid until next call). */
static const char *put(const char *name, const char *text)
{
    static char path[512];
    snprintf(path, sizeof(path), "%s/%s", tmpdir, name);
    FILE *f = fopen(path, "w");
    ck_assert_ptr_nonnull(f);
    fputs(text, f);
    fclose(f);
    return path;
}

static const char *src_path(const char *rel)
{
    static char path[1024];
    const char *root = getenv("LOYD_SRC");
    snprintf(path, sizeof(path), "%s/%s", root != NULL ? root : ".", rel);
    return path;
}

/* Loads a daemon config written inline; @return rc, errors in *err. */
static int load_text(const char *text, struct loyd_config **c, struct loyd_buf *err)
{
    return loyd_config_load(put("loyd.conf", text), c, err);
}

static int count_lines(const char *s)
{
    int n = 0;
    for (; s != NULL && *s != '\0'; s++)
        n += *s == '\n';
    return n;
}

#define ck_assert_has(hay, needle)                                                                 \
    ck_assert_msg((hay) != NULL && strstr((hay), (needle)) != NULL, "expected \"%s\" in:\n%s",     \
                  (needle), (hay) ? (hay) : "(null)")
#define ck_assert_lacks(hay, needle)                                                               \
    ck_assert_msg((hay) == NULL || strstr((hay), (needle)) == NULL,                                \
                  "did not expect \"%s\" in:\n%s", (needle), (hay))

/* ---- the daemon file ----------------------------------------------------------------------- */

START_TEST(test_sample_config_loads)
{
    struct loyd_config *c = NULL;
    struct loyd_buf err = {0};
    const char *path = src_path("packaging/loyd.conf");
    int rc = loyd_config_load(path, &c, &err);

    ck_assert_msg(rc == 0, "sample config failed: %s", err.data);
    ck_assert_str_eq(c->listen_host, "127.0.0.1");
    ck_assert_int_eq(c->listen_port, 8080);
    ck_assert_int_eq(c->log_level, LOYD_LOG_INFO);
    ck_assert_uint_eq(c->limits.max_body_bytes, 1048576);
    ck_assert_uint_eq(c->limits.max_connections, 10000);
    ck_assert_uint_eq(c->rules.wall_ms, 100);
    ck_assert_uint_eq(json_array_size(c->plugins), 0);
    /* Relative paths resolve against the file's directory. */
    char *want = loyd_xasprintf("%s/loyd.db", c->dir);
    ck_assert_str_eq(c->store, want);
    free(want);
    loyd_config_free(c);
    loyd_buf_free(&err);
}
END_TEST

START_TEST(test_defaults)
{
    struct loyd_config *c = NULL;
    struct loyd_buf err = {0};

    ck_assert_int_eq(load_text("-- nothing set\n", &c, &err), 0);
    ck_assert_str_eq(c->listen_host, "127.0.0.1");
    ck_assert_int_eq(c->listen_port, 8080);
    ck_assert_int_eq(c->log_level, LOYD_LOG_INFO);
    ck_assert_uint_eq(c->limits.max_header_bytes, 16384);
    ck_assert_uint_eq(c->limits.max_body_bytes, 1048576);
    ck_assert_uint_eq(c->limits.max_connections, 10000);
    ck_assert_uint_eq(c->limits.idle_timeout_ms, 30000);
    ck_assert_uint_eq(c->limits.read_timeout_ms, 10000);
    ck_assert_uint_eq(c->client.timeout_ms, 30000);
    ck_assert_uint_eq(c->client.connect_timeout_ms, 10000);
    ck_assert_uint_eq(c->client.max_response_bytes, 8388608);
    ck_assert_uint_eq(c->rules.memory_bytes, 16777216);
    ck_assert_uint_eq(c->rules.instructions, 10000000);
    ck_assert_uint_eq(c->rules.wall_ms, 100);
    ck_assert_uint_eq(c->shutdown_timeout_ms, 10000);
    ck_assert(json_is_array(c->plugins));
    char *want = loyd_xasprintf("%s/tenants.d", tmpdir);
    ck_assert_str_eq(c->tenants_dir, want);
    free(want);
    /* A partly filled table keeps its other defaults. */
    loyd_config_free(c);
    ck_assert_int_eq(load_text("limits = { max_connections = 7 }\nplugins = {}\n", &c, &err), 0);
    ck_assert_uint_eq(c->limits.max_connections, 7);
    ck_assert_uint_eq(c->limits.max_body_bytes, 1048576);
    ck_assert(json_is_array(c->plugins));
    ck_assert_int_eq(
        json_integer_value(json_object_get(json_object_get(c->raw, "limits"), "read_timeout_ms")),
        10000);
    loyd_config_free(c);
    ck_assert_uint_eq(err.len, 0);
    loyd_buf_free(&err);
}
END_TEST

START_TEST(test_full_return_form)
{
    struct loyd_config *c = NULL;
    struct loyd_buf err = {0};
    int rc = loyd_config_load(src_path("tests/data/config/full.conf"), &c, &err);

    ck_assert_msg(rc == 0, "%s", err.data);
    ck_assert_str_eq(c->listen_host, "::1");
    ck_assert_int_eq(c->listen_port, 0);
    ck_assert_str_eq(c->store, "/var/lib/loyd/test.db");
    ck_assert_int_eq(c->log_level, LOYD_LOG_DEBUG);
    ck_assert_uint_eq(c->limits.max_header_bytes, 8192);
    ck_assert_uint_eq(c->limits.idle_timeout_ms, 5000);
    ck_assert_uint_eq(c->client.connect_timeout_ms, 500);
    ck_assert_uint_eq(c->rules.instructions, 50000);
    ck_assert_uint_eq(c->shutdown_timeout_ms, 0);
    ck_assert_uint_eq(json_array_size(c->plugins), 2);
    json_t *p0 = json_array_get(c->plugins, 0), *p1 = json_array_get(c->plugins, 1);
    ck_assert_str_eq(json_string_value(json_object_get(p0, "name")), "example");
    ck_assert_ptr_null(json_object_get(p0, "path"));
    ck_assert_str_eq(json_string_value(json_object_get(json_object_get(p0, "config"), "label")),
                     "x");
    char *want = loyd_xasprintf("%s/plugins/notify.so", c->dir);
    ck_assert_str_eq(json_string_value(json_object_get(p1, "path")), want);
    free(want);
    ck_assert(json_is_object(json_object_get(p1, "config")));
    loyd_config_free(c);
    loyd_buf_free(&err);
}
END_TEST

START_TEST(test_typo_suggests_nearest)
{
    struct loyd_config *c = NULL;
    struct loyd_buf err = {0};
    const char *path = src_path("tests/data/config/typo.conf");

    ck_assert_int_eq(loyd_config_load(path, &c, &err), LOYD_ECONFIG);
    ck_assert_ptr_null(c);
    char *want = loyd_xasprintf("%s:3: key 'listne': unknown key; did you mean 'listen'?\n", path);
    ck_assert_str_eq(err.data, want);
    free(want);
    loyd_buf_free(&err);
}
END_TEST

START_TEST(test_nested_typo)
{
    struct loyd_config *c = NULL;
    struct loyd_buf err = {0};
    const char *path = src_path("tests/data/config/nested_typo.conf");

    ck_assert_int_eq(loyd_config_load(path, &c, &err), LOYD_ECONFIG);
    char *want = loyd_xasprintf(
        "%s:3: key 'limits.max_bdy': unknown key; did you mean 'max_body_bytes'?\n", path);
    ck_assert_str_eq(err.data, want);
    free(want);
    loyd_buf_free(&err);

    /* Messages follow the file, not the schema (plugins comes after rules in the schema). */
    ck_assert_int_eq(load_text("limits = {\n max_bdy = 1,\n}\nplugins = {\n"
                               "  { name = \"x\", cofig = {} },\n}\nrules = { wall_ms = 2^10 }\n",
                               &c, &err),
                     LOYD_ECONFIG);
    const char *a = strstr(err.data, ":2: key 'limits.max_bdy'"),
               *b = strstr(err.data, ":5: key 'plugins[1].cofig': unknown key; did you mean "
                                     "'config'?"),
               *d = strstr(err.data, ":7: key 'rules.wall_ms': expected integer (milliseconds), "
                                     "got float");
    ck_assert_msg(a != NULL && b != NULL && d != NULL && a < b && b < d, "%s", err.data);
    loyd_buf_reset(&err);

    /* A key far from every valid one gets the list of valid keys instead. */
    ck_assert_int_eq(load_text("client = { zzzzzz = 1 }\n", &c, &err), LOYD_ECONFIG);
    ck_assert_has(err.data, "key 'client.zzzzzz': unknown key (valid keys here: timeout_ms, "
                            "connect_timeout_ms, max_response_bytes)");
    loyd_buf_free(&err);
}
END_TEST

START_TEST(test_wrong_types_all_reported)
{
    struct loyd_config *c = NULL;
    struct loyd_buf err = {0};
    const char *path = src_path("tests/data/config/wrong_types.conf");

    ck_assert_int_eq(loyd_config_load(path, &c, &err), LOYD_ECONFIG);
    ck_assert_has(err.data, ":1: key 'listen': expected string, got integer\n");
    ck_assert_has(err.data, ":2: key 'log_level': expected one of 'err', 'warn', 'notice', "
                            "'info', 'debug', got \"verbose\"\n");
    ck_assert_has(err.data, ":4: key 'limits.max_body_bytes': expected integer (bytes), got "
                            "string\n");
    ck_assert_has(err.data, ":5: key 'limits.max_connections': 0 is below the minimum 1\n");
    ck_assert_has(err.data, ":7: key 'client.timeout_ms': expected integer (milliseconds), got "
                            "float");
    ck_assert_has(err.data, ":8: key 'rules': expected table of named keys, got integer\n");
    ck_assert_has(err.data, ":9: key 'plugins[1].name': required key is missing\n");
    ck_assert_has(err.data, ":9: key 'plugins[1].config': expected table of named keys, got "
                            "integer\n");
    ck_assert_int_eq(count_lines(err.data), 8);
    /* Every line names the file, and messages come in file order. */
    int last = 0;
    for (const char *l = err.data; *l != '\0'; l = strchr(l, '\n') + 1) {
        ck_assert(strncmp(l, path, strlen(path)) == 0);
        int line = atoi(l + strlen(path) + 1);
        ck_assert_int_ge(line, last);
        last = line;
    }
    loyd_buf_free(&err);
}
END_TEST

START_TEST(test_float_rejected_for_integers)
{
    struct loyd_config *c = NULL;
    struct loyd_buf err = {0};

    ck_assert_int_eq(load_text("limits = { max_body_bytes = 1048576.0 }\n", &c, &err),
                     LOYD_ECONFIG);
    ck_assert_has(err.data, "key 'limits.max_body_bytes': expected integer (bytes), got float");
    loyd_buf_reset(&err);
    ck_assert_int_eq(load_text("rules = { instructions = 1e7 }\n", &c, &err), LOYD_ECONFIG);
    ck_assert_has(err.data, "key 'rules.instructions': expected integer, got float");
    loyd_buf_reset(&err);
    /* Integer arithmetic stays integer and is fine. */
    ck_assert_int_eq(load_text("limits = { max_body_bytes = 2 * 1024 * 1024 }\n", &c, &err), 0);
    ck_assert_uint_eq(c->limits.max_body_bytes, 2097152);
    loyd_config_free(c);
    loyd_buf_free(&err);
}
END_TEST

START_TEST(test_enum_and_check_messages)
{
    struct loyd_config *c = NULL;
    struct loyd_buf err = {0};

    ck_assert_int_eq(load_text("log_level = \"debgu\"\nlisten = \"localhost\"\n", &c, &err),
                     LOYD_ECONFIG);
    ck_assert_has(err.data, "got \"debgu\"; did you mean 'debug'?");
    ck_assert_has(err.data, "key 'listen': invalid value \"localhost\": expected HOST:PORT");
    loyd_buf_reset(&err);
    ck_assert_int_eq(load_text("listen = \"0.0.0.0:70000\"\n", &c, &err), LOYD_ECONFIG);
    ck_assert_has(err.data, "port must be a number 0..65535");
    loyd_buf_reset(&err);
    ck_assert_int_eq(load_text("plugins = { { name = \"Bad-Name\" } }\n", &c, &err), LOYD_ECONFIG);
    ck_assert_has(err.data, "key 'plugins[1].name': invalid value \"Bad-Name\"");
    loyd_buf_reset(&err);
    ck_assert_int_eq(load_text("plugins = { { name = \"a\" }, { name = \"a\" } }\n", &c, &err),
                     LOYD_ECONFIG);
    ck_assert_has(err.data, "key 'plugins[2]': plugin 'a' is already listed as plugins[1]");
    loyd_buf_reset(&err);
    /* A list where a table is expected and the other way round. */
    ck_assert_int_eq(load_text("limits = { 1, 2 }\nplugins = { a = 1 }\n", &c, &err), LOYD_ECONFIG);
    ck_assert_has(err.data, "key 'limits': expected table of named keys, got list");
    ck_assert_has(err.data, "key 'plugins': expected list, got table");
    loyd_buf_free(&err);
}
END_TEST

START_TEST(test_assign_and_return_forms)
{
    struct loyd_config *c = NULL;
    struct loyd_buf err = {0};

    ck_assert_int_eq(
        load_text("local port = 9000\nreturn { listen = \"127.0.0.1:\" .. port }\n", &c, &err), 0);
    ck_assert_int_eq(c->listen_port, 9000);
    loyd_config_free(c);
    /* Dotted assignment into a table defined above. */
    ck_assert_int_eq(load_text("limits = {}\nlimits.max_connections = 3\n", &c, &err), 0);
    ck_assert_uint_eq(c->limits.max_connections, 3);
    loyd_config_free(c);
    ck_assert_int_eq(load_text("listen = \"127.0.0.1:1\"\nreturn { store = \"a\" }\n", &c, &err),
                     LOYD_ECONFIG);
    ck_assert_has(err.data, "both returns a table and assigns top-level keys");
    loyd_buf_reset(&err);
    /* Lines are known in the return form too. */
    ck_assert_int_eq(load_text("return {\n  store = \"a\",\n  listne = 1,\n}\n", &c, &err),
                     LOYD_ECONFIG);
    ck_assert_has(err.data, "loyd.conf:3: key 'listne': unknown key; did you mean 'listen'?\n");
    loyd_buf_reset(&err);
    ck_assert_int_eq(load_text("return 42\n", &c, &err), LOYD_ECONFIG);
    ck_assert_has(err.data, "the file returns a number");
    loyd_buf_reset(&err);
    ck_assert_int_eq(load_text("return { 1, 2, 3 }\n", &c, &err), LOYD_ECONFIG);
    ck_assert_has(err.data, "must be a table of named keys, not a list");
    loyd_buf_free(&err);
}
END_TEST

/* ---- the sandbox --------------------------------------------------------------------------- */

START_TEST(test_env_helper)
{
    struct loyd_config *c = NULL;
    struct loyd_buf err = {0};

    setenv("LOYD_TEST_LISTEN", "127.0.0.1:9999", 1);
    ck_assert_int_eq(load_text("listen = env \"LOYD_TEST_LISTEN\"\n", &c, &err), 0);
    ck_assert_int_eq(c->listen_port, 9999);
    ck_assert(json_is_true(json_object_get(c->secrets, "listen")));
    loyd_config_free(c);

    unsetenv("LOYD_TEST_UNSET_VARIABLE");
    const char *path = put("loyd.conf", "\nstore = env \"LOYD_TEST_UNSET_VARIABLE\"\n");
    ck_assert_int_eq(loyd_config_load(path, &c, &err), LOYD_ECONFIG);
    char *want = loyd_xasprintf(
        "%s:2: env: environment variable 'LOYD_TEST_UNSET_VARIABLE' is not set\n", path);
    ck_assert_str_eq(err.data, want);
    free(want);
    loyd_buf_reset(&err);
    ck_assert_int_eq(load_text("store = env(42)\n", &c, &err), LOYD_ECONFIG);
    ck_assert_has(err.data, "env expects one string");
    loyd_buf_free(&err);
}
END_TEST

START_TEST(test_file_helper)
{
    struct loyd_config *c = NULL;
    struct loyd_buf err = {0};
    struct loyd_luadata d;

    char sub[300];
    snprintf(sub, sizeof(sub), "%s/secrets", tmpdir);
    ck_assert_int_eq(mkdir(sub, 0700), 0);
    put("secrets/token", "tok-123\n");
    put("secrets/crlf", "line1\nline2\r\n");
    ck_assert_int_eq(loyd_luadata_load_ex(put("x.conf", "a = file \"secrets/token\"\n"
                                                        "b = file \"secrets/crlf\"\n"
                                                        "c = \"plain\"\n"),
                                          0, &d, &err),
                     0);
    ck_assert_str_eq(json_string_value(json_object_get(d.value, "a")), "tok-123");
    ck_assert_str_eq(json_string_value(json_object_get(d.value, "b")), "line1\nline2");
    ck_assert(json_is_true(json_object_get(d.secrets, "a")));
    ck_assert(json_is_true(json_object_get(d.secrets, "b")));
    ck_assert_ptr_null(json_object_get(d.secrets, "c"));
    loyd_luadata_clear(&d);

    /* Relative to the config file's directory, not the working directory. */
    snprintf(sub, sizeof(sub), "%s/conf", tmpdir);
    ck_assert_int_eq(mkdir(sub, 0700), 0);
    ck_assert_int_eq(
        loyd_config_load(put("conf/loyd.conf", "store = file \"../secrets/token\"\n"), &c, &err),
        0);
    ck_assert(strstr(c->store, "/conf/tok-123") != NULL);
    loyd_config_free(c);

    const char *path = put("loyd.conf", "store = file \"missing/none.txt\"\n");
    ck_assert_int_eq(loyd_config_load(path, &c, &err), LOYD_ECONFIG);
    ck_assert_has(err.data, ":1: file: cannot read 'missing/none.txt': No such file or directory");
    loyd_buf_reset(&err);
    ck_assert_int_eq(load_text("store = file \"secrets\"\n", &c, &err), LOYD_ECONFIG);
    ck_assert_has(err.data, "file: cannot read 'secrets': Is a directory");
    loyd_buf_free(&err);
}
END_TEST

START_TEST(test_secret_never_in_errors)
{
    static const char secret[] = "s3cr3t-Value-9f8e7d";
    struct loyd_config *c = NULL;
    struct loyd_tenant_config *t = NULL;
    struct loyd_buf err = {0};

    setenv("LOYD_TEST_SECRET", secret, 1);
    put("secret.txt", "file-s3cr3t-Value\n");
    ck_assert_int_eq(load_text("limits = { max_body_bytes = env \"LOYD_TEST_SECRET\" }\n"
                               "log_level = env \"LOYD_TEST_SECRET\"\n"
                               "listen = env \"LOYD_TEST_SECRET\"\n"
                               "store = 5\n"
                               "client = { timeout_ms = \"Bearer \" .. env \"LOYD_TEST_SECRET\" }\n"
                               "tenants = { file \"secret.txt\" }\n"
                               "packs = { key = file \"secret.txt\" }\n",
                               &c, &err),
                     LOYD_ECONFIG);
    ck_assert_has(err.data, "key 'limits.max_body_bytes': expected integer (bytes), got string");
    ck_assert_has(err.data, "key 'log_level': expected one of");
    ck_assert_has(err.data, "key 'listen': invalid value: expected HOST:PORT");
    ck_assert_has(err.data, "key 'client.timeout_ms'");
    ck_assert_lacks(err.data, "s3cr3t");
    ck_assert_lacks(err.data, "Bearer");
    loyd_buf_reset(&err);

    /* A Lua error built around a secret: env(env "X") names its argument otherwise. */
    ck_assert_int_eq(load_text("store = env(env \"LOYD_TEST_SECRET\")\n", &c, &err), LOYD_ECONFIG);
    ck_assert_has(err.data, "named by a secret is not set");
    ck_assert_lacks(err.data, "s3cr3t");
    loyd_buf_reset(&err);
    ck_assert_int_eq(load_text("store = file(env \"LOYD_TEST_SECRET\")\n", &c, &err), LOYD_ECONFIG);
    ck_assert_lacks(err.data, "s3cr3t");
    loyd_buf_reset(&err);
    /* Secrets used as keys are refused without being shown. */
    ck_assert_int_eq(load_text("limits = { [env \"LOYD_TEST_SECRET\"] = 1 }\n", &c, &err),
                     LOYD_ECONFIG);
    ck_assert_has(err.data, "keys cannot be secret");
    ck_assert_lacks(err.data, "s3cr3t");
    loyd_buf_reset(&err);

    /* path_secret is secret by schema even when written in the file. */
    ck_assert_int_eq(loyd_tenant_config_load(put("shop.conf", "connector = \"amocrm\"\n"
                                                              "pack = \"retail\"\n"
                                                              "path_secret = \"s3cr3t!!\"\n"),
                                             &t, &err),
                     LOYD_ECONFIG);
    ck_assert_has(err.data, "key 'path_secret': invalid value: must be 16-128 characters long");
    ck_assert_lacks(err.data, "s3cr3t");
    loyd_buf_free(&err);
}
END_TEST

START_TEST(test_sandbox_has_no_libraries)
{
    static const char *const names[] = {
        "os",        "io",      "require",        "load",         "loadfile", "dofile",
        "string",    "table",   "math",           "print",        "pairs",    "ipairs",
        "pcall",     "error",   "setmetatable",   "getmetatable", "rawset",   "rawget",
        "debug",     "package", "collectgarbage", "_G",           "tostring", "next",
        "coroutine", "utf8",    "loadstring",     "select",       "type",
    };
    struct loyd_buf err = {0};
    struct loyd_luadata d;

    for (size_t i = 0; i < LOYD_ARRAY_SIZE(names); i++) {
        char *src = loyd_xasprintf("absent = %s == nil\n", names[i]);
        ck_assert_int_eq(loyd_luadata_load_buffer("t.conf", tmpdir, src, strlen(src), &d, &err), 0);
        ck_assert_msg(json_is_true(json_object_get(d.value, "absent")), "%s is visible", names[i]);
        loyd_luadata_clear(&d);
        free(src);

        src = loyd_xasprintf("x = %s(\"ls\")\n", names[i]);
        ck_assert_int_eq(loyd_luadata_load_buffer("t.conf", tmpdir, src, strlen(src), &d, &err),
                         LOYD_ECONFIG);
        free(src);
    }
    ck_assert_has(err.data, "t.conf:1: attempt to call a nil value (global 'os')");
    loyd_buf_reset(&err);
    static const char calls[] = "x = os.execute(\"touch /tmp/loyd-pwned\")\n";
    ck_assert_int_eq(loyd_luadata_load_buffer("t.conf", tmpdir, calls, strlen(calls), &d, &err),
                     LOYD_ECONFIG);
    ck_assert_has(err.data, "attempt to index a nil value (global 'os')");
    loyd_buf_reset(&err);
    /* Strings have no methods (no string metatable). */
    static const char meth[] = "x = (\"ab\"):rep(3)\n";
    ck_assert_int_eq(loyd_luadata_load_buffer("t.conf", tmpdir, meth, strlen(meth), &d, &err),
                     LOYD_ECONFIG);
    ck_assert_has(err.data, "attempt to index a string value");
    loyd_buf_reset(&err);
    /* Precompiled chunks are refused (text mode only). */
    static const char bin[] = "\x1bLua\x54\x00";
    ck_assert_int_eq(loyd_luadata_load_buffer("t.conf", tmpdir, bin, sizeof(bin) - 1, &d, &err),
                     LOYD_ECONFIG);
    ck_assert_has(err.data, "binary");
    loyd_buf_reset(&err);
    /* Functions are not data. */
    static const char fn[] = "x = env\n";
    ck_assert_int_eq(loyd_luadata_load_buffer("t.conf", tmpdir, fn, strlen(fn), &d, &err),
                     LOYD_ECONFIG);
    ck_assert_has(err.data, "t.conf: key 'x': a function cannot be a config value");
    loyd_buf_free(&err);
}
END_TEST

START_TEST(test_infinite_loop_stops)
{
    struct loyd_config *c = NULL;
    struct loyd_buf err = {0};

    ck_assert_int_eq(load_text("store = \"a\"\nwhile true do end\n", &c, &err), LOYD_ECONFIG);
    ck_assert_has(err.data, ":2: the file exceeded its instruction budget");
    loyd_buf_reset(&err);
    ck_assert_int_eq(load_text("local function f() return f() end\nx = f()\n", &c, &err),
                     LOYD_ECONFIG);
    ck_assert_has(err.data, "instruction budget");
    loyd_buf_free(&err);
}
END_TEST

START_TEST(test_memory_bomb_stops)
{
    struct loyd_config *c = NULL;
    struct loyd_buf err = {0};

    ck_assert_int_eq(load_text("local s = \"xxxxxxxx\"\nfor i = 1, 40 do s = s .. s end\n"
                               "store = s\n",
                               &c, &err),
                     LOYD_ECONFIG);
    ck_assert_has(err.data, "needs more than 8388608 bytes of memory");
    loyd_buf_reset(&err);
    ck_assert_int_eq(load_text("t = {}\nfor i = 1, 100000000 do t[i] = {} end\n", &c, &err),
                     LOYD_ECONFIG);
    ck_assert_has(err.data, "bytes of memory");
    loyd_buf_free(&err);
}
END_TEST

START_TEST(test_oversize_file_rejected)
{
    struct loyd_config *c = NULL;
    struct loyd_buf err = {0};
    size_t n = LOYD_LUADATA_MAX_BYTES + 10;
    char *big = loyd_xmalloc(n + 1);

    memset(big, ' ', n);
    memcpy(big, "store = 'x'", 11);
    big[n] = '\0';
    const char *path = put("loyd.conf", big);
    free(big);
    ck_assert_int_eq(loyd_config_load(path, &c, &err), LOYD_ECONFIG);
    ck_assert_has(err.data, "loyd.conf: file is larger than 1048576 bytes");
    loyd_buf_free(&err);
}
END_TEST

START_TEST(test_deep_nesting_rejected)
{
    struct loyd_buf err = {0}, src = {0};
    struct loyd_luadata d;

    /* 16 levels (the root counts) load; 17 do not. */
    loyd_buf_puts(&src, "return ");
    for (int i = 0; i < 16; i++)
        loyd_buf_puts(&src, "{ a = ");
    loyd_buf_puts(&src, "1");
    for (int i = 0; i < 16; i++)
        loyd_buf_puts(&src, " }");
    ck_assert_int_eq(loyd_luadata_load_buffer("d.conf", tmpdir, src.data, src.len, &d, &err), 0);
    loyd_luadata_clear(&d);
    loyd_buf_reset(&src);
    loyd_buf_puts(&src, "return ");
    for (int i = 0; i < 17; i++)
        loyd_buf_puts(&src, "{ a = ");
    loyd_buf_puts(&src, "1");
    for (int i = 0; i < 17; i++)
        loyd_buf_puts(&src, " }");
    ck_assert_int_eq(loyd_luadata_load_buffer("d.conf", tmpdir, src.data, src.len, &d, &err),
                     LOYD_ECONFIG);
    ck_assert_has(err.data, "tables nested deeper than 16 levels");
    loyd_buf_reset(&err);
    /* A cycle is caught the same way instead of recursing forever. */
    static const char cyc[] = "t = {}\nt.self = t\n";
    ck_assert_int_eq(loyd_luadata_load_buffer("d.conf", tmpdir, cyc, strlen(cyc), &d, &err),
                     LOYD_ECONFIG);
    ck_assert_has(err.data, "nested deeper");
    loyd_buf_free(&err);
    loyd_buf_free(&src);
}
END_TEST

START_TEST(test_syntax_error_has_line)
{
    struct loyd_config *c = NULL;
    struct loyd_buf err = {0};
    const char *path = src_path("tests/data/config/syntax.conf");

    ck_assert_int_eq(loyd_config_load(path, &c, &err), LOYD_ECONFIG);
    char *want = loyd_xasprintf("%s:5: '}' expected (to close '{' at line 3) near "
                                "'max_connections'\n",
                                path);
    ck_assert_str_eq(err.data, want);
    free(want);
    loyd_buf_free(&err);
}
END_TEST

START_TEST(test_bad_values_in_tables)
{
    struct loyd_buf err = {0};
    struct loyd_luadata d;
    static const char mixed[] = "a = { 1, 2, x = 3 }\nb = { [1] = 1, [3] = 3 }\n"
                                "c = { [1.5] = 1 }\nd = 0/0\ne = \"\\xff\"\n";

    ck_assert_int_eq(loyd_luadata_load_buffer("m.conf", tmpdir, mixed, strlen(mixed), &d, &err),
                     LOYD_ECONFIG);
    ck_assert_has(err.data, "key 'a': table mixes array items and named keys");
    ck_assert_has(err.data, "key 'b': array has holes");
    ck_assert_has(err.data, "key 'c': table keys must be names");
    ck_assert_has(err.data, "key 'd': number is not finite");
    ck_assert_has(err.data, "key 'e': string is not valid UTF-8");
    ck_assert_int_eq(count_lines(err.data), 5);
    loyd_buf_free(&err);
}
END_TEST

START_TEST(test_lines_map)
{
    struct loyd_buf err = {0};
    struct loyd_luadata d;
    static const char src[] = "-- comment with x = {\n"
                              "a = {\n"
                              "  b = 1, --[[ c = 2\n"
                              "  ]] c = { \"s\", { d = 2 } },\n"
                              "  [\"e f\"] = \"}\",\n"
                              "}\n"
                              "a.g = 3\n";

    ck_assert_int_eq(loyd_luadata_load_buffer("l.conf", tmpdir, src, strlen(src), &d, &err), 0);
    ck_assert_int_eq(json_integer_value(json_object_get(d.lines, "a")), 2);
    ck_assert_int_eq(json_integer_value(json_object_get(d.lines, "a.b")), 3);
    ck_assert_int_eq(json_integer_value(json_object_get(d.lines, "a.c")), 4);
    ck_assert_int_eq(json_integer_value(json_object_get(d.lines, "a.c[2].d")), 4);
    ck_assert_int_eq(json_integer_value(json_object_get(d.lines, "a[\"e f\"]")), 5);
    ck_assert_int_eq(json_integer_value(json_object_get(d.lines, "a.g")), 7);
    ck_assert_ptr_null(json_object_get(d.lines, "x"));
    ck_assert_int_eq(json_integer_value(json_object_get(json_object_get(d.value, "a"), "g")), 3);
    loyd_luadata_clear(&d);
    loyd_buf_free(&err);
}
END_TEST

START_TEST(test_nearest)
{
    static const char *const keys[] = {
        "listen",           "store",           "tenants", "limits", "max_body_bytes",
        "max_header_bytes", "idle_timeout_ms", NULL};
    ck_assert_str_eq(loyd_cfg_nearest("listne", keys), "listen");
    ck_assert_str_eq(loyd_cfg_nearest("Listen", keys), "listen");
    ck_assert_str_eq(loyd_cfg_nearest("stor", keys), "store");
    ck_assert_str_eq(loyd_cfg_nearest("tenant", keys), "tenants");
    ck_assert_str_eq(loyd_cfg_nearest("max_bdy", keys), "max_body_bytes");
    ck_assert_str_eq(loyd_cfg_nearest("max_body", keys), "max_body_bytes");
    ck_assert_str_eq(loyd_cfg_nearest("idle_timeout", keys), "idle_timeout_ms");
    ck_assert_ptr_null(loyd_cfg_nearest("zzzz", keys));
    ck_assert_ptr_null(loyd_cfg_nearest("x", keys));
    ck_assert_ptr_null(loyd_cfg_nearest("database", keys));
}
END_TEST

/* ---- tenants ------------------------------------------------------------------------------- */

START_TEST(test_tenant_dir_loads)
{
    struct loyd_tenant_config **ts = NULL;
    struct loyd_config *c = NULL;
    struct loyd_buf err = {0};
    size_t n = 0;
    int rc = loyd_tenants_load_dir(src_path("tests/data/config/tenants"), &ts, &n, &err);

    ck_assert_msg(rc == 0, "%s", err.data);
    ck_assert_uint_eq(n, 2);
    ck_assert_str_eq(ts[0]->name, "alpha");
    ck_assert_str_eq(ts[0]->connector, "bitrix24");
    ck_assert_str_eq(ts[0]->pack, "retail");
    ck_assert_str_eq(ts[0]->timezone, "Europe/Moscow");
    ck_assert(ts[0]->enabled);
    ck_assert_ptr_null(ts[0]->path_secret);
    ck_assert_str_eq(json_string_value(json_object_get(ts[0]->crm, "token")),
                     "file-secret-0123456789");
    ck_assert(json_is_true(json_object_get(ts[0]->secrets, "crm.token")));
    ck_assert_int_eq(json_integer_value(
                         json_object_get(json_object_get(ts[0]->settings, "cashback_bp"), "base")),
                     300);
    ck_assert_str_eq(ts[1]->name, "beta");
    ck_assert_str_eq(ts[1]->connector, "amocrm");
    ck_assert_str_eq(ts[1]->timezone, "UTC");
    ck_assert(!ts[1]->enabled);
    ck_assert_str_eq(ts[1]->path_secret, "abcdefghijklmnop0123");
    ck_assert(json_is_object(ts[1]->crm) && json_object_size(ts[1]->crm) == 0);

    /* Pack resolution: a name goes under packs, a path is relative to the tenant file. */
    ck_assert_int_eq(load_text("packs = \"/opt/packs\"\n", &c, &err), 0);
    char *p0 = loyd_tenant_pack_dir(c, ts[0]), *p1 = loyd_tenant_pack_dir(c, ts[1]);
    ck_assert_str_eq(p0, "/opt/packs/retail");
    char *want = loyd_xasprintf("%s/./packs/custom", ts[1]->dir);
    ck_assert_str_eq(p1, want);
    free(want);
    free(p0);
    free(p1);
    loyd_config_free(c);
    loyd_tenants_free(ts, n);
    loyd_buf_free(&err);
}
END_TEST

START_TEST(test_tenant_dir_errors)
{
    struct loyd_tenant_config **ts = NULL;
    struct loyd_buf err = {0};
    size_t n = 0;
    const char *dir = src_path("tests/data/config/tenants_bad");

    ck_assert_int_eq(loyd_tenants_load_dir(dir, &ts, &n, &err), LOYD_ECONFIG);
    ck_assert_ptr_null(ts);
    ck_assert_uint_eq(n, 0);
    ck_assert_has(err.data, "BadName.conf: tenant name 'BadName' (the file name without .conf) "
                            "must be 1-64 characters of a-z, 0-9, _ and -\n");
    ck_assert_has(err.data, "broken.conf:1: key 'connector': expected one of 'bitrix24', "
                            "'amocrm', 'zoho', got \"zohoo\"; did you mean 'zoho'?\n");
    ck_assert_has(err.data, "broken.conf:2: key 'pak': unknown key; did you mean 'pack'?\n");
    ck_assert_has(err.data, "broken.conf: key 'pack': required key is missing\n");
    ck_assert_int_eq(count_lines(err.data), 4);
    loyd_buf_reset(&err);

    char *missing = loyd_xasprintf("%s/nope.d", tmpdir);
    ck_assert_int_eq(loyd_tenants_load_dir(missing, &ts, &n, &err), LOYD_ECONFIG);
    char *want = loyd_xasprintf("%s: tenant directory does not exist\n", missing);
    ck_assert_str_eq(err.data, want);
    free(want);
    free(missing);
    loyd_buf_reset(&err);

    /* An empty directory is not an error: no tenants yet. */
    ck_assert_int_eq(loyd_tenants_load_dir(tmpdir, &ts, &n, &err), 0);
    ck_assert_uint_eq(n, 0);
    ck_assert_str_eq(err.data == NULL ? "" : err.data, "");
    loyd_tenants_free(ts, n);

    ck_assert(loyd_tenant_name_valid("shop-1_a"));
    ck_assert(!loyd_tenant_name_valid("Shop"));
    ck_assert(!loyd_tenant_name_valid(""));
    ck_assert(!loyd_tenant_name_valid("a.b"));
    ck_assert(!loyd_tenant_name_valid("../x"));
    loyd_buf_free(&err);
}
END_TEST

START_TEST(test_sample_tenant_loads)
{
    struct loyd_tenant_config *t = NULL;
    struct loyd_buf err = {0};
    FILE *in = fopen(src_path("packaging/tenants/demo.conf"), "r");
    struct loyd_buf text = {0};
    char chunk[4096];
    size_t r;
    char sub[300];

    ck_assert_ptr_nonnull(in);
    while ((r = fread(chunk, 1, sizeof(chunk), in)) > 0)
        loyd_buf_append(&text, chunk, r);
    fclose(in);
    snprintf(sub, sizeof(sub), "%s/secrets", tmpdir);
    ck_assert_int_eq(mkdir(sub, 0700), 0);
    put("secrets/demo.application_token", "app-token-0000\n");
    setenv("LOYD_DEMO_B24_WEBHOOK_URL", "https://demo.bitrix24.com/rest/1/webhook-code-1111/", 1);
    int rc = loyd_tenant_config_load(put("demo.conf", text.data), &t, &err);
    ck_assert_msg(rc == 0, "%s", err.data);
    ck_assert_str_eq(t->name, "demo");
    ck_assert_str_eq(t->connector, "bitrix24");
    ck_assert_str_eq(t->timezone, "Europe/Moscow");
    ck_assert_str_eq(json_string_value(json_object_get(t->crm, "application_token")),
                     "app-token-0000");
    ck_assert(json_is_true(json_object_get(t->secrets, "crm.webhook_url")));
    /* Its crm table is what the Bitrix24 connector accepts. */
    const struct loyd_plugin *b24;
    void *dl;
    ck_assert_int_eq(loyd_plugin_find("bitrix24", NULL, &b24, &dl, &err), 0);
    rc = loyd_config_validate_fields(t->path, "crm", loyd_plugin_connector(b24)->tenant_config,
                                     t->crm, &err);
    ck_assert_msg(rc == 0, "%s", err.data);
    /* The sample's settings overrides are valid for the stock pack it names. */
    struct loyd_pack *pack = NULL;
    json_t *settings = NULL;
    rc = loyd_pack_load(src_path("rules/retail"), NULL, &pack, &err);
    ck_assert_msg(rc == 0, "%s", err.data);
    rc = loyd_pack_settings(pack, t->settings, t->path, &settings, &err);
    ck_assert_msg(rc == 0, "%s", err.data);
    ck_assert_int_eq(json_integer_value(json_object_get(settings, "birthday_discount_pct")), 10);
    json_decref(settings);
    loyd_pack_destroy(pack);
    loyd_tenant_config_free(t);
    loyd_buf_free(&text);
    loyd_buf_free(&err);
}
END_TEST

/* ---- plugin schemas ------------------------------------------------------------------------ */

static const struct loyd_config_field plugin_schema[] = {
    {LOYD_FIELD_STRING, "base_url", "https://example.com", false, "where the API is"},
    {LOYD_FIELD_INT, "retries", "3", false, "attempts"},
    {LOYD_FIELD_BOOL, "verbose", "false", false, "chatty"},
    {LOYD_FIELD_SECRET, "token", NULL, true, "API token"},
    {LOYD_FIELD_TABLE, "fields", "{\"balance\": \"UF_BALANCE\"}", false, "field map"},
    {0},
};

START_TEST(test_plugin_fields)
{
    struct loyd_buf err = {0};
    json_t *obj = json_pack("{s:s, s:i}", "token", "tok-abcdef-123", "retries", 5);

    ck_assert_int_eq(loyd_config_validate_fields("t.conf", "crm", plugin_schema, obj, &err), 0);
    ck_assert_str_eq(json_string_value(json_object_get(obj, "base_url")), "https://example.com");
    ck_assert_int_eq(json_integer_value(json_object_get(obj, "retries")), 5);
    ck_assert(json_is_false(json_object_get(obj, "verbose")));
    ck_assert_str_eq(json_string_value(json_object_get(json_object_get(obj, "fields"), "balance")),
                     "UF_BALANCE");
    json_decref(obj);

    obj = json_pack("{s:s, s:f, s:s, s:i}", "base_ulr", "x", "retries", 2.5, "verbose", "yes",
                    "zzzzzz", 1);
    ck_assert_int_eq(loyd_config_validate_fields("t.conf", "crm", plugin_schema, obj, &err),
                     LOYD_ECONFIG);
    ck_assert_has(err.data, "t.conf: key 'crm.base_ulr': unknown key; did you mean 'base_url'?\n");
    ck_assert_has(err.data, "t.conf: key 'crm.zzzzzz': unknown key (valid keys here: base_url, "
                            "retries, verbose, token, fields)\n");
    ck_assert_has(err.data, "t.conf: key 'crm.retries': expected integer, got float");
    ck_assert_has(err.data, "t.conf: key 'crm.verbose': expected boolean, got string\n");
    ck_assert_has(err.data, "t.conf: key 'crm.token': required key is missing\n");
    ck_assert_int_eq(count_lines(err.data), 5);
    json_decref(obj);
    loyd_buf_reset(&err);

    /* A secret of the wrong type is named by key only. */
    obj = json_pack("{s:[s]}", "token", "tok-abcdef-123");
    ck_assert_int_eq(loyd_config_validate_fields("t.conf", "crm", plugin_schema, obj, &err),
                     LOYD_ECONFIG);
    ck_assert_has(err.data, "key 'crm.token': expected string, got list");
    ck_assert_lacks(err.data, "tok-abcdef");
    json_decref(obj);
    loyd_buf_free(&err);
}
END_TEST

START_TEST(test_plugin_fields_from_files)
{
    struct loyd_config *c = NULL;
    struct loyd_tenant_config *t = NULL;
    struct loyd_buf err = {0};

    setenv("LOYD_TEST_TOKEN", "plugin-token-777", 1);
    ck_assert_int_eq(load_text("plugins = {\n"
                               "  { name = \"example\" },\n"
                               "  { name = \"other\", config = {\n"
                               "      token = env \"LOYD_TEST_TOKEN\",\n"
                               "      retries = env \"LOYD_TEST_TOKEN\",\n"
                               "      verbsoe = true } },\n"
                               "}\n",
                               &c, &err),
                     0);
    ck_assert_int_eq(loyd_config_validate_plugin(c, 1, plugin_schema, &err), LOYD_ECONFIG);
    ck_assert_has(err.data, ":5: key 'plugins[2].config.retries': expected integer, got string\n");
    ck_assert_has(err.data, ":6: key 'plugins[2].config.verbsoe': unknown key; did you mean "
                            "'verbose'?\n");
    ck_assert_lacks(err.data, "plugin-token");
    loyd_buf_reset(&err);
    ck_assert_int_eq(loyd_config_validate_plugin(c, 0, plugin_schema, &err), LOYD_ECONFIG);
    ck_assert_has(err.data, "key 'plugins[1].config.token': required key is missing");
    loyd_config_free(c);
    loyd_buf_reset(&err);

    ck_assert_int_eq(loyd_tenant_config_load(put("shop.conf", "connector = \"zoho\"\n"
                                                              "pack = \"retail\"\n"
                                                              "crm = {\n"
                                                              "  token = \"t\",\n"
                                                              "  retrys = 2,\n"
                                                              "}\n"),
                                             &t, &err),
                     0);
    ck_assert_int_eq(loyd_tenant_config_validate_crm(t, plugin_schema, &err), LOYD_ECONFIG);
    ck_assert_has(err.data, "shop.conf:5: key 'crm.retrys': unknown key; did you mean 'retries'?");
    ck_assert_int_eq(json_integer_value(json_object_get(t->crm, "retries")), 3);
    loyd_tenant_config_free(t);
    loyd_buf_free(&err);
}
END_TEST

/* ---- docs ---------------------------------------------------------------------------------- */

#define DOC_BEGIN "<!-- BEGIN GENERATED REFERENCE (tests/unit/check_config.c) -->\n"
#define DOC_END "<!-- END GENERATED REFERENCE -->\n"

static void doc_keys(const struct loyd_cfg_field *fields, const char *prefix, const char *doc)
{
    for (const struct loyd_cfg_field *f = fields; f->name != NULL; f++) {
        char *key = loyd_xasprintf("`%s%s`", prefix, f->name);
        ck_assert_msg(strstr(doc, key) != NULL, "docs/CONFIG.md does not mention %s", key);
        char *sub = NULL;
        if (f->type == LOYD_CFG_TABLE)
            sub = loyd_xasprintf("%s%s.", prefix, f->name);
        else if (f->type == LOYD_CFG_ARRAY && f->elem->type == LOYD_CFG_TABLE)
            sub = loyd_xasprintf("%s%s[].", prefix, f->name);
        if (sub != NULL)
            doc_keys(f->type == LOYD_CFG_TABLE ? f->fields : f->elem->fields, sub, doc);
        free(sub);
        free(key);
    }
}

/*
 * docs/CONFIG.md must carry the reference generated from the schema, verbatim.  To refresh it
 * after a schema change: LOYD_UPDATE_DOCS=1 CK_RUN_SUITE=config make check.
 */
START_TEST(test_docs_match_schema)
{
    const char *path = src_path("docs/CONFIG.md");
    struct loyd_buf doc = {0}, gen = {0};
    char chunk[4096];
    size_t r;
    FILE *f = fopen(path, "r");

    ck_assert_msg(f != NULL, "cannot open %s", path);
    while ((r = fread(chunk, 1, sizeof(chunk), f)) > 0)
        loyd_buf_append(&doc, chunk, r);
    fclose(f);
    loyd_config_reference_markdown(&gen);

    char *b = strstr(doc.data, DOC_BEGIN), *e = b ? strstr(b, DOC_END) : NULL;
    ck_assert_msg(b != NULL && e != NULL, "docs/CONFIG.md lacks the generated-reference markers");
    b += strlen(DOC_BEGIN);
    bool same = (size_t)(e - b) == gen.len && memcmp(b, gen.data, gen.len) == 0;
    if (!same && getenv("LOYD_UPDATE_DOCS") != NULL) {
        struct loyd_buf out = {0};
        loyd_buf_append(&out, doc.data, (size_t)(b - doc.data));
        loyd_buf_append(&out, gen.data, gen.len);
        loyd_buf_puts(&out, e);
        f = fopen(path, "w");
        ck_assert_ptr_nonnull(f);
        fwrite(out.data, 1, out.len, f);
        fclose(f);
        loyd_buf_free(&doc);
        doc = out;
        same = true;
    }
    ck_assert_msg(same,
                  "docs/CONFIG.md is out of date with the schema; run "
                  "LOYD_UPDATE_DOCS=1 CK_RUN_SUITE=config make check. Expected:\n%s",
                  gen.data);
    doc_keys(loyd_config_daemon_schema, "", doc.data);
    doc_keys(loyd_config_tenant_schema, "", doc.data);
    loyd_buf_free(&doc);
    loyd_buf_free(&gen);
}
END_TEST

Suite *config_suite(void)
{
    Suite *s = suite_create("config");
    TCase *tc = tcase_create("daemon");
    tcase_add_checked_fixture(tc, setup, teardown);
    tcase_set_timeout(tc, 20);
    tcase_add_test(tc, test_sample_config_loads);
    tcase_add_test(tc, test_defaults);
    tcase_add_test(tc, test_full_return_form);
    tcase_add_test(tc, test_typo_suggests_nearest);
    tcase_add_test(tc, test_nested_typo);
    tcase_add_test(tc, test_wrong_types_all_reported);
    tcase_add_test(tc, test_float_rejected_for_integers);
    tcase_add_test(tc, test_enum_and_check_messages);
    tcase_add_test(tc, test_assign_and_return_forms);
    tcase_add_test(tc, test_nearest);
    suite_add_tcase(s, tc);

    tc = tcase_create("sandbox");
    tcase_add_checked_fixture(tc, setup, teardown);
    tcase_set_timeout(tc, 20);
    tcase_add_test(tc, test_env_helper);
    tcase_add_test(tc, test_file_helper);
    tcase_add_test(tc, test_secret_never_in_errors);
    tcase_add_test(tc, test_sandbox_has_no_libraries);
    tcase_add_test(tc, test_infinite_loop_stops);
    tcase_add_test(tc, test_memory_bomb_stops);
    tcase_add_test(tc, test_oversize_file_rejected);
    tcase_add_test(tc, test_deep_nesting_rejected);
    tcase_add_test(tc, test_syntax_error_has_line);
    tcase_add_test(tc, test_bad_values_in_tables);
    tcase_add_test(tc, test_lines_map);
    suite_add_tcase(s, tc);

    tc = tcase_create("tenants");
    tcase_add_checked_fixture(tc, setup, teardown);
    tcase_set_timeout(tc, 20);
    tcase_add_test(tc, test_tenant_dir_loads);
    tcase_add_test(tc, test_tenant_dir_errors);
    tcase_add_test(tc, test_sample_tenant_loads);
    tcase_add_test(tc, test_plugin_fields);
    tcase_add_test(tc, test_plugin_fields_from_files);
    tcase_add_test(tc, test_docs_match_schema);
    suite_add_tcase(s, tc);
    return s;
}
