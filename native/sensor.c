/* sensor.c: the public sensor_* API. Owns the packet source (libpcap, or our pcapng reader for files
 * libpcap refuses) and hands each frame to the decoder and the flow table, all in C. */
#include "sensor.h"
#include "decode.h"
#include "flowtable.h"
#include "pcapng.h"

#include <pcap/pcap.h>
#include <stdarg.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/random.h>

_Static_assert(sizeof(sensor_flow_t) == 208, "sensor_flow_t must stay 208 bytes with no padding");
_Static_assert(sizeof(((sensor_stats_t *)0)->decode_errors) / sizeof(uint64_t) == SENSOR_DERR_COUNT,
               "decode_errors must have one slot per SENSOR_DERR_*");

struct sensor {
    pcap_t *pcap;                 /* libpcap handle, or NULL when ng is used */
    pcapng_reader_t *ng;          /* own reader for pcapng files with mixed link types */
    int linktype, live, eof;
    uint8_t ifindex;
    uint64_t until_us;            /* poll stops after the first packet at or past this (0 = never) */
    int reached;                  /* that packet has been seen */
    ft_table_t *ft;
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
    if (pcapng_has_mixed_linktypes(path)) {
        if (pcapng_open(path, &s->ng, errbuf, SENSOR_ERRBUF_SIZE) < 0) goto fail;
    } else {
        char pe[PCAP_ERRBUF_SIZE] = "";
        s->pcap = pcap_open_offline_with_tstamp_precision(path, PCAP_TSTAMP_PRECISION_MICRO, pe);
        if (!s->pcap) {
            set_error(errbuf, "%s", pe);
            goto fail;
        }
        s->linktype = pcap_datalink(s->pcap);
    }
    *out = s;
    return SENSOR_OK;
fail:
    sensor_close(s);
    return SENSOR_EPCAP;
}

int sensor_open_live(const sensor_config_t *cfg, const char *iface, const char *bpf,
                     char *errbuf, sensor_t **out)
{
    sensor_t *s;
    int rc = sensor_new(cfg, errbuf, &s);
    if (rc < 0) return rc;
    char pe[PCAP_ERRBUF_SIZE] = "";
    s->live = 1;
    s->pcap = pcap_create(iface, pe);
    if (!s->pcap) {
        set_error(errbuf, "%s: %s", iface, pe);
        goto fail;
    }
    /* TPACKET_V3 is libpcap's default on Linux unless immediate mode is set, so it is not. */
    pcap_set_snaplen(s->pcap, cfg->snaplen ? (int)cfg->snaplen : 128);
    pcap_set_promisc(s->pcap, cfg->promisc ? 1 : 0);
    pcap_set_timeout(s->pcap, cfg->timeout_ms ? (int)cfg->timeout_ms : 100);
    if (cfg->ring_bytes) pcap_set_buffer_size(s->pcap, (int)cfg->ring_bytes);
    pcap_set_tstamp_precision(s->pcap, PCAP_TSTAMP_PRECISION_MICRO);
    rc = pcap_activate(s->pcap);
    if (rc < 0) {
        set_error(errbuf, "%s: %s (%s)", iface, pcap_statustostr(rc), pcap_geterr(s->pcap));
        goto fail;
    }
    if (rc > 0) s->stats.warnings++;          /* e.g. promiscuous mode not supported */
    s->linktype = pcap_datalink(s->pcap);
    if (cfg->inbound_only && pcap_setdirection(s->pcap, PCAP_D_IN) < 0) {
        set_error(errbuf, "%s: cannot capture inbound only: %s", iface, pcap_geterr(s->pcap));
        goto fail;
    }
    if (pcap_setnonblock(s->pcap, 1, pe) < 0) {
        set_error(errbuf, "%s: %s", iface, pe);
        goto fail;
    }
    if (bpf && *bpf && sensor_set_filter(s, bpf) < 0) {
        set_error(errbuf, "%s", s->err);
        sensor_close(s);
        return SENSOR_EFILTER;
    }
    *out = s;
    return SENSOR_OK;
fail:
    sensor_close(s);
    return SENSOR_EPCAP;
}

int sensor_set_filter(sensor_t *s, const char *bpf)
{
    if (!s->pcap) {
        set_error(s->err, "this capture cannot take a BPF filter");
        return SENSOR_EINVAL;
    }
    struct bpf_program prog;
    if (pcap_compile(s->pcap, &prog, bpf ? bpf : "", 1, PCAP_NETMASK_UNKNOWN) < 0) {
        set_error(s->err, "bad BPF filter: %s", pcap_geterr(s->pcap));
        return SENSOR_EFILTER;
    }
    int rc = pcap_setfilter(s->pcap, &prog);
    pcap_freecode(&prog);
    if (rc < 0) {
        set_error(s->err, "cannot set BPF filter: %s", pcap_geterr(s->pcap));
        return SENSOR_EFILTER;
    }
    return SENSOR_OK;
}

int sensor_reconfigure(sensor_t *s, const sensor_config_t *cfg)
{
    if (!config_valid(cfg, s->err)) return SENSOR_EINVAL;
    ft_configure(s->ft, cfg);
    return SENSOR_OK;
}

static void meter(sensor_t *s, int linktype, uint64_t ts, const uint8_t *data, uint32_t caplen,
                  uint32_t len)
{
    s->stats.packets++;
    s->stats.bytes += len;
    if (ts > s->stats.last_packet_us) s->stats.last_packet_us = ts;
    decode_pkt_t p;
    int rc = decode_packet(linktype, data, caplen, len, &p);
    if (rc < 0) {
        s->stats.decode_errors[-1 - rc]++;
        return;
    }
    if (p.anomaly) s->stats.decode_errors[p.anomaly - 1]++;   /* metered, but noted */
    ft_packet(s->ft, &p, ts, s->ifindex);
}

static void on_packet(u_char *user, const struct pcap_pkthdr *h, const u_char *bytes)
{
    sensor_t *s = (sensor_t *)user;
    uint64_t ts = (uint64_t)h->ts.tv_sec * 1000000u + (uint64_t)h->ts.tv_usec;
    meter(s, s->linktype, ts, bytes, h->caplen, h->len);
    if (s->until_us && ts >= s->until_us) {
        s->reached = 1;
        pcap_breakloop(s->pcap);
    }
}

static int poll_pcapng(sensor_t *s, int cnt)
{
    int n = 0;
    while (n < cnt) {
        uint64_t ts;
        uint32_t caplen, len;
        int linktype;
        const uint8_t *data;
        int rc = pcapng_next(s->ng, &ts, &caplen, &len, &linktype, &data);
        if (rc == 0) {
            s->eof = 1;
            return n ? n : SENSOR_EOF;
        }
        if (rc < 0) {
            s->eof = 1;
            set_error(s->err, "%s", pcapng_error(s->ng));
            return SENSOR_EFILE;
        }
        meter(s, linktype, ts, data, caplen, len);
        n++;
        if (s->until_us && ts >= s->until_us) break;
    }
    return n;
}

int sensor_poll(sensor_t *s, int max_packets, uint64_t until_us)
{
    if (s->eof) return SENSOR_EOF;
    s->until_us = until_us;
    s->reached = 0;
    size_t room = ft_ring_free(s->ft) / FT_RECORDS_PER_PACKET;
    int cnt = (size_t)max_packets < room ? max_packets : (int)room;
    if (cnt <= 0) return 0;                   /* the caller drains, then polls again */
    if (s->ng) return poll_pcapng(s, cnt);
    int rc = pcap_dispatch(s->pcap, cnt, on_packet, (u_char *)s);
    if (rc == PCAP_ERROR) {
        set_error(s->err, "%s", pcap_geterr(s->pcap));
        if (s->live) return SENSOR_EPCAP;
        s->eof = 1;
        return SENSOR_EFILE;
    }
    if (rc == PCAP_ERROR_BREAK) return s->reached ? 1 : 0;
    if (rc == 0 && !s->live) {
        s->eof = 1;
        return SENSOR_EOF;
    }
    return rc;
}

size_t sensor_drain(sensor_t *s, sensor_flow_t *out, size_t cap, uint64_t now_us)
{
    return ft_drain(s->ft, out, cap, now_us);
}

void sensor_end_all(sensor_t *s, int cause) { ft_end_all(s->ft, cause); }

void sensor_get_stats(sensor_t *s, sensor_stats_t *out)
{
    *out = s->stats;
    ft_stats(s->ft, out);
    out->decode_errors[SENSOR_DERR_FRAG_TABLE] += s->stats.decode_errors[SENSOR_DERR_FRAG_TABLE];
    if (s->live && s->pcap) {
        struct pcap_stat ps;
        if (pcap_stats(s->pcap, &ps) == 0) {
            out->pcap_recv = ps.ps_recv;
            out->pcap_drop = ps.ps_drop;
            out->pcap_ifdrop = ps.ps_ifdrop;
        }
    }
}

int sensor_fileno(const sensor_t *s)
{
    return s->live && s->pcap ? pcap_get_selectable_fd(s->pcap) : -1;
}

const char *sensor_last_error(const sensor_t *s) { return s->err; }

size_t sensor_entry_size(void) { return ft_entry_size(); }

void sensor_close(sensor_t *s)
{
    if (!s) return;
    if (s->pcap) pcap_close(s->pcap);
    pcapng_close(s->ng);
    ft_destroy(s->ft);
    free(s);
}
