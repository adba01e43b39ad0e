/* SPDX-License-Identifier: MIT */
/*
 * End to end: the real `loyd serve` binary on an OS-chosen loopback port, in a temporary
 * directory.  Covers health and metrics, routing answers, path secrets, durable intake across
 * SIGKILL, config typos, SIGHUP reload (bad and good) and the SIGTERM drain.
 */
#include <check.h>
#include <signal.h>
#include <sqlite3.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <unistd.h>

#include "e2e.h"
#include "util.h"

static const char DAEMON_CONF[] = "listen = \"127.0.0.1:0\"\n"
                                  "store = \"loyd.db\"\n"
                                  "tenants = \"tenants.d\"\n"
                                  "log_level = \"debug\"\n";

static const char TENANT_CONF[] = "connector = \"bitrix24\"\n"
                                  "pack = \"retail\"\n"
                                  "crm = { application_token = \"51856fefc120afa4b628cc82d3935cce\" }\n";

/* A documented ONCRMDEALUPDATE delivery, form-encoded as Bitrix24 sends it. */
static const char HOOK_BODY[] =
    "event=ONCRMDEALUPDATE&event_handler_id=201&data%5BFIELDS%5D%5BID%5D=759&ts=1736405807"
    "&auth%5Bdomain%5D=some-domain.bitrix24.com&auth%5Bmember_id%5D=a223c6b3710f85df22e9377d6c4f7553"
    "&auth%5Bapplication_token%5D=51856fefc120afa4b628cc82d3935cce";

static const char FORM[] = "Content-Type: application/x-www-form-urlencoded\r\n";

static char *dir;
static struct loyd_proc proc;

/* Writes the daemon config: @p body plus where the stock rule packs are in this checkout. */
static void write_conf(const char *body)
{
    const char *src = getenv("LOYD_SRC");
    ck_assert_msg(src != NULL, "LOYD_SRC is not set (run through make check)");
    char *text = loyd_xasprintf("%spacks = \"%s/rules\"\n", body, src);
    loyd_e2e_write(dir, "loyd.conf", text);
    free(text);
}

static void setup(void)
{
    dir = loyd_e2e_tmpdir();
    write_conf(DAEMON_CONF);
    loyd_e2e_write(dir, "tenants.d/acme.conf", TENANT_CONF);
    memset(&proc, 0, sizeof(proc));
}

static void teardown(void)
{
    loyd_e2e_assert_clean(&proc);
    if (proc.pid > 0) {
        kill(proc.pid, SIGKILL);
        loyd_e2e_wait_exit(&proc, 5000);
    }
    char cmd[600];
    snprintf(cmd, sizeof(cmd), "rm -rf '%s'", dir);
    ck_assert_int_eq(system(cmd), 0);
    free(dir);
}

static int start(void)
{
    const char *argv[] = {"serve", "-c", "loyd.conf", NULL};
    loyd_e2e_spawn(&proc, dir, argv);
    int port = loyd_e2e_wait_port(&proc, 10000);
    if (port < 0) {
        char *log = loyd_e2e_log(&proc);
        ck_abort_msg("loyd did not start:\n%s", log);
    }
    return port;
}

/* `loyd serve -c CONF` must exit 2 with a log that names every one of @p needles. */
static void expect_refusal(const char *conf, const char *const *needles)
{
    const char *argv[] = {"serve", "-c", conf, NULL};
    loyd_e2e_spawn(&proc, dir, argv);
    int code = loyd_e2e_wait_exit(&proc, 10000);
    char *log = loyd_e2e_log(&proc);
    ck_assert_msg(code == 2, "exit %d, log:\n%s", code, log);
    for (size_t i = 0; needles[i] != NULL; i++)
        ck_assert_msg(strstr(log, needles[i]) != NULL, "log lacks '%s':\n%s", needles[i], log);
    free(log);
}

static long inbox_rows(const char *body)
{
    char path[600];
    sqlite3 *db;
    sqlite3_stmt *st;
    long n = -1;

    snprintf(path, sizeof(path), "%s/loyd.db", dir);
    ck_assert_int_eq(sqlite3_open_v2(path, &db, SQLITE_OPEN_READONLY, NULL), SQLITE_OK);
    ck_assert_int_eq(sqlite3_prepare_v2(db, "SELECT count(*) FROM inbox WHERE tenant = 'acme' "
                                            "AND body = ?", -1, &st, NULL), SQLITE_OK);
    sqlite3_bind_blob(st, 1, body, (int)strlen(body), SQLITE_STATIC);
    if (sqlite3_step(st) == SQLITE_ROW)
        n = sqlite3_column_int64(st, 0);
    sqlite3_finalize(st);
    sqlite3_close(db);
    return n;
}

START_TEST(test_health_metrics_routes)
{
    int port = start();
    char *body;

    ck_assert_int_eq(loyd_e2e_http(port, "GET", "/healthz", NULL, NULL, 0, &body), 200);
    ck_assert_str_eq(body, "ok\n");
    free(body);
    ck_assert_int_eq(loyd_e2e_http(port, "POST", "/healthz", NULL, "x", 1, NULL), 405);
    ck_assert_int_eq(loyd_e2e_http(port, "GET", "/nope", NULL, NULL, 0, NULL), 404);
    ck_assert_int_eq(loyd_e2e_http(port, "GET", "/hooks/acme", NULL, NULL, 0, NULL), 405);
    ck_assert_int_eq(loyd_e2e_http(port, "POST", "/hooks/ghost", FORM, "a=1", 3, NULL), 404);
    ck_assert_int_eq(loyd_e2e_http(port, "POST", "/hooks/acme/a/b", FORM, "a=1", 3, NULL), 404);
    ck_assert_int_eq(loyd_e2e_http(port, "GET", "/metrics", NULL, NULL, 0, &body), 200);
    ck_assert_ptr_nonnull(strstr(body, "loyd_http_requests_total{route=\"healthz\",status=\"200\"} 1\n"));
    ck_assert_ptr_nonnull(strstr(body, "loyd_http_requests_total{route=\"hooks\",status=\"404\"} 2\n"));
    ck_assert_ptr_nonnull(strstr(body, "loyd_inbox_depth 0\n"));
    ck_assert_ptr_nonnull(strstr(body, "loyd_crm_calls_total{outcome=\"ok\"} 0\n"));
    free(body);
}
END_TEST

START_TEST(test_webhook_survives_sigkill)
{
    int port = start();

    ck_assert_int_eq(loyd_e2e_http(port, "POST", "/hooks/acme", FORM, HOOK_BODY,
                                   strlen(HOOK_BODY), NULL), 200);
    /* Killed the instant after the 200: the row must already be on disk. */
    kill(proc.pid, SIGKILL);
    ck_assert_int_eq(loyd_e2e_wait_exit(&proc, 5000), 128 + SIGKILL);
    ck_assert_int_eq(inbox_rows(HOOK_BODY), 1);

    port = start();
    char *body;
    ck_assert_int_eq(loyd_e2e_http(port, "GET", "/metrics", NULL, NULL, 0, &body), 200);
    ck_assert_ptr_nonnull(strstr(body, "loyd_inbox_depth 1\n"));
    free(body);
    /* The same delivery again is acknowledged and not stored twice. */
    ck_assert_int_eq(loyd_e2e_http(port, "POST", "/hooks/acme", FORM, HOOK_BODY,
                                   strlen(HOOK_BODY), NULL), 200);
    kill(proc.pid, SIGKILL);
    loyd_e2e_wait_exit(&proc, 5000);
    ck_assert_int_eq(inbox_rows(HOOK_BODY), 1);
}
END_TEST

START_TEST(test_path_secret)
{
    loyd_e2e_write(dir, "tenants.d/acme.conf",
                   "connector = \"bitrix24\"\npack = \"retail\"\npath_secret = \"s3cr3t-path-0123456789\"\n"
                   "crm = { application_token = \"51856fefc120afa4b628cc82d3935cce\" }\n");
    int port = start();

    ck_assert_int_eq(loyd_e2e_http(port, "POST", "/hooks/acme", FORM, "a=1", 3, NULL), 401);
    ck_assert_int_eq(loyd_e2e_http(port, "POST", "/hooks/acme/s3cr3t-path-012345678X", FORM, "a=1", 3, NULL), 401);
    ck_assert_int_eq(loyd_e2e_http(port, "POST", "/hooks/acme/s3cr3t-path-0123456789", FORM,
                                   HOOK_BODY, strlen(HOOK_BODY), NULL), 200);
    char *log = loyd_e2e_log(&proc);
    ck_assert_ptr_null(strstr(log, "s3cr3t"));
    free(log);
}
END_TEST

START_TEST(test_config_typo_refuses_to_start)
{
    write_conf("listne = \"127.0.0.1:0\"\nstore = \"loyd.db\"\n");
    /* The file, the key and the suggestion. */
    expect_refusal("loyd.conf", (const char *const[]){"loyd.conf", "listne", "'listen'", NULL});
    expect_refusal("nosuch.conf", (const char *const[]){"nosuch.conf", NULL});
}
END_TEST

START_TEST(test_sighup_reload)
{
    int port = start();

    ck_assert_int_eq(loyd_e2e_http(port, "POST", "/hooks/beta", FORM, "a=1", 3, NULL), 404);
    /* A broken config is refused and the old one keeps serving. */
    write_conf("listen = \"127.0.0.1:0\"\nstorre = \"x.db\"\n");
    kill(proc.pid, SIGHUP);
    char *log;
    ck_assert(loyd_e2e_wait_log(&proc, "reload refused", 4000, &log));
    ck_assert_msg(strstr(log, "storre") != NULL, "log:\n%s", log);
    free(log);
    ck_assert_int_eq(loyd_e2e_http(port, "GET", "/healthz", NULL, NULL, 0, NULL), 200);
    /* A tenant whose pack settings are wrong is refused as a whole, too. */
    write_conf(DAEMON_CONF);
    loyd_e2e_write(dir, "tenants.d/beta.conf", "connector = \"bitrix24\"\npack = \"retail\"\n"
                                               "settings = { points_ttl_days = \"soon\" }\n");
    kill(proc.pid, SIGHUP);
    ck_assert(loyd_e2e_wait_log(&proc, "points_ttl_days", 4000, NULL));
    ck_assert_int_eq(loyd_e2e_http(port, "POST", "/hooks/beta", FORM, "a=1", 3, NULL), 404);
    /* A good one with a new tenant takes effect. */
    write_conf(DAEMON_CONF);
    loyd_e2e_write(dir, "tenants.d/beta.conf", TENANT_CONF);
    kill(proc.pid, SIGHUP);
    int status = 404;
    for (int i = 0; i < 200 && status == 404; i++) {
        usleep(20000);
        status = loyd_e2e_http(port, "POST", "/hooks/beta", FORM, HOOK_BODY, strlen(HOOK_BODY),
                               NULL);
    }
    ck_assert_int_eq(status, 200);
}
END_TEST

START_TEST(test_sigterm_drains_cleanly)
{
    int port = start();

    ck_assert_int_eq(loyd_e2e_http(port, "POST", "/hooks/acme", FORM, HOOK_BODY,
                                   strlen(HOOK_BODY), NULL), 200);
    kill(proc.pid, SIGTERM);
    int code = loyd_e2e_wait_exit(&proc, 10000);
    char *log = loyd_e2e_log(&proc);
    ck_assert_msg(code == 0 && strstr(log, "stopped cleanly"), "exit %d, log:\n%s", code, log);
    free(log);
    ck_assert_int_eq(inbox_rows(HOOK_BODY), 1);
}
END_TEST


START_TEST(test_idle_connections_bounded)
{
    write_conf("listen = \"127.0.0.1:0\"\nstore = \"loyd.db\"\ntenants = \"tenants.d\"\n"
                   "limits = { max_connections = 100, idle_timeout_ms = 1000, "
                   "read_timeout_ms = 1000 }\n");
    int port = start();
    enum { N = 300 };
    int fds[N], refused = 0, closed = 0;

    for (int i = 0; i < N; i++)
        fds[i] = loyd_e2e_connect(port);
    /* Past the cap a connection is answered 503 and closed; the first ones are cut when
     * they stay silent past read_timeout_ms. */
    for (int i = 0; i < N; i++) {
        char buf[256];
        ssize_t r = fds[i] < 0 ? 0 : read(fds[i], buf, sizeof(buf) - 1);
        if (r > 0) {
            buf[r] = '\0';
            if (strstr(buf, " 503 "))
                refused++;
        } else {
            closed++;
        }
        if (fds[i] >= 0)
            close(fds[i]);
    }
    /* (Past 64 pending 503s the server closes without answering: still refused.) */
    ck_assert_msg(refused > 0, "none of %d answered 503", N);
    ck_assert_int_eq(refused + closed, N);
    /* The daemon is still healthy and says what it did. */
    char *body;
    ck_assert_int_eq(loyd_e2e_http(port, "GET", "/metrics", NULL, NULL, 0, &body), 200);
    ck_assert_ptr_nonnull(strstr(body, "loyd_http_rejected_busy_total "));
    ck_assert_ptr_null(strstr(body, "loyd_http_rejected_busy_total 0\n"));
    ck_assert_ptr_null(strstr(body, "loyd_http_timeouts_total 0\n"));
    free(body);
}
END_TEST

START_TEST(test_bad_pack_settings_refuse_to_start)
{
    loyd_e2e_write(dir, "tenants.d/acme.conf", "connector = \"bitrix24\"\npack = \"retail\"\n"
                                               "settings = { welcom_points = 10 }\n");
    expect_refusal("loyd.conf", (const char *const[]){"welcom_points", "welcome_points", NULL});
    loyd_e2e_write(dir, "tenants.d/acme.conf", "connector = \"bitrix24\"\npack = \"nosuch\"\n");
    expect_refusal("loyd.conf", (const char *const[]){"nosuch", NULL});
    loyd_e2e_write(dir, "tenants.d/acme.conf", "connector = \"bitrix24\"\npack = \"retail\"\n"
                                               "timezone = \"Mars/Olympus\"\n");
    expect_refusal("loyd.conf", (const char *const[]){"Mars/Olympus", NULL});
    /* What the connector refuses names the tenant file and line, as the daemon's errors do. */
    loyd_e2e_write(dir, "tenants.d/acme.conf",
                   "connector = \"bitrix24\"\npack = \"retail\"\ncrm = {\n"
                   "  application_token = \"51856fefc120afa4b628cc82d3935cce\",\n"
                   "  rate = \"fast\",\n}\n");
    expect_refusal("loyd.conf",
                   (const char *const[]){"tenants.d/acme.conf:5: key 'crm.rate': expected", NULL});
}
END_TEST

START_TEST(test_bitrix24_token_verified)
{
    int port = start();
    char *forged = loyd_xstrdup(HOOK_BODY);
    char *tok = strstr(forged, "51856fefc120afa4b628cc82d3935cce");
    tok[0] = '6';
    char *body;

    ck_assert_int_eq(loyd_e2e_http(port, "POST", "/hooks/acme", FORM, forged, strlen(forged),
                                   &body), 401);
    free(body);
    ck_assert_int_eq(loyd_e2e_http(port, "POST", "/hooks/acme", FORM, "a=1", 3, &body), 400);
    ck_assert_str_eq(body, "no 'event' field: not a Bitrix24 event\n");
    free(body);
    ck_assert_int_eq(loyd_e2e_http(port, "POST", "/hooks/acme", "Content-Type: text/plain\r\n",
                                   HOOK_BODY, strlen(HOOK_BODY), NULL), 400);
    ck_assert_int_eq(inbox_rows(forged), 0);
    ck_assert_int_eq(loyd_e2e_http(port, "POST", "/hooks/acme", FORM, HOOK_BODY,
                                   strlen(HOOK_BODY), NULL), 200);
    ck_assert_int_eq(inbox_rows(HOOK_BODY), 1);
    char *log = loyd_e2e_log(&proc);
    ck_assert_ptr_nonnull(strstr(log, "wrong auth[application_token]"));
    ck_assert_ptr_null(strstr(log, "51856fefc120afa4b628cc82d3935cce"));
    free(log);
    free(forged);
    ck_assert_int_eq(loyd_e2e_http(port, "GET", "/metrics", NULL, NULL, 0, &body), 200);
    ck_assert_ptr_nonnull(strstr(body, "loyd_webhooks_rejected_total 3\n"));
    free(body);
}
END_TEST

Suite *e2e_serve_suite(void)
{
    Suite *s = suite_create("e2e_serve");
    TCase *tc = tcase_create("serve");
    tcase_add_checked_fixture(tc, setup, teardown);
    tcase_set_timeout(tc, 60);
    tcase_add_test(tc, test_health_metrics_routes);
    tcase_add_test(tc, test_webhook_survives_sigkill);
    tcase_add_test(tc, test_path_secret);
    tcase_add_test(tc, test_bitrix24_token_verified);
    tcase_add_test(tc, test_config_typo_refuses_to_start);
    tcase_add_test(tc, test_sighup_reload);
    tcase_add_test(tc, test_sigterm_drains_cleanly);
    tcase_add_test(tc, test_idle_connections_bounded);
    tcase_add_test(tc, test_bad_pack_settings_refuse_to_start);
    suite_add_tcase(s, tc);
    return s;
}
