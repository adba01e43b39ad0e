/* SPDX-License-Identifier: MIT */
/*
 * End-to-end test support: run the real loyd binary (LOYD_BIN, set by `make check`) in a
 * temporary directory on an OS-chosen loopback port, and talk plain HTTP/1.1 to it.
 */
#ifndef LOYD_TEST_E2E_H
#define LOYD_TEST_E2E_H

#include <stdbool.h>
#include <stddef.h>
#include <sys/types.h>

struct loyd_proc {
    pid_t pid;
    char log[512]; /* the child's stderr */
};

/** @return new temporary directory path (free()); aborts the test on failure. */
char *loyd_e2e_tmpdir(void);
/** Writes @p content to dir/name (creating sub-directories one level deep). */
void loyd_e2e_write(const char *dir, const char *name, const char *content);
/** Starts LOYD_BIN with argv (NULL-terminated, without the program name), cwd @p dir. */
int loyd_e2e_spawn(struct loyd_proc *p, const char *dir, const char *const argv[]);
/** Waits for "listening on HOST:PORT" in the log; @return the port or -1. */
int loyd_e2e_wait_port(struct loyd_proc *p, int timeout_ms);
/** Waits for the child to exit; @return its exit status (128+sig if killed) or -1 on timeout. */
int loyd_e2e_wait_exit(struct loyd_proc *p, int timeout_ms);
/**
 * Waits until the child's log contains @p needle.  @return true if it did within the time;
 * *log (may be NULL) gets the log as last read (free()).
 */
bool loyd_e2e_wait_log(const struct loyd_proc *p, const char *needle, int timeout_ms, char **log);
/** @return new contents of the child's log (free()). */
char *loyd_e2e_log(const struct loyd_proc *p);
/**
 * One request on a fresh connection; @p headers are extra "Name: value\r\n" lines or NULL.
 * @return the status, or -1 on a transport error; *body (may be NULL) gets a new string.
 */
int loyd_e2e_http(int port, const char *method, const char *path, const char *headers,
                  const char *body, size_t body_len, char **resp_body);
/** Fails the test if the child's log holds a sanitizer report (the ASan build's children). */
void loyd_e2e_assert_clean(const struct loyd_proc *p);
/** Connects to 127.0.0.1:port; @return a blocking socket or -1. */
int loyd_e2e_connect(int port);

#endif
