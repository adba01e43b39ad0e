/* SPDX-License-Identifier: MIT */
/* End-to-end test support (see e2e.h). */
#include "e2e.h"

#include <arpa/inet.h>
#include <stdbool.h>
#include <check.h>
#include <errno.h>
#include <fcntl.h>
#include <netinet/in.h>
#include <signal.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/socket.h>
#include <sys/stat.h>
#include <sys/wait.h>
#include <time.h>
#include <unistd.h>

static void sleep_ms(int ms)
{
    struct timespec ts = {ms / 1000, (long)(ms % 1000) * 1000000L};
    nanosleep(&ts, NULL);
}

char *loyd_e2e_tmpdir(void)
{
    const char *base = getenv("TMPDIR");
    char tmpl[512];
    snprintf(tmpl, sizeof(tmpl), "%s/loyd-test-XXXXXX", base && *base ? base : "/tmp");
    char *dir = mkdtemp(tmpl);
    ck_assert_msg(dir != NULL, "mkdtemp: %s", strerror(errno));
    return strdup(dir);
}

void loyd_e2e_write(const char *dir, const char *name, const char *content)
{
    char path[1024];
    const char *slash = strchr(name, '/');
    if (slash != NULL) {
        snprintf(path, sizeof(path), "%s/%.*s", dir, (int)(slash - name), name);
        mkdir(path, 0700);
    }
    snprintf(path, sizeof(path), "%s/%s", dir, name);
    FILE *f = fopen(path, "w");
    ck_assert_msg(f != NULL, "open %s: %s", path, strerror(errno));
    fputs(content, f);
    fclose(f);
}

int loyd_e2e_spawn(struct loyd_proc *p, const char *dir, const char *const argv[])
{
    const char *bin = getenv("LOYD_BIN");
    char *args[32];
    size_t n = 0;

    ck_assert_msg(bin != NULL, "LOYD_BIN is not set (run through make check)");
    snprintf(p->log, sizeof(p->log), "%s/loyd.%d.log", dir, (int)time(NULL) ^ rand());
    args[n++] = (char *)bin;
    for (size_t i = 0; argv[i] != NULL && n < 31; i++)
        args[n++] = (char *)argv[i];
    args[n] = NULL;
    pid_t pid = fork();
    ck_assert(pid >= 0);
    if (pid == 0) {
        int fd = open(p->log, O_WRONLY | O_CREAT | O_TRUNC, 0600);
        if (fd < 0 || chdir(dir) != 0)
            _exit(127);
        dup2(fd, STDERR_FILENO);
        int devnull = open("/dev/null", O_RDWR);
        dup2(devnull, STDIN_FILENO);
        execv(bin, args);
        _exit(127);
    }
    p->pid = pid;
    return 0;
}

char *loyd_e2e_log(const struct loyd_proc *p)
{
    FILE *f = fopen(p->log, "r");
    if (f == NULL)
        return strdup("");
    char *buf = NULL;
    size_t len = 0;
    FILE *m = open_memstream(&buf, &len);
    char chunk[4096];
    size_t r;
    while ((r = fread(chunk, 1, sizeof(chunk), f)) > 0)
        fwrite(chunk, 1, r, m);
    fclose(f);
    fclose(m);
    return buf;
}

bool loyd_e2e_wait_log(const struct loyd_proc *p, const char *needle, int timeout_ms, char **log)
{
    char *text = NULL;
    bool found = false;
    for (int waited = 0; !found && waited <= timeout_ms; waited += 20) {
        free(text);
        text = loyd_e2e_log(p);
        found = strstr(text, needle) != NULL;
        if (!found)
            sleep_ms(20);
    }
    if (log != NULL)
        *log = text;
    else
        free(text);
    return found;
}

int loyd_e2e_wait_port(struct loyd_proc *p, int timeout_ms)
{
    for (int waited = 0; waited < timeout_ms; waited += 20) {
        char *log = loyd_e2e_log(p);
        int port = -1;
        /* The daemon's "listening on HOST:PORT" line (other lines may say "listening" too). */
        for (const char *at = strstr(log, "listening on "); at != NULL && port < 0;
             at = strstr(at + 1, "listening on ")) {
            const char *nl = strchr(at, '\n'), *colon = NULL;
            if (nl == NULL)
                break;
            for (const char *c = at; c < nl; c++)
                if (*c == ':')
                    colon = c;
            if (colon != NULL && colon[1] >= '0' && colon[1] <= '9')
                port = atoi(colon + 1);
        }
        free(log);
        if (port > 0)
            return port;
        int st;
        if (waitpid(p->pid, &st, WNOHANG) == p->pid) {
            p->pid = 0;
            return -1;
        }
        sleep_ms(20);
    }
    return -1;
}

int loyd_e2e_wait_exit(struct loyd_proc *p, int timeout_ms)
{
    int st;
    for (int waited = 0; waited <= timeout_ms; waited += 10) {
        pid_t r = waitpid(p->pid, &st, WNOHANG);
        if (r == p->pid) {
            p->pid = 0;
            return WIFEXITED(st) ? WEXITSTATUS(st) : 128 + WTERMSIG(st);
        }
        sleep_ms(10);
    }
    return -1;
}

int loyd_e2e_connect(int port)
{
    struct sockaddr_in sa = {.sin_family = AF_INET, .sin_port = htons((uint16_t)port)};
    struct timeval tv = {10, 0};
    int fd = socket(AF_INET, SOCK_STREAM, 0);

    inet_pton(AF_INET, "127.0.0.1", &sa.sin_addr);
    setsockopt(fd, SOL_SOCKET, SO_RCVTIMEO, &tv, sizeof(tv));
    setsockopt(fd, SOL_SOCKET, SO_SNDTIMEO, &tv, sizeof(tv));
    if (connect(fd, (struct sockaddr *)&sa, sizeof(sa)) != 0) {
        close(fd);
        return -1;
    }
    return fd;
}

int loyd_e2e_http(int port, const char *method, const char *path, const char *headers,
                  const char *body, size_t body_len, char **resp_body)
{
    char head[2048];
    int fd = loyd_e2e_connect(port);
    if (resp_body)
        *resp_body = NULL;
    if (fd < 0)
        return -1;
    int n = snprintf(head, sizeof(head),
                     "%s %s HTTP/1.1\r\nHost: 127.0.0.1\r\nConnection: close\r\n%s"
                     "Content-Length: %zu\r\n\r\n",
                     method, path, headers ? headers : "", body_len);
    if (write(fd, head, (size_t)n) != n ||
        (body_len > 0 && write(fd, body, body_len) != (ssize_t)body_len)) {
        close(fd);
        return -1;
    }
    char *buf = NULL;
    size_t len = 0;
    FILE *m = open_memstream(&buf, &len);
    char chunk[4096];
    ssize_t r;
    while ((r = read(fd, chunk, sizeof(chunk))) > 0)
        fwrite(chunk, 1, (size_t)r, m);
    fclose(m);
    close(fd);
    int status = -1;
    if (len > 12 && strncmp(buf, "HTTP/1.", 7) == 0)
        status = atoi(buf + 9);
    if (resp_body) {
        char *sep = strstr(buf, "\r\n\r\n");
        *resp_body = strdup(sep ? sep + 4 : "");
    }
    free(buf);
    return status;
}

void loyd_e2e_assert_clean(const struct loyd_proc *p)
{
    if (p->log[0] == '\0')
        return;
    char *log = loyd_e2e_log(p);
    bool dirty = strstr(log, "Sanitizer") != NULL || strstr(log, "runtime error") != NULL;
    if (dirty)
        ck_abort_msg("sanitizer report in %s:\n%s", p->log, log);
    free(log);
}
