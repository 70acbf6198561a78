/* pcapng_test.c: unit test for native/pcapng.c, run under ASan/UBSan by `make -C tests/native run`.
 * Usage: pcapng_test PCAPS_DIR. Prints one line per check; exits 1 if any check fails. */
#include "pcapng.h"

#include <glob.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <unistd.h>

static int failures;

#define CHECK(cond, ...)                                                  \
    do {                                                                  \
        if (!(cond)) {                                                    \
            failures++;                                                   \
            printf("FAIL %s:%d: ", __FILE__, __LINE__);                   \
            printf(__VA_ARGS__);                                          \
            printf("\n");                                                 \
        }                                                                 \
    } while (0)

struct summary {
    int rc;                 /* open failed: -1; else last pcapng_next result (0 or -1) */
    long packets;
    unsigned lt_mask;       /* bit 0: LINKTYPE 0, 1: 1, 2: 12, 3: 101, 4: 113, 5: other */
    uint64_t first_ts, min_ts, max_ts;
    uint64_t bytes;         /* sum of caplen; every data byte is read to let ASan check it */
    char err[256];
};

static unsigned lt_bit(int lt)
{
    switch (lt) {
    case 0: return 1u;
    case 1: return 2u;
    case 12: return 4u;
    case 101: return 8u;
    case 113: return 16u;
    default: return 32u;
    }
}

static void read_all(const char *path, struct summary *s)
{
    pcapng_reader_t *r = NULL;
    uint64_t ts;
    uint32_t caplen, len;
    int lt, rc;
    const uint8_t *data;
    unsigned sum = 0;

    memset(s, 0, sizeof *s);
    s->min_ts = UINT64_MAX;
    if (pcapng_open(path, &r, s->err, sizeof s->err) < 0) {
        CHECK(r == NULL, "%s: failed open left a handle", path);
        s->rc = -1;
        return;
    }
    while ((rc = pcapng_next(r, &ts, &caplen, &len, &lt, &data)) == 1) {
        for (uint32_t i = 0; i < caplen; i++)
            sum += data[i];
        if (s->packets == 0)
            s->first_ts = ts;
        if (ts < s->min_ts)
            s->min_ts = ts;
        if (ts > s->max_ts)
            s->max_ts = ts;
        s->packets++;
        s->bytes += caplen;
        s->lt_mask |= lt_bit(lt);
    }
    s->rc = rc;
    CHECK(rc == 0 || rc == -1, "%s: pcapng_next returned %d", path, rc);
    CHECK(pcapng_next(r, &ts, &caplen, &len, &lt, &data) == rc, "%s: end is not sticky", path);
    if (rc < 0) {
        snprintf(s->err, sizeof s->err, "%s", pcapng_error(r));
        CHECK(s->err[0] != '\0', "%s: error without a message", path);
    }
    pcapng_close(r);
    (void)sum;
}

static void path_join(char *out, size_t n, const char *dir, const char *rel)
{
    snprintf(out, n, "%s/%s", dir, rel);
}

/* ---- synthetic files (little-endian writer) ---- */

struct buf { uint8_t d[4096]; size_t n; };

static void put(struct buf *b, const void *p, size_t n)
{
    if (b->n + n <= sizeof b->d) {
        memcpy(b->d + b->n, p, n);
        b->n += n;
    }
}
static void put16(struct buf *b, uint16_t v) { uint8_t x[2] = { (uint8_t)v, (uint8_t)(v >> 8) }; put(b, x, 2); }
static void put32(struct buf *b, uint32_t v)
{
    uint8_t x[4] = { (uint8_t)v, (uint8_t)(v >> 8), (uint8_t)(v >> 16), (uint8_t)(v >> 24) };
    put(b, x, 4);
}
static void put64(struct buf *b, uint64_t v) { put32(b, (uint32_t)v); put32(b, (uint32_t)(v >> 32)); }

/* Append a block; body of n bytes, padded to 4. total_override 0 = correct length. */
static void block(struct buf *b, uint32_t type, const void *body, size_t n, uint32_t total_override)
{
    static const uint8_t zero[4] = { 0 };
    size_t pad = (4 - n % 4) % 4;
    uint32_t total = total_override ? total_override : (uint32_t)(12 + n + pad);
    put32(b, type);
    put32(b, total);
    put(b, body, n);
    put(b, zero, pad);
    put32(b, total);
}

static void shb(struct buf *b)
{
    struct buf body = { .n = 0 };
    put32(&body, 0x1A2B3C4D);
    put16(&body, 1);
    put16(&body, 0);
    put64(&body, UINT64_MAX);
    block(b, 0x0A0D0D0A, body.d, body.n, 0);
}

/* IDB with optional tsresol (tsres < 0: none) and tsoffset (0: none). */
static void idb(struct buf *b, uint16_t lt, uint32_t snaplen, int tsres, int64_t tsoff)
{
    struct buf body = { .n = 0 };
    put16(&body, lt);
    put16(&body, 0);
    put32(&body, snaplen);
    if (tsres >= 0) {
        put16(&body, 9);
        put16(&body, 1);
        put32(&body, (uint32_t)tsres);   /* value byte then 3 padding bytes */
    }
    if (tsoff != 0) {
        put16(&body, 14);
        put16(&body, 8);
        put64(&body, (uint64_t)tsoff);
    }
    put32(&body, 0);                     /* opt_endofopt */
    block(b, 1, body.d, body.n, 0);
}

static void epb(struct buf *b, uint32_t ifid, uint64_t ts, uint32_t caplen, uint32_t len,
                uint32_t datalen)
{
    struct buf body = { .n = 0 };
    uint8_t data[256];
    memset(data, 0xAB, sizeof data);
    put32(&body, ifid);
    put32(&body, (uint32_t)(ts >> 32));
    put32(&body, (uint32_t)ts);
    put32(&body, caplen);
    put32(&body, len);
    put(&body, data, datalen);
    block(b, 6, body.d, body.n, 0);
}

static int write_tmp(const struct buf *b, char *path, size_t n)
{
    const char *dir = getenv("TMPDIR");
    int fd;
    snprintf(path, n, "%s/pcapng_test_XXXXXX", dir ? dir : "/tmp");
    fd = mkstemp(path);
    if (fd < 0)
        return -1;
    if (write(fd, b->d, b->n) != (ssize_t)b->n) {
        close(fd);
        unlink(path);
        return -1;
    }
    close(fd);
    return 0;
}

/* Read a synthetic file; collects up to 8 packets. */
struct pkt { uint64_t ts; uint32_t caplen, len; int lt; };

static int read_synth(const struct buf *b, struct pkt *p, int *np, char *err, size_t errlen)
{
    char path[256];
    pcapng_reader_t *r = NULL;
    uint64_t ts;
    uint32_t caplen, len;
    int lt, rc;
    const uint8_t *data;

    *np = 0;
    err[0] = '\0';
    if (write_tmp(b, path, sizeof path) < 0)
        return -2;
    if (pcapng_open(path, &r, err, errlen) < 0) {
        unlink(path);
        return -3;
    }
    while ((rc = pcapng_next(r, &ts, &caplen, &len, &lt, &data)) == 1) {
        volatile uint8_t sink = 0;
        for (uint32_t i = 0; i < caplen; i++)
            sink ^= data[i];
        (void)sink;
        if (*np < 8) {
            p[*np].ts = ts;
            p[*np].caplen = caplen;
            p[*np].len = len;
            p[*np].lt = lt;
        }
        (*np)++;
    }
    if (rc < 0)
        snprintf(err, errlen, "%s", pcapng_error(r));
    pcapng_close(r);
    unlink(path);
    return rc;
}

static void synthetic_tests(void)
{
    struct buf b;
    struct pkt p[8];
    int n, rc;
    char err[256];
    const uint64_t t0 = 1700000000ull;  /* 2023-11-14T22:13:20Z */

    /* Timestamp resolutions: µs default, ns, 2^-10, 2^-32, 1 s, with offsets. */
    memset(&b, 0, sizeof b);
    shb(&b);
    idb(&b, 1, 0, -1, 0);                 /* 0: µs */
    idb(&b, 0, 65535, 9, 0);              /* 1: ns */
    idb(&b, 113, 0, 0x80 | 10, 0);        /* 2: 2^-10 s */
    idb(&b, 101, 0, 0x80 | 32, 100);      /* 3: 2^-32 s, +100 s */
    idb(&b, 12, 0, 0, -1000);             /* 4: 1 s, -1000 s */
    epb(&b, 0, t0 * 1000000 + 123456, 10, 60, 10);
    epb(&b, 1, t0 * 1000000000 + 123456789, 10, 60, 10);
    epb(&b, 2, t0 * 1024 + 512, 10, 60, 10);
    epb(&b, 3, (t0 << 32) + (1ull << 30), 10, 60, 10);
    epb(&b, 4, t0, 0, 0, 0);
    rc = read_synth(&b, p, &n, err, sizeof err);
    CHECK(rc == 0 && n == 5, "tsresol file: rc %d n %d %s", rc, n, err);
    if (n == 5) {
        CHECK(p[0].ts == t0 * 1000000 + 123456 && p[0].lt == 1, "µs ts %llu", (unsigned long long)p[0].ts);
        CHECK(p[1].ts == t0 * 1000000 + 123456 && p[1].lt == 0, "ns ts %llu", (unsigned long long)p[1].ts);
        CHECK(p[2].ts == t0 * 1000000 + 500000 && p[2].lt == 113, "2^-10 ts %llu", (unsigned long long)p[2].ts);
        CHECK(p[3].ts == (t0 + 100) * 1000000 + 250000 && p[3].lt == 101, "2^-32 ts %llu", (unsigned long long)p[3].ts);
        CHECK(p[4].ts == (t0 - 1000) * 1000000 && p[4].lt == 12 && p[4].caplen == 0, "1 s ts %llu", (unsigned long long)p[4].ts);
        CHECK(p[0].caplen == 10 && p[0].len == 60, "caplen/len %u/%u", (unsigned)p[0].caplen, (unsigned)p[0].len);
    }

    /* SPB: caplen = min(len, snaplen, room); obsolete PB; unknown block skipped. */
    memset(&b, 0, sizeof b);
    shb(&b);
    idb(&b, 1, 20, -1, 0);
    {
        struct buf body = { .n = 0 };
        uint8_t data[40] = { 0 };
        put32(&body, 100);                 /* len 100, room 40, snaplen 20 -> 20 */
        put(&body, data, 40);
        block(&b, 3, body.d, body.n, 0);
        body.n = 0;
        put32(&body, 8);                   /* len 8, room 12 -> 8 */
        put(&body, data, 12);
        block(&b, 3, body.d, body.n, 0);
        body.n = 0;
        put32(&body, 0xdeadbeef);
        block(&b, 0x40000BAD, body.d, body.n, 0);
        body.n = 0;
        put16(&body, 0);                   /* PB: if 0, drops 0 */
        put16(&body, 0);
        put32(&body, 0);
        put32(&body, 5000000);
        put32(&body, 4);
        put32(&body, 64);
        put(&body, data, 4);
        block(&b, 2, body.d, body.n, 0);
    }
    rc = read_synth(&b, p, &n, err, sizeof err);
    CHECK(rc == 0 && n == 3, "spb file: rc %d n %d %s", rc, n, err);
    if (n == 3) {
        CHECK(p[0].caplen == 20 && p[0].len == 100, "spb 1 caplen %u", (unsigned)p[0].caplen);
        CHECK(p[1].caplen == 8 && p[1].len == 8, "spb 2 caplen %u", (unsigned)p[1].caplen);
        CHECK(p[2].caplen == 4 && p[2].len == 64 && p[2].ts == 5000000, "pb caplen %u ts %llu",
              (unsigned)p[2].caplen, (unsigned long long)p[2].ts);
    }

    /* Corruptions: each must give -1 (or -3 when open fails) and a message. */
    memset(&b, 0, sizeof b);                       /* caplen beyond block */
    shb(&b);
    idb(&b, 1, 0, -1, 0);
    epb(&b, 0, 0, 65536, 65536, 8);
    rc = read_synth(&b, p, &n, err, sizeof err);
    CHECK(rc == -1 && n == 0 && err[0], "caplen beyond block: rc %d n %d", rc, n);

    memset(&b, 0, sizeof b);                       /* unknown interface */
    shb(&b);
    idb(&b, 1, 0, -1, 0);
    epb(&b, 1, 0, 4, 4, 4);
    rc = read_synth(&b, p, &n, err, sizeof err);
    CHECK(rc == -1 && n == 0 && err[0], "bad interface id: rc %d n %d", rc, n);

    memset(&b, 0, sizeof b);                       /* interface ids restart per section */
    shb(&b);
    idb(&b, 1, 0, -1, 0);
    idb(&b, 0, 0, -1, 0);
    epb(&b, 1, 0, 4, 4, 4);
    shb(&b);
    idb(&b, 113, 0, -1, 0);
    epb(&b, 0, 0, 4, 4, 4);
    epb(&b, 1, 0, 4, 4, 4);
    rc = read_synth(&b, p, &n, err, sizeof err);
    CHECK(rc == -1 && n == 2 && p[0].lt == 0 && p[1].lt == 113, "sections: rc %d n %d", rc, n);

    memset(&b, 0, sizeof b);                       /* huge block length */
    shb(&b);
    put32(&b, 6);
    put32(&b, 0x7ffffff0);
    put32(&b, 0);
    rc = read_synth(&b, p, &n, err, sizeof err);
    CHECK(rc == -1 && err[0], "huge block: rc %d", rc);

    memset(&b, 0, sizeof b);                       /* length not a multiple of 4 / too small */
    shb(&b);
    idb(&b, 1, 0, -1, 0);
    put32(&b, 6);
    put32(&b, 8);
    put32(&b, 8);
    rc = read_synth(&b, p, &n, err, sizeof err);
    CHECK(rc == -1 && err[0], "tiny block: rc %d", rc);

    memset(&b, 0, sizeof b);                       /* trailer mismatch */
    shb(&b);
    idb(&b, 1, 0, -1, 0);
    block(&b, 6, "\0\0\0\0\0\0\0\0\0\0\0\0\0\0\0\0\0\0\0\0", 20, 0);
    b.d[b.n - 1] ^= 1;
    rc = read_synth(&b, p, &n, err, sizeof err);
    CHECK(rc == -1 && err[0], "trailer mismatch: rc %d", rc);

    memset(&b, 0, sizeof b);                       /* IDB option running past the block */
    shb(&b);
    {
        struct buf body = { .n = 0 };
        put16(&body, 1);
        put16(&body, 0);
        put32(&body, 0);
        put16(&body, 9);
        put16(&body, 200);
        put32(&body, 6);
        block(&b, 1, body.d, body.n, 0);
    }
    rc = read_synth(&b, p, &n, err, sizeof err);
    CHECK(rc == -1 && err[0], "idb option overflow: rc %d", rc);

    memset(&b, 0, sizeof b);                       /* extreme resolutions: no UB, saturate */
    shb(&b);
    idb(&b, 1, 0, 0x80 | 127, INT64_MIN);
    idb(&b, 1, 0, 127, INT64_MAX);
    idb(&b, 1, 0, 0x80 | 63, 0);
    idb(&b, 1, 0, 0, INT64_MAX);
    epb(&b, 0, UINT64_MAX, 0, 0, 0);
    epb(&b, 1, UINT64_MAX, 0, 0, 0);
    epb(&b, 2, UINT64_MAX, 0, 0, 0);
    epb(&b, 3, UINT64_MAX, 0, 0, 0);
    rc = read_synth(&b, p, &n, err, sizeof err);
    CHECK(rc == 0 && n == 4, "extreme: rc %d n %d %s", rc, n, err);
    if (n == 4) {
        CHECK(p[0].ts == 0, "2^-127 - inf: %llu", (unsigned long long)p[0].ts);
        CHECK(p[1].ts == UINT64_MAX, "10^-127 + inf: %llu", (unsigned long long)p[1].ts);
        CHECK(p[2].ts == 1999999, "2^-63: %llu", (unsigned long long)p[2].ts);
        CHECK(p[3].ts == UINT64_MAX, "1 s max: %llu", (unsigned long long)p[3].ts);
    }

    /* Not pcapng at all; empty file. */
    memset(&b, 0, sizeof b);
    put32(&b, 0xa1b2c3d4);
    put32(&b, 0);
    rc = read_synth(&b, p, &n, err, sizeof err);
    CHECK(rc == -3 && err[0], "pcap file opened as pcapng: rc %d", rc);
    memset(&b, 0, sizeof b);
    rc = read_synth(&b, p, &n, err, sizeof err);
    CHECK(rc == -3 && err[0], "empty file opened: rc %d", rc);
    printf("synthetic: done\n");
}

/* Cut a real file at every step bytes and flip bytes: the reader must end in 0 or -1. */
static void mutation_tests(const char *path, long expect, size_t step)
{
    FILE *f = fopen(path, "rb");
    static uint8_t data[1 << 16];
    size_t n;
    struct buf *b = malloc(sizeof *b);   /* only for the 4 KiB flip test below */
    char tmp[256];
    long runs = 0, clean = 0;
    struct summary s;

    CHECK(f != NULL && b != NULL, "%s: cannot read", path);
    if (f == NULL || b == NULL)
        goto out;
    n = fread(data, 1, sizeof data, f);
    fclose(f);
    f = NULL;
    for (size_t cut = 0; cut < n; cut += step) {
        FILE *t;
        int fd;
        snprintf(tmp, sizeof tmp, "%s/pcapng_cut_XXXXXX", getenv("TMPDIR") ? getenv("TMPDIR") : "/tmp");
        fd = mkstemp(tmp);
        if (fd < 0)
            break;
        t = fdopen(fd, "wb");
        if (t == NULL) {
            close(fd);
            unlink(tmp);
            break;
        }
        fwrite(data, 1, cut, t);
        fclose(t);
        (void)pcapng_has_mixed_linktypes(tmp);
        read_all(tmp, &s);
        CHECK(s.packets <= expect, "%s cut at %zu: %ld packets", path, cut, s.packets);
        runs++;
        clean += s.rc == 0;
        unlink(tmp);
    }
    if (n <= sizeof b->d) {
        for (size_t i = 0; i < n; i++) {
            static const uint8_t vals[] = { 0x00, 0xff, 0x80, 0x7f };
            for (size_t v = 0; v < sizeof vals; v++) {
                memcpy(b->d, data, n);
                b->n = n;
                b->d[i] = vals[v];
                struct pkt p[8];
                int np;
                char err[256];
                int rc = read_synth(b, p, &np, err, sizeof err);
                CHECK(rc == 0 || rc == -1 || rc == -3, "flip %zu: rc %d", i, rc);
                runs++;
            }
        }
    }
    printf("mutations %s: %ld runs, %ld truncations ended cleanly\n", path, runs, clean);
out:
    free(b);
}

int main(int argc, char **argv)
{
    /* many_interfaces also has a DLT 12 interface, but no packet on it. eth-sll's SLL packets
     * carry out-of-range timestamps (high word 0xffffffff; tshark shows them the same way). */
    static const struct {
        const char *rel; long packets; unsigned lt_mask; uint64_t first_ts, max_ts;
    } mixed[] = {
        { "linktypes/pcpp-many_interfaces.pcapng", 64, 1u | 2u, 1439753725701607ull,
          1439753728292345ull },
        { "linktypes/pcpp-pcapng-eth-sll.pcapng", 159, 2u | 16u, 1422527998578402ull,
          18446744073204277451ull },
        { "linktypes/gopacket-pcapng-be-3sections.pcapng", 8, 1u | 2u, 1340954905298858ull,
          1340954905301858ull },
    };
    static const struct { const char *rel; long packets; } plain[] = {
        { "basic/pcpp-icmp.pcapng", 15 },
        { "large/nfstream-tor.pcapng", 3859 },
    };
    static const char *others[] = { "basic/dpkt-http.pcap", "no/such/file.pcapng" };
    const char *dir = argc > 1 ? argv[1] : "../../../shared/pcaps";
    char path[1024];
    struct summary s;
    glob_t g;

    for (size_t i = 0; i < sizeof mixed / sizeof mixed[0]; i++) {
        path_join(path, sizeof path, dir, mixed[i].rel);
        CHECK(pcapng_has_mixed_linktypes(path) == 1, "%s: not detected as mixed", mixed[i].rel);
        read_all(path, &s);
        printf("%s: rc %d, %ld packets, %llu bytes, linktypes 0x%x, ts %llu (first) %llu..%llu %s\n",
               mixed[i].rel, s.rc, s.packets, (unsigned long long)s.bytes, s.lt_mask,
               (unsigned long long)s.first_ts, (unsigned long long)s.min_ts,
               (unsigned long long)s.max_ts, s.err);
        CHECK(s.rc == 0, "%s: rc %d %s", mixed[i].rel, s.rc, s.err);
        CHECK(s.packets == mixed[i].packets, "%s: %ld packets, expected %ld", mixed[i].rel,
              s.packets, mixed[i].packets);
        CHECK(s.lt_mask == mixed[i].lt_mask, "%s: linktypes 0x%x, expected 0x%x", mixed[i].rel,
              s.lt_mask, mixed[i].lt_mask);
        CHECK(s.first_ts == mixed[i].first_ts && s.max_ts == mixed[i].max_ts,
              "%s: timestamps %llu..%llu", mixed[i].rel, (unsigned long long)s.first_ts,
              (unsigned long long)s.max_ts);
    }
    for (size_t i = 0; i < sizeof plain / sizeof plain[0]; i++) {
        path_join(path, sizeof path, dir, plain[i].rel);
        CHECK(pcapng_has_mixed_linktypes(path) == 0, "%s: detected as mixed", plain[i].rel);
        read_all(path, &s);
        printf("%s: rc %d, %ld packets, linktypes 0x%x %s\n", plain[i].rel, s.rc, s.packets,
               s.lt_mask, s.err);
        CHECK(s.rc == 0 && s.packets == plain[i].packets, "%s: rc %d, %ld packets",
              plain[i].rel, s.rc, s.packets);
    }
    /* Every file in malformed/ (pcap ones must fail to open as pcapng), plus a few others. */
    path_join(path, sizeof path, dir, "malformed/*");
    if (glob(path, 0, NULL, &g) != 0)
        g.gl_pathc = 0;
    CHECK(g.gl_pathc >= 3, "%s: no files", path);
    for (size_t i = 0; i < g.gl_pathc + sizeof others / sizeof others[0]; i++) {
        const char *p = path;
        if (i < g.gl_pathc)
            p = g.gl_pathv[i];
        else
            path_join(path, sizeof path, dir, others[i - g.gl_pathc]);
        CHECK(pcapng_has_mixed_linktypes(p) == 0, "%s: detected as mixed", p);
        read_all(p, &s);
        printf("%s: rc %d, %ld packets: %s\n", p, s.rc, s.packets, s.err);
        CHECK(s.rc == 0 || s.rc == -1, "%s: rc %d", p, s.rc);
    }
    if (g.gl_pathc > 0)
        globfree(&g);
    synthetic_tests();
    path_join(path, sizeof path, dir, mixed[2].rel);
    mutation_tests(path, mixed[2].packets, 1);
    path_join(path, sizeof path, dir, mixed[0].rel);
    mutation_tests(path, mixed[0].packets, 3);
    path_join(path, sizeof path, dir, mixed[1].rel);
    mutation_tests(path, mixed[1].packets, 5);

    printf("pcapng_test: %s (%d failures)\n", failures ? "FAILED" : "ok", failures);
    return failures ? 1 : 0;
}
