/*
 * pycni-shim: the exec'd `pycni` / `pycni-host-local` as a native program - what `make install`, the
 * bundle and the kind DaemonSet install by default (NATIVE_SHIM=0 installs the Python launchers instead).
 *
 * Does exactly what the Python launcher does (pycni.cli -> pycni.daemon.client): hand (plugin,
 * environment, stdin) to the pycni daemon over its unix socket and print the answer - but starts in
 * ~1 ms instead of the ~8 ms a Python interpreter needs before it can run a line: on the warm path
 * that start is most of the cost of a verb. Whenever the daemon is not there or refuses the request
 * (another pycni version, a caller it does not serve - docs/security.md -, a request it cannot read, a
 * client deadline already passed), or the handoff is off (PYCNI_NO_DAEMON, PYCNI_FAULT), it execs the
 * installation's interpreter to run the verb standalone with the same stdin, environment and arguments,
 * so results never differ; a configuration naming "pycniDaemon" goes to the Python launcher, which
 * decides. Once the request was sent, a daemon that fails is not retried: the answer is CNI error 11,
 * printed by the same Python code as for the Python launcher (wire.try_again).
 *
 * The protocol - framing, field names, encoding, limits - is pycni/daemon/wire.py's; every constant
 * comes from the header it generates (`python -m pycni.daemon.wire --c-header > wire.h`), and
 * tests/test_wire.py runs the same golden request/answer bytes against this program and the Python
 * client. Build: integration/shim/build.sh (static: it runs on any node, whatever its libc), with
 *   -DPYCNI_PYTHON='"/opt/pycni/bin/python"'       the interpreter of a `make install` installation, or
 *   -DPYCNI_BUNDLE_PYTHON='"python3.11"' -DPYCNI_BUNDLE_DIR='"pycni.d"' -DPYCNI_BUNDLE_LOADER='"ld-linux-x86-64.so.2"'
 *                                                  the bundle's (integration/bundle/build.sh), found next to
 *                                                  this executable and run through its own loader and glibc.
 */
#define _GNU_SOURCE
#include <errno.h>
#include <limits.h>
#include <poll.h>
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

#include "wire.h"

#if !defined(PYCNI_PYTHON) && !defined(PYCNI_BUNDLE_PYTHON)
#error "define PYCNI_PYTHON (an installation's interpreter) or PYCNI_BUNDLE_PYTHON (the bundle's)"
#endif

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

/* -- the encoding (wire.py): json.dumps(ensure_ascii=True) of text decoded like os.environ ------ */

/* Length of the valid UTF-8 sequence at s (at most n bytes), its code point in *cp; 0 if invalid. */
static size_t utf8_seq(const unsigned char *s, size_t n, unsigned *cp) {
    unsigned c = s[0];
    size_t len;
    unsigned min;
    if (c < 0x80) { *cp = c; return 1; }
    if (c >= 0xc2 && c <= 0xdf) { len = 2; *cp = c & 0x1f; min = 0x80; }
    else if (c >= 0xe0 && c <= 0xef) { len = 3; *cp = c & 0x0f; min = 0x800; }
    else if (c >= 0xf0 && c <= 0xf4) { len = 4; *cp = c & 0x07; min = 0x10000; }
    else return 0;
    if (n < len) return 0;
    for (size_t i = 1; i < len; i++) {
        if ((s[i] & 0xc0) != 0x80) return 0;
        *cp = *cp << 6 | (s[i] & 0x3f);
    }
    if (*cp < min || *cp > 0x10ffff || (*cp >= 0xd800 && *cp < 0xe000)) return 0;
    return len;
}

static void put_u(struct buf *b, unsigned unit) {
    char esc[8];
    snprintf(esc, sizeof esc, "\\u%04x", unit & 0xffff);
    put(b, esc, 6);
}

/* A JSON string: `"` `\` \b \f \n \r \t escaped as such, other controls, DEL and non-ASCII as \uXXXX
 * (surrogate pairs beyond the BMP); a byte that is not part of valid UTF-8 as \udcXX (surrogateescape). */
static void put_json_string(struct buf *b, const char *str, size_t n) {
    const unsigned char *s = (const unsigned char *)str;
    put(b, "\"", 1);
    for (size_t i = 0; i < n;) {
        unsigned cp;
        size_t len = utf8_seq(s + i, n - i, &cp);
        if (len == 0) { put_u(b, 0xdc00 | s[i]); i++; continue; }
        i += len;
        switch (cp) {
        case '"': put(b, "\\\"", 2); break;
        case '\\': put(b, "\\\\", 2); break;
        case '\b': put(b, "\\b", 2); break;
        case '\f': put(b, "\\f", 2); break;
        case '\n': put(b, "\\n", 2); break;
        case '\r': put(b, "\\r", 2); break;
        case '\t': put(b, "\\t", 2); break;
        default:
            if (cp >= 0x20 && cp < 0x7f) { char c = (char)cp; put(b, &c, 1); }
            else if (cp < 0x10000) put_u(b, cp);
            else { cp -= 0x10000; put_u(b, 0xd800 | cp >> 10); put_u(b, 0xdc00 | (cp & 0x3ff)); }
        }
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

static void put_key(struct buf *b, const char *key) {
    put_json_string(b, key, strlen(key));
    put(b, ":", 1);
}

/* -- running the installation's interpreter ---------------------------------------------------- */

static const char *plugin;
static int argc_;
static char **argv_;
static struct buf in;  /* stdin, once read */

/* The directory this executable is in, symlinks resolved (without /proc: from argv[0] and PATH). */
#ifdef PYCNI_BUNDLE_PYTHON
static char *self_dir(void) {
    char path[PATH_MAX];
    ssize_t r = readlink("/proc/self/exe", path, sizeof path - 1);
    char *real = NULL;
    if (r > 0) { path[r] = 0; real = strdup(path); }
    else if (strchr(argv_[0], '/')) real = realpath(argv_[0], NULL);
    else {
        const char *p = getenv("PATH");
        while (p && *p && !real) {
            const char *end = strchrnul(p, ':');
            snprintf(path, sizeof path, "%.*s/%s", (int)(end - p), p, argv_[0]);
            if (end > p && access(path, X_OK) == 0) real = realpath(path, NULL);
            p = *end ? end + 1 : end;
        }
    }
    if (!real) return NULL;
    char *slash = strrchr(real, '/');
    if (slash) *slash = 0;
    return real;
}
#endif

/* The last resort: no interpreter to run (a broken installation), so no configuration is read either:
 * the error is printed in the latest version, code 100 (internal). */
__attribute__((noreturn)) static void cannot_start(const char *what) {
    const char *why = strerror(errno);
    struct buf b = {0}, details = {0};
    fprintf(stderr, "pycni-shim: cannot start the pycni plugin: %s: %s\n", what, why);
    puts_(&details, what); puts_(&details, ": "); puts_(&details, why);
    puts_(&b, "{\"cniVersion\": \"" PYCNI_LATEST_CNI_VERSION "\", \"code\": 100, \"msg\": \"cannot start the pycni plugin\", "
              "\"details\": ");
    put_json_string(&b, details.p, details.n);
    puts_(&b, "}\n");
    fwrite(b.p, 1, b.n, stdout);
    exit(1);
}

/* Give the interpreter the stdin this process has consumed (a memfd holding the same bytes). */
static void restore_stdin(void) {
    int fd = memfd_create("pycni-stdin", 0);
    if (fd < 0) cannot_start("memfd_create");
    for (size_t off = 0; off < in.n;) {
        ssize_t w = write(fd, in.p + off, in.n - off);
        if (w < 0 && errno == EINTR) continue;
        if (w <= 0) cannot_start("write stdin");
        off += (size_t)w;
    }
    if (lseek(fd, 0, SEEK_SET) != 0 || dup2(fd, 0) != 0) cannot_start("restoring stdin");
    if (fd != 0) close(fd);
}

/* exec <interpreter> -I -c CODE ARGS... */
__attribute__((noreturn)) static void exec_python(const char *code, char **args, int nargs) {
    char **v = calloc((size_t)nargs + 12, sizeof *v);
    if (!v) cannot_start("calloc");
    int i = 0;
#ifdef PYCNI_BUNDLE_PYTHON
    char *d = self_dir();
    if (!d) cannot_start("finding the bundle");
    char *loader, *lib, *py3, *exe;
    if (asprintf(&loader, "%s/%s/lib/%s", d, PYCNI_BUNDLE_DIR, PYCNI_BUNDLE_LOADER) < 0
        || asprintf(&lib, "%s/%s/lib", d, PYCNI_BUNDLE_DIR) < 0
        || asprintf(&py3, "%s/%s/bin/python3", d, PYCNI_BUNDLE_DIR) < 0
        || asprintf(&exe, "%s/%s/bin/%s", d, PYCNI_BUNDLE_DIR, PYCNI_BUNDLE_PYTHON) < 0)
        cannot_start("asprintf");
    /* the bundled loader and glibc whatever the node has (integration/bundle/README.md) */
    v[i++] = loader; v[i++] = (char *)"--inhibit-cache"; v[i++] = (char *)"--library-path"; v[i++] = lib;
    v[i++] = (char *)"--argv0"; v[i++] = py3; v[i++] = exe;
#else
    const char *loader = PYCNI_PYTHON;
    v[i++] = (char *)PYCNI_PYTHON;
#endif
    v[i++] = (char *)"-I"; v[i++] = (char *)"-c"; v[i++] = (char *)code;
    for (int k = 0; k < nargs; k++) v[i++] = args[k];
    execv(loader, v);
    cannot_start(loader);
}

static const char *launcher_code(void) {
    return strcmp(plugin, WIRE_PLUGIN_HOST_LOCAL) ? WIRE_EXEC_LAUNCHER_BRIDGE : WIRE_EXEC_LAUNCHER_HOST_LOCAL;
}

/* The daemon did nothing: run the verb in the interpreter, no handoff. */
__attribute__((noreturn)) static void standalone(void) {
    char code[256];
    snprintf(code, sizeof code, WIRE_EXEC_STANDALONE, plugin);
    restore_stdin();
    exec_python(code, NULL, 0);
}

/* The request was sent and no usable answer came: CNI error 11, printed by wire.try_again. */
__attribute__((noreturn)) static void try_again(const char *reason, const char *details) {
    char *args[] = {(char *)reason, (char *)details};
    restore_stdin();
    exec_python(WIRE_EXEC_TRY_AGAIN, args, 2);
}

/* -- the answer: {"status": N, "stdout": "...", "stderr": "..."} or {"refused": ...} ------------- */

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

/* A JSON string at s, decoded into out (NULL: skipped); the position after it, or NULL if malformed.
 * As Python's strict decoder: no raw control characters. A lone surrogate escape is written back as
 * its escape (what Python's stderr, backslashreplace, prints for it). */
static const char *jstring(const char *s, struct buf *out) {
    struct buf skip = {0};
    if (!out) out = &skip;
    if (*s != '"') return NULL;
    s++;
    while (*s != '"') {
        if ((unsigned char)*s < 0x20) { free(skip.p); return NULL; }
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
            if (hex4(s + 1, &cp)) { free(skip.p); return NULL; }
            s += 4;
            if (cp >= 0xd800 && cp < 0xdc00 && s[1] == '\\' && s[2] == 'u' && !hex4(s + 3, &lo) && lo >= 0xdc00 && lo < 0xe000) {
                cp = 0x10000 + ((cp - 0xd800) << 10) + (lo - 0xdc00);
                s += 6;
            } else if (cp >= 0xd800 && cp < 0xe000) {
                char esc[8];
                snprintf(esc, sizeof esc, "\\u%04x", cp & 0xffff);
                put(out, esc, 6);
                break;
            }
            put_utf8(out, cp);
            break;
        }
        default: free(skip.p); return NULL;
        }
        s++;
    }
    free(skip.p);
    return s + 1;
}

/* A JSON number at s: the position after it; *integer says whether it had no fraction or exponent. */
static const char *jnumber(const char *s, int *integer) {
    const char *p = s;
    *integer = 1;
    if (*p == '-') p++;
    if (*p == '0') p++;
    else if (*p >= '1' && *p <= '9') while (*p >= '0' && *p <= '9') p++;
    else return NULL;
    if (*p == '.') {
        *integer = 0; p++;
        if (!(*p >= '0' && *p <= '9')) return NULL;
        while (*p >= '0' && *p <= '9') p++;
    }
    if (*p == 'e' || *p == 'E') {
        *integer = 0; p++;
        if (*p == '+' || *p == '-') p++;
        if (!(*p >= '0' && *p <= '9')) return NULL;
        while (*p >= '0' && *p <= '9') p++;
    }
    return p;
}

/* Skip any JSON value (Python's decoder also takes NaN, Infinity and -Infinity). */
static const char *jskip(const char *s, int depth) {
    int integer;
    if (depth > 64) return NULL;
    s = ws(s);
    if (*s == '"') return jstring(s, NULL);
    if (*s == '{' || *s == '[') {
        char close = *s == '{' ? '}' : ']';
        s = ws(s + 1);
        if (*s == close) return s + 1;
        for (;;) {
            if (close == '}') {
                if (!(s = jstring(ws(s), NULL))) return NULL;
                s = ws(s);
                if (*s++ != ':') return NULL;
            }
            if (!(s = jskip(s, depth + 1))) return NULL;
            s = ws(s);
            if (*s == close) return s + 1;
            if (*s++ != ',') return NULL;
        }
    }
    static const char *const words[] = {"true", "false", "null", "NaN", "Infinity", "-Infinity", 0};
    for (int i = 0; words[i]; i++)
        if (!strncmp(s, words[i], strlen(words[i]))) return s + strlen(words[i]);
    return jnumber(s, &integer);
}

static int valid_utf8(const char *s, size_t n) {
    for (size_t i = 0; i < n;) {
        unsigned cp;
        size_t len = utf8_seq((const unsigned char *)s + i, n - i, &cp);
        if (!len) return 0;
        i += len;
    }
    return 1;
}

/* wire.decode_answer: 1 = an answer (status, out, err), 0 = a refusal, -1 = not an answer. */
static int decode_answer(const char *body, size_t n, long *status, struct buf *out, struct buf *err, struct buf *why) {
    if (memchr(body, 0, n) || !valid_utf8(body, n)) return -1;
    int refused = 0, have_status = 0, have_out = 0, have_err = 0;
    struct buf key = {0};
    const char *s = ws(body);
    if (*s != '{') return -1;
    s = ws(s + 1);
    if (*s == '}') s++;
    else for (;;) {
        key.n = 0;
        if (!(s = jstring(s, &key))) return -1;
        s = ws(s);
        if (*s++ != ':') return -1;
        s = ws(s);
        const char *k = key.p ? key.p : "";
        int integer;
        if (!strcmp(k, WIRE_REFUSED_KEY)) { refused = 1; why->n = 0; s = *s == '"' ? jstring(s, why) : jskip(s, 0); }
        else if (!strcmp(k, WIRE_KEY_STATUS)) {  /* an integer 0..255 ("-0" too, as Python reads it) */
            const char *end = (*s == '-' || (*s >= '0' && *s <= '9')) ? jnumber(s, &integer) : NULL;
            have_status = end && integer && end - s <= 4;
            if (have_status) *status = strtol(s, NULL, 10);
            if (have_status && (*status < 0 || *status > 255)) have_status = 0;
            s = end ? end : jskip(s, 0);
        } else if (!strcmp(k, WIRE_KEY_STDOUT) || !strcmp(k, WIRE_KEY_STDERR)) {
            int is_out = !strcmp(k, WIRE_KEY_STDOUT);
            struct buf *dst = is_out ? out : err;
            dst->n = 0;
            const char *end = *s == '"' ? jstring(s, dst) : NULL;
            if (is_out) have_out = end != NULL; else have_err = end != NULL ? 1 : -1;
            s = end ? end : jskip(s, 0);
        } else s = jskip(s, 0);
        if (!s) return -1;
        s = ws(s);
        if (*s == '}') { s++; break; }
        if (*s++ != ',') return -1;
        s = ws(s);
    }
    if (*ws(s)) return -1;  /* trailing data */
    free(key.p);
    if (refused) return 0;
    if (!have_status || !have_out || have_err < 0) return -1;
    return 1;
}

/* -- the exchange ---------------------------------------------------------------------------- */

static long long now_ms(void) {
    struct timespec now;
    clock_gettime(CLOCK_MONOTONIC, &now);
    return (long long)now.tv_sec * 1000 + now.tv_nsec / 1000000;
}

/* wire.reply_timeout_ms: plain decimal seconds in (0, 1 day], else the default */
static long long reply_timeout_ms(void) {
    const char *t = getenv(WIRE_REPLY_TIMEOUT_ENV);
    if (!t || !(*t >= '0' && *t <= '9')) return WIRE_DEFAULT_REPLY_TIMEOUT_MS;
    long long whole = 0, frac = 0;
    const char *p = t;
    for (; *p >= '0' && *p <= '9'; p++) {
        whole = whole * 10 + (*p - '0');
        if (whole > WIRE_MAX_REPLY_TIMEOUT_MS) return WIRE_DEFAULT_REPLY_TIMEOUT_MS;
    }
    if (*p == '.') {
        p++;
        if (!(*p >= '0' && *p <= '9')) return WIRE_DEFAULT_REPLY_TIMEOUT_MS;
        for (int i = 0; *p >= '0' && *p <= '9'; p++, i++)
            if (i < 3) frac += (*p - '0') * (i == 0 ? 100 : i == 1 ? 10 : 1);
    }
    if (*p) return WIRE_DEFAULT_REPLY_TIMEOUT_MS;
    long long ms = whole * 1000 + frac;
    return ms > 0 && ms <= WIRE_MAX_REPLY_TIMEOUT_MS ? ms : WIRE_DEFAULT_REPLY_TIMEOUT_MS;
}

static int handoff_off(void) {
    static const char *const values[] = WIRE_NO_DAEMON_VALUES;
    const char *off = getenv(WIRE_NO_DAEMON_ENV);
    for (int i = 0; off && values[i]; i++)
        if (!strcasecmp(off, values[i])) return 1;
    const char *fault = getenv(WIRE_FAULT_ENV);
    return fault && *fault;
}

/* The request frame (wire.encode_request); the environment as os.environ holds it: the first of
 * duplicate names, entries without '=' skipped. */
static void encode_request(struct buf *req, long long deadline_ms) {
    char num[32];
    put(req, "\0\0\0\0", WIRE_HEADER_BYTES);
    put(req, "{", 1);
    put_key(req, WIRE_KEY_PROTO);
    snprintf(num, sizeof num, "%d,", WIRE_PROTOCOL); puts_(req, num);
    put_key(req, WIRE_KEY_VERSION);
    put_json_string(req, PYCNI_VERSION, strlen(PYCNI_VERSION)); put(req, ",", 1);
    put_key(req, WIRE_KEY_PLUGIN);
    put_json_string(req, plugin, strlen(plugin)); put(req, ",", 1);
    put_key(req, WIRE_KEY_DEADLINE);
    snprintf(num, sizeof num, "%lld,", deadline_ms); puts_(req, num);
    put_key(req, WIRE_KEY_ENV);
    put(req, "{", 1);
    int first = 1;
    for (char **e = environ; *e; e++) {
        const char *eq = strchr(*e, '=');
        if (!eq) continue;
        size_t klen = (size_t)(eq - *e);
        int seen = 0;
        for (char **f = environ; f < e && !seen; f++)
            seen = strchr(*f, '=') && !strncmp(*f, *e, klen + 1);
        if (seen) continue;
        if (!first) put(req, ",", 1);
        first = 0;
        put_json_string(req, *e, klen);
        put(req, ":", 1);
        put_json_string(req, eq + 1, strlen(eq + 1));
    }
    put(req, "},", 2);
    put_key(req, WIRE_KEY_STDIN);
    put_base64(req, (const unsigned char *)in.p, in.n);
    put(req, "}", 1);
    size_t body = req->n - WIRE_HEADER_BYTES;
    for (int i = 0; i < WIRE_HEADER_BYTES; i++) req->p[i] = (char)(body >> (8 * (WIRE_HEADER_BYTES - 1 - i)) & 0xff);
}

/* Exactly n bytes before the deadline; 0 on success, else the try-again reason (details in *why). */
static const char *recv_exact(int fd, char *dst, size_t n, long long deadline_ms, char *why, size_t whylen) {
    for (size_t got = 0; got < n;) {
        long long left = deadline_ms - now_ms();
        struct pollfd p = {.fd = fd, .events = POLLIN};
        int r = left > 0 ? poll(&p, 1, left > INT_MAX ? INT_MAX : (int)left) : 0;
        if (r < 0 && errno == EINTR) continue;
        if (r == 0) return WIRE_TRY_AGAIN_TIMEOUT;
        ssize_t k = r < 0 ? -1 : recv(fd, dst + got, n - got, 0);
        if (k < 0 && errno == EINTR) continue;
        if (k < 0) { snprintf(why, whylen, "%s", strerror(errno)); return WIRE_TRY_AGAIN_FAILED; }
        if (k == 0) { snprintf(why, whylen, WIRE_CLOSED_DETAILS, (int)got, (int)n); return WIRE_TRY_AGAIN_FAILED; }
        got += (size_t)k;
    }
    return NULL;
}

int main(int argc, char **argv) {
    argc_ = argc; argv_ = argv;
    const char *base = strrchr(argv[0], '/');
    plugin = base ? base + 1 : argv[0];
    if (strcmp(plugin, WIRE_PLUGIN_BRIDGE) != 0 && strcmp(plugin, WIRE_PLUGIN_HOST_LOCAL) != 0) plugin = WIRE_PLUGIN_BRIDGE;
    /* `pycni daemon ...`: a subcommand, not a CNI request (stdin is its own, untouched) */
    if (argc > 1) exec_python(launcher_code(), argv + 1, argc - 1);

    /* stdin, as the Python plugin reads it: at most one byte past the limit */
    char chunk[65536];
    while (in.n <= WIRE_MAX_STDIN) {
        size_t want = WIRE_MAX_STDIN + 1 - in.n;
        ssize_t r = read(0, chunk, want < sizeof chunk ? want : sizeof chunk);
        if (r < 0 && errno == EINTR) continue;
        if (r <= 0) break;
        put(&in, chunk, (size_t)r);
    }
    if (handoff_off()) standalone();
    if (in.n && memmem(in.p, in.n, WIRE_CONFIG_KEY_QUOTED, strlen(WIRE_CONFIG_KEY_QUOTED))) {
        restore_stdin();  /* the Python launcher reads the configuration and decides */
        exec_python(launcher_code(), NULL, 0);
    }

    const char *path = getenv(WIRE_SOCKET_ENV);
    if (!path || !*path) path = WIRE_DEFAULT_SOCKET;
    struct sockaddr_un addr = {.sun_family = AF_UNIX};
    if (strlen(path) >= sizeof addr.sun_path) standalone();
    strcpy(addr.sun_path, path);
    int fd = socket(AF_UNIX, SOCK_STREAM | SOCK_CLOEXEC, 0);
    if (fd < 0) standalone();
    struct timeval tv = {.tv_sec = WIRE_CONNECT_TIMEOUT_MS / 1000, .tv_usec = WIRE_CONNECT_TIMEOUT_MS % 1000 * 1000};
    setsockopt(fd, SOL_SOCKET, SO_SNDTIMEO, &tv, sizeof tv);
    if (connect(fd, (struct sockaddr *)&addr, sizeof addr) != 0) { close(fd); standalone(); }

    /* The daemon runs nothing after this deadline (CLOCK_MONOTONIC; it serves only callers in its own
     * namespaces - read from the kernel, not from us) and undoes an ADD whose answer we do not ACK. */
    long long timeout_ms = reply_timeout_ms();
    long long deadline_ms = now_ms() + timeout_ms;
    struct buf req = {0};
    encode_request(&req, deadline_ms);
    tv.tv_sec = (time_t)(timeout_ms / 1000); tv.tv_usec = (suseconds_t)(timeout_ms % 1000 * 1000);
    setsockopt(fd, SOL_SOCKET, SO_SNDTIMEO, &tv, sizeof tv);
    for (size_t sent = 0; sent < req.n;) {
        ssize_t w = send(fd, req.p + sent, req.n - sent, MSG_NOSIGNAL);
        if (w < 0 && errno == EINTR) continue;
        if (w <= 0) { close(fd); standalone(); }  /* closed before reading: nothing was done */
        sent += (size_t)w;
    }

    char why[256], hdr[WIRE_HEADER_BYTES];
    const char *reason = recv_exact(fd, hdr, sizeof hdr, deadline_ms, why, sizeof why);
    size_t size = 0;
    for (int i = 0; !reason && i < WIRE_HEADER_BYTES; i++) size = size << 8 | (unsigned char)hdr[i];
    if (!reason && (size == 0 || size > WIRE_MAX_FRAME)) {
        snprintf(why, sizeof why, WIRE_BAD_LENGTH, (int)size);
        reason = WIRE_TRY_AGAIN_GARBAGE;
    }
    char *body = reason ? NULL : malloc(size + 1);
    if (!reason && !body) cannot_start("malloc");
    if (!reason) reason = recv_exact(fd, body, size, deadline_ms, why, sizeof why);
    if (reason && !strcmp(reason, WIRE_TRY_AGAIN_TIMEOUT))
        snprintf(why, sizeof why, WIRE_TIMEOUT_DETAILS, (double)timeout_ms / 1000, path);
    if (reason) { close(fd); try_again(reason, why); }
    body[size] = 0;

    long status = -1;
    struct buf out = {0}, err = {0}, refusal = {0};
    int kind = decode_answer(body, size, &status, &out, &err, &refusal);
    if (kind < 0) { close(fd); try_again(WIRE_TRY_AGAIN_GARBAGE, WIRE_NOT_AN_ANSWER); }
    if (kind == 0) {
        close(fd);
        if (getenv(WIRE_DEBUG_ENV)) fprintf(stderr, "pycni: daemon refused: %s\n", refusal.p ? refusal.p : body);
        standalone();
    }
    char ack = WIRE_ACK;
    send(fd, &ack, 1, MSG_NOSIGNAL);  /* we have the answer and use it (an unacknowledged ADD is undone) */
    close(fd);
    if (err.n) fwrite(err.p, 1, err.n, stderr);
    if (out.n) { fwrite(out.p, 1, out.n, stdout); fputc('\n', stdout); }
    fflush(stdout);
    return (int)status;
}
