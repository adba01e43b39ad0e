/* SPDX-License-Identifier: MIT */
/*
 * End to end: `loyd emulate bitrix24` over real loopback HTTP, and its outbound events arriving
 * at a real `loyd serve` as form-encoded webhooks that are durably stored.
 */
#include <check.h>
#include <signal.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <unistd.h>

#include "e2e.h"
#include "util.h"

static char *dir;
static struct loyd_proc emu, daemon_proc;

static void setup(void)
{
    dir = loyd_e2e_tmpdir();
    memset(&emu, 0, sizeof(emu));
    memset(&daemon_proc, 0, sizeof(daemon_proc));
}

static void stop(struct loyd_proc *p)
{
    if (p->pid > 0) {
        kill(p->pid, SIGKILL);
        loyd_e2e_wait_exit(p, 5000);
    }
}

static void teardown(void)
{
    loyd_e2e_assert_clean(&emu);
    loyd_e2e_assert_clean(&daemon_proc);
    stop(&emu);
    stop(&daemon_proc);
    char cmd[600];
    snprintf(cmd, sizeof(cmd), "rm -rf '%s'", dir);
    ck_assert_int_eq(system(cmd), 0);
    free(dir);
}

static int start_emulator(const char *options)
{
    loyd_e2e_write(dir, "emu.json", options);
    const char *argv[] = {"emulate", "bitrix24", "--listen", "127.0.0.1:0", "--options",
                          "emu.json", NULL};
    loyd_e2e_spawn(&emu, dir, argv);
    int port = loyd_e2e_wait_port(&emu, 10000);
    if (port < 0) {
        char *log = loyd_e2e_log(&emu);
        ck_abort_msg("emulator did not start:\n%s", log);
    }
    return port;
}

START_TEST(test_emulator_rest_over_http)
{
    int port = start_emulator("{\"webhook_code\": \"k3y0k3y0k3y0k3y0\"}");
    char *body;

    ck_assert_int_eq(loyd_e2e_http(port, "POST", "/rest/1/k3y0k3y0k3y0k3y0/crm.contact.add.json",
                                   "Content-Type: application/json\r\n",
                                   "{\"fields\":{\"NAME\":\"Anna\"}}", 26, &body), 200);
    ck_assert_ptr_nonnull(strstr(body, "\"result\":1"));
    free(body);
    ck_assert_int_eq(loyd_e2e_http(port, "GET", "/rest/1/k3y0k3y0k3y0k3y0/crm.contact.get.json?id=1",
                                   NULL, NULL, 0, &body), 200);
    ck_assert_ptr_nonnull(strstr(body, "\"NAME\":\"Anna\""));
    free(body);
    /* Form bodies with bracket keys, as Bitrix24 clients send them. */
    const char *form = "id=1&fields%5BLAST_NAME%5D=Petrova";
    ck_assert_int_eq(loyd_e2e_http(port, "POST", "/rest/1/k3y0k3y0k3y0k3y0/crm.contact.update",
                                   "Content-Type: application/x-www-form-urlencoded\r\n", form,
                                   strlen(form), NULL), 200);
    ck_assert_int_eq(loyd_e2e_http(port, "GET", "/rest/1/k3y0k3y0k3y0k3y0/crm.contact.get?id=1",
                                   NULL, NULL, 0, &body), 200);
    ck_assert_ptr_nonnull(strstr(body, "\"LAST_NAME\":\"Petrova\""));
    free(body);
    ck_assert_int_eq(loyd_e2e_http(port, "GET", "/rest/1/wrongcode/crm.contact.get?id=1", NULL,
                                   NULL, 0, &body), 401);
    ck_assert_ptr_nonnull(strstr(body, "NO_AUTH_FOUND"));
    free(body);
    ck_assert_int_eq(loyd_e2e_http(port, "GET", "/rest/1/k3y0k3y0k3y0k3y0/crm.contact.get?id=99",
                                   NULL, NULL, 0, &body), 400);
    free(body);
    kill(emu.pid, SIGTERM);
    ck_assert_int_eq(loyd_e2e_wait_exit(&emu, 5000), 0);
}
END_TEST

START_TEST(test_emulator_events_reach_the_daemon)
{
    char *conf = loyd_xasprintf("listen = \"127.0.0.1:0\"\nstore = \"loyd.db\"\n"
                                "tenants = \"tenants.d\"\npacks = \"%s/rules\"\n",
                                getenv("LOYD_SRC"));
    loyd_e2e_write(dir, "loyd.conf", conf);
    free(conf);
    loyd_e2e_write(dir, "tenants.d/acme.conf",
                   "connector = \"bitrix24\"\npack = \"retail\"\n"
                   "crm = { application_token = \"emutokenemutokenemutokenemutoken\" }\n");
    const char *argv[] = {"serve", "-c", "loyd.conf", NULL};
    loyd_e2e_spawn(&daemon_proc, dir, argv);
    int dport = loyd_e2e_wait_port(&daemon_proc, 10000);
    ck_assert_int_gt(dport, 0);

    char options[512];
    snprintf(options, sizeof(options),
             "{\"webhook_code\": \"k3y0k3y0k3y0k3y0\", "
             "\"application_token\": \"emutokenemutokenemutokenemutoken\", "
             "\"handlers\": [\"http://127.0.0.1:%d/hooks/acme\"]}", dport);
    int eport = start_emulator(options);
    ck_assert_int_eq(loyd_e2e_http(eport, "POST", "/rest/1/k3y0k3y0k3y0k3y0/crm.contact.add",
                                   "Content-Type: application/json\r\n",
                                   "{\"fields\":{\"NAME\":\"Anna\"}}", 26, NULL), 200);
    /* The portal posts ONCRMCONTACTADD to loyd, which stores it before answering. */
    char *metrics = NULL;
    for (int i = 0; i < 250; i++) {
        free(metrics);
        ck_assert_int_eq(loyd_e2e_http(dport, "GET", "/metrics", NULL, NULL, 0, &metrics), 200);
        if (strstr(metrics, "loyd_webhooks_stored_total 1\n"))
            break;
        usleep(20000);
    }
    ck_assert_msg(strstr(metrics, "loyd_webhooks_stored_total 1\n") != NULL, "%s", metrics);
    /* The tenant has no webhook_url, so loyd cannot read the portal: the webhook waits. */
    ck_assert_ptr_nonnull(strstr(metrics, "loyd_inbox_depth 1\n"));
    ck_assert_ptr_nonnull(strstr(metrics, "loyd_inbox_dead_total 0\n"));
    free(metrics);
}
END_TEST

/* Regression: a second emulator on a taken port reports it and exits 2 (it used to abort). */
START_TEST(test_emulator_port_in_use)
{
    int port = start_emulator("{}");
    char listen[32];
    struct loyd_proc second = {0};
    snprintf(listen, sizeof(listen), "127.0.0.1:%d", port);
    const char *argv[] = {"emulate", "bitrix24", "--listen", listen, NULL};
    loyd_e2e_spawn(&second, dir, argv);
    int code = loyd_e2e_wait_exit(&second, 10000);
    char *log = loyd_e2e_log(&second);
    ck_assert_msg(code == 2 && strstr(log, "address already in use"), "exit %d:\n%s", code, log);
    free(log);
    loyd_e2e_assert_clean(&second);
}
END_TEST

Suite *e2e_emulate_suite(void)
{
    Suite *s = suite_create("e2e_emulate");
    TCase *tc = tcase_create("bitrix24");
    tcase_add_checked_fixture(tc, setup, teardown);
    tcase_set_timeout(tc, 60);
    tcase_add_test(tc, test_emulator_rest_over_http);
    tcase_add_test(tc, test_emulator_events_reach_the_daemon);
    tcase_add_test(tc, test_emulator_port_in_use);
    suite_add_tcase(s, tc);
    return s;
}
