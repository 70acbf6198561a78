/* sensor.c: the public sensor_* API. Owns the packet source (libpcap, or our pcapng reader for files
 * libpcap refuses) and hands each frame to the decoder and the flow table, all in C. */
#include "sensor.h"
#include "decode.h"
#include "flowtable.h"
#include "pcapng.h"

#include <pcap/pcap.h>
#include <pthread.h>
#include <stdarg.h>
#include <stdio.h>
#include <stdio_ext.h>
#include <stdlib.h>
#include <string.h>
#include <errno.h>
#include <sys/random.h>
#include <time.h>

enum { FILE_BUFFER = 64 * 1024 };

_Static_assert(sizeof(sensor_flow_t) == 208, "sensor_flow_t must stay 208 bytes with no padding");
_Static_assert(sizeof(((sensor_stats_t *)0)->decode_errors) / sizeof(uint64_t) == SENSOR_DERR_COUNT,
               "decode_errors must have one slot per SENSOR_DERR_*");

/* One packet source: a libpcap handle (file or live interface), or our pcapng reader. */
typedef struct source {
    pcap_t *pcap;
    char *filebuf;                /* stdio buffer of a capture file (freed after pcap_close) */
    pcapng_reader_t *ng;          /* own reader for pcapng files with mixed link types */
    int linktype;
    uint64_t packets, bytes;
} source_t;

/* Several live sources (bridge member ports) are merged by packet time: their rings hand frames
 * over in blocks, so a reply on one port can be read before the request on the other. Decoded
 * packets wait here until they are older than the hold time, then enter the flow table in order. */
enum { MERGE_CAPACITY = 32768, MERGE_HOLD_US = 250000 };

typedef struct staged {
    decode_pkt_t pkt;
    uint64_t ts;
    uint8_t source;
} staged_t;

/* A capture file is read ahead on a second thread: libpcap's read (two copies of every byte), the
 * stateless decoder and each packet's flow-table lookup (key and hash) run there, the flow table on
 * the caller's thread, so a file is metered on two cores, as argus | ra runs on two. Decoded
 * packets pass in blocks through a small ring; the caller meters them in order and counts them one
 * by one, so poll's packet budget and until_us stay exact. */
enum { READ_BLOCK = 1024, READ_BLOCKS = 8 };   /* 8192 packets: one POLL_PACKETS ahead */

typedef struct read_block {
    decode_pkt_t pkt[READ_BLOCK];
    ft_lookup_t look[READ_BLOCK]; /* made for packets that decoded, except later fragments */
    uint64_t ts[READ_BLOCK];
    uint32_t len[READ_BLOCK];     /* wire length */
    int32_t rc[READ_BLOCK];       /* decode_packet's result */
    int n;                        /* entries filled */
    int end;                      /* after the entries: 0, SENSOR_EOF or SENSOR_EFILE */
    int linktype;                 /* of the packets being read (pcap_dispatch's callback) */
    const ft_table_t *ft;         /* for the lookups: only its seed and size are read */
    char err[SENSOR_ERRBUF_SIZE]; /* the read error, with SENSOR_EFILE */
} read_block_t;

typedef struct reader {
    read_block_t *blocks;         /* READ_BLOCKS, NULL until the first poll */
    unsigned filled, taken;       /* blocks handed over and given back (filled - taken <= READ_BLOCKS) */
    int pos;                      /* next entry of the oldest filled block */
    int threaded;                 /* a thread fills the blocks; otherwise poll fills one when empty */
    int stop;                     /* close asks the thread to end */
    pthread_t thread;
    pthread_mutex_t lock;
    pthread_cond_t changed;
} reader_t;

struct sensor {
    source_t src[SENSOR_MAX_SOURCES];
    reader_t reader;              /* capture files only */
    staged_t *staged;             /* merge buffer, only with two or more live sources */
    size_t nstaged;
    int nsrc, live, eof;
    int current;                  /* the source being dispatched (its index tags new flows) */
    uint64_t until_us;            /* poll stops after the first packet at or past this (0 = never) */
    ft_table_t *ft;
    decode_pkt_t batch[FT_BATCH]; /* decoded packets not yet metered (flushed before poll returns) */
    uint64_t batch_ts[FT_BATCH];
    int nbatch;
    sensor_stats_t stats;
    char err[SENSOR_ERRBUF_SIZE];
};

static void set_error(char *buf, const char *fmt, ...)
{
    va_list ap;
    va_start(ap, fmt);
    vsnprintf(buf, SENSOR_ERRBUF_SIZE, fmt, ap);
    va_end(ap);
}

static int config_valid(const sensor_config_t *cfg, char *errbuf)
{
    if (!cfg->max_flows || cfg->max_flows > (1u << 28)) {
        set_error(errbuf, "max_flows must be between 1 and %u", 1u << 28);
        return 0;
    }
    if (!cfg->max_frags || cfg->max_frags > (1u << 24)) {
        set_error(errbuf, "max_frags must be between 1 and %u", 1u << 24);
        return 0;
    }
    return 1;
}

/* Allocates the handle and its flow table; the caller attaches a packet source. Freed by sensor_close. */
static int sensor_new(const sensor_config_t *cfg, char *errbuf, sensor_t **out)
{
    *out = NULL;
    if (!config_valid(cfg, errbuf)) return SENSOR_EINVAL;
    uint8_t seed[16];
    if (getrandom(seed, sizeof seed, 0) != (ssize_t)sizeof seed) {
        set_error(errbuf, "getrandom failed: no seed for the flow hash");
        return SENSOR_EINVAL;
    }
    sensor_t *s = calloc(1, sizeof *s);
    if (!s) goto fail;
    s->ft = ft_create(cfg, seed);
    if (!s->ft) goto fail;
    *out = s;
    return SENSOR_OK;
fail:
    free(s);
    set_error(errbuf, "out of memory for a flow table of %u entries", cfg->max_flows);
    return SENSOR_ENOMEM;
}

int sensor_open_file(const sensor_config_t *cfg, const char *path, char *errbuf, sensor_t **out)
{
    sensor_t *s;
    int rc = sensor_new(cfg, errbuf, &s);
    if (rc < 0) return rc;
    source_t *src = &s->src[s->nsrc++];
    if (pcapng_has_mixed_linktypes(path)) {
        if (pcapng_open(path, &src->ng, errbuf, SENSOR_ERRBUF_SIZE) < 0) goto fail;
    } else {
        char pe[PCAP_ERRBUF_SIZE] = "";
        /* libpcap reads through stdio, 4 KiB (st_blksize) per read(2) by default: one syscall per
         * few packets. A 64 KiB buffer (still L2-sized) cuts the file read's CPU by about a third. */
        FILE *fp = fopen(path, "rb");
        if (!fp) {
            set_error(errbuf, "%s: %s", path, strerror(errno));
            goto fail;
        }
        src->filebuf = malloc(FILE_BUFFER);
        if (src->filebuf) setvbuf(fp, src->filebuf, _IOFBF, FILE_BUFFER);
        __fsetlocking(fp, FSETLOCKING_BYCALLER);   /* only the read-ahead thread reads it: no lock per fread */
        src->pcap = pcap_fopen_offline_with_tstamp_precision(fp, PCAP_TSTAMP_PRECISION_MICRO, pe);
        if (!src->pcap) {
            fclose(fp);                       /* pcap_fopen_offline leaves fp open on failure */
            set_error(errbuf, "%s", pe);
            goto fail;
        }
        src->linktype = pcap_datalink(src->pcap);
    }
    *out = s;
    return SENSOR_OK;
fail:
    sensor_close(s);
    return SENSOR_EPCAP;
}

static int compile_filter(sensor_t *s, pcap_t *p, const char *bpf);

/* Opens and activates one live interface into the next source slot. */
static int add_source(sensor_t *s, const sensor_config_t *cfg, const char *iface, const char *bpf,
                      char *errbuf)
{
    if (s->nsrc >= SENSOR_MAX_SOURCES) {
        set_error(errbuf, "%s: at most %d capture interfaces", iface, SENSOR_MAX_SOURCES);
        return SENSOR_EINVAL;
    }
    char pe[PCAP_ERRBUF_SIZE] = "";
    pcap_t *p = pcap_create(iface, pe);
    if (!p) {
        set_error(errbuf, "%s: %s", iface, pe);
        return SENSOR_EPCAP;
    }
    /* TPACKET_V3 is libpcap's default on Linux unless immediate mode is set, so it is not. */
    pcap_set_snaplen(p, cfg->snaplen ? (int)cfg->snaplen : 128);
    pcap_set_promisc(p, cfg->promisc ? 1 : 0);
    pcap_set_timeout(p, cfg->timeout_ms ? (int)cfg->timeout_ms : 100);
    if (cfg->ring_bytes) pcap_set_buffer_size(p, (int)cfg->ring_bytes);
    pcap_set_tstamp_precision(p, PCAP_TSTAMP_PRECISION_MICRO);
    int rc = pcap_activate(p);
    if (rc < 0) {
        set_error(errbuf, "%s: %s (%s)", iface, pcap_statustostr(rc), pcap_geterr(p));
        goto fail;
    }
    if (rc > 0) s->stats.warnings++;          /* e.g. promiscuous mode not supported */
    if (cfg->inbound_only && pcap_setdirection(p, PCAP_D_IN) < 0) {
        set_error(errbuf, "%s: cannot capture inbound only: %s", iface, pcap_geterr(p));
        goto fail;
    }
    if (pcap_setnonblock(p, 1, pe) < 0) {
        set_error(errbuf, "%s: %s", iface, pe);
        goto fail;
    }
    /* Always install a kernel filter, even an empty one: libpcap enforces the snaplen on a
     * TPACKET ring only through the filter, and without it whole frames fill the ring. */
    if ((rc = compile_filter(s, p, bpf ? bpf : "")) < 0) {
        set_error(errbuf, "%s: %s", iface, s->err);
        pcap_close(p);
        return rc;
    }
    if (s->nsrc == 1 && !s->staged) {          /* a second source: merge from now on */
        s->staged = malloc(MERGE_CAPACITY * sizeof *s->staged);
        if (!s->staged) {
            set_error(errbuf, "%s: out of memory for the merge buffer", iface);
            pcap_close(p);
            return SENSOR_ENOMEM;
        }
    }
    s->live = 1;
    s->src[s->nsrc].pcap = p;
    s->src[s->nsrc].linktype = pcap_datalink(p);
    return s->nsrc++;
fail:
    pcap_close(p);
    return SENSOR_EPCAP;
}

int sensor_open_live(const sensor_config_t *cfg, const char *iface, const char *bpf,
                     char *errbuf, sensor_t **out)
{
    sensor_t *s;
    int rc = sensor_new(cfg, errbuf, &s);
    if (rc < 0) return rc;
    rc = add_source(s, cfg, iface, bpf, errbuf);
    if (rc < 0) {
        sensor_close(s);
        return rc;
    }
    *out = s;
    return SENSOR_OK;
}

int sensor_add_live(sensor_t *s, const sensor_config_t *cfg, const char *iface, const char *bpf,
                    char *errbuf)
{
    if (!s->live) {
        set_error(errbuf, "%s: live interfaces cannot join a capture file", iface);
        return SENSOR_EINVAL;
    }
    return add_source(s, cfg, iface, bpf, errbuf);
}

static int compile_filter(sensor_t *s, pcap_t *p, const char *bpf)
{
    struct bpf_program prog;
    if (pcap_compile(p, &prog, bpf ? bpf : "", 1, PCAP_NETMASK_UNKNOWN) < 0) {
        set_error(s->err, "bad BPF filter: %s", pcap_geterr(p));
        return SENSOR_EFILTER;
    }
    int rc = pcap_setfilter(p, &prog);
    pcap_freecode(&prog);
    if (rc < 0) {
        set_error(s->err, "cannot set BPF filter: %s", pcap_geterr(p));
        return SENSOR_EFILTER;
    }
    return SENSOR_OK;
}

int sensor_set_filter(sensor_t *s, const char *bpf)
{
    if (s->reader.blocks) {                   /* the read-ahead thread owns the file's handle */
        set_error(s->err, "a BPF filter must be set before the file is read");
        return SENSOR_EINVAL;
    }
    for (int i = 0; i < s->nsrc; i++) {
        if (!s->src[i].pcap) {
            set_error(s->err, "this capture cannot take a BPF filter");
            return SENSOR_EINVAL;
        }
        int rc = compile_filter(s, s->src[i].pcap, bpf);
        if (rc < 0) return rc;
    }
    return SENSOR_OK;
}

int sensor_reconfigure(sensor_t *s, const sensor_config_t *cfg)
{
    if (!config_valid(cfg, s->err)) return SENSOR_EINVAL;
    ft_configure(s->ft, cfg);
    return SENSOR_OK;
}

static int by_time(const void *a, const void *b)
{
    const staged_t *x = a, *y = b;
    return x->ts < y->ts ? -1 : x->ts > y->ts ? 1 : 0;
}

static uint64_t wall_us(void)
{
    struct timespec now;
    clock_gettime(CLOCK_REALTIME, &now);
    return (uint64_t)now.tv_sec * 1000000u + (uint64_t)now.tv_nsec / 1000u;
}

/* Meter staged packets in time order: those older than the hold time, or (force) up to half the
 * buffer's capacity of the oldest. Stops when the record ring could overflow. Returns how
 * many entered the flow table. */
/* Meter the decoded packets still in the batch (end of every dispatch, so between sensor_* calls
 * the table has seen every packet read). */
static void flush(sensor_t *s)
{
    if (s->nbatch) ft_packets(s->ft, s->batch, s->batch_ts, (size_t)s->nbatch, (uint8_t)s->current);
    s->nbatch = 0;
}

static size_t release(sensor_t *s, int force)
{
    if (!s->nstaged) return 0;
    qsort(s->staged, s->nstaged, sizeof *s->staged, by_time);
    uint64_t now = wall_us();
    uint64_t horizon = now > MERGE_HOLD_US ? now - MERGE_HOLD_US : 0;
    size_t room = ft_ring_free(s->ft) / FT_RECORDS_PER_PACKET;
    size_t n = 0;
    while (n < s->nstaged && n < room && (s->staged[n].ts <= horizon || (force && n < MERGE_CAPACITY / 2))) {
        ft_packet(s->ft, &s->staged[n].pkt, s->staged[n].ts, s->staged[n].source);
        n++;
    }
    memmove(s->staged, s->staged + n, (s->nstaged - n) * sizeof *s->staged);
    s->nstaged -= n;
    return n;
}

static void meter(sensor_t *s, int linktype, uint64_t ts, const uint8_t *data, uint32_t caplen,
                  uint32_t len)
{
    s->stats.packets++;
    s->stats.bytes += len;
    if (ts > s->stats.last_packet_us) s->stats.last_packet_us = ts;
    decode_pkt_t *p = &s->batch[s->nbatch];
    int rc = decode_packet(linktype, data, caplen, len, p);
    if (rc < 0) {
        s->stats.decode_errors[-1 - rc]++;
        return;
    }
    if (p->anomaly) s->stats.decode_errors[p->anomaly - 1]++;   /* metered, but noted */
    if (s->staged && s->nstaged < MERGE_CAPACITY) {   /* poll_live keeps room for a whole batch */
        staged_t *st = &s->staged[s->nstaged++];
        st->pkt = *p;
        st->ts = ts;
        st->source = (uint8_t)s->current;
        return;
    }
    s->batch_ts[s->nbatch++] = ts;
    if (s->nbatch == FT_BATCH) flush(s);
}

static void on_packet(u_char *user, const struct pcap_pkthdr *h, const u_char *bytes)
{
    sensor_t *s = (sensor_t *)user;
    source_t *src = &s->src[s->current];
    uint64_t ts = (uint64_t)h->ts.tv_sec * 1000000u + (uint64_t)h->ts.tv_usec;
    src->packets++;
    src->bytes += h->len;
    meter(s, src->linktype, ts, bytes, h->caplen, h->len);
    if (s->until_us && ts >= s->until_us) pcap_breakloop(src->pcap);
}

/* Decode entry i of b (filled in by the reader) and look its flow up. */
static void decode_entry(read_block_t *b, int i, int linktype, const uint8_t *data, uint32_t caplen)
{
    b->rc[i] = decode_packet(linktype, data, caplen, b->len[i], &b->pkt[i]);
    if (b->rc[i] >= 0 && b->pkt[i].frag != DECODE_FRAG_LATER) ft_lookup(b->ft, &b->pkt[i], &b->look[i]);
}

/* pcap_dispatch callback of the read-ahead: the next entry of the block. */
static void on_read(u_char *user, const struct pcap_pkthdr *h, const u_char *bytes)
{
    read_block_t *b = (read_block_t *)user;
    int i = b->n++;
    b->ts[i] = (uint64_t)h->ts.tv_sec * 1000000u + (uint64_t)h->ts.tv_usec;
    b->len[i] = h->len;
    decode_entry(b, i, b->linktype, bytes, h->caplen);
}

/* Read and decode up to READ_BLOCK packets of the file into b; b->end says how the file ended. */
static void fill_block(source_t *src, read_block_t *b)
{
    b->n = 0;
    b->end = 0;
    if (src->ng) {
        while (b->n < READ_BLOCK) {
            int i = b->n;
            uint32_t caplen;
            int linktype;
            const uint8_t *data;
            int rc = pcapng_next(src->ng, &b->ts[i], &caplen, &b->len[i], &linktype, &data);
            if (rc <= 0) {
                b->end = rc == 0 ? SENSOR_EOF : SENSOR_EFILE;
                if (rc < 0) set_error(b->err, "%s", pcapng_error(src->ng));
                return;
            }
            decode_entry(b, i, linktype, data, caplen);
            b->n++;
        }
        return;
    }
    b->linktype = src->linktype;
    while (b->n < READ_BLOCK) {
        int rc = pcap_dispatch(src->pcap, READ_BLOCK - b->n, on_read, (u_char *)b);
        if (rc == 0) {
            b->end = SENSOR_EOF;
            return;
        }
        if (rc < 0) {
            b->end = SENSOR_EFILE;
            set_error(b->err, "%s", pcap_geterr(src->pcap));
            return;
        }
    }
}

static void *read_ahead(void *arg)
{
    sensor_t *s = arg;
    reader_t *r = &s->reader;
    for (;;) {
        pthread_mutex_lock(&r->lock);
        while (!r->stop && r->filled - r->taken == READ_BLOCKS) pthread_cond_wait(&r->changed, &r->lock);
        int stop = r->stop;
        read_block_t *b = &r->blocks[r->filled % READ_BLOCKS];
        pthread_mutex_unlock(&r->lock);
        if (stop) return NULL;
        fill_block(&s->src[0], b);            /* the caller never touches a block not yet filled */
        pthread_mutex_lock(&r->lock);
        r->filled++;
        pthread_cond_signal(&r->changed);
        pthread_mutex_unlock(&r->lock);
        if (b->end) return NULL;
    }
}

/* First poll of a file: the ring, and the thread when one can be made (else poll reads itself). */
static int reader_start(sensor_t *s)
{
    reader_t *r = &s->reader;
    r->blocks = malloc(READ_BLOCKS * sizeof *r->blocks);
    if (!r->blocks) {
        set_error(s->err, "out of memory for the read-ahead buffer");
        return SENSOR_ENOMEM;
    }
    for (int i = 0; i < READ_BLOCKS; i++) r->blocks[i].ft = s->ft;
    pthread_mutex_init(&r->lock, NULL);
    pthread_cond_init(&r->changed, NULL);
    r->threaded = pthread_create(&r->thread, NULL, read_ahead, s) == 0;
    return SENSOR_OK;
}

static void reader_stop(reader_t *r)
{
    if (!r->blocks) return;
    if (r->threaded) {
        pthread_mutex_lock(&r->lock);
        r->stop = 1;
        pthread_cond_signal(&r->changed);
        pthread_mutex_unlock(&r->lock);
        pthread_join(r->thread, NULL);
    }
    pthread_mutex_destroy(&r->lock);
    pthread_cond_destroy(&r->changed);
    free(r->blocks);
    r->blocks = NULL;
}

/* The oldest filled block, waiting for the thread if it has none yet. */
static read_block_t *reader_next(sensor_t *s)
{
    reader_t *r = &s->reader;
    if (!r->threaded) {
        if (r->filled == r->taken) {
            fill_block(&s->src[0], &r->blocks[0]);
            r->filled++;
        }
        return &r->blocks[0];
    }
    pthread_mutex_lock(&r->lock);
    while (r->filled == r->taken) pthread_cond_wait(&r->changed, &r->lock);
    pthread_mutex_unlock(&r->lock);
    return &r->blocks[r->taken % READ_BLOCKS];
}

/* Give the oldest block back for refilling. */
static void reader_release(reader_t *r)
{
    r->pos = 0;
    if (!r->threaded) {
        r->taken++;
        return;
    }
    pthread_mutex_lock(&r->lock);
    r->taken++;
    pthread_cond_signal(&r->changed);
    pthread_mutex_unlock(&r->lock);
}

/* Files: one source, read until cnt packets, EOF or the until_us packet. A read error comes
 * after the packets read before it were metered. */
static int poll_file(sensor_t *s, int cnt)
{
    reader_t *r = &s->reader;
    if (!r->blocks) {
        int rc = reader_start(s);
        if (rc < 0) return rc;
    }
    source_t *src = &s->src[0];
    int n = 0;
    while (n < cnt) {
        read_block_t *b = reader_next(s);
        int i = r->pos, limit = b->n - i < cnt - n ? b->n : i + (cnt - n), run = i, reached = 0;
        for (; i < limit && !reached; i++) {      /* count each packet; meter runs of decoded ones */
            src->bytes += b->len[i];
            s->stats.bytes += b->len[i];
            if (b->ts[i] > s->stats.last_packet_us) s->stats.last_packet_us = b->ts[i];
            reached = s->until_us && b->ts[i] >= s->until_us;
            if (b->rc[i] < 0) {
                s->stats.decode_errors[-1 - b->rc[i]]++;
                ft_packets_looked(s->ft, &b->pkt[run], &b->look[run], &b->ts[run], (size_t)(i - run), 0);
                run = i + 1;
            } else if (b->pkt[i].anomaly) {
                s->stats.decode_errors[b->pkt[i].anomaly - 1]++;   /* metered, but noted */
            }
        }
        ft_packets_looked(s->ft, &b->pkt[run], &b->look[run], &b->ts[run], (size_t)(i - run), 0);
        src->packets += (uint64_t)(i - r->pos);
        s->stats.packets += (uint64_t)(i - r->pos);
        n += i - r->pos;
        r->pos = i;
        if (reached) return n;
        if (r->pos < b->n) break;             /* budget spent inside the block */
        if (b->end) {
            s->eof = 1;
            if (b->end == SENSOR_EFILE) {
                set_error(s->err, "%s", b->err);
                return SENSOR_EFILE;
            }
            return n ? n : SENSOR_EOF;
        }
        reader_release(r);
    }
    return n;
}

/* Live: every source in turn, each with its share of the budget; never blocks. */
static int poll_live(sensor_t *s, int cnt)
{
    if (s->staged) {
        release(s, s->nstaged > MERGE_CAPACITY / 2);  /* past half full: make room, in order */
        size_t space = MERGE_CAPACITY - s->nstaged;
        if ((size_t)cnt > space) cnt = (int)space;
    }
    int total = 0, share = cnt / s->nsrc > 0 ? cnt / s->nsrc : 1;
    for (int i = 0; i < s->nsrc && total < cnt; i++) {
        s->current = i;
        int rc = pcap_dispatch(s->src[i].pcap, share, on_packet, (u_char *)s);
        flush(s);                 /* a batch holds packets of one source only */
        if (rc == PCAP_ERROR) {
            set_error(s->err, "%s", pcap_geterr(s->src[i].pcap));
            s->current = 0;
            return SENSOR_EPCAP;
        }
        if (rc > 0) total += rc;
    }
    s->current = 0;
    if (s->staged) return (int)release(s, 0);     /* what entered the flow table */
    return total;
}

int sensor_poll(sensor_t *s, int max_packets, uint64_t until_us)
{
    if (s->eof) return SENSOR_EOF;
    s->until_us = until_us;
    size_t room = ft_ring_free(s->ft) / FT_RECORDS_PER_PACKET;
    int cnt = (size_t)max_packets < room ? max_packets : (int)room;
    if (cnt <= 0) return 0;                   /* the caller drains, then polls again */
    return s->live ? poll_live(s, cnt) : poll_file(s, cnt);
}

size_t sensor_drain(sensor_t *s, sensor_flow_t *out, size_t cap, uint64_t now_us)
{
    return ft_drain(s->ft, out, cap, now_us);
}

void sensor_end_all(sensor_t *s, int cause) { ft_end_all(s->ft, cause); }

size_t sensor_top_flows(sensor_t *s, sensor_flow_t *out, size_t n) { return ft_top(s->ft, out, n); }

void sensor_get_stats(sensor_t *s, sensor_stats_t *out)
{
    *out = s->stats;
    ft_stats(s->ft, out);
    out->decode_errors[SENSOR_DERR_FRAG_TABLE] += s->stats.decode_errors[SENSOR_DERR_FRAG_TABLE];
    for (int i = 0; i < s->nsrc; i++) {
        sensor_source_stats_t ss;
        if (sensor_source_stats(s, i, &ss) == 0) {
            out->pcap_recv += ss.pcap_recv;
            out->pcap_drop += ss.pcap_drop;
            out->pcap_ifdrop += ss.pcap_ifdrop;
        }
    }
}

int sensor_source_count(const sensor_t *s) { return s->nsrc; }

int sensor_source_stats(sensor_t *s, int source, sensor_source_stats_t *out)
{
    if (source < 0 || source >= s->nsrc) return SENSOR_EINVAL;
    memset(out, 0, sizeof *out);
    out->packets = s->src[source].packets;
    out->bytes = s->src[source].bytes;
    struct pcap_stat ps;
    if (s->live && s->src[source].pcap && pcap_stats(s->src[source].pcap, &ps) == 0) {
        out->pcap_recv = ps.ps_recv;
        out->pcap_drop = ps.ps_drop;
        out->pcap_ifdrop = ps.ps_ifdrop;
    }
    return SENSOR_OK;
}

int sensor_fileno(const sensor_t *s, int source)
{
    if (!s->live || source < 0 || source >= s->nsrc) return -1;
    return pcap_get_selectable_fd(s->src[source].pcap);
}

const char *sensor_last_error(const sensor_t *s) { return s->err; }

size_t sensor_entry_size(void) { return ft_entry_size(); }

void sensor_close(sensor_t *s)
{
    if (!s) return;
    reader_stop(&s->reader);                  /* before its source is closed */
    for (int i = 0; i < s->nsrc; i++) {
        if (s->src[i].pcap) pcap_close(s->src[i].pcap);   /* fcloses a file's FILE */
        free(s->src[i].filebuf);
        pcapng_close(s->src[i].ng);
    }
    ft_destroy(s->ft);
    free(s->staged);
    free(s);
}

int sensor_check_filter(const char *bpf, char *errbuf)
{
    pcap_t *p = pcap_open_dead(DLT_EN10MB, 262144);
    if (!p) {
        set_error(errbuf, "out of memory");
        return SENSOR_ENOMEM;
    }
    struct bpf_program prog;
    int rc = SENSOR_OK;
    if (pcap_compile(p, &prog, bpf ? bpf : "", 1, PCAP_NETMASK_UNKNOWN) < 0) {
        set_error(errbuf, "%s", pcap_geterr(p));
        rc = SENSOR_EFILTER;
    } else {
        pcap_freecode(&prog);
    }
    pcap_close(p);
    return rc;
}
