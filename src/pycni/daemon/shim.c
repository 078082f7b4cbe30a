/*
 * pycni-shim: the exec'd `pycni` / `pycni-host-local` as a native program (optional).
 *
 * Does exactly what pycni.daemon.client does for the Python launchers - hand (plugin, environment,
 * stdin) to the pycni daemon over its unix socket and print the answer - but starts in ~1 ms
 * instead of the ~8 ms a Python interpreter needs before it can run a line: on the warm path that
 * start is most of the cost of a verb. Whenever the daemon is not there, refuses the request
 * (another pycni version, a caller it does not serve - docs/security.md -, a request it cannot read,
 * a client deadline already passed) or the handoff is disabled
 * (PYCNI_NO_DAEMON, PYCNI_FAULT, a "pycniDaemon" key in the configuration), it execs the Python
 * plugin standalone with the same stdin, environment and arguments, so results never differ.
 * Protocol: see pycni/daemon/__init__.py.
 *
 * Build (make install does it when a C compiler is present):
 *   cc -O2 -o pycni-shim shim.c -DPYCNI_PYTHON='"/opt/pycni/bin/python"' -DPYCNI_VERSION='"0.1.0"'
 * then install it as both `pycni` and `pycni-host-local` (the plugin is the name it is run as).
 */
#define _GNU_SOURCE
#include <errno.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/mman.h>
#include <sys/socket.h>
#include <sys/stat.h>
#include <sys/time.h>
#include <sys/un.h>
#include <time.h>
#include <unistd.h>

#ifndef PYCNI_PYTHON
#error "define PYCNI_PYTHON, the interpreter of the pycni installation"
#endif
#ifndef PYCNI_VERSION
#error "define PYCNI_VERSION, pycni.__version__ of that installation"
#endif
#define DEFAULT_SOCKET "/run/pycni/pycni.sock"
#define MAX_STDIN (1 << 20)
#define MAX_FRAME (4 << 20)
#define PROTOCOL 2

extern char **environ;

struct buf { char *p; size_t n, cap; };

static void put(struct buf *b, const char *s, size_t n) {
    if (b->n + n + 1 > b->cap) {
        size_t cap = b->cap ? b->cap : 4096;
        while (b->n + n + 1 > cap) cap *= 2;
        char *p = realloc(b->p, cap);
        if (!p) { perror("pycni-shim"); exit(100); }
        b->p = p; b->cap = cap;
    }
    memcpy(b->p + b->n, s, n);
    b->n += n;
    b->p[b->n] = 0;
}
static void puts_(struct buf *b, const char *s) { put(b, s, strlen(s)); }

static void put_json_string(struct buf *b, const char *s, size_t n) {
    put(b, "\"", 1);
    for (size_t i = 0; i < n; i++) {
        unsigned char c = (unsigned char)s[i];
        char esc[8];
        if (c == '"' || c == '\\') { esc[0] = '\\'; esc[1] = (char)c; put(b, esc, 2); }
        else if (c < 0x20 || c == 0x7f) { snprintf(esc, sizeof esc, "\\u%04x", c); put(b, esc, 6); }
        else put(b, (const char *)&c, 1); /* UTF-8 passes through; invalid UTF-8 is refused -> standalone */
    }
    put(b, "\"", 1);
}

static void put_base64(struct buf *b, const unsigned char *s, size_t n) {
    static const char tbl[] = "ABCDEFGHIJKLMNOPQRSTUVWXYZabcdefghijklmnopqrstuvwxyz0123456789+/";
    char out[4];
    put(b, "\"", 1);
    for (size_t i = 0; i < n; i += 3) {
        unsigned v = (unsigned)s[i] << 16 | (i + 1 < n ? (unsigned)s[i + 1] << 8 : 0) | (i + 2 < n ? s[i + 2] : 0);
        out[0] = tbl[v >> 18 & 63]; out[1] = tbl[v >> 12 & 63];
        out[2] = i + 1 < n ? tbl[v >> 6 & 63] : '=';
        out[3] = i + 2 < n ? tbl[v & 63] : '=';
        put(b, out, 4);
    }
    put(b, "\"", 1);
}

/* -- the standalone fallback ------------------------------------------------------------------ */

static const char *plugin;
static int argc_;
static char **argv_;

static void standalone(const char *stdin_data, size_t stdin_len) {
    /* stdin was consumed: hand the same bytes to the Python plugin through a memfd */
    int fd = memfd_create("pycni-stdin", 0);
    if (fd >= 0) {
        size_t off = 0;
        while (off < stdin_len) {
            ssize_t w = write(fd, stdin_data + off, stdin_len - off);
            if (w <= 0) break;
            off += (size_t)w;
        }
        lseek(fd, 0, SEEK_SET);
        dup2(fd, 0);
        if (fd != 0) close(fd);
    }
    char code[256];
    if (argc_ > 1)  /* `pycni daemon ...`: a subcommand, not a CNI request */
        snprintf(code, sizeof code, "from pycni.cli import main_bridge; main_bridge()");
    else
        snprintf(code, sizeof code, "from pycni.cli import run_standalone; run_standalone('%s')", plugin);
    char **args = calloc((size_t)argc_ + 4, sizeof *args);
    if (!args) { perror("pycni-shim"); exit(100); }
    args[0] = (char *)PYCNI_PYTHON; args[1] = (char *)"-I"; args[2] = (char *)"-c"; args[3] = code;
    for (int i = 1; i < argc_; i++) args[3 + i] = argv_[i];
    execv(PYCNI_PYTHON, args);
    fprintf(stderr, "pycni-shim: cannot exec %s: %s\n", PYCNI_PYTHON, strerror(errno));
    printf("{\"cniVersion\": \"1.1.0\", \"code\": 100, \"msg\": \"cannot start the pycni plugin\", "
           "\"details\": \"exec %s failed\"}\n", PYCNI_PYTHON);
    exit(1);
}

static void try_again(const char *msg, const char *details) {
    struct buf b = {0};
    puts_(&b, "{\"cniVersion\": \"1.1.0\", \"code\": 11, \"msg\": ");
    put_json_string(&b, msg, strlen(msg));
    puts_(&b, ", \"details\": ");
    put_json_string(&b, details, strlen(details));
    puts_(&b, "}\n");
    fprintf(stderr, "pycni: %s: %s\n", msg, details);
    fwrite(b.p, 1, b.n, stdout);
    exit(1);
}

/* -- the answer: {"status": N, "stdout": "...", "stderr": "..."} or {"refused": "..."} ----------- */

static const char *ws(const char *s) { while (*s == ' ' || *s == '\n' || *s == '\r' || *s == '\t') s++; return s; }

static void put_utf8(struct buf *b, unsigned cp) {
    char o[4];
    if (cp < 0x80) { o[0] = (char)cp; put(b, o, 1); }
    else if (cp < 0x800) { o[0] = (char)(0xc0 | cp >> 6); o[1] = (char)(0x80 | (cp & 63)); put(b, o, 2); }
    else if (cp < 0x10000) {
        o[0] = (char)(0xe0 | cp >> 12); o[1] = (char)(0x80 | (cp >> 6 & 63)); o[2] = (char)(0x80 | (cp & 63)); put(b, o, 3);
    } else {
        o[0] = (char)(0xf0 | cp >> 18); o[1] = (char)(0x80 | (cp >> 12 & 63)); o[2] = (char)(0x80 | (cp >> 6 & 63));
        o[3] = (char)(0x80 | (cp & 63)); put(b, o, 4);
    }
}

static int hex4(const char *s, unsigned *v) {
    *v = 0;
    for (int i = 0; i < 4; i++) {
        char c = s[i]; unsigned d;
        if (c >= '0' && c <= '9') d = (unsigned)(c - '0');
        else if (c >= 'a' && c <= 'f') d = (unsigned)(c - 'a' + 10);
        else if (c >= 'A' && c <= 'F') d = (unsigned)(c - 'A' + 10);
        else return -1;
        *v = *v << 4 | d;
    }
    return 0;
}

/* parse a JSON string at s (after ws); returns the position after it, or NULL */
static const char *jstring(const char *s, struct buf *out) {
    if (*s != '"') return NULL;
    s++;
    while (*s && *s != '"') {
        if (*s != '\\') { put(out, s, 1); s++; continue; }
        s++;
        switch (*s) {
        case '"': put(out, "\"", 1); break;
        case '\\': put(out, "\\", 1); break;
        case '/': put(out, "/", 1); break;
        case 'b': put(out, "\b", 1); break;
        case 'f': put(out, "\f", 1); break;
        case 'n': put(out, "\n", 1); break;
        case 'r': put(out, "\r", 1); break;
        case 't': put(out, "\t", 1); break;
        case 'u': {
            unsigned cp, lo;
            if (hex4(s + 1, &cp)) return NULL;
            s += 4;
            if (cp >= 0xd800 && cp < 0xdc00 && s[1] == '\\' && s[2] == 'u' && !hex4(s + 3, &lo) && lo >= 0xdc00 && lo < 0xe000) {
                cp = 0x10000 + ((cp - 0xd800) << 10) + (lo - 0xdc00);
                s += 6;
            } else if (cp >= 0xd800 && cp < 0xe000) {
                cp = 0xfffd;  /* a lone surrogate: what Python's "replace" would print */
            }
            put_utf8(out, cp);
            break;
        }
        default: return NULL;
        }
        s++;
    }
    return *s == '"' ? s + 1 : NULL;
}

int main(int argc, char **argv) {
    argc_ = argc; argv_ = argv;
    const char *base = strrchr(argv[0], '/');
    plugin = base ? base + 1 : argv[0];
    if (strcmp(plugin, "pycni") != 0 && strcmp(plugin, "pycni-host-local") != 0) plugin = "pycni";

    /* stdin, as the Python plugin reads it: at most one byte past the limit */
    struct buf in = {0};
    char chunk[65536];
    for (;;) {
        ssize_t r = read(0, chunk, sizeof chunk);
        if (r < 0 && errno == EINTR) continue;
        if (r <= 0) break;
        put(&in, chunk, (size_t)r);
        if (in.n > MAX_STDIN) break;
    }
    if (argc > 1) standalone(in.p, in.n);
    const char *off = getenv("PYCNI_NO_DAEMON");
    if ((off && (!strcasecmp(off, "1") || !strcasecmp(off, "true") || !strcasecmp(off, "yes")))
        || (getenv("PYCNI_FAULT") && *getenv("PYCNI_FAULT"))
        || (in.n && memmem(in.p, in.n, "\"pycniDaemon\"", 13)))
        standalone(in.p, in.n);

    const char *path = getenv("PYCNI_SOCKET");
    if (!path || !*path) path = DEFAULT_SOCKET;
    struct sockaddr_un addr = {.sun_family = AF_UNIX};
    if (strlen(path) >= sizeof addr.sun_path) standalone(in.p, in.n);
    strcpy(addr.sun_path, path);
    int fd = socket(AF_UNIX, SOCK_STREAM | SOCK_CLOEXEC, 0);
    if (fd < 0) standalone(in.p, in.n);
    struct timeval tv = {.tv_sec = 0, .tv_usec = 500000};
    setsockopt(fd, SOL_SOCKET, SO_SNDTIMEO, &tv, sizeof tv);
    if (connect(fd, (struct sockaddr *)&addr, sizeof addr) != 0) { close(fd); standalone(in.p, in.n); }

    /* The daemon runs nothing after this deadline (CLOCK_MONOTONIC; it serves only callers in its own
     * namespaces - read from the kernel, not from us) and undoes an ADD whose answer we do not ACK. */
    double timeout = 120.0;
    const char *t = getenv("PYCNI_DAEMON_TIMEOUT");
    if (t && atof(t) > 0 && atof(t) <= 86400) timeout = atof(t);
    struct timespec now;
    clock_gettime(CLOCK_MONOTONIC, &now);
    long long deadline_ms = (long long)now.tv_sec * 1000 + now.tv_nsec / 1000000 + (long long)(timeout * 1000);
    struct buf req = {0};
    char head[512];
    snprintf(head, sizeof head, "{\"proto\":%d,\"version\":\"%s\",\"plugin\":\"%s\",\"deadline\":%lld,\"env\":{",
             PROTOCOL, PYCNI_VERSION, plugin, deadline_ms);
    puts_(&req, head);
    int first = 1;
    for (char **e = environ; *e; e++) {
        const char *eq = strchr(*e, '=');
        if (!eq) continue;
        if (!first) put(&req, ",", 1);
        first = 0;
        put_json_string(&req, *e, (size_t)(eq - *e));
        put(&req, ":", 1);
        put_json_string(&req, eq + 1, strlen(eq + 1));
    }
    puts_(&req, "},\"stdin\":");
    put_base64(&req, (const unsigned char *)in.p, in.n);
    puts_(&req, "}");

    tv.tv_sec = (time_t)timeout; tv.tv_usec = (suseconds_t)((timeout - (double)tv.tv_sec) * 1e6);
    setsockopt(fd, SOL_SOCKET, SO_SNDTIMEO, &tv, sizeof tv);
    setsockopt(fd, SOL_SOCKET, SO_RCVTIMEO, &tv, sizeof tv);
    unsigned char len[4] = {(unsigned char)(req.n >> 24), (unsigned char)(req.n >> 16), (unsigned char)(req.n >> 8), (unsigned char)req.n};
    if (send(fd, len, 4, MSG_NOSIGNAL) != 4) { close(fd); standalone(in.p, in.n); }
    for (size_t sent = 0; sent < req.n;) {
        ssize_t w = send(fd, req.p + sent, req.n - sent, MSG_NOSIGNAL);
        if (w <= 0) { close(fd); standalone(in.p, in.n); }  /* closed before reading: nothing was done */
        sent += (size_t)w;
    }

    struct buf ans = {0};
    size_t want = 4, got = 0;
    unsigned char hdr[4];
    while (got < want) {
        ssize_t r = recv(fd, got < 4 ? (char *)hdr + got : chunk, got < 4 ? 4 - got : (want - got < sizeof chunk ? want - got : sizeof chunk), 0);
        if (r < 0 && errno == EINTR) continue;
        if (r < 0 && (errno == EAGAIN || errno == EWOULDBLOCK)) try_again("the pycni daemon did not answer in time", path);
        if (r <= 0) try_again("the pycni daemon failed during the request", "connection closed");
        if (got < 4) {
            got += (size_t)r;
            if (got == 4) {
                want = 4 + ((size_t)hdr[0] << 24 | (size_t)hdr[1] << 16 | (size_t)hdr[2] << 8 | hdr[3]);
                if (want - 4 > MAX_FRAME) try_again("the pycni daemon answered garbage", "frame too long");
            }
        } else {
            put(&ans, chunk, (size_t)r);
            got += (size_t)r;
        }
    }

    long status = -1;
    struct buf out = {0}, err = {0}, key = {0}, junk = {0};
    int refused = 0;
    const char *s = ws(ans.p ? ans.p : "");
    if (*s != '{') try_again("the pycni daemon answered garbage", "not an object");
    s = ws(s + 1);
    while (*s && *s != '}') {
        key.n = 0;
        if (!(s = jstring(s, &key))) try_again("the pycni daemon answered garbage", "bad key");
        s = ws(s);
        if (*s != ':') try_again("the pycni daemon answered garbage", "no colon");
        s = ws(s + 1);
        const char *k = key.p ? key.p : "";
        if (!strcmp(k, "status")) {
            char *end;
            status = strtol(s, &end, 10);
            if (end == s) try_again("the pycni daemon answered garbage", "bad status");
            s = end;
        } else {
            struct buf *dst = !strcmp(k, "stdout") ? &out : !strcmp(k, "stderr") ? &err : &junk;
            if (!strcmp(k, "refused")) refused = 1;
            if (!(s = jstring(s, dst))) try_again("the pycni daemon answered garbage", "bad string");
        }
        s = ws(s);
        if (*s == ',') s = ws(s + 1);
    }
    if (refused) {
        if (getenv("PYCNI_DAEMON_DEBUG")) fprintf(stderr, "pycni: daemon refused: %s\n", junk.p ? junk.p : "");
        standalone(in.p, in.n);
    }
    if (status < 0) try_again("the pycni daemon answered garbage", "no status");
    send(fd, "\x06", 1, MSG_NOSIGNAL);  /* ACK: we have the answer and use it (an unacknowledged ADD is undone) */
    close(fd);
    if (err.n) fwrite(err.p, 1, err.n, stderr);
    if (out.n) { fwrite(out.p, 1, out.n, stdout); fputc('\n', stdout); }
    fflush(stdout);
    return (int)status;
}
