/* SPDX-License-Identifier: MIT */
/*
 * Watching a live tenant, through the real binaries (`loyd emulate bitrix24`, `loyd serve`,
 * `loyd tick`): one info line per applied event in display units; a deal paid with points
 * shows what it earned and what it was paid with apart; `loyd tick` runs a day's birthday
 * offers once; a redeem field the portal lacks is a warning naming it (loyd's own name is
 * created); the emulator says which codes it accepts and refuses an unknown option or a
 * missing options file by name; a tenant without a CRM URL says so once, not on every retry.
 */
#include <check.h>
#include <fcntl.h>
#include <signal.h>
#include <stdbool.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/wait.h>
#include <time.h>
#include <unistd.h>

#include <jansson.h>

#include "e2e.h"
#include "util.h"

#define CODE "w3bh00kc0de12345"
#define TOKEN "51856fefc120afa4b628cc82d3935cce"
#define MEMBER "a223c6b3710f85df22e9377d6c4f7553"
#define ACCESS "testaccesstoken0123456789abcdef0"
#define PAY_FIELD "UF_CRM_PAY_POINTS"

static char *dir;
static struct loyd_proc emu, daemon_proc;
static int eport, dport;

static void setup(void)
{
    dir = loyd_e2e_tmpdir();
    memset(&emu, 0, sizeof(emu));
    memset(&daemon_proc, 0, sizeof(daemon_proc));
    eport = dport = 0;
}

static void stop(struct loyd_proc *p)
{
    if (p->pid > 0) {
        kill(p->pid, SIGKILL);
        loyd_e2e_wait_exit(p, 5000);
        p->pid = 0;
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

static char *log_tail(const struct loyd_proc *p)
{
    char *log = loyd_e2e_log(p);
    size_t n = strlen(log);
    if (n > 4000)
        memmove(log, log + n - 4000, 4001);
    return log;
}

static char *slurp(const char *path)
{
    FILE *f = fopen(path, "r");
    struct loyd_buf b = {0};
    char chunk[4096];
    size_t n;
    loyd_buf_puts(&b, "");
    if (f == NULL)
        return b.data;
    while ((n = fread(chunk, 1, sizeof(chunk), f)) > 0)
        loyd_buf_append(&b, chunk, n);
    fclose(f);
    return b.data;
}

/* Runs LOYD_BIN with @p argv in dir; @return its exit status; *out and *err its output. */
static int run(const char *const argv[], char **out, char **err)
{
    const char *bin = getenv("LOYD_BIN");
    char *opath = loyd_xasprintf("%s/run.out", dir), *epath = loyd_xasprintf("%s/run.err", dir);
    char *args[32];
    size_t n = 0;
    int status;

    ck_assert_msg(bin != NULL, "LOYD_BIN is not set (run through make check)");
    args[n++] = (char *)bin;
    for (size_t i = 0; argv[i] != NULL && n < 31; i++)
        args[n++] = (char *)argv[i];
    args[n] = NULL;
    pid_t pid = fork();
    ck_assert(pid >= 0);
    if (pid == 0) {
        int o = open(opath, O_WRONLY | O_CREAT | O_TRUNC, 0600);
        int e = open(epath, O_WRONLY | O_CREAT | O_TRUNC, 0600);
        if (o < 0 || e < 0 || chdir(dir) != 0)
            _exit(127);
        dup2(o, STDOUT_FILENO);
        dup2(e, STDERR_FILENO);
        execv(bin, args);
        _exit(127);
    }
    ck_assert_int_eq(waitpid(pid, &status, 0), pid);
    *out = slurp(opath);
    *err = slurp(epath);
    free(opath);
    free(epath);
    ck_assert_msg(strstr(*err, "runtime error") == NULL && strstr(*err, "Sanitizer") == NULL,
                  "sanitizer report:\n%s", *err);
    ck_assert_msg(WIFEXITED(status), "killed by signal %d:\n%s", WTERMSIG(status), *err);
    return WEXITSTATUS(status);
}

#define HAS(text, needle)                                                                          \
    ck_assert_msg(strstr((text), (needle)) != NULL, "no '%s' in:\n%s", (needle), (text))

/* How many lines of @p text contain @p needle. */
static int lines_with(const char *text, const char *needle)
{
    int n = 0;
    for (const char *p = text; p != NULL && *p != '\0';) {
        const char *eol = strchr(p, '\n');
        size_t len = eol != NULL ? (size_t)(eol - p) : strlen(p);
        char *line = loyd_xstrndup(p, len);
        n += strstr(line, needle) != NULL;
        free(line);
        p = eol != NULL ? eol + 1 : NULL;
    }
    return n;
}

/* The line of @p text that contains @p a, or NULL (new). */
static char *line_with(const char *text, const char *a)
{
    const char *p = strstr(text, a);
    if (p == NULL)
        return NULL;
    const char *start = p;
    while (start > text && start[-1] != '\n')
        start--;
    const char *eol = strchr(p, '\n');
    return loyd_xstrndup(start, eol != NULL ? (size_t)(eol - start) : strlen(start));
}

/* ---- the portal and the daemon ---------------------------------------------------------- */

/* A REST call as the shop's own app (OAuth); @return the parsed answer (new). */
static json_t *shop(const char *method, json_t *params /* taken */)
{
    char path[128], *body = NULL;
    snprintf(path, sizeof(path), "/rest/%s.json", method);
    json_object_set_new(params, "auth", json_string(ACCESS));
    char *text = json_dumps(params, JSON_COMPACT);
    json_decref(params);
    int st;
    for (int tries = 0;; tries++) {
        st = loyd_e2e_http(eport, "POST", path, "Content-Type: application/json\r\n", text,
                           strlen(text), &body);
        if (st != 503 || tries == 120)
            break;
        free(body);
        body = NULL;
        usleep(500000);
    }
    free(text);
    ck_assert_msg(st == 200, "%s: HTTP %d: %s", method, st, body ? body : "");
    json_t *r = json_loads(body ? body : "", 0, NULL);
    free(body);
    return r;
}

static char *shop_add(const char *method, json_t *fields)
{
    json_t *r = shop(method, json_pack("{s:o}", "fields", fields));
    char *id = loyd_xasprintf("%lld", (long long)json_integer_value(json_object_get(r, "result")));
    json_decref(r);
    return id;
}

/* A field of a card as the portal returns it (new string; "" when empty or absent). */
static char *card(const char *kind, const char *id, const char *field)
{
    char method[48];
    snprintf(method, sizeof(method), "crm.%s.get", kind);
    json_t *r = shop(method, json_pack("{s:s}", "id", id));
    json_t *v = json_object_get(json_object_get(r, "result"), field);
    char *s = json_is_string(v)   ? loyd_xstrdup(json_string_value(v))
              : json_is_number(v) ? loyd_xasprintf("%g", json_number_value(v))
                                  : loyd_xstrdup("");
    json_decref(r);
    return s;
}

static void wait_card(const char *kind, const char *id, const char *field, const char *want)
{
    char *have = NULL;
    for (int t = 0; t < 30000; t += 300) {
        free(have);
        have = card(kind, id, field);
        if (strcmp(have, want) == 0) {
            free(have);
            return;
        }
        usleep(300000);
    }
    char *log = log_tail(&daemon_proc);
    ck_abort_msg("%s %s: %s is '%s', wanted '%s'; loyd's log ends:\n%s", kind, id, field, have,
                 want, log);
}

/* One integer from the daemon's store, read with the sqlite3 shell (WAL: beside the daemon). */
static long long sql_int(const char *query)
{
    char cmd[1200], out[64] = "";
    snprintf(cmd, sizeof(cmd), "sqlite3 -cmd '.timeout 5000' '%s/loyd.db' \"%s\" 2>&1", dir, query);
    FILE *f = popen(cmd, "r");
    ck_assert_ptr_nonnull(f);
    char *got = fgets(out, sizeof(out), f);
    pclose(f);
    return got != NULL && out[0] != '\0' && out[0] != '\n' ? atoll(out) : 0;
}

static void wait_sql(const char *query, long long want)
{
    long long have = 0;
    for (int t = 0; t < 30000; t += 200) {
        if ((have = sql_int(query)) == want)
            return;
        usleep(200000);
    }
    char *log = log_tail(&daemon_proc);
    ck_abort_msg("%s is %lld, wanted %lld; loyd's log ends:\n%s", query, have, want, log);
}

static void start_emulator(void)
{
    loyd_e2e_write(dir, "emu.json",
                   "{\"webhook_code\": \"" CODE "\", \"application_token\": \"" TOKEN "\","
                   " \"member_id\": \"" MEMBER "\", \"access_token\": \"" ACCESS "\","
                   " \"refresh_token\": \"testrefreshtoken0123456789abcdef\","
                   " \"token_ttl_s\": 86400, \"rate\": {\"drain\": 5, \"burst\": 100}}");
    const char *eargv[] = {"emulate",   "bitrix24", "--listen", "127.0.0.1:0",
                           "--options", "emu.json", NULL};
    loyd_e2e_spawn(&emu, dir, eargv);
    eport = loyd_e2e_wait_port(&emu, 10000);
    ck_assert_int_gt(eport, 0);
}

/* A tenant file on the emulator, with @p extra inside its crm table. */
static void tenant(const char *name, const char *extra)
{
    char *text =
        loyd_xasprintf("connector = \"bitrix24\"\npack = \"retail\"\n"
                       "timezone = \"Europe/Moscow\"\n"
                       "crm = { webhook_url = \"http://127.0.0.1:%d/rest/1/" CODE "/\","
                       " application_token = \"" TOKEN "\", member_id = \"" MEMBER "\"%s }\n",
                       eport, extra);
    char *file = loyd_xasprintf("tenants.d/%s.conf", name);
    loyd_e2e_write(dir, file, text);
    free(file);
    free(text);
}

static void start_daemon(void)
{
    char *conf = loyd_xasprintf("listen = \"127.0.0.1:0\"\nstore = \"loyd.db\"\n"
                                "tenants = \"tenants.d\"\npacks = \"%s/rules\"\n"
                                "log_level = \"info\"\n"
                                "worker = { poll_ms = 100, retry_max_ms = 2000 }\n",
                                getenv("LOYD_SRC"));
    loyd_e2e_write(dir, "loyd.conf", conf);
    free(conf);
    const char *argv[] = {"serve", "-c", "loyd.conf", NULL};
    loyd_e2e_spawn(&daemon_proc, dir, argv);
    dport = loyd_e2e_wait_port(&daemon_proc, 10000);
    ck_assert_int_gt(dport, 0);
    static const char *const events[] = {"ONCRMCONTACTADD", "ONCRMCONTACTUPDATE", "ONCRMDEALADD",
                                         "ONCRMDEALUPDATE"};
    char handler[96];
    snprintf(handler, sizeof(handler), "http://127.0.0.1:%d/hooks/shop", dport);
    for (size_t i = 0; i < LOYD_ARRAY_SIZE(events); i++)
        json_decref(
            shop("event.bind", json_pack("{s:s, s:s}", "event", events[i], "handler", handler)));
}

static char *won_deal(const char *contact, const char *amount, const char *pay_points)
{
    json_t *f = json_pack("{s:s, s:s, s:s, s:s, s:s}", "TITLE", "Order", "OPPORTUNITY", amount,
                          "CURRENCY_ID", "RUB", "STAGE_ID", "WON", "CONTACT_ID", contact);
    if (pay_points != NULL)
        json_object_set_new(f, PAY_FIELD, json_string(pay_points));
    return shop_add("crm.deal.add", f);
}

/* ---- tests ---------------------------------------------------------------------------------- */

/*
 * A deal paid partly with points: the log says so in one line, in points as people count them,
 * and the deal's card shows what it earned and what it was paid with, not a negative net.
 */
START_TEST(test_applied_event_line_and_deal_fields)
{
    char q[300];
    start_emulator();
    json_decref(shop("crm.deal.userfield.add",
                     json_pack("{s:{s:s, s:s, s:s}}", "fields", "FIELD_NAME", PAY_FIELD + 7,
                               "USER_TYPE_ID", "double", "EDIT_FORM_LABEL", "Pay with points")));
    tenant("shop", ", redeem_field = \"" PAY_FIELD "\"");
    start_daemon();
    char *anna = shop_add("crm.contact.add", json_pack("{s:s}", "NAME", "Anna"));
    /* 5 points welcome, then 300 points (3 % of 10,000 RUB): a balance of 305 points. */
    char *first = won_deal(anna, "10000.00", NULL);
    snprintf(q, sizeof(q), "SELECT COUNT(*) FROM ledger WHERE ref = '%s'", first);
    wait_sql(q, 1);
    wait_card("deal", first, "UF_CRM_LOYD_AWARDED", "300");

    /* 1,000 points asked for, 305 there: 305 paid, cashback on the 10,000 RUB paid in money. */
    char *deal = won_deal(anna, "10305.00", "1000");
    wait_card("deal", deal, "UF_CRM_LOYD_REDEEMED", "305");
    wait_card("deal", deal, "UF_CRM_LOYD_AWARDED", "300");

    char *needle = loyd_xasprintf("tenant=shop event=deal:%s:", deal);
    char *log = NULL;
    ck_assert_msg(loyd_e2e_wait_log(&daemon_proc, needle, 10000, &log), "no line %s:\n%s", needle,
                  log);
    char *line = line_with(log, needle);
    ck_assert_msg(strncmp(line, "<6>", 3) == 0, "not at info level: %s", line);
    HAS(line, "deal.won");
    HAS(line, "redeem 305 points of 1,000 requested (cap 5,152.5)");
    HAS(line, "+300 points");
    HAS(line, "balance 305 → 300 points");
    free(line);
    free(log);

    /* Lost: the reversal takes both back, and the card says so. */
    json_decref(shop("crm.deal.update",
                     json_pack("{s:s, s:{s:s}}", "id", deal, "fields", "STAGE_ID", "LOSE")));
    wait_card("deal", deal, "UF_CRM_LOYD_REDEEMED", "0");
    wait_card("deal", deal, "UF_CRM_LOYD_AWARDED", "0");
    free(needle);
    free(anna);
    free(first);
    free(deal);
}
END_TEST

/* YYYY-MM-DD of yesterday in Moscow (UTC+3 all year). */
static void moscow_yesterday(char out[11])
{
    time_t t = time(NULL) + 3 * 3600 - 24 * 3600;
    struct tm tm;
    gmtime_r(&t, &tm);
    strftime(out, 11, "%Y-%m-%d", &tm);
}

/*
 * `loyd tick --date` beside the running daemon: a member born on that day gets the birthday
 * offer and the task, once however often it runs, and the daemon sends the task to the CRM.
 */
START_TEST(test_tick_runs_a_day_once)
{
    char day[11], q[300];
    moscow_yesterday(day);
    start_emulator();
    tenant("shop", "");
    start_daemon();
    char *birth = loyd_xasprintf("1990-%s", day + 5);
    char *anna =
        shop_add("crm.contact.add", json_pack("{s:s, s:s}", "NAME", "Anna", "BIRTHDATE", birth));
    snprintf(q, sizeof(q), "SELECT COUNT(*) FROM members WHERE member_id = '%s'", anna);
    wait_sql(q, 1);
    /* The contact's birthday is known to the store once its event is applied. */
    snprintf(q, sizeof(q),
             "SELECT COUNT(*) FROM members WHERE member_id = '%s' AND json LIKE '%%%s%%'", anna,
             birth);
    wait_sql(q, 1);

    char *out, *err;
    const char *argv[] = {"tick", "-c", "loyd.conf", "--date", day, "shop", NULL};
    int rc = run(argv, &out, &err);
    ck_assert_msg(rc == 0, "exit %d:\n%s%s", rc, out, err);
    char *offer = loyd_xasprintf("birthday:%s:%.4s  birthday member=%s: offer BDAY-%s-%.4s", anna,
                                 day, anna, anna, day);
    HAS(out, offer);
    HAS(out, "task \"Congratulate on the birthday\"");
    HAS(out, "1 member, 1 birthday, 1 tick");
    HAS(out, "1 offer, 1 task");
    HAS(out, "the daemon (`loyd serve`) sends them");
    free(out);
    free(err);

    /* Again: the day is done; nothing is issued twice. */
    rc = run(argv, &out, &err);
    ck_assert_msg(rc == 0, "exit %d:\n%s%s", rc, out, err);
    HAS(out, "0 events applied (0 with effects), 2 already applied before, 0 failed");
    ck_assert_ptr_null(strstr(out, "offer BDAY"));
    free(out);
    free(err);
    snprintf(q, sizeof(q), "SELECT COUNT(*) FROM events WHERE event_key LIKE 'birthday:%s:%%'",
             anna);
    ck_assert_int_eq(sql_int(q), 1);

    /* A dry run of the same member's next birthday stores nothing. */
    char next[24];
    /* (A 29 February birthday has its next one four years on.) */
    snprintf(next, sizeof(next), "%04d%s", atoi(day) + (strcmp(day + 5, "02-29") == 0 ? 4 : 1),
             day + 4);
    const char *dry[] = {"tick", "-c", "loyd.conf", "--date", next, "shop", NULL};
    rc = run(dry, &out, &err);
    ck_assert_msg(rc == 0, "exit %d:\n%s%s", rc, out, err);
    HAS(out, "a dry run on a copy of the store");
    HAS(out, "offer BDAY-");
    ck_assert_int_eq(sql_int(q), 1);
    free(out);
    free(err);

    /* The daemon sends the task that `loyd tick` queued. */
    for (int t = 0; t < 30000; t += 300) {
        json_t *r = shop("crm.activity.list", json_pack("{s:{s:i, s:s}}", "filter", "OWNER_TYPE_ID",
                                                        3, "OWNER_ID", anna));
        size_t n = json_array_size(json_object_get(r, "result"));
        json_decref(r);
        if (n > 0)
            break;
        ck_assert_msg(t + 300 < 30000, "the task never reached the CRM; log:\n%s",
                      log_tail(&daemon_proc));
        usleep(300000);
    }
    free(offer);
    free(birth);
    free(anna);
}
END_TEST

/* A redeem field the portal lacks is said at the start, by name; loyd's own name is made. */
START_TEST(test_missing_redeem_field_warns)
{
    start_emulator();
    tenant("shop", ", redeem_field = \"UF_CRM_NO_SUCH\"");
    tenant("shop2", ", redeem_field = \"UF_CRM_LOYD_PAY_WITH_POINTS\"");
    start_daemon();
    char *log = NULL;
    bool found = loyd_e2e_wait_log(&daemon_proc, "UF_CRM_NO_SUCH", 20000, &log);
    ck_assert_msg(found, "no word of the missing field:\n%s", log);
    char *line = line_with(log, "UF_CRM_NO_SUCH");
    ck_assert_msg(strncmp(line, "<4>", 3) == 0, "not a warning: %s", line);
    HAS(line, "crm.redeem_field");
    HAS(line, "the portal has no deal field UF_CRM_NO_SUCH");
    HAS(line, "code NO_SUCH");
    free(line);
    free(log);
    ck_assert(loyd_e2e_wait_log(&daemon_proc, "created the deal field UF_CRM_LOYD_PAY_WITH_POINTS",
                                20000, &log));
    free(log);
    json_t *r = shop("crm.deal.userfield.list",
                     json_pack("{s:{s:s}}", "filter", "FIELD_NAME", "UF_CRM_LOYD_PAY_WITH_POINTS"));
    ck_assert_int_eq(json_array_size(json_object_get(r, "result")), 1);
    json_decref(r);
}
END_TEST

/* The emulator says what it accepts; a mistyped option and a missing file are named. */
START_TEST(test_emulator_codes_and_options)
{
    loyd_e2e_write(dir, "emu.json",
                   "{\"webhook_code\": \"" CODE "\", \"webhook_user\": \"7\", "
                   "\"application_token\": \"" TOKEN "\", \"member_id\": \"" MEMBER "\"}");
    const char *argv[] = {"emulate",   "bitrix24", "--listen", "127.0.0.1:0",
                          "--options", "emu.json", NULL};
    loyd_e2e_spawn(&emu, dir, argv);
    eport = loyd_e2e_wait_port(&emu, 10000);
    ck_assert_int_gt(eport, 0);
    char *url = loyd_xasprintf("inbound webhook http://127.0.0.1:%d/rest/7/" CODE "/ (user 7, "
                               "code " CODE ")",
                               eport);
    char *log = NULL;
    ck_assert_msg(loyd_e2e_wait_log(&emu, url, 10000, &log), "no '%s' in:\n%s", url, log);
    HAS(log, "member_id " MEMBER);
    HAS(log, "application_token " TOKEN);
    free(log);
    free(url);
    stop(&emu);

    char *out, *err;
    loyd_e2e_write(dir, "typo.json", "{\"webhook_code\": \"x\", \"webhok_user\": \"7\"}");
    const char *typo[] = {"emulate", "bitrix24", "--options", "typo.json", NULL};
    ck_assert_int_eq(run(typo, &out, &err), 2);
    HAS(err, "unknown option 'webhok_user'; did you mean 'webhook_user'?");
    HAS(err, "connectors/bitrix24/README.md");
    free(out);
    free(err);
    loyd_e2e_write(dir, "rate.json", "{\"rate\": {\"drian\": 3}}");
    const char *rate[] = {"emulate", "bitrix24", "--options", "rate.json", NULL};
    ck_assert_int_eq(run(rate, &out, &err), 2);
    HAS(err, "unknown option 'rate.drian'; did you mean 'rate.drain'?");
    free(out);
    free(err);
    const char *missing[] = {"emulate", "bitrix24", "--options", "nope.json", NULL};
    ck_assert_int_eq(run(missing, &out, &err), 2);
    HAS(err, "loyd emulate: nope.json: cannot read: No such file or directory");
    ck_assert_ptr_null(strstr(err, "-1:-1"));
    free(out);
    free(err);
    const char *help[] = {"emulate", "--help", NULL};
    ck_assert_int_eq(run(help, &out, &err), 0);
    HAS(out, "connectors/bitrix24/README.md");
    free(out);
    free(err);
}
END_TEST

/* A tenant with no way to reach its CRM: one warning naming the keys, then quiet retries. */
START_TEST(test_tenant_without_crm_url_says_so_once)
{
    loyd_e2e_write(dir, "tenants.d/shop.conf",
                   "connector = \"bitrix24\"\npack = \"retail\"\ntimezone = \"Europe/Moscow\"\n");
    char *conf = loyd_xasprintf("listen = \"127.0.0.1:0\"\nstore = \"loyd.db\"\n"
                                "tenants = \"tenants.d\"\npacks = \"%s/rules\"\n"
                                "log_level = \"info\"\n"
                                "worker = { poll_ms = 20, retry_max_ms = 40 }\n",
                                getenv("LOYD_SRC"));
    loyd_e2e_write(dir, "loyd.conf", conf);
    free(conf);
    const char *argv[] = {"serve", "-c", "loyd.conf", NULL};
    loyd_e2e_spawn(&daemon_proc, dir, argv);
    char *log = NULL;
    ck_assert_msg(loyd_e2e_wait_log(&daemon_proc, "crm.webhook_url", 10000, &log), "%s", log);
    free(log);
    /* Retries every 40 ms meanwhile; however few this machine manages, none may say more. */
    usleep(1500000);
    log = loyd_e2e_log(&daemon_proc);
    ck_assert_int_eq(lines_with(log, "crm.webhook_url"), 1);
    HAS(log, "crm.client_id");
    ck_assert_msg(strstr(log, "invalid configuration") == NULL, "a flood:\n%s", log);
    ck_assert_int_le(lines_with(log, "start-up sync: reading"), 1);
    free(log);
}
END_TEST

Suite *e2e_watch_suite(void)
{
    Suite *s = suite_create("e2e_watch");
    TCase *tc = tcase_create("live");
    tcase_add_checked_fixture(tc, setup, teardown);
    tcase_set_timeout(tc, 180);
    tcase_add_test(tc, test_applied_event_line_and_deal_fields);
    tcase_add_test(tc, test_tick_runs_a_day_once);
    tcase_add_test(tc, test_missing_redeem_field_warns);
    tcase_add_test(tc, test_emulator_codes_and_options);
    tcase_add_test(tc, test_tenant_without_crm_url_says_so_once);
    suite_add_tcase(s, tc);
    return s;
}
