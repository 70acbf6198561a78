/* flowtable.c: bidirectional flows with Argus semantics.
 *
 * Entries live in one array allocated at create time; pages are touched only as entries are first
 * used, so memory follows the number of concurrent flows, not the capacity. A flow's counters are
 * kept by canonical side (0 = the lower address/port) and swapped to initiator order on export. */
#include "flowtable.h"
#include "siphash.h"

#include <stdlib.h>
#include <string.h>

enum { FT_NIL = UINT32_MAX };
enum { FT_TCP, FT_UDP, FT_ICMP, FT_OTHER, FT_CLOSED, FT_CLASSES };

enum { TCP_FIN = 0x01, TCP_SYN = 0x02, TCP_RST = 0x04, TCP_PSH = 0x08, TCP_ACK = 0x10 };

/* What each side did, for state, conn_state and history. */
enum {
    SEEN_SYN = 1, SEEN_SYNACK = 2, SEEN_FIN = 4, SEEN_RST = 8, SEEN_DATA = 16, SEEN_ACK = 32,
    SEEN_REQUEST = 64, SEEN_REPLY = 128
};

/* Zeek history letters, recorded once per side, in the order first seen. */
enum {
    HIST_S = 1, HIST_H = 2, HIST_A = 4, HIST_D = 8, HIST_F = 16, HIST_R = 32, HIST_T = 64,
    HIST_G = 128, HIST_W = 256
};
static const char hist_letters[] = "SHADFRTGW";

typedef struct ft_flow {
    ft_key_t key;
    uint32_t bucket_next;     /* next entry in the hash chain */
    uint32_t bucket;          /* its chain, so removal does not hash again */
    uint32_t lru_prev, lru_next;
    uint32_t gen;             /* bumped on every reuse, so fragment links can be validated */
    uint8_t  cls, init, in_use, dir_known;
    uint8_t  seen[2];         /* SEEN_* per canonical side, whole flow */
    uint8_t  seen_rec[2];     /* SEEN_* per canonical side, this record only */
    uint16_t hist_seen[2];
    uint8_t  hist_len, records_out, seq_valid[2], ack_done;
    uint32_t seq_end[2];
    uint64_t syn_us, synack_us;
    sensor_flow_t rec;        /* counters by canonical side */
} ft_flow_t;

typedef struct ft_frag {
    uint8_t  src[16], dst[16];
    uint32_t id;
    uint16_t proto;
    uint8_t  addr_type, in_use;
    uint32_t bucket_next, lru_prev, lru_next;
    uint32_t flow, flow_gen;  /* flow the first fragment went to, FT_NIL until seen */
    uint8_t  side;            /* canonical side of the sender in that flow */
    uint32_t pend_pkts;       /* fragments seen before their first fragment */
    uint64_t pend_bytes, pend_payload;
    uint32_t pend_min, pend_max;
    uint8_t  ttl, tos;
    uint32_t received;        /* payload bytes of the datagram seen so far (duplicates too) */
    uint32_t expected;        /* datagram payload length once its last fragment is seen, else 0 */
    uint64_t first_us, last_us;
} ft_frag_t;

typedef struct ft_list { uint32_t head, tail; } ft_list_t;

struct ft_table {
    sensor_config_t cfg;
    uint8_t   seed[16];
    ft_flow_t *flows;
    uint32_t  capacity, used, free_head;   /* entries [0, used) have been touched */
    uint32_t *buckets;                     /* index + 1, 0 = empty */
    uint32_t  bucket_mask;
    ft_list_t lru[FT_CLASSES];
    uint64_t  timeout_us[FT_CLASSES];
    ft_frag_t *frags;
    uint32_t  frag_capacity, frag_used, frag_free_head;
    uint32_t *frag_buckets;
    uint32_t  frag_mask;
    ft_list_t frag_lru;
    sensor_flow_t *ring;                   /* records produced while metering packets */
    size_t    ring_cap, ring_head, ring_count;
    int       ending_cause;                /* >= 0 after ft_end_all */
    uint64_t  seq;
    uint64_t  active, created, ended, evicted, records, frags_tracked, frags_orphaned, gap_acks;
    uint64_t  frag_table_full;
};

/* ---- intrusive lists (generic over the two entry types through index accessors) ---- */

#define LIST_FNS(NAME, TYPE, ARRAY)                                                        \
    static void NAME##_unlink(ft_table_t *t, ft_list_t *l, uint32_t i)                    \
    {                                                                                      \
        TYPE *e = &t->ARRAY[i];                                                            \
        if (e->lru_prev != FT_NIL) t->ARRAY[e->lru_prev].lru_next = e->lru_next;           \
        else l->head = e->lru_next;                                                        \
        if (e->lru_next != FT_NIL) t->ARRAY[e->lru_next].lru_prev = e->lru_prev;           \
        else l->tail = e->lru_prev;                                                        \
        e->lru_prev = e->lru_next = FT_NIL;                                                \
    }                                                                                      \
    static void NAME##_push(ft_table_t *t, ft_list_t *l, uint32_t i)                      \
    {                                                                                      \
        TYPE *e = &t->ARRAY[i];                                                            \
        e->lru_prev = FT_NIL;                                                              \
        e->lru_next = l->head;                                                             \
        if (l->head != FT_NIL) t->ARRAY[l->head].lru_prev = i;                             \
        l->head = i;                                                                       \
        if (l->tail == FT_NIL) l->tail = i;                                                \
    }

LIST_FNS(flow_list, ft_flow_t, flows)
LIST_FNS(frag_list, ft_frag_t, frags)

static uint32_t pow2_at_least(uint32_t n)
{
    uint32_t p = 1;
    while (p < n && p < (1u << 30)) p <<= 1;
    return p;
}

static int tcp_timeout_class(const ft_flow_t *f)
{
    int closed = (f->seen[0] & SEEN_RST) || (f->seen[1] & SEEN_RST) ||
                 ((f->seen[0] & SEEN_FIN) && (f->seen[1] & SEEN_FIN));
    return closed ? FT_CLOSED : FT_TCP;
}

static int proto_class(uint16_t proto, uint8_t addr_type)
{
    if (addr_type == SENSOR_ADDR_MAC) return FT_OTHER;
    switch (proto) {
    case 6: return FT_TCP;
    case 17: case 132: return FT_UDP;
    case 1: case 58: return FT_ICMP;
    default: return FT_OTHER;
    }
}

void ft_configure(ft_table_t *t, const sensor_config_t *cfg)
{
    uint32_t max_flows = t->cfg.max_flows, max_frags = t->cfg.max_frags, ring = t->cfg.record_ring;
    t->cfg = *cfg;
    t->cfg.max_flows = max_flows;          /* sizes are fixed at create time */
    t->cfg.max_frags = max_frags;
    t->cfg.record_ring = ring;
    t->timeout_us[FT_TCP] = (uint64_t)cfg->timeout_tcp_s * 1000000u;
    t->timeout_us[FT_UDP] = (uint64_t)cfg->timeout_udp_s * 1000000u;
    t->timeout_us[FT_ICMP] = (uint64_t)cfg->timeout_icmp_s * 1000000u;
    t->timeout_us[FT_OTHER] = (uint64_t)cfg->timeout_other_s * 1000000u;
    t->timeout_us[FT_CLOSED] = (uint64_t)cfg->timeout_closed_s * 1000000u;
}

ft_table_t *ft_create(const sensor_config_t *cfg, const uint8_t seed[16])
{
    ft_table_t *t = calloc(1, sizeof *t);
    if (!t) return NULL;
    t->cfg.max_flows = cfg->max_flows ? cfg->max_flows : 1;
    t->cfg.max_frags = cfg->max_frags ? cfg->max_frags : 1;
    t->cfg.record_ring = cfg->record_ring >= 64 ? cfg->record_ring : 64;
    ft_configure(t, cfg);
    memcpy(t->seed, seed, 16);
    t->capacity = t->cfg.max_flows;
    t->frag_capacity = t->cfg.max_frags;
    uint32_t nb = pow2_at_least(t->capacity * 2u > t->capacity ? t->capacity * 2u : t->capacity);
    uint32_t nfb = pow2_at_least(t->frag_capacity * 2u);
    t->bucket_mask = nb - 1;
    t->frag_mask = nfb - 1;
    t->ring_cap = t->cfg.record_ring;
    /* calloc: untouched pages stay unmapped until the table grows into them. */
    t->flows = calloc(t->capacity, sizeof *t->flows);
    t->buckets = calloc(nb, sizeof *t->buckets);
    t->frags = calloc(t->frag_capacity, sizeof *t->frags);
    t->frag_buckets = calloc(nfb, sizeof *t->frag_buckets);
    t->ring = calloc(t->ring_cap, sizeof *t->ring);
    if (!t->flows || !t->buckets || !t->frags || !t->frag_buckets || !t->ring) goto fail;
    t->free_head = t->frag_free_head = FT_NIL;
    for (int c = 0; c < FT_CLASSES; c++) t->lru[c].head = t->lru[c].tail = FT_NIL;
    t->frag_lru.head = t->frag_lru.tail = FT_NIL;
    t->ending_cause = -1;
    return t;
fail:
    ft_destroy(t);
    return NULL;
}

void ft_destroy(ft_table_t *t)
{
    if (!t) return;
    free(t->flows);
    free(t->buckets);
    free(t->frags);
    free(t->frag_buckets);
    free(t->ring);
    free(t);
}

size_t ft_entry_size(void) { return sizeof(ft_flow_t) + 2 * sizeof(uint32_t); }

size_t ft_ring_free(const ft_table_t *t) { return t->ring_cap - t->ring_count; }

/* ---- export ---- */

static uint8_t tcp_state(const ft_flow_t *f)
{
    uint8_t any = f->seen[0] | f->seen[1];
    uint8_t o = f->seen[f->init], r = f->seen[f->init ^ 1];
    if (any & SEEN_RST) return SENSOR_STATE_RST;
    if (any & SEEN_FIN) return SENSOR_STATE_FIN;
    if ((o & SEEN_SYN) && (r & SEEN_SYNACK))
        return (f->ack_done || (any & SEEN_DATA)) ? SENSOR_STATE_CON : SENSOR_STATE_ACC;
    if ((o & SEEN_SYN) && !(r & (SEEN_SYNACK | SEEN_DATA | SEEN_ACK))) return SENSOR_STATE_REQ;
    return SENSOR_STATE_CON;
}

static uint8_t zeek_state(const ft_flow_t *f)
{
    uint8_t o = f->seen[f->init], r = f->seen[f->init ^ 1];
    int syn = o & SEEN_SYN, synack = r & SEEN_SYNACK;
    if (syn && !synack) {
        if (o & SEEN_RST) return SENSOR_ZEEK_RSTOS0;
        if (r & SEEN_RST) return SENSOR_ZEEK_REJ;
        if (o & SEEN_FIN) return SENSOR_ZEEK_SH;
        return (r & (SEEN_DATA | SEEN_ACK)) ? SENSOR_ZEEK_OTH : SENSOR_ZEEK_S0;
    }
    if (!syn && synack) {
        if (r & SEEN_RST) return SENSOR_ZEEK_RSTRH;
        if (r & SEEN_FIN) return SENSOR_ZEEK_SHR;
        return SENSOR_ZEEK_OTH;
    }
    if (!syn) return SENSOR_ZEEK_OTH;
    if (o & SEEN_RST) return SENSOR_ZEEK_RSTO;
    if (r & SEEN_RST) return SENSOR_ZEEK_RSTR;
    if ((o & SEEN_FIN) && (r & SEEN_FIN)) return SENSOR_ZEEK_SF;
    if (o & SEEN_FIN) return SENSOR_ZEEK_S2;
    if (r & SEEN_FIN) return SENSOR_ZEEK_S3;
    return SENSOR_ZEEK_S1;
}

/* Fill dst from f in initiator order. */
/* Fill dst from f in initiator order (no side effects: also used for snapshots of open flows). */
static void fill_record(const ft_flow_t *f, int cause, sensor_flow_t *dst)
{
    const sensor_flow_t *r = &f->rec;
    int a = f->init, b = f->init ^ 1;
    *dst = *r;
    dst->seq = 0;
    dst->cause = (uint8_t)cause;
    for (int i = 0; i < 2; i++) {
        int s = i == 0 ? a : b;
        dst->pkts[i] = r->pkts[s];
        dst->bytes[i] = r->bytes[s];
        dst->appbytes[i] = r->appbytes[s];
        dst->retrans[i] = r->retrans[s];
        dst->maxsz[i] = r->maxsz[s];
        dst->minsz[i] = r->minsz[s];
        dst->mpls[i] = r->mpls[s];
        dst->gaps[i] = r->gaps[s];
        dst->vlan[i] = r->vlan[s];
        dst->tos[i] = r->tos[s];
        dst->ttl[i] = r->ttl[s];
        dst->tcpflags[i] = r->tcpflags[s];
        memcpy(dst->addr[i], f->key.addr[s], 16);
        memcpy(dst->mac[i], r->mac[s], 6);
        dst->port[i] = f->key.port[s];
    }
    dst->proto = f->key.proto;
    dst->addr_type = f->key.addr_type;
    dst->icmp_code = f->key.icmp_code;
    int both = r->pkts[a] && r->pkts[b];
    switch (f->cls == FT_CLOSED ? FT_TCP : f->cls) {
    case FT_TCP:
        if (f->key.proto == 6) {
            dst->state = tcp_state(f);
            dst->conn_state = zeek_state(f);
            dst->dir = f->dir_known ? SENSOR_DIR_OUT : both ? SENSOR_DIR_UNK_BOTH : SENSOR_DIR_UNK_OUT;
            break;
        }
        /* fall through */
    default:
        if (f->key.proto == 2054 && f->key.addr_type != SENSOR_ADDR_MAC) {
            dst->dir = SENSOR_DIR_WHO;
            dst->state = both ? SENSOR_STATE_CON : SENSOR_STATE_INT;
            break;
        }
        dst->dir = both ? SENSOR_DIR_BOTH : r->pkts[a] ? SENSOR_DIR_OUT : SENSOR_DIR_IN;
        dst->state = both ? SENSOR_STATE_CON : f->records_out ? SENSOR_STATE_REQ : SENSOR_STATE_INT;
        if (f->cls == FT_ICMP && (f->key.proto == 1 || f->key.proto == 58)) {
            dst->state = SENSOR_STATE_ICMP;
            if (f->key.icmp_query) {
                /* sport: the query type when a request was seen, else the reply type; dport: id */
                int req = (f->seen[0] | f->seen[1]) & SEEN_REQUEST;
                uint16_t reply = f->key.icmp_query == 8 ? 0 : (uint16_t)(f->key.icmp_query + 1);
                dst->port[0] = req ? f->key.icmp_query : reply;
                dst->port[1] = f->key.port[0];
            }
        }
        break;
    }
}

/* A record leaves the table: numbered and counted. */
static void export_flow(ft_table_t *t, const ft_flow_t *f, int cause, sensor_flow_t *dst)
{
    fill_record(f, cause, dst);
    dst->seq = ++t->seq;
    t->records++;
}

static void ring_push(ft_table_t *t, const ft_flow_t *f, int cause)
{
    if (t->ring_count == t->ring_cap) return;   /* callers reserve room; never overwrite */
    size_t slot = (t->ring_head + t->ring_count) % t->ring_cap;
    export_flow(t, f, cause, &t->ring[slot]);
    t->ring_count++;
}

static size_t ring_pop(ft_table_t *t, sensor_flow_t *out, size_t cap)
{
    size_t n = 0;
    while (n < cap && t->ring_count) {
        out[n++] = t->ring[t->ring_head];
        t->ring_head = (t->ring_head + 1) % t->ring_cap;
        t->ring_count--;
    }
    return n;
}

/* ---- flow entries ---- */

static uint32_t bucket_of(const ft_table_t *t, const ft_key_t *k)
{
    return (uint32_t)siphash13(t->seed, k, sizeof *k) & t->bucket_mask;
}

static void flow_remove(ft_table_t *t, uint32_t i)
{
    ft_flow_t *f = &t->flows[i];
    uint32_t *link = &t->buckets[f->bucket];
    while (*link && *link - 1 != i) link = &t->flows[*link - 1].bucket_next;
    if (*link) *link = f->bucket_next;
    flow_list_unlink(t, &t->lru[f->cls], i);
    f->in_use = 0;
    f->bucket_next = t->free_head == FT_NIL ? 0 : t->free_head + 1;
    t->free_head = i;
    t->active--;
    t->ended++;
}

static void flow_end(ft_table_t *t, uint32_t i, int cause, sensor_flow_t *dst)
{
    if (dst) export_flow(t, &t->flows[i], cause, dst);
    else ring_push(t, &t->flows[i], cause);
    flow_remove(t, i);
}

/* Oldest flow across the class lists: the eviction victim. */
static uint32_t oldest_flow(const ft_table_t *t)
{
    uint32_t best = FT_NIL;
    for (int c = 0; c < FT_CLASSES; c++) {
        uint32_t i = t->lru[c].tail;
        if (i != FT_NIL && (best == FT_NIL || t->flows[i].rec.ltime_us < t->flows[best].rec.ltime_us))
            best = i;
    }
    return best;
}

static uint32_t flow_alloc(ft_table_t *t)
{
    uint32_t i;
    if (t->free_head != FT_NIL) {
        i = t->free_head;
        uint32_t next = t->flows[i].bucket_next;
        t->free_head = next ? next - 1 : FT_NIL;
        if (next) __builtin_prefetch(&t->flows[next - 1]);   /* the next flow created */
    } else if (t->used < t->capacity) {
        i = t->used++;
    } else {
        uint32_t victim = oldest_flow(t);
        if (victim == FT_NIL) return FT_NIL;
        flow_end(t, victim, SENSOR_CAUSE_EVICT, NULL);
        t->evicted++;
        return flow_alloc(t);
    }
    return i;
}

static void record_reset(sensor_flow_t *r)
{
    memset(r->pkts, 0, sizeof r->pkts);
    memset(r->bytes, 0, sizeof r->bytes);
    memset(r->appbytes, 0, sizeof r->appbytes);
    memset(r->retrans, 0, sizeof r->retrans);
    memset(r->maxsz, 0, sizeof r->maxsz);
    memset(r->minsz, 0, sizeof r->minsz);
    memset(r->gaps, 0, sizeof r->gaps);
    memset(r->tcpflags, 0, sizeof r->tcpflags);
    r->synack_us = r->ackdat_us = 0;
}

static uint32_t flow_create(ft_table_t *t, const ft_key_t *k, uint32_t bucket, int cls,
                            uint64_t ts_us)
{
    uint32_t i = flow_alloc(t);
    if (i == FT_NIL) return FT_NIL;
    ft_flow_t *f = &t->flows[i];
    uint32_t gen = f->gen + 1;
    memset(f, 0, sizeof *f);
    f->gen = gen;
    f->key = *k;
    f->in_use = 1;
    f->cls = (uint8_t)cls;
    f->rec.stime_us = f->rec.ltime_us = ts_us;
    for (int s = 0; s < 2; s++) {
        f->rec.vlan[s] = 0xffff;
        f->rec.mpls[s] = 0xffffffffu;
    }
    f->bucket = bucket;
    f->bucket_next = t->buckets[bucket];
    t->buckets[bucket] = i + 1;
    flow_list_push(t, &t->lru[cls], i);
    t->active++;
    t->created++;
    return i;
}

static uint32_t flow_find(const ft_table_t *t, const ft_key_t *k, uint32_t bucket)
{
    for (uint32_t n = t->buckets[bucket]; n; n = t->flows[n - 1].bucket_next)
        if (memcmp(&t->flows[n - 1].key, k, sizeof *k) == 0) return n - 1;
    return FT_NIL;
}

static void hist_add(ft_flow_t *f, int side, uint16_t letter_bit)
{
    if (f->hist_seen[side] & letter_bit) return;
    f->hist_seen[side] |= letter_bit;
    if (f->hist_len >= sizeof f->rec.history - 1) return;
    int n = 0;
    while (!(letter_bit & (1u << n))) n++;
    char c = hist_letters[n];
    f->rec.history[f->hist_len++] = side == f->init ? c : (char)(c - 'A' + 'a');
}

/* Serial-number arithmetic (RFC 1982) on 32-bit sequence numbers. */
static int seq_after(uint32_t a, uint32_t b) { return (int32_t)(a - b) > 0; }

static void tcp_update(ft_table_t *t, ft_flow_t *f, const decode_pkt_t *p, int s, uint64_t ts)
{
    uint8_t fl = p->tcp_flags;
    int orig = s == f->init;
    uint8_t seen = 0;
    if ((fl & TCP_SYN) && !(fl & TCP_ACK)) {
        seen |= SEEN_SYN;
        hist_add(f, s, HIST_S);
        if (orig && !f->syn_us) f->syn_us = ts;
    }
    if ((fl & TCP_SYN) && (fl & TCP_ACK)) {
        seen |= SEEN_SYNACK;
        hist_add(f, s, HIST_H);
        if (!orig && !f->synack_us) {
            f->synack_us = ts;
            if (f->syn_us && ts >= f->syn_us) f->rec.synack_us = (uint32_t)(ts - f->syn_us);
        }
    }
    if ((fl & TCP_ACK) && !(fl & TCP_SYN)) {
        seen |= SEEN_ACK;
        if (orig && f->synack_us && !f->ack_done) {
            f->ack_done = 1;
            if (ts >= f->synack_us) f->rec.ackdat_us = (uint32_t)(ts - f->synack_us);
        }
        if (!p->app_len && !(fl & (TCP_FIN | TCP_RST))) hist_add(f, s, HIST_A);
    }
    if (p->app_len) {
        seen |= SEEN_DATA;
        hist_add(f, s, HIST_D);
    }
    if (fl & TCP_FIN) {
        seen |= SEEN_FIN;
        hist_add(f, s, HIST_F);
    }
    if (fl & TCP_RST) {
        seen |= SEEN_RST;
        hist_add(f, s, HIST_R);
    }
    if (p->tcp_win == 0 && !(fl & (TCP_SYN | TCP_RST))) hist_add(f, s, HIST_W);
    f->seen[s] |= seen;
    f->seen_rec[s] |= seen;

    /* Retransmission: a segment with data that does not advance the highest sequence seen. */
    uint32_t seg = p->app_len + ((fl & TCP_SYN) ? 1 : 0) + ((fl & TCP_FIN) ? 1 : 0);
    if (seg && !(fl & TCP_RST)) {
        uint32_t end = p->tcp_seq + seg;
        if (f->seq_valid[s] && !seq_after(end, f->seq_end[s]) && p->app_len) {
            f->rec.retrans[s]++;
            f->rec.flgs |= SENSOR_FLG_RETRANS;
            hist_add(f, s, HIST_T);
        } else if (!f->seq_valid[s] || seq_after(end, f->seq_end[s])) {
            f->seq_end[s] = end;
            f->seq_valid[s] = 1;
        }
    }
    /* Gap: the peer acknowledges bytes this sensor never saw (capture loss upstream or here). */
    int o = s ^ 1;
    if ((fl & TCP_ACK) && !(fl & TCP_RST) && f->seq_valid[o] && seq_after(p->tcp_ack, f->seq_end[o])) {
        uint32_t gap = p->tcp_ack - f->seq_end[o];
        if (gap < (1u << 30)) {
            f->rec.gaps[o] += gap;
            f->rec.flgs |= SENSOR_FLG_GAP;
            t->gap_acks++;
            hist_add(f, o, HIST_G);
        }
        f->seq_end[o] = p->tcp_ack;
    }
    int cls = tcp_timeout_class(f);
    if (cls != f->cls) {
        uint32_t i = (uint32_t)(f - t->flows);
        flow_list_unlink(t, &t->lru[f->cls], i);
        f->cls = (uint8_t)cls;
        flow_list_push(t, &t->lru[cls], i);
    }
}

/* Count one frame (or a batch of fragments) against side s of flow f. */
static void count(ft_flow_t *f, int s, uint32_t pkts, uint64_t bytes, uint64_t app,
                  uint32_t minsz, uint32_t maxsz)
{
    sensor_flow_t *r = &f->rec;
    r->pkts[s] += pkts;
    r->bytes[s] += bytes;
    r->appbytes[s] += app;
    if (maxsz > r->maxsz[s]) r->maxsz[s] = maxsz;
    if (!r->minsz[s] || minsz < r->minsz[s]) r->minsz[s] = minsz;
}

static void touch(ft_table_t *t, uint32_t i, uint64_t ts)
{
    ft_flow_t *f = &t->flows[i];
    if (ts > f->rec.ltime_us) f->rec.ltime_us = ts;
    if (ts < f->rec.stime_us) f->rec.stime_us = ts;
    if (t->lru[f->cls].head != i) {
        flow_list_unlink(t, &t->lru[f->cls], i);
        flow_list_push(t, &t->lru[f->cls], i);
    }
}

/* A long flow is cut into Status records every status interval of packet time. */
static void status_cut(ft_table_t *t, ft_flow_t *f, uint64_t ts)
{
    uint64_t iv = (uint64_t)t->cfg.status_interval_s * 1000000u;
    if (!iv || ts < f->rec.stime_us || ts - f->rec.stime_us < iv) return;
    if (!(f->rec.pkts[0] | f->rec.pkts[1])) return;
    ring_push(t, f, SENSOR_CAUSE_STATUS);
    record_reset(&f->rec);
    f->seen_rec[0] = f->seen_rec[1] = 0;
    if (f->records_out < 255) f->records_out++;
    f->rec.stime_us = f->rec.ltime_us = ts;
}

static void make_key(const decode_pkt_t *p, ft_key_t *k, int *side)
{
    memset(k, 0, sizeof *k);
    uint16_t sp = p->sport, dp = p->dport;
    if ((p->proto == 1 || p->proto == 58) && p->kind == DECODE_KIND_IP && p->has_ports) {
        if (p->icmp_role != DECODE_ICMP_OTHER) {
            sp = dp = p->icmp_id;
            k->icmp_query = p->icmp_query;
        } else {
            /* One flow per (type, code, quoted destination port), as Argus keys errors. */
            sp = p->icmp_type;
            dp = p->quoted ? p->quoted_dport : p->icmp_code;
            k->icmp_code = p->icmp_code;
        }
    } else if (!p->has_ports) {
        sp = dp = 0;
    }
    int swap;
    if (p->kind == DECODE_KIND_ARP) {
        swap = p->icmp_role == DECODE_ICMP_REPLY;  /* ARP: keyed asker -> target, as Argus does */
    } else {
        int c = memcmp(p->src, p->dst, 16);
        swap = c > 0 || (c == 0 && sp > dp);
    }
    memcpy(k->addr[swap], p->src, 16);
    memcpy(k->addr[!swap], p->dst, 16);
    k->port[swap] = sp;
    k->port[!swap] = dp;
    k->proto = p->proto;
    k->addr_type = p->addr_type;
    *side = swap;
}

static int initiator(const decode_pkt_t *p, int s)
{
    if (p->proto == 6 && p->kind == DECODE_KIND_IP && p->l4_ok)
        return ((p->tcp_flags & TCP_SYN) && (p->tcp_flags & TCP_ACK)) ? s ^ 1 : s;
    if (p->icmp_role == DECODE_ICMP_REPLY) return s ^ 1;   /* ICMP reply, ARP reply */
    return s;
}

void ft_lookup(const ft_table_t *t, const decode_pkt_t *p, ft_lookup_t *l)
{
    make_key(p, &l->key, &l->side);
    l->bucket = bucket_of(t, &l->key);
}

/* Find or create the flow for p; returns its index (FT_NIL only if the table has no room at all). */
static uint32_t flow_for(ft_table_t *t, const decode_pkt_t *p, uint64_t ts, uint8_t ifindex, int *side,
                         const ft_lookup_t *pre)
{
    ft_lookup_t own;
    if (!pre) {
        ft_lookup(t, p, &own);
        pre = &own;
    }
    const ft_key_t k = pre->key;
    uint32_t b = pre->bucket;
    uint32_t i = flow_find(t, &k, b);
    int s = *side = pre->side;
    if (i != FT_NIL) {
        /* Idle past its timeout: the flow ended, whenever the caller last drained. This keeps record
         * boundaries a function of the packets alone, not of the drain cadence. */
        ft_flow_t *f = &t->flows[i];
        if (ts > f->rec.ltime_us && ts - f->rec.ltime_us > t->timeout_us[f->cls]) {
            flow_end(t, i, f->cls == FT_CLOSED ? SENSOR_CAUSE_STOP : SENSOR_CAUSE_TIMEOUT, NULL);
            i = FT_NIL;
        } else if (p->proto == 6 && f->cls == FT_CLOSED &&
                   (p->tcp_flags & (TCP_SYN | TCP_ACK)) == TCP_SYN) {
            flow_end(t, i, SENSOR_CAUSE_STOP, NULL);        /* port reuse: a new connection */
            i = FT_NIL;
        }
    }
    if (i == FT_NIL) {
        i = flow_create(t, &k, b, proto_class(k.proto, k.addr_type), ts);
        if (i == FT_NIL) return FT_NIL;
        ft_flow_t *f = &t->flows[i];
        f->init = (uint8_t)initiator(p, s);
        f->dir_known = p->proto == 6 && (p->tcp_flags & TCP_SYN);
        f->rec.ifindex = ifindex;
    }
    return i;
}

static void note_headers(ft_flow_t *f, const decode_pkt_t *p, int s)
{
    sensor_flow_t *r = &f->rec;
    if (p->kind == DECODE_KIND_IP) {
        r->tos[s] = p->tos;
        r->ttl[s] = p->ttl;
    }
    if (p->has_mac) memcpy(r->mac[s], p->mac_src, 6);
    if (p->vlan_count) {
        r->vlan[s] = p->vlan;
        r->flgs |= SENSOR_FLG_VLAN;
        if (p->vlan_count > 1) r->flgs |= SENSOR_FLG_QINQ;
    }
    if (p->has_mpls) {
        r->mpls[s] = p->mpls;
        r->flgs |= SENSOR_FLG_MPLS;
    }
    if (p->pppoe) r->flgs |= SENSOR_FLG_PPPOE;
    if (p->frag) r->flgs |= SENSOR_FLG_FRAG;
    if (p->icmp_role == DECODE_ICMP_REQUEST) f->seen[s] |= SEEN_REQUEST;
    if (p->icmp_role == DECODE_ICMP_REPLY) f->seen[s] |= SEEN_REPLY;
}

/* An ICMP error quoting a packet marks that packet's flow (Argus `U`). */
static void flag_quoted_flow(ft_table_t *t, const decode_pkt_t *p)
{
    decode_pkt_t q;
    memset(&q, 0, sizeof q);
    q.kind = DECODE_KIND_IP;
    q.addr_type = p->addr_type;
    q.proto = p->quoted_proto;
    q.has_ports = 1;
    memcpy(q.src, p->quoted_src, 16);
    memcpy(q.dst, p->quoted_dst, 16);
    q.sport = p->quoted_sport;
    q.dport = p->quoted_dport;
    ft_key_t k;
    int side;
    make_key(&q, &k, &side);
    uint32_t i = flow_find(t, &k, bucket_of(t, &k));
    if (i != FT_NIL) t->flows[i].rec.flgs |= SENSOR_FLG_ICMP_UNREACH;
}

/* ---- fragments ---- */

static uint32_t frag_bucket(const ft_table_t *t, const decode_pkt_t *p)
{
    uint8_t k[40];
    memcpy(k, p->src, 16);
    memcpy(k + 16, p->dst, 16);
    memcpy(k + 32, &p->frag_id, 4);
    memcpy(k + 36, &p->proto, 2);
    k[38] = p->addr_type;
    k[39] = 0;
    return (uint32_t)siphash13(t->seed, k, sizeof k) & t->frag_mask;
}

static uint32_t frag_find(const ft_table_t *t, const decode_pkt_t *p, uint32_t b)
{
    for (uint32_t n = t->frag_buckets[b]; n; n = t->frags[n - 1].bucket_next) {
        const ft_frag_t *g = &t->frags[n - 1];
        if (g->id == p->frag_id && g->proto == p->proto && g->addr_type == p->addr_type &&
            !memcmp(g->src, p->src, 16) && !memcmp(g->dst, p->dst, 16))
            return n - 1;
    }
    return FT_NIL;
}

/* Fragments never joined to a first fragment become a portless flow of their own (Argus `f`). */
static void frag_orphan(ft_table_t *t, const ft_frag_t *g)
{
    decode_pkt_t p;
    memset(&p, 0, sizeof p);
    p.kind = DECODE_KIND_IP;
    p.addr_type = g->addr_type;
    p.proto = g->proto;
    memcpy(p.src, g->src, 16);
    memcpy(p.dst, g->dst, 16);
    int s;
    uint32_t i = flow_for(t, &p, g->first_us, 0, &s, NULL);
    if (i == FT_NIL) return;
    ft_flow_t *f = &t->flows[i];
    count(f, s, g->pend_pkts, g->pend_bytes, g->pend_payload, g->pend_min, g->pend_max);
    f->rec.ttl[s] = g->ttl;
    f->rec.tos[s] = g->tos;
    f->rec.flgs |= SENSOR_FLG_FRAG_ORPHAN;
    touch(t, i, g->last_us);
    t->frags_orphaned += g->pend_pkts;
}

static void frag_remove(ft_table_t *t, uint32_t i)
{
    ft_frag_t *g = &t->frags[i];
    decode_pkt_t k;
    memset(&k, 0, sizeof k);
    memcpy(k.src, g->src, 16);
    memcpy(k.dst, g->dst, 16);
    k.frag_id = g->id;
    k.proto = g->proto;
    k.addr_type = g->addr_type;
    uint32_t *link = &t->frag_buckets[frag_bucket(t, &k)];
    while (*link && *link - 1 != i) link = &t->frags[*link - 1].bucket_next;
    if (*link) *link = g->bucket_next;
    frag_list_unlink(t, &t->frag_lru, i);
    if (g->pend_pkts && g->flow == FT_NIL) frag_orphan(t, g);
    g->in_use = 0;
    g->bucket_next = t->frag_free_head == FT_NIL ? 0 : t->frag_free_head + 1;
    t->frag_free_head = i;
}

static uint32_t frag_get(ft_table_t *t, const decode_pkt_t *p, uint64_t ts)
{
    uint32_t b = frag_bucket(t, p);
    uint32_t i = frag_find(t, p, b);
    if (i != FT_NIL) return i;
    if (t->frag_free_head != FT_NIL) {
        i = t->frag_free_head;
        uint32_t next = t->frags[i].bucket_next;
        t->frag_free_head = next ? next - 1 : FT_NIL;
    } else if (t->frag_used < t->frag_capacity) {
        i = t->frag_used++;
    } else {
        t->frag_table_full++;
        frag_remove(t, t->frag_lru.tail);
        return frag_get(t, p, ts);
    }
    ft_frag_t *g = &t->frags[i];
    memset(g, 0, sizeof *g);
    memcpy(g->src, p->src, 16);
    memcpy(g->dst, p->dst, 16);
    g->id = p->frag_id;
    g->proto = p->proto;
    g->addr_type = p->addr_type;
    g->in_use = 1;
    g->flow = FT_NIL;
    g->first_us = g->last_us = ts;
    g->bucket_next = t->frag_buckets[b];
    t->frag_buckets[b] = i + 1;
    frag_list_push(t, &t->frag_lru, i);
    t->frags_tracked++;
    return i;
}

static int frag_flow_valid(const ft_table_t *t, const ft_frag_t *g)
{
    return g->flow != FT_NIL && t->flows[g->flow].in_use && t->flows[g->flow].gen == g->flow_gen;
}

/* Count a fragment towards its datagram; a datagram whose last fragment has arrived and whose bytes
 * are all accounted for is complete, and its entry is released (later copies become orphans, as in
 * Argus). Returns 1 when the entry was released. */
static int frag_account(ft_table_t *t, uint32_t gi, const decode_pkt_t *p)
{
    ft_frag_t *g = &t->frags[gi];
    g->received += p->ip_payload;
    if (!p->frag_more) g->expected = p->frag_offset + p->ip_payload;
    if (g->expected && g->received >= g->expected && g->flow != FT_NIL) {
        frag_remove(t, gi);
        return 1;
    }
    return 0;
}

/* ---- per packet ---- */

static void packet(ft_table_t *t, const decode_pkt_t *p, uint64_t ts, uint8_t ifindex,
                   const ft_lookup_t *pre)
{
    uint32_t wire = p->wire_len;
    if (p->frag == DECODE_FRAG_LATER) {
        uint32_t gi = frag_get(t, p, ts);
        ft_frag_t *g = &t->frags[gi];
        g->last_us = ts;
        frag_list_unlink(t, &t->frag_lru, gi);
        frag_list_push(t, &t->frag_lru, gi);
        if (frag_flow_valid(t, g)) {
            ft_flow_t *f = &t->flows[g->flow];
            status_cut(t, f, ts);
            count(f, g->side, 1, wire, 0, wire, wire);
            note_headers(f, p, g->side);
            touch(t, g->flow, ts);
            frag_account(t, gi, p);
        } else {
            g->flow = FT_NIL;
            g->pend_pkts++;
            g->pend_bytes += wire;
            g->pend_payload += p->ip_payload;
            if (!g->pend_min || wire < g->pend_min) g->pend_min = wire;
            if (wire > g->pend_max) g->pend_max = wire;
            g->ttl = p->ttl;
            g->tos = p->tos;
            g->received += p->ip_payload;
            if (!p->frag_more) g->expected = p->frag_offset + p->ip_payload;
        }
        return;
    }
    int s;
    uint32_t i = flow_for(t, p, ts, ifindex, &s, pre);
    if (i == FT_NIL) return;
    ft_flow_t *f = &t->flows[i];
    status_cut(t, f, ts);
    count(f, s, 1, wire, p->app_len, wire, wire);
    note_headers(f, p, s);
    if (p->proto == 6 && p->kind == DECODE_KIND_IP && p->has_ports) {
        f->rec.tcpflags[s] |= p->tcp_flags;
        tcp_update(t, f, p, s, ts);
    }
    touch(t, i, ts);
    if (p->quoted) flag_quoted_flow(t, p);
    if (p->frag == DECODE_FRAG_FIRST) {
        uint32_t gen = f->gen;
        uint32_t gi = frag_get(t, p, ts);
        ft_frag_t *g = &t->frags[gi];
        f = &t->flows[i];            /* frag_get may have evicted this flow for an orphan */
        if (!f->in_use || f->gen != gen) return;
        g->flow = i;
        g->flow_gen = f->gen;
        g->side = (uint8_t)s;
        g->last_us = ts;
        if (g->pend_pkts) {          /* later fragments that arrived first join now */
            count(f, s, g->pend_pkts, g->pend_bytes, 0, g->pend_min, g->pend_max);
            g->pend_pkts = 0;
        }
        frag_account(t, gi, p);
    }
}

void ft_packet(ft_table_t *t, const decode_pkt_t *p, uint64_t ts, uint8_t ifindex)
{
    packet(t, p, ts, ifindex, NULL);
}

void ft_packets_looked(ft_table_t *t, const decode_pkt_t *p, const ft_lookup_t *look, const uint64_t *ts,
                       size_t n, uint8_t ifindex)
{
    /* Software pipeline: prefetch packet i's chain head, fetch the head of packet i - D and prefetch
     * its entry, meter packet i - 2D; the misses of a batch overlap. */
    enum { D = 6 };
    for (size_t i = 0; i < n + 2 * D; i++) {
        if (i < n && p[i].frag != DECODE_FRAG_LATER) __builtin_prefetch(&t->buckets[look[i].bucket]);
        if (i >= D && i - D < n && p[i - D].frag != DECODE_FRAG_LATER) {
            uint32_t head = t->buckets[look[i - D].bucket];
            if (head) __builtin_prefetch(&t->flows[head - 1]);
        }
        if (i >= 2 * D) {
            size_t k = i - 2 * D;
            packet(t, &p[k], ts[k], ifindex, p[k].frag == DECODE_FRAG_LATER ? NULL : &look[k]);
        }
    }
}

void ft_packets(ft_table_t *t, const decode_pkt_t *p, const uint64_t *ts, size_t n, uint8_t ifindex)
{
    ft_lookup_t look[FT_BATCH];
    if (n > FT_BATCH) n = FT_BATCH;
    for (size_t i = 0; i < n; i++)
        if (p[i].frag != DECODE_FRAG_LATER) ft_lookup(t, &p[i], &look[i]);
    ft_packets_looked(t, p, look, ts, n, ifindex);
}

/* ---- draining ---- */

static void frags_expire(ft_table_t *t, uint64_t now)
{
    uint64_t to = (uint64_t)t->cfg.timeout_frag_s * 1000000u;
    while (t->frag_lru.tail != FT_NIL && ft_ring_free(t) >= FT_RECORDS_PER_PACKET) {
        ft_frag_t *g = &t->frags[t->frag_lru.tail];
        if (!(t->ending_cause >= 0 || (now > g->last_us && now - g->last_us > to))) break;
        frag_remove(t, t->frag_lru.tail);
    }
}

size_t ft_drain(ft_table_t *t, sensor_flow_t *out, size_t cap, uint64_t now)
{
    size_t n = ring_pop(t, out, cap);
    frags_expire(t, now);
    for (int c = 0; c < FT_CLASSES && n < cap; c++) {
        while (n < cap && t->lru[c].tail != FT_NIL) {
            uint32_t i = t->lru[c].tail;
            ft_flow_t *f = &t->flows[i];
            int idle = now > f->rec.ltime_us && now - f->rec.ltime_us > t->timeout_us[c];
            if (!idle && t->ending_cause < 0) break;
            int cause = !idle ? t->ending_cause : c == FT_CLOSED ? SENSOR_CAUSE_STOP : SENSOR_CAUSE_TIMEOUT;
            flow_end(t, i, cause, &out[n++]);
        }
    }
    n += ring_pop(t, out + n, cap - n);
    if (t->ending_cause >= 0 && t->active == 0 && t->frag_lru.tail == FT_NIL) t->ending_cause = -1;
    return n;
}

void ft_end_all(ft_table_t *t, int cause) { t->ending_cause = cause; }

size_t ft_top(const ft_table_t *t, sensor_flow_t *out, size_t n)
{
    /* Insertion into a short sorted list: n is a page of a status screen, not the table. */
    uint32_t best[64];
    uint64_t size[64];
    size_t have = 0;
    if (n > 64) n = 64;
    for (int c = 0; c < FT_CLASSES; c++) {
        for (uint32_t i = t->lru[c].head; i != FT_NIL; i = t->flows[i].lru_next) {
            const sensor_flow_t *r = &t->flows[i].rec;
            uint64_t bytes = r->bytes[0] + r->bytes[1];
            if (have == n && (n == 0 || bytes <= size[n - 1])) continue;
            size_t j = have < n ? have++ : n - 1;
            while (j > 0 && size[j - 1] < bytes) {
                size[j] = size[j - 1];
                best[j] = best[j - 1];
                j--;
            }
            size[j] = bytes;
            best[j] = i;
        }
    }
    for (size_t k = 0; k < have; k++) fill_record(&t->flows[best[k]], SENSOR_CAUSE_START, &out[k]);
    return have;
}

void ft_stats(const ft_table_t *t, sensor_stats_t *out)
{
    out->flows_active = t->active;
    out->flows_created = t->created;
    out->flows_ended = t->ended;
    out->flows_evicted = t->evicted;
    out->flows_capacity = t->capacity;
    out->records = t->records;
    out->frags_tracked = t->frags_tracked;
    out->frags_orphaned = t->frags_orphaned;
    out->gap_acks = t->gap_acks;
    out->decode_errors[SENSOR_DERR_FRAG_TABLE] = t->frag_table_full;
}
