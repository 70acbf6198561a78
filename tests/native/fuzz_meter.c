/* fuzz_meter.c: libFuzzer target that meters its input through the sensor API (libpcap or the
 * pcapng reader, decode_packet, the flow table, drain), then prints every drained record with
 * sensor_format (every field) and binds it into a scratch archive with store.c.
 *
 * Input formats:
 *  - starts with a pcap or pcapng magic: the bytes are the capture file itself;
 *  - otherwise: byte 0 picks a link type from LINKTYPES, then records follow, each
 *      caplen_hi caplen_lo extra delta  then caplen bytes of frame
 *    wire length = caplen + 8 * extra; the clock moves by delta: < 200: +delta * 10 ms,
 *    200..249: +(delta - 199) * 10 s (idle timeouts and status intervals fire), 250..253: back by
 *    (delta - 249) * 30 s, 254: to 2106 (the last pcap second), 255: to 1970.
 *    They are wrapped into a pcap file.
 * The file goes into a memfd opened by path (/proc/self/fd/N), since sensor_open_file takes a path.
 *
 * Built with -DFUZZ_SEED_MAIN instead, this file is the seed tool: `fuzz_seed OUTDIR FILE...`
 * writes, per capture, the file itself (if small) and groups of its packets in the record format. */
#include <stdint.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

static const int LINKTYPES[] = { 1, 0, 9, 12, 14, 50, 51, 101, 104, 108, 113, 228, 229, 276, 160 };
enum { N_LINKTYPES = sizeof LINKTYPES / sizeof LINKTYPES[0], REC_HDR = 4 };

#ifndef FUZZ_SEED_MAIN

#include <sys/mman.h>
#include <unistd.h>

#include "sensor.h"
#include "scratch_store.h"

static void le32(uint8_t *p, uint32_t v)
{
    p[0] = (uint8_t)v;
    p[1] = (uint8_t)(v >> 8);
    p[2] = (uint8_t)(v >> 16);
    p[3] = (uint8_t)(v >> 24);
}

static int is_capture_magic(const uint8_t *d, size_t n)
{
    static const uint8_t magics[][4] = {
        { 0xd4, 0xc3, 0xb2, 0xa1 }, { 0xa1, 0xb2, 0xc3, 0xd4 }, { 0x4d, 0x3c, 0xb2, 0xa1 },
        { 0xa1, 0xb2, 0x3c, 0x4d }, { 0x0a, 0x0d, 0x0d, 0x0a }
    };
    if (n < 4)
        return 0;
    for (size_t i = 0; i < sizeof magics / sizeof magics[0]; i++)
        if (memcmp(d, magics[i], 4) == 0)
            return 1;
    return 0;
}

/* Write the pcap form of a record-format input to fd. Returns 0 or -1. */
static int write_records(int fd, const uint8_t *d, size_t n)
{
    uint8_t hdr[24], rec[16];
    uint64_t ts_us = 1700000000ull * 1000000u;
    size_t p = n > 0 ? 1 : 0;     /* byte 0 is the link type */

    memset(hdr, 0, sizeof hdr);
    le32(hdr, 0xa1b2c3d4);
    hdr[4] = 2;                             /* version 2.4 */
    hdr[6] = 4;
    le32(hdr + 16, 262144);                 /* snaplen */
    le32(hdr + 20, (uint32_t)LINKTYPES[n > 0 ? d[0] % N_LINKTYPES : 0]);
    if (write(fd, hdr, sizeof hdr) != (ssize_t)sizeof hdr)
        return -1;
    while (n - p >= REC_HDR) {
        uint32_t caplen = (uint32_t)d[p] << 8 | d[p + 1];
        uint32_t wire = caplen + 8u * d[p + 2];
        uint8_t delta = d[p + 3];
        p += REC_HDR;
        if (caplen > n - p)
            caplen = (uint32_t)(n - p);
        if (wire < caplen)
            wire = caplen;
        if (delta < 200)
            ts_us += delta * 10000ull;
        else if (delta < 250)
            ts_us += (delta - 199ull) * 10000000ull;
        else if (delta < 254)
            ts_us -= ts_us < (delta - 249ull) * 30000000ull ? ts_us : (delta - 249ull) * 30000000ull;
        else
            ts_us = delta == 254 ? 0xffffffffull * 1000000u : 0;
        le32(rec, (uint32_t)(ts_us / 1000000u));
        le32(rec + 4, (uint32_t)(ts_us % 1000000u));
        le32(rec + 8, caplen);
        le32(rec + 12, wire);
        if (write(fd, rec, sizeof rec) != (ssize_t)sizeof rec ||
            write(fd, d + p, caplen) != (ssize_t)caplen)
            return -1;
        p += caplen;
    }
    return 0;
}

static sensor_flow_t recs[64];
static sensor_store_t *store;
static sensor_format_spec_t spec;
static char text[1 << 16];

/* Once per process: the scratch archive (unlinked at once) and a spec printing every field in
 * padded columns, numerically (named ports are Python's), with -Z b. */
static void open_sinks(void)
{
    char path[64];
    snprintf(path, sizeof path, "/tmp/fuzz_meter_store_%d.sqlite", (int)getpid());
    store = scratch_store_open(path, 1);
    spec.ncolumns = SENSOR_FIELD_COUNT;
    spec.numeric = 2;
    spec.zflags = 'b';
    spec.flags = SENSOR_FMT_RSTRIP;
    spec.delim_len = 1;
    spec.delim[0] = ' ';
    spec.srcid_len = 4;
    memcpy(spec.srcid, "fuzz", 4);
    for (unsigned i = 0; i < SENSOR_FIELD_COUNT; i++) {
        spec.column[i].field = (uint8_t)i;
        spec.column[i].pad = i % 3 == 2 ? SENSOR_PAD_LEFT : SENSOR_PAD_RIGHT;
        spec.column[i].width = (uint16_t)(3 + i % 11);   /* short widths: values get cut too */
    }
}

/* Drain, print and bind; returns how many records came out. */
static size_t drain(sensor_t *s, uint64_t now_us)
{
    size_t n = sensor_drain(s, recs, 64, now_us), done = 0, used;
    while (done < n) {          /* a record left to Python (0 formatted) is skipped */
        size_t k = sensor_format(recs + done, n - done, &spec, text, sizeof text, &used);
        done += k ? k : 1;
    }
    scratch_store_insert(store, recs, n);
    return n;
}

int LLVMFuzzerTestOneInput(const uint8_t *data, size_t size)
{
    static int fd = -1;
    char path[64], errbuf[SENSOR_ERRBUF_SIZE];
    sensor_config_t cfg;
    sensor_t *s = NULL;
    sensor_stats_t st;

    if (fd < 0) {
        fd = memfd_create("fuzz_meter", MFD_CLOEXEC);   /* kept for the process lifetime */
        if (fd < 0)
            return 0;
        open_sinks();
    }
    if (ftruncate(fd, 0) != 0 || lseek(fd, 0, SEEK_SET) != 0)
        return 0;
    if (is_capture_magic(data, size)) {
        if (write(fd, data, size) != (ssize_t)size)
            return 0;
    } else if (write_records(fd, data, size) != 0) {
        return 0;
    }
    snprintf(path, sizeof path, "/proc/self/fd/%d", fd);

    memset(&cfg, 0, sizeof cfg);
    cfg.max_flows = 64;             /* tiny, so that eviction runs all the time */
    cfg.max_frags = 16;
    cfg.timeout_tcp_s = 60;
    cfg.timeout_udp_s = 30;
    cfg.timeout_icmp_s = 5;
    cfg.timeout_other_s = 30;
    cfg.timeout_closed_s = 5;
    cfg.timeout_frag_s = 5;
    cfg.status_interval_s = 5;
    cfg.record_ring = 64;

    if (sensor_open_file(&cfg, path, errbuf, &s) < 0 || s == NULL)
        return 0;
    for (int round = 0; round < 100000; round++) {
        int rc = sensor_poll(s, 16, 0);
        sensor_get_stats(s, &st);
        while (drain(s, st.last_packet_us) == 64)
            ;
        if (rc < 0)
            break;
    }
    sensor_end_all(s, SENSOR_CAUSE_SHUTDOWN);
    sensor_get_stats(s, &st);
    while (drain(s, st.last_packet_us) == 64)
        ;
    sensor_close(s);
    return 0;
}

#else /* FUZZ_SEED_MAIN: build the seed corpus from capture files */

#include <pcap/pcap.h>

#include "pcapng.h"

enum { GROUP = 16, MAX_GROUPS = 24, SEED_MAX = 16384, WHOLE_MAX = 65536 };

static int lt_index(int lt)
{
    for (int i = 0; i < N_LINKTYPES; i++)
        if (LINKTYPES[i] == lt)
            return i;
    return N_LINKTYPES - 1;     /* 160: an unknown link type */
}

static void write_file(const char *dir, const char *src, const char *tag, int n,
                       const uint8_t *d, size_t len)
{
    char path[4096];
    const char *base = strrchr(src, '/');
    FILE *f;
    snprintf(path, sizeof path, "%s/%s-%s%d", dir, base ? base + 1 : src, tag, n);
    f = fopen(path, "wb");
    if (f == NULL)
        return;
    fwrite(d, 1, len, f);
    fclose(f);
}

/* One packet source over libpcap or the pcapng reader. */
struct src {
    pcap_t *p;
    pcapng_reader_t *ng;
};

static int src_next(struct src *s, uint64_t *ts, uint32_t *caplen, uint32_t *len, int *lt,
                    const uint8_t **data)
{
    if (s->ng != NULL)
        return pcapng_next(s->ng, ts, caplen, len, lt, data);
    struct pcap_pkthdr *h;
    if (pcap_next_ex(s->p, &h, data) != 1)
        return 0;
    *ts = (uint64_t)h->ts.tv_sec * 1000000u + (uint64_t)h->ts.tv_usec;
    *caplen = h->caplen;
    *len = h->len;
    *lt = pcap_datalink(s->p);
    return 1;
}

static void seed_one(const char *dir, const char *file)
{
    static uint8_t buf[SEED_MAX + 65536 + REC_HDR];
    char err[PCAP_ERRBUF_SIZE];
    struct src s = { NULL, NULL };
    FILE *f;
    size_t n = 0, got;
    int groups = 0, lt0 = -1;
    long idx, total = 0, every = 1, cur = -1;
    uint64_t ts, prev = 0;
    uint32_t caplen, len;
    int lt;
    const uint8_t *data;

    /* The whole file, if small: exercises libpcap and the pcapng reader. */
    f = fopen(file, "rb");
    if (f != NULL) {
        got = fread(buf, 1, WHOLE_MAX, f);
        if (feof(f) && got > 0)
            write_file(dir, file, "whole", 0, buf, got);
        fclose(f);
    }

    /* Pass 0 counts packets; pass 1 takes every `every`-th run of GROUP packets (one seed each),
     * so that at most MAX_GROUPS seeds spread over the file. */
    for (int pass = 0; pass < 2; pass++) {
        if (pcapng_has_mixed_linktypes(file)) {
            if (pcapng_open(file, &s.ng, err, sizeof err) < 0)
                return;
        } else if ((s.p = pcap_open_offline(file, err)) == NULL) {
            return;
        }
        for (idx = 0; src_next(&s, &ts, &caplen, &len, &lt, &data) == 1; idx++) {
            long blk = idx / GROUP;
            uint64_t d;
            uint32_t extra;

            if (pass == 0) {
                total++;
                continue;
            }
            if (blk % every != 0 || caplen > 65535)
                continue;
            if (blk != cur || lt != lt0 || n + REC_HDR + caplen > SEED_MAX) {
                if (n > 1)
                    write_file(dir, file, "pkts", groups++, buf, n);
                n = 0;
                if (groups >= MAX_GROUPS)
                    break;
                buf[n++] = (uint8_t)lt_index(lt);
                lt0 = lt;
                prev = ts;
                cur = blk;
            }
            d = ts > prev ? ts - prev : 0;
            extra = len > caplen ? (len - caplen + 7) / 8 : 0;
            buf[n++] = (uint8_t)(caplen >> 8);
            buf[n++] = (uint8_t)caplen;
            buf[n++] = (uint8_t)(extra > 255 ? 255 : extra);
            if (d < 2000000)
                buf[n++] = (uint8_t)(d / 10000);
            else
                buf[n++] = (uint8_t)(d / 10000000 > 50 ? 249 : 199 + d / 10000000);
            memcpy(buf + n, data, caplen);
            n += caplen;
            prev = ts;
        }
        if (pass == 1 && n > 1)
            write_file(dir, file, "pkts", groups++, buf, n);
        every = total / (GROUP * MAX_GROUPS) + 1;
        if (s.p != NULL)
            pcap_close(s.p);
        pcapng_close(s.ng);
        s.p = NULL;
        s.ng = NULL;
    }
}

int main(int argc, char **argv)
{
    if (argc < 2) {
        fprintf(stderr, "usage: fuzz_seed OUTDIR FILE...\n");
        return 2;
    }
    for (int i = 2; i < argc; i++)
        seed_one(argv[1], argv[i]);
    return 0;
}

#endif
