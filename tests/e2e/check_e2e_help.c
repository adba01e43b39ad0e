/* SPDX-License-Identifier: MIT */
/*
 * End to end: `loyd check --help` and `loyd test --help` explain themselves on stdout and exit
 * 0, as the other verbs do; a usage error still exits 2 with the usage on stderr.  The real
 * binary ($LOYD_BIN) as a subprocess.
 */
#include <check.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/wait.h>
#include <unistd.h>

#include "util.h"

struct result {
    int status; /* exit status, -1 when it did not exit normally */
    char *out, *err;
};

static char *slurp(FILE *f)
{
    long n = ftell(f);
    rewind(f);
    char *buf = loyd_xcalloc(1, (size_t)n + 1);
    ck_assert_uint_eq(fread(buf, 1, (size_t)n, f), (size_t)n);
    fclose(f);
    return buf;
}

/* Runs $LOYD_BIN with @p args (NULL-terminated, after the program name). */
static struct result loyd(const char *const *args)
{
    const char *bin = getenv("LOYD_BIN");
    ck_assert_msg(bin != NULL, "LOYD_BIN is not set (run through make check)");
    FILE *o = tmpfile(), *e = tmpfile();
    ck_assert(o != NULL && e != NULL);
    const char *argv[16] = {bin};
    for (size_t i = 0; args[i] != NULL && i + 2 < 16; i++)
        argv[i + 1] = args[i];
    fflush(NULL);
    pid_t pid = fork();
    ck_assert_int_ge(pid, 0);
    if (pid == 0) {
        dup2(fileno(o), 1);
        dup2(fileno(e), 2);
        execv(bin, (char *const *)argv);
        _exit(127);
    }
    int st;
    ck_assert_int_eq(waitpid(pid, &st, 0), pid);
    fseek(o, 0, SEEK_END);
    fseek(e, 0, SEEK_END);
    struct result r = {.status = WIFEXITED(st) ? WEXITSTATUS(st) : -1};
    r.out = slurp(o);
    r.err = slurp(e);
    return r;
}

static void result_free(struct result *r)
{
    free(r->out);
    free(r->err);
}

START_TEST(test_check_help)
{
    for (int i = 0; i < 2; i++) {
        struct result r = loyd((const char *const[]){"check", i ? "-h" : "--help", NULL});
        ck_assert_msg(r.status == 0, "exit %d, stderr: %s", r.status, r.err);
        ck_assert_ptr_nonnull(strstr(r.out, "usage: loyd check PACK_DIR\n"));
        ck_assert_ptr_nonnull(strstr(r.out, "file:line"));
        ck_assert_ptr_nonnull(strstr(r.out, "Exit status"));
        ck_assert_str_eq(r.err, "");
        result_free(&r);
    }
    struct result r = loyd((const char *const[]){"check", NULL});
    ck_assert_int_eq(r.status, 2);
    ck_assert_ptr_nonnull(strstr(r.err, "usage: loyd check PACK_DIR"));
    result_free(&r);
    r = loyd((const char *const[]){"check", "--verbose", "x", NULL});
    ck_assert_int_eq(r.status, 2);
    ck_assert_ptr_nonnull(strstr(r.err, "unknown option '--verbose'"));
    result_free(&r);
}
END_TEST

START_TEST(test_test_help)
{
    struct result r = loyd((const char *const[]){"test", "--help", NULL});
    ck_assert_msg(r.status == 0, "exit %d, stderr: %s", r.status, r.err);
    ck_assert_ptr_nonnull(
        strstr(r.out, "usage: loyd test [-v] [-k TEXT] [--tenant FILE] PACK_DIR"));
    /* Every option is explained. */
    ck_assert_ptr_nonnull(strstr(r.out, "\n  -k TEXT "));
    ck_assert_ptr_nonnull(strstr(r.out, "\n  -v "));
    ck_assert_ptr_nonnull(strstr(r.out, "\n  --tenant FILE "));
    ck_assert_ptr_nonnull(strstr(r.out, "Exit status"));
    result_free(&r);
    /* --help wins wherever it is. */
    r = loyd((const char *const[]){"test", "-v", "some/pack", "--help", NULL});
    ck_assert_int_eq(r.status, 0);
    result_free(&r);
    r = loyd((const char *const[]){"test", NULL});
    ck_assert_int_eq(r.status, 2);
    ck_assert_ptr_nonnull(strstr(r.err, "usage: loyd test"));
    ck_assert_str_eq(r.out, "");
    result_free(&r);
    r = loyd((const char *const[]){"test", "--tenant", NULL});
    ck_assert_int_eq(r.status, 2);
    ck_assert_ptr_nonnull(strstr(r.err, "--tenant needs a value"));
    result_free(&r);
}
END_TEST

Suite *e2e_help_suite(void)
{
    Suite *s = suite_create("e2e_help");
    TCase *tc = tcase_create("help");
    tcase_add_test(tc, test_check_help);
    tcase_add_test(tc, test_test_help);
    suite_add_tcase(s, tc);
    return s;
}
