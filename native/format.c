/* format.c: sensor_format, ra's text lines (-c delimited or aligned columns) straight from records.
 *
 * It prints exactly what appliance/capture.py's to_record followed by appliance/fields.py's
 * formatters and appliance/output.py's TextWriter print for the same options;
 * tests/test_fastpath.py compares the two byte for byte on every shared capture. Whatever would
 * need more than a table here (service names, records with values Python would reject) is left to
 * Python: the function stops before that record and the caller formats it the normal way.
 *
 * Numbers: Python prints `v / 1e6` with "%.6f". Below 2^32 seconds the double nearest to v/1e6 is
 * within 2.4e-7 of it, so correct rounding to 6 decimals gives v's own digits and we print those;
 * larger values go through snprintf on the same double (glibc rounds exactly, as Python does). */
#include "format.h"

#include <arpa/inet.h>
#include <math.h>
#include <stddef.h>
#include <stdio.h>
#include <string.h>
#include <sys/socket.h>
#include <time.h>

_Static_assert(sizeof(((sensor_format_spec_t *)0)->column) / sizeof(sensor_format_column_t)
               == SENSOR_FORMAT_MAX_COLUMNS, "column[] must hold SENSOR_FORMAT_MAX_COLUMNS entries");
_Static_assert(sizeof(((sensor_format_spec_t *)0)->delim) == 8, "delim_len is at most 8");
_Static_assert(sizeof(((sensor_format_spec_t *)0)->srcid) == 64, "srcid_len is at most 64");

enum { FMT_OK = FT_FMT_OK, FMT_FULL = FT_FMT_FULL, FMT_PYTHON = FT_FMT_PYTHON };

static const uint64_t US_EXACT = 4294967296ull * 1000000ull;   /* 2^32 s in µs: see the top */

typedef ft_wbuf_t wbuf_t;
typedef ft_clock_t clock_cache_t;

/* Names: the only copy. appliance/capture.py and appliance/fields.py read them from the module. */
const char *const sensor_cause_names[6] = {"Start", "Status", "Stop", "Timeout", "Evict", "Shutdown"};
const char *const sensor_state_names[9] = {"", "REQ", "ACC", "CON", "INT", "FIN", "RST", "CLO", ""};
const char *const sensor_dir_names[6] = {"   ->", "  <->", "   <-", "  <?>", "   ?>", "  who"};
const char *const sensor_conn_state_names[14] = {"", "S0", "S1", "SF", "REJ", "S2", "S3", "RSTO",
                                                 "RSTR", "RSTOS0", "RSTRH", "SH", "SHR", "OTH"};
const char sensor_tcp_flag_letters[9] = "FSRPAUEC";   /* bit 0 (FIN) to bit 7 (CWR), tcpdump's */
const char sensor_argus_flag_letters[9] = "FSRPAU78"; /* the same bits in ra -Z's letters */
#define ARGUS_FLAG_LETTERS sensor_argus_flag_letters
static const char HEX[] = "0123456789abcdef";

typedef sensor_name_t name_t;

const name_t sensor_ip_proto_names[] = {
    {0, "ip"}, {1, "icmp"}, {2, "igmp"}, {3, "ggp"}, {4, "ipnip"}, {5, "st"}, {6, "tcp"}, {8, "egp"},
    {9, "igp"}, {17, "udp"}, {27, "rdp"}, {29, "iso-tp4"}, {33, "dccp"}, {41, "ipv6"},
    {43, "ipv6-route"}, {44, "ipv6-frag"}, {46, "rsvp"}, {47, "gre"}, {50, "esp"}, {51, "ah"},
    {58, "ipv6-icmp"}, {59, "ipv6-nonxt"}, {60, "ipv6-opts"}, {88, "eigrp"}, {89, "ospf"},
    {94, "ipip"}, {97, "etherip"}, {103, "pim"}, {108, "ipcomp"}, {112, "vrrp"}, {115, "l2tp"},
    {132, "sctp"}, {136, "udplite"},
    {0, NULL},
};
const name_t sensor_ether_proto_names[] = {
    {0, "llc"}, {0x0806, "arp"}, {0x8035, "rarp"}, {0x8863, "pppoe"}, {0x8864, "pppoe"},
    {0x88CC, "lldp"}, {0x8847, "mpls"}, {0x8848, "mpls"}, {0x9000, "loop"}, {0x88A8, "802.1ad"},
    {0x8100, "802.1q"}, {0x888E, "eapol"}, {0x88F7, "ptp"},
    {0, NULL},
};
const name_t sensor_llc_sap_names[] = {
    {0x42, "stp"}, {0xAA, "snap"}, {0x06, "ip"}, {0xE0, "ipx"}, {0xF0, "netbios"}, {0xFE, "osi"},
    {0, NULL},
};
const name_t sensor_icmp4_names[] = {
    {0, "ECR"}, {4, "SRC"}, {5, "RED"}, {8, "ECO"}, {9, "RTA"}, {10, "RTS"}, {11, "TXD"},
    {12, "PAR"}, {13, "TST"}, {14, "TSR"}, {15, "IRQ"}, {16, "IRR"}, {17, "MAS"}, {18, "MSR"},
    {0, NULL},
};
const name_t sensor_icmp4_unreach_names[] = {
    {0, "URN"}, {1, "URH"}, {2, "URO"}, {3, "URP"}, {4, "URF"}, {5, "URS"},
    {0, NULL},
};
const name_t sensor_icmp6_names[] = {
    {1, "UNR"}, {2, "PTB"}, {3, "TXD"}, {4, "PAR"}, {128, "ECO"}, {129, "ECR"}, {130, "MRQ"},
    {131, "MRP"}, {132, "MRD"}, {133, "NRS"}, {134, "NRA"}, {135, "NNS"}, {136, "NNA"},
    {137, "NRED"}, {143, "MHR"},
    {0, NULL},
};

/* The name of number in a table ending with a NULL name, or missing. */
static const char *lookup(const name_t *table, unsigned number, const char *missing)
{
    for (; table->name; table++)
        if (table->number == number)
            return table->name;
    return missing;
}

/* --- writing ------------------------------------------------------------------------------ */

static int put(wbuf_t *w, const char *s, size_t n)
{
    if ((size_t)(w->end - w->p) < n)
        return FMT_FULL;
    memcpy(w->p, s, n);
    w->p += n;
    return FMT_OK;
}

static int put_str(wbuf_t *w, const char *s)
{
    return put(w, s, strlen(s));
}

static const char DIGITS2[] =
    "00010203040506070809101112131415161718192021222324252627282930313233343536373839"
    "40414243444546474849505152535455565758596061626364656667686970717273747576777879"
    "8081828384858687888990919293949596979899";

/* v's decimal digits, ending just before end; returns where they start. */
static char *digits(char *end, uint64_t v)
{
    while (v >= 100) {
        end -= 2;
        memcpy(end, DIGITS2 + 2 * (v % 100), 2);
        v /= 100;
    }
    if (v >= 10) {
        end -= 2;
        memcpy(end, DIGITS2 + 2 * v, 2);
    } else {
        *--end = (char)('0' + v);
    }
    return end;
}

static int put_u64(wbuf_t *w, uint64_t v)
{
    char tmp[20];
    char *start = digits(tmp + sizeof tmp, v);
    return put(w, start, (size_t)(tmp + sizeof tmp - start));
}

/* Python's f"{v / 1e6:.6f}" (negated when neg) for a count of microseconds. */
static int put_us(wbuf_t *w, int neg, uint64_t v)
{
    char tmp[64];
    size_t i = sizeof tmp;
    if (v < US_EXACT) {
        uint32_t frac = (uint32_t)(v % 1000000);
        for (int k = 0; k < 3; k++) {
            i -= 2;
            memcpy(tmp + i, DIGITS2 + 2 * (frac % 100), 2);
            frac /= 100;
        }
        tmp[--i] = '.';
        char *start = digits(tmp + i, v / 1000000);
        if (neg)
            *--start = '-';
        return put(w, start, (size_t)(tmp + sizeof tmp - start));
    }
    double d = (double)v / 1e6;
    int k = snprintf(tmp, sizeof tmp, "%.6f", neg ? -d : d);
    if (k < 0 || (size_t)k >= sizeof tmp)
        return FMT_PYTHON;
    return put(w, tmp, (size_t)k);
}

/* fields.py's clock: us = round(x) for x = t * 1e6, then local "%H:%M:%S" and ".%06d". */
static int put_clock_x(wbuf_t *w, double x, clock_cache_t *cache)
{
    if (!(x >= 0.0 && x < 9.0e18))
        return FMT_PYTHON;
    uint64_t us = (uint64_t)x;                  /* floor; the fraction below is exact */
    double frac = x - (double)us;
    if (frac > 0.5 || (frac == 0.5 && (us & 1)))
        us++;                                    /* Python's round(): half to even */
    uint64_t sec = us / 1000000, part = us % 1000000;
    if (!cache->valid || cache->sec != sec) {
        time_t t = (time_t)sec;
        struct tm tm;
        if ((uint64_t)t != sec || !localtime_r(&t, &tm) || tm.tm_hour < 0 || tm.tm_hour > 23
            || tm.tm_min < 0 || tm.tm_min > 59 || tm.tm_sec < 0 || tm.tm_sec > 60)
            return FMT_PYTHON;
        snprintf(cache->hms, sizeof cache->hms, "%02d:%02d:%02d", tm.tm_hour, tm.tm_min, tm.tm_sec);
        cache->sec = sec;
        cache->valid = 1;
    }
    char tmp[15];
    memcpy(tmp, cache->hms, 8);
    tmp[8] = '.';
    for (int k = 14; k > 8; k--) {
        tmp[k] = (char)('0' + part % 10);
        part /= 10;
    }
    return put(w, tmp, sizeof tmp);
}

/* The clock for a count of microseconds (t = v / 1e6). */
static int put_clock(wbuf_t *w, uint64_t v, clock_cache_t *cache)
{
    return put_clock_x(w, ((double)v / 1e6) * 1e6, cache);
}

int ft_put_clock(ft_wbuf_t *w, double t, ft_clock_t *cache)
{
    return put_clock_x(w, t * 1e6, cache);
}

int ft_put(ft_wbuf_t *w, const char *s, size_t n)
{
    return put(w, s, n);
}

int ft_put_i64(ft_wbuf_t *w, int64_t v)
{
    if (v >= 0)
        return put_u64(w, (uint64_t)v);
    int rc = put(w, "-", 1);
    return rc == FMT_OK ? put_u64(w, 0 - (uint64_t)v) : rc;
}

int ft_put_real6(ft_wbuf_t *w, double d)
{
    /* d's own microseconds when d is the double nearest to them (see the top); else snprintf,
     * which rounds the exact binary value as Python does (also -0.0, inf and large values). */
    if (d >= 0 && !signbit(d) && d < 4294967296.0) {
        uint64_t v = (uint64_t)(d * 1e6 + 0.5);     /* checked just below */
        if ((double)v / 1e6 == d)
            return put_us(w, 0, v);
    }
    char tmp[352];                              /* DBL_MAX with 6 decimals fits */
    int k = snprintf(tmp, sizeof tmp, "%.6f", d);
    if (k < 0 || (size_t)k >= sizeof tmp)
        return FMT_PYTHON;
    return put(w, tmp, (size_t)k);
}

const char *ft_proto_name(int64_t proto, int ether, int numeric)
{
    if (proto < 0 || proto > 0xFFFF)
        return ether ? (numeric ? NULL : "unknown") : "unas";
    if (ether) {
        const char *name = lookup(sensor_ether_proto_names, (unsigned)proto, NULL);
        return name ? name : numeric ? NULL : "unknown";
    }
    return lookup(sensor_ip_proto_names, (unsigned)proto, "unas");
}

const char *ft_llc_sap_name(int64_t sap)
{
    return sap < 0 || sap > 0xFFFF ? "" : lookup(sensor_llc_sap_names, (unsigned)sap, "");
}

size_t ft_addr_text(const sensor_flow_t *r, int side, char out[64])
{
    const uint8_t *a = r->addr[side];
    if (r->addr_type == SENSOR_ADDR_IP4) {     /* inet_ntop's "%u.%u.%u.%u" */
        size_t n = 0;
        for (int i = 0; i < 4; i++) {
            unsigned v = a[i];
            if (v >= 100)
                out[n++] = (char)('0' + v / 100);
            if (v >= 10)
                out[n++] = (char)('0' + v / 10 % 10);
            out[n++] = (char)('0' + v % 10);
            out[n++] = '.';
        }
        return n - 1;
    }
    if (r->addr_type == SENSOR_ADDR_IP6)
        return inet_ntop(AF_INET6, a, out, 64) ? strlen(out) : 0;
    ft_mac_text(a, out);                         /* a MAC, as bytes.hex(":") */
    return 17;
}

void ft_mac_text(const uint8_t m[6], char out[17])
{
    for (int i = 0; i < 6; i++) {
        out[3 * i] = HEX[m[i] >> 4];
        out[3 * i + 1] = HEX[m[i] & 15];
        if (i < 5)
            out[3 * i + 2] = ':';
    }
}

size_t ft_flag_letters(uint8_t bits, const char *letters, char out[8])
{
    size_t n = 0;
    for (int i = 0; i < 8; i++)
        if (bits >> i & 1)
            out[n++] = letters[i];
    return n;
}

void ft_flgs_text(const sensor_flow_t *r, char out[9])
{
    int has_mac = 0;
    for (int i = 0; i < 6; i++)
        has_mac |= r->mac[0][i] | r->mac[1][i];
    memset(out, ' ', 9);
    if (r->flgs & (SENSOR_FLG_VLAN | SENSOR_FLG_MPLS | SENSOR_FLG_PPPOE))
        out[1] = '*';
    else if (has_mac)
        out[1] = 'e';
    if (r->flgs & SENSOR_FLG_ICMP_UNREACH)
        out[2] = 'U';
    if (r->flgs & SENSOR_FLG_FRAG_ORPHAN)
        out[4] = 'f';
    else if (r->flgs & SENSOR_FLG_FRAG)
        out[4] = 'F';
    if (r->flgs & SENSOR_FLG_GAP)
        out[5] = 'g';
    if (r->flgs & SENSOR_FLG_RETRANS)
        out[6] = 's';
}

static int put_addr(wbuf_t *w, const sensor_flow_t *r, int side)
{
    char tmp[64];
    size_t n = ft_addr_text(r, side, tmp);
    return n ? put(w, tmp, n) : FMT_PYTHON;
}

static int put_mac(wbuf_t *w, const uint8_t *m)
{
    char tmp[17];
    ft_mac_text(m, tmp);
    return put(w, tmp, sizeof tmp);
}

static int put_flags(wbuf_t *w, uint8_t bits, const char *letters)
{
    char tmp[8];
    return put(w, tmp, ft_flag_letters(bits, letters, tmp));
}

/* --- values ------------------------------------------------------------------------------- */

int ft_record_facts(const sensor_flow_t *r, facts_t *f)
{
    if (r->addr_type != SENSOR_ADDR_IP4 && r->addr_type != SENSOR_ADDR_IP6
        && r->addr_type != SENSOR_ADDR_MAC)
        return 0;
    if (r->cause >= sizeof FT_CAUSES / sizeof FT_CAUSES[0] || r->dir >= sizeof FT_DIRS / sizeof FT_DIRS[0]
        || r->state >= sizeof FT_STATES / sizeof FT_STATES[0])
        return 0;
    f->ip = r->addr_type != SENSOR_ADDR_MAC;
    f->sip = f->ip && r->proto != 0x0806;
    f->ported = !f->ip || r->proto == 6 || r->proto == 17 || r->proto == 132 || r->proto == 1
                || r->proto == 58;
    f->ether = r->proto > 255 || (r->proto == 0 && !f->ip);
    if (r->proto == 6 && f->ip) {
        if (r->conn_state >= sizeof FT_CONN_STATES / sizeof FT_CONN_STATES[0])
            return 0;
        size_t n = sizeof r->history;
        while (n && r->history[n - 1] == '\0')
            n--;
        for (size_t i = 0; i < n; i++)          /* history.decode(): printable ASCII only here */
            if (r->history[i] < 0x21 || r->history[i] > 0x7e)
                return 0;
    }
    return 1;
}

const char *ft_state_text(const sensor_flow_t *r)
{
    if (r->state != SENSOR_STATE_ICMP)
        return FT_STATES[r->state];
    if (r->proto == 1) {
        if (r->port[0] == 3)
            return lookup(sensor_icmp4_unreach_names, r->icmp_code, "UNR");
        return lookup(sensor_icmp4_names, r->port[0], "UNK");
    }
    return lookup(sensor_icmp6_names, r->port[0], "UNK");
}

static int put_port(wbuf_t *w, const sensor_flow_t *r, const facts_t *f, int numeric, uint16_t v)
{
    if (!f->ported)
        return FMT_OK;
    if (r->proto == 1) {
        char tmp[6] = {'0', 'x', HEX[v >> 12], HEX[v >> 8 & 15], HEX[v >> 4 & 15], HEX[v & 15]};
        return put(w, tmp, sizeof tmp);
    }
    if (!numeric) {
        if (f->ether)
            return r->proto == 0 ? put_str(w, lookup(sensor_llc_sap_names, v, "")) : FMT_OK;
        if (r->proto == 6 || r->proto == 17)
            return FMT_PYTHON;                   /* service names: socket.getservbyport */
    }
    return put_u64(w, v);
}

/* fields.py's state column; with -Z, TCP flags seen in Argus order: 's' source, 'd' destination,
 * anything else both as "s_d". */
static int put_state(wbuf_t *w, const sensor_flow_t *r, int zflags)
{
    if (zflags && r->proto == 6) {
        if (zflags == 's')
            return put_flags(w, r->tcpflags[0], ARGUS_FLAG_LETTERS);
        if (zflags == 'd')
            return put_flags(w, r->tcpflags[1], ARGUS_FLAG_LETTERS);
        int rc = put_flags(w, r->tcpflags[0], ARGUS_FLAG_LETTERS);
        if (rc == FMT_OK)
            rc = put(w, "_", 1);
        return rc == FMT_OK ? put_flags(w, r->tcpflags[1], ARGUS_FLAG_LETTERS) : rc;
    }
    return put_str(w, ft_state_text(r));
}

static int put_sum(wbuf_t *w, uint64_t a, uint64_t b)
{
    return a + b < a ? FMT_PYTHON : put_u64(w, a + b);   /* Python's ints do not wrap */
}

static int put_field(wbuf_t *w, const sensor_flow_t *r, const facts_t *f,
                     const sensor_format_spec_t *spec, unsigned field, clock_cache_t *cache)
{
    int utime = spec->flags & SENSOR_FMT_UTIME;
    switch (field) {
    case SENSOR_FIELD_SRCID: return put(w, spec->srcid, spec->srcid_len);
    case SENSOR_FIELD_SEQ: return put_u64(w, r->seq);
    case SENSOR_FIELD_CAUSE: return put_str(w, FT_CAUSES[r->cause]);
    case SENSOR_FIELD_STIME:
        return utime ? put_us(w, 0, r->stime_us) : put_clock(w, r->stime_us, cache);
    case SENSOR_FIELD_LTIME:
        return utime ? put_us(w, 0, r->ltime_us) : put_clock(w, r->ltime_us, cache);
    case SENSOR_FIELD_DUR:
        return r->ltime_us >= r->stime_us ? put_us(w, 0, r->ltime_us - r->stime_us)
                                          : put_us(w, 1, r->stime_us - r->ltime_us);
    case SENSOR_FIELD_TRANS: return put(w, "1", 1);
    case SENSOR_FIELD_FLGS: {
        /* capture._flgs, then .rstrip().ljust(10 with -c, else 9): the cut part was blanks. */
        char t[10] = {[9] = ' '};
        ft_flgs_text(r, t);
        return put(w, t, spec->flags & SENSOR_FMT_DELIMITED ? 10 : 9);
    }
    case SENSOR_FIELD_PROTO:
        if (spec->numeric >= 2)
            return put_u64(w, r->proto);
        if (f->ether) {
            const char *name = lookup(sensor_ether_proto_names, r->proto, NULL);
            if (name)
                return put_str(w, name);
            return spec->numeric ? put_u64(w, r->proto) : put_str(w, "unknown");
        }
        return put_str(w, lookup(sensor_ip_proto_names, r->proto, "unas"));
    case SENSOR_FIELD_SADDR: return put_addr(w, r, 0);
    case SENSOR_FIELD_DADDR: return put_addr(w, r, 1);
    case SENSOR_FIELD_SPORT: return put_port(w, r, f, spec->numeric, r->port[0]);
    case SENSOR_FIELD_DPORT: return put_port(w, r, f, spec->numeric, r->port[1]);
    case SENSOR_FIELD_DIR: return put(w, FT_DIRS[r->dir], 5);
    case SENSOR_FIELD_SPKTS: return put_u64(w, r->pkts[0]);
    case SENSOR_FIELD_DPKTS: return put_u64(w, r->pkts[1]);
    case SENSOR_FIELD_PKTS: return put_sum(w, r->pkts[0], r->pkts[1]);
    case SENSOR_FIELD_SBYTES: return put_u64(w, r->bytes[0]);
    case SENSOR_FIELD_DBYTES: return put_u64(w, r->bytes[1]);
    case SENSOR_FIELD_BYTES: return put_sum(w, r->bytes[0], r->bytes[1]);
    case SENSOR_FIELD_SAPPBYTES: return put_u64(w, r->appbytes[0]);
    case SENSOR_FIELD_DAPPBYTES: return put_u64(w, r->appbytes[1]);
    case SENSOR_FIELD_APPBYTES: return put_sum(w, r->appbytes[0], r->appbytes[1]);
    case SENSOR_FIELD_STATE: return put_state(w, r, spec->zflags);
    case SENSOR_FIELD_STOS: return f->sip && r->pkts[0] ? put_u64(w, r->tos[0]) : FMT_OK;
    case SENSOR_FIELD_DTOS: return f->sip && r->pkts[1] ? put_u64(w, r->tos[1]) : FMT_OK;
    case SENSOR_FIELD_STTL: return f->sip && r->pkts[0] ? put_u64(w, r->ttl[0]) : FMT_OK;
    case SENSOR_FIELD_DTTL: return f->sip && r->pkts[1] ? put_u64(w, r->ttl[1]) : FMT_OK;
    case SENSOR_FIELD_SMAC: return put_mac(w, r->mac[0]);
    case SENSOR_FIELD_DMAC: return put_mac(w, r->mac[1]);
    case SENSOR_FIELD_SVLAN: return r->vlan[0] == 0xFFFF ? FMT_OK : put_u64(w, r->vlan[0]);
    case SENSOR_FIELD_DVLAN: return r->vlan[1] == 0xFFFF ? FMT_OK : put_u64(w, r->vlan[1]);
    case SENSOR_FIELD_SMPLS: return r->mpls[0] == 0xFFFFFFFFu ? FMT_OK : put_u64(w, r->mpls[0]);
    case SENSOR_FIELD_DMPLS: return r->mpls[1] == 0xFFFFFFFFu ? FMT_OK : put_u64(w, r->mpls[1]);
    case SENSOR_FIELD_SFLAGS: return put_flags(w, r->tcpflags[0], FT_TCP_FLAG_LETTERS);
    case SENSOR_FIELD_DFLAGS: return put_flags(w, r->tcpflags[1], FT_TCP_FLAG_LETTERS);
    case SENSOR_FIELD_SYNACK: return put_us(w, 0, r->synack_us);
    case SENSOR_FIELD_ACKDAT: return put_us(w, 0, r->ackdat_us);
    case SENSOR_FIELD_TCPRTT: return put_us(w, 0, (uint64_t)r->synack_us + r->ackdat_us);
    case SENSOR_FIELD_SRETRANS: return put_u64(w, r->retrans[0]);
    case SENSOR_FIELD_DRETRANS: return put_u64(w, r->retrans[1]);
    case SENSOR_FIELD_SGAP: return put_u64(w, r->gaps[0]);
    case SENSOR_FIELD_DGAP: return put_u64(w, r->gaps[1]);
    case SENSOR_FIELD_SMAXSZ: return put_u64(w, r->maxsz[0]);
    case SENSOR_FIELD_SMINSZ: return put_u64(w, r->minsz[0]);
    case SENSOR_FIELD_DMAXSZ: return put_u64(w, r->maxsz[1]);
    case SENSOR_FIELD_DMINSZ: return put_u64(w, r->minsz[1]);
    case SENSOR_FIELD_CONN_STATE:
        return r->proto == 6 && f->ip ? put_str(w, FT_CONN_STATES[r->conn_state]) : FMT_OK;
    case SENSOR_FIELD_HISTORY:
        return r->proto == 6 && f->ip ? put(w, r->history, strnlen(r->history, sizeof r->history))
                                      : FMT_OK;
    default: return FMT_PYTHON;
    }
}

/* output._fit: pad the cell [cell, w->p) to width, or cut it to width-1 chars and '*'. */
static int fit(wbuf_t *w, char *cell, size_t width, int left)
{
    size_t len = (size_t)(w->p - cell);
    if (len > width) {
        w->p = cell + width - 1;
        *w->p++ = '*';
        return FMT_OK;
    }
    size_t gap = width - len;
    if ((size_t)(w->end - w->p) < gap)
        return FMT_FULL;
    if (left) {
        memset(w->p, ' ', gap);
    } else {
        memmove(cell + gap, cell, len);
        memset(cell, ' ', gap);
    }
    w->p += gap;
    return FMT_OK;
}

/* A sensor_flow_t with its facts, for flow_cell. */
typedef struct flow_ctx {
    const sensor_flow_t *r;
    const facts_t *f;
    const sensor_format_spec_t *spec;
} flow_ctx_t;

static int flow_cell(ft_wbuf_t *w, const void *ctx, unsigned field, ft_clock_t *cache)
{
    const flow_ctx_t *c = ctx;
    return put_field(w, c->r, c->f, c->spec, field, cache);
}

/* One record's line; on failure the cursor is back where it was. */
static int put_line(wbuf_t *w, const sensor_flow_t *r, const sensor_format_spec_t *spec,
                    clock_cache_t *cache)
{
    facts_t f;
    if (!ft_record_facts(r, &f))
        return FMT_PYTHON;
    flow_ctx_t ctx = {r, &f, spec};
    return ft_put_line(w, spec, flow_cell, &ctx, cache);
}

int ft_put_line(ft_wbuf_t *w, const sensor_format_spec_t *spec, ft_cell_fn cell, const void *ctx,
                ft_clock_t *cache)
{
    char *line = w->p;
    int rc = FMT_OK;
    for (uint32_t c = 0; c < spec->ncolumns && rc == FMT_OK; c++) {
        const sensor_format_column_t *col = &spec->column[c];
        char *sep = NULL;
        if (c && col->sep == SENSOR_SEP_PORT) {
            if (w->p == w->end) {
                rc = FMT_FULL;
                break;
            }
            sep = w->p++;
        } else if (c) {
            rc = put(w, spec->delim, spec->delim_len);
            if (rc != FMT_OK)
                break;
        }
        char *start = w->p;
        rc = cell(w, ctx, col->field, cache);
        if (rc != FMT_OK)
            break;
        if (sep)
            *sep = w->p > start ? '.' : ' ';
        if (col->pad != SENSOR_PAD_NONE)
            rc = fit(w, start, col->width, col->pad == SENSOR_PAD_LEFT);
    }
    if (rc == FMT_OK && (spec->flags & SENSOR_FMT_RSTRIP))
        while (w->p > line && w->p[-1] == ' ')
            w->p--;
    if (rc == FMT_OK)
        rc = put(w, "\n", 1);
    if (rc != FMT_OK)
        w->p = line;
    return rc;
}

int ft_spec_ok(const sensor_format_spec_t *spec)
{
    if (spec->ncolumns < 1 || spec->ncolumns > SENSOR_FORMAT_MAX_COLUMNS
        || spec->delim_len > sizeof spec->delim || spec->srcid_len > sizeof spec->srcid
        || (spec->zflags && spec->zflags != 's' && spec->zflags != 'd' && spec->zflags != 'b'))
        return 0;
    for (uint32_t c = 0; c < spec->ncolumns; c++) {
        const sensor_format_column_t *col = &spec->column[c];
        if (col->field >= SENSOR_FIELD_COUNT || col->pad > SENSOR_PAD_LEFT
            || (col->pad != SENSOR_PAD_NONE && col->width < 1))
            return 0;
    }
    return 1;
}

size_t sensor_format(const sensor_flow_t *recs, size_t n, const sensor_format_spec_t *spec,
                     char *out, size_t cap, size_t *used)
{
    wbuf_t w = {out, out + cap};
    clock_cache_t cache = {0, 0, ""};
    size_t done = 0;
    if (ft_spec_ok(spec))
        while (done < n && put_line(&w, &recs[done], spec, &cache) == FMT_OK)
            done++;
    *used = (size_t)(w.p - out);
    return done;
}
