/* decode.c: link, encapsulation, network and transport headers, read in place with bounds checks.
 * Every read goes through a helper that is given the remaining length first; nothing here casts the
 * packet buffer to a struct. */
#include "decode.h"
#include "sensor.h"

#include <string.h>

enum {
    ETH_IPV4 = 0x0800, ETH_ARP = 0x0806, ETH_VLAN = 0x8100, ETH_QINQ = 0x88a8, ETH_QINQ_OLD = 0x9100,
    ETH_IPV6 = 0x86dd, ETH_MPLS = 0x8847, ETH_MPLS_MC = 0x8848, ETH_PPPOE_SESS = 0x8864,
    PPP_IPV4 = 0x0021, PPP_IPV6 = 0x0057, PPP_MPLS = 0x0281, PPP_MPLS_MC = 0x0283,
    MAX_TAGS = 8, MAX_LABELS = 16
};

static uint16_t rd16(const uint8_t *p) { return (uint16_t)((p[0] << 8) | p[1]); }
static uint32_t rd32(const uint8_t *p)
{
    return ((uint32_t)p[0] << 24) | ((uint32_t)p[1] << 16) | ((uint32_t)p[2] << 8) | p[3];
}
static uint32_t rd32le(const uint8_t *p)
{
    return ((uint32_t)p[3] << 24) | ((uint32_t)p[2] << 16) | ((uint32_t)p[1] << 8) | p[0];
}

static int fail(int reason) { return -1 - reason; }

/* A cursor over the captured bytes; `wire` tracks how many bytes the frame had on the wire from
 * the cursor on, so IP length checks can use it even when the snaplen cut the capture. */
typedef struct cursor {
    const uint8_t *p;
    uint32_t cap;    /* captured bytes left */
    uint32_t wire;   /* wire bytes left */
} cursor_t;

static int skip(cursor_t *c, uint32_t n)
{
    if (c->cap < n) return -1;
    c->p += n;
    c->cap -= n;
    c->wire = c->wire >= n ? c->wire - n : 0;
    return 0;
}

static int decode_ip(cursor_t *c, decode_pkt_t *out);
static int decode_ethernet(cursor_t *c, decode_pkt_t *out);
static int decode_mpls(cursor_t *c, decode_pkt_t *out);

/* GRE carrying IP, MPLS or Ethernet (and PPTP's GRE carrying IP in PPP) is metered as the inner flow,
 * as Argus does; other GRE (PPP control, keepalives) stays a GRE flow between the tunnel endpoints.
 * Returns 1 when the packet stays an outer GRE packet. */
static int decode_gre(const uint8_t *p, uint32_t cap, decode_pkt_t *out)
{
    if (cap < 4) return 1;
    uint8_t version = p[1] & 0x07;
    uint16_t proto = rd16(p + 2);
    uint32_t hdr;
    if (version == 0) {
        hdr = 4 + ((p[0] & 0x80) ? 4 : 0) + ((p[0] & 0x20) ? 4 : 0) + ((p[0] & 0x10) ? 4 : 0);
    } else if (version == 1 && proto == 0x880b) {  /* PPTP: PPP inside; IP payloads are decapsulated */
        hdr = 8 + ((p[0] & 0x10) ? 4 : 0) + ((p[1] & 0x80) ? 4 : 0);
        if (hdr + 1 > cap) return 1;
        if (hdr + 2 <= cap && p[hdr] == 0xff && p[hdr + 1] == 0x03) hdr += 2;
        if (hdr + 1 > cap) return 1;
        if (p[hdr] & 1) {                          /* protocol-field compression: one byte */
            proto = p[hdr];
            hdr += 1;
        } else {
            if (hdr + 2 > cap) return 1;
            proto = rd16(p + hdr);
            hdr += 2;
        }
        if (proto == PPP_IPV4) proto = ETH_IPV4;
        else if (proto == PPP_IPV6) proto = ETH_IPV6;
        else return 1;
    } else {
        return 1;
    }
    if (hdr > cap || hdr > out->ip_payload) return 1;
    if (proto != ETH_IPV4 && proto != ETH_IPV6 && proto != ETH_MPLS && proto != 0x6558) return 1;
    cursor_t inner = {p + hdr, cap - hdr, out->ip_payload - hdr};
    uint32_t wire = out->wire_len;
    memset(out, 0, sizeof *out);
    out->wire_len = wire;                         /* the whole frame is still what crossed the wire */
    out->tunnel = 1;
    if (proto == 0x6558) return decode_ethernet(&inner, out);
    if (proto == ETH_MPLS) return decode_mpls(&inner, out);
    return decode_ip(&inner, out);
}

/* The packet an ICMP error quotes (its IP header and first 8 bytes), so the error can be keyed by
 * the quoted port (as Argus does) and the quoted flow can be flagged. */
static void decode_quoted(const uint8_t *q, uint32_t cap, decode_pkt_t *out, int v6)
{
    uint32_t hdr;
    uint8_t proto;
    if (!v6) {
        if (cap < 20 || (q[0] >> 4) != 4) return;
        hdr = (uint32_t)(q[0] & 0x0f) * 4;
        if (hdr < 20 || (rd16(q + 6) & 0x1fff)) return;   /* a later fragment quotes no ports */
        proto = q[9];
        memcpy(out->quoted_src, q + 12, 4);
        memcpy(out->quoted_dst, q + 16, 4);
    } else {
        if (cap < 40 || (q[0] >> 4) != 6) return;
        hdr = 40;
        proto = q[6];
        memcpy(out->quoted_src, q + 8, 16);
        memcpy(out->quoted_dst, q + 24, 16);
    }
    if ((proto != 6 && proto != 17 && proto != 132) || hdr + 4 > cap) return;
    out->quoted = 1;
    out->quoted_proto = proto;
    out->quoted_sport = rd16(q + hdr);
    out->quoted_dport = rd16(q + hdr + 2);
}

static int is_icmp_error(uint8_t type, int v6)
{
    return v6 ? (type >= 1 && type <= 4) : (type == 3 || type == 4 || type == 5 || type == 11 || type == 12);
}

static void set_l4(decode_pkt_t *out, uint32_t hdr)
{
    out->app_len = out->ip_payload >= hdr ? out->ip_payload - hdr : 0;
    out->l4_ok = 1;
}

/* A valid IP packet whose transport header is cut short or broken is still metered, in a flow
 * without ports; the problem is counted. */
static int portless(decode_pkt_t *out, int reason)
{
    out->anomaly = (uint8_t)(1 + reason);
    out->has_ports = 0;
    out->app_len = 0;
    out->l4_ok = 0;
    return 0;
}

/* Transport header of the first (or only) fragment. cap is what was captured of it. */
static int decode_l4(const uint8_t *p, uint32_t cap, decode_pkt_t *out, int v6)
{
    switch (out->proto) {
    case 6: {
        if (cap < 20) return portless(out, SENSOR_DERR_L4_TRUNC);
        uint32_t doff = (uint32_t)(p[12] >> 4) * 4;
        if (doff < 20 || doff > out->ip_payload) return portless(out, SENSOR_DERR_TCP_HDRLEN);
        out->sport = rd16(p);
        out->dport = rd16(p + 2);
        out->tcp_seq = rd32(p + 4);
        out->tcp_ack = rd32(p + 8);
        out->tcp_flags = p[13];
        out->tcp_win = rd16(p + 14);
        out->has_ports = 1;
        set_l4(out, doff);
        return 0;
    }
    case 17:
    case 132:
        if (cap < 8) return portless(out, SENSOR_DERR_L4_TRUNC);
        out->sport = rd16(p);
        out->dport = rd16(p + 2);
        out->has_ports = 1;
        set_l4(out, out->proto == 17 ? 8 : 12);
        return 0;
    case 1:
    case 58: {
        if ((out->proto == 1) == (v6 != 0)) break;   /* ICMP in v6 or ICMPv6 in v4: plain IP flow */
        if (cap < 4) return portless(out, SENSOR_DERR_L4_TRUNC);
        uint8_t t = p[0];
        out->icmp_type = t;
        out->icmp_code = p[1];
        out->has_ports = 1;
        /* Query/answer pairs share a flow, keyed by the identifier. */
        static const uint8_t v4_pairs[][2] = {{8, 0}, {13, 14}, {15, 16}, {17, 18}};
        static const uint8_t v6_pairs[][2] = {{128, 129}};
        const uint8_t (*pairs)[2] = v6 ? v6_pairs : v4_pairs;
        int npairs = v6 ? 1 : 4;
        for (int i = 0; i < npairs; i++) {
            if (t == pairs[i][0] || t == pairs[i][1]) {
                out->icmp_role = t == pairs[i][0] ? DECODE_ICMP_REQUEST : DECODE_ICMP_REPLY;
                out->icmp_query = pairs[i][0];
                out->icmp_id = cap >= 6 ? rd16(p + 4) : 0;
            }
        }
        if (is_icmp_error(t, v6) && cap > 8) decode_quoted(p + 8, cap - 8, out, v6);
        out->app_len = out->ip_payload;          /* Argus: the whole ICMP message */
        out->l4_ok = 1;
        return 0;
    }
    case 47: {
        if (out->tunnel) break;                   /* one level of GRE is decapsulated, no more */
        decode_pkt_t outer = *out;
        int rc = decode_gre(p, cap, out);
        if (rc <= 0) return rc;
        *out = outer;
        break;
    }
    default:
        break;
    }
    out->app_len = out->ip_payload;
    out->l4_ok = 1;
    return 0;
}

static int decode_ipv4(cursor_t *c, decode_pkt_t *out)
{
    const uint8_t *p = c->p;
    if (c->cap < 20) return fail(SENSOR_DERR_IP_TRUNC);
    uint32_t ihl = (uint32_t)(p[0] & 0x0f) * 4;
    if (ihl < 20) return fail(SENSOR_DERR_IP_HDRLEN);
    if (ihl > c->cap) return fail(SENSOR_DERR_IP_TRUNC);
    uint32_t total = rd16(p + 2);
    if (total < ihl) return fail(SENSOR_DERR_IP_TOTLEN);
    if (total > c->wire) {                        /* claims more than the frame had: meter what was */
        out->anomaly = 1 + SENSOR_DERR_IP_TOTLEN;
        total = c->wire;
    }
    out->kind = DECODE_KIND_IP;
    out->addr_type = SENSOR_ADDR_IP4;
    out->tos = p[1];
    out->ttl = p[8];
    out->proto = p[9];
    memcpy(out->src, p + 12, 4);
    memcpy(out->dst, p + 16, 4);
    out->ip_payload = total - ihl;
    uint16_t off = rd16(p + 6);
    uint16_t frag_off = off & 0x1fff;
    if (frag_off || (off & 0x2000)) {
        out->frag = frag_off ? DECODE_FRAG_LATER : DECODE_FRAG_FIRST;
        out->frag_id = rd16(p + 4);
        out->frag_offset = (uint32_t)frag_off * 8;
        out->frag_more = (off & 0x2000) != 0;
    }
    if (out->frag == DECODE_FRAG_LATER) {
        out->app_len = out->ip_payload;
        return 0;
    }
    return decode_l4(p + ihl, c->cap - ihl, out, 0);
}

static int decode_ipv6(cursor_t *c, decode_pkt_t *out)
{
    const uint8_t *p = c->p;
    if (c->cap < 40) return fail(SENSOR_DERR_IP_TRUNC);
    uint32_t plen = rd16(p + 4);
    uint32_t wire_payload = c->wire >= 40 ? c->wire - 40 : 0;
    if (plen == 0) plen = wire_payload;       /* jumbogram (or bogus): trust the frame */
    if (plen > wire_payload) {
        out->anomaly = 1 + SENSOR_DERR_IP_TOTLEN;
        plen = wire_payload;
    }
    out->kind = DECODE_KIND_IP;
    out->addr_type = SENSOR_ADDR_IP6;
    out->tos = (uint8_t)(((p[0] & 0x0f) << 4) | (p[1] >> 4));
    out->ttl = p[7];
    memcpy(out->src, p + 8, 16);
    memcpy(out->dst, p + 24, 16);
    uint8_t next = p[6];
    uint32_t off = 40, cap = c->cap;
    uint32_t end = 40 + plen;
    while (off < cap) {                           /* each extension header advances >= 8 bytes */
        if (next == 0 || next == 43 || next == 60 || next == 135) {
            if (off + 8 > cap) return fail(SENSOR_DERR_IP_TRUNC);
            uint32_t len = ((uint32_t)p[off + 1] + 1) * 8;
            next = p[off];
            off += len;
        } else if (next == 51) {                  /* AH: length in 4-byte units, minus 2 */
            if (off + 8 > cap) return fail(SENSOR_DERR_IP_TRUNC);
            uint32_t len = ((uint32_t)p[off + 1] + 2) * 4;
            next = p[off];
            off += len;
        } else if (next == 44) {                  /* fragment header */
            if (off + 8 > cap) return fail(SENSOR_DERR_IP_TRUNC);
            uint16_t fo = rd16(p + off + 2);
            if ((fo & 0xfff8) || (fo & 1)) {
                out->frag = (fo & 0xfff8) ? DECODE_FRAG_LATER : DECODE_FRAG_FIRST;
                out->frag_id = rd32(p + off + 4);
                out->frag_offset = fo & 0xfff8;
                out->frag_more = fo & 1;
            }
            next = p[off];
            off += 8;
        } else {
            break;
        }
        if (off > end) return fail(SENSOR_DERR_IP_TOTLEN);
    }
    out->proto = next;
    out->ip_payload = end - off;
    if (out->frag == DECODE_FRAG_LATER) {
        out->app_len = out->ip_payload;
        return 0;
    }
    if (off > cap) return fail(SENSOR_DERR_L4_TRUNC);
    return decode_l4(p + off, cap - off, out, 1);
}

static int decode_ip(cursor_t *c, decode_pkt_t *out)
{
    if (c->cap < 1) return fail(SENSOR_DERR_IP_TRUNC);
    switch (c->p[0] >> 4) {
    case 4: return decode_ipv4(c, out);
    case 6: return decode_ipv6(c, out);
    default: return fail(SENSOR_DERR_IP_VERSION);
    }
}

static int decode_mpls(cursor_t *c, decode_pkt_t *out)
{
    for (int i = 0; i < MAX_LABELS; i++) {
        if (c->cap < 4) return fail(SENSOR_DERR_ENCAP);
        uint32_t entry = rd32(c->p);
        if (!out->has_mpls) {
            out->has_mpls = 1;
            out->mpls = entry >> 12;
        }
        skip(c, 4);
        if (entry & 0x100) {                      /* bottom of stack: guess the payload */
            if (c->cap < 1) return fail(SENSOR_DERR_ENCAP);
            uint8_t v = c->p[0] >> 4;
            if (v == 4 || v == 6) return decode_ip(c, out);
            /* Ethernet pseudowire, with the RFC 4385 control word (first nibble 0) or without. */
            if (v == 0 && skip(c, 4) < 0) return fail(SENSOR_DERR_ENCAP);
            return decode_ethernet(c, out);
        }
    }
    return fail(SENSOR_DERR_ENCAP);
}

static int decode_ppp_proto(cursor_t *c, uint16_t proto, decode_pkt_t *out)
{
    switch (proto) {
    case PPP_IPV4:
    case PPP_IPV6: return decode_ip(c, out);
    case PPP_MPLS:
    case PPP_MPLS_MC: return decode_mpls(c, out);
    default: return fail(SENSOR_DERR_ENCAP);
    }
}

/* A flow keyed by MACs and ethertype (or LLC SAPs) for frames that carry no IP. */
static int decode_l2_flow(decode_pkt_t *out, uint16_t proto)
{
    if (!out->has_mac) return fail(SENSOR_DERR_ENCAP);
    out->kind = proto ? DECODE_KIND_ETHER : DECODE_KIND_LLC;
    out->addr_type = SENSOR_ADDR_MAC;
    out->proto = proto;
    memcpy(out->src, out->mac_src, 6);
    memcpy(out->dst, out->mac_dst, 6);
    out->has_ports = 1;
    out->app_len = out->wire_len;                 /* Argus: the whole frame */
    out->l4_ok = 1;
    return 0;
}

static int decode_arp(cursor_t *c, decode_pkt_t *out)
{
    /* Ethernet/IPv4 ARP only; anything else is metered as a plain ethertype flow. */
    if (c->cap < 28 || rd16(c->p) != 1 || rd16(c->p + 2) != ETH_IPV4 || c->p[4] != 6 || c->p[5] != 4)
        return decode_l2_flow(out, ETH_ARP);
    out->kind = DECODE_KIND_ARP;
    out->addr_type = SENSOR_ADDR_IP4;
    out->proto = ETH_ARP;
    out->icmp_role = rd16(c->p + 6) == 2 ? DECODE_ICMP_REPLY : DECODE_ICMP_REQUEST;
    memcpy(out->src, c->p + 14, 4);
    memcpy(out->dst, c->p + 24, 4);
    out->app_len = out->wire_len > 28 ? out->wire_len - 28 : 0;   /* Argus's ARP app bytes */
    out->l4_ok = 1;
    return 0;
}

static int decode_ethertype(cursor_t *c, uint16_t type, decode_pkt_t *out)
{
    for (int tags = 0; tags <= MAX_TAGS; tags++) {
        switch (type) {
        case ETH_VLAN:
        case ETH_QINQ:
        case ETH_QINQ_OLD:
            if (c->cap < 4) return fail(SENSOR_DERR_ENCAP);
            if (out->vlan_count++ == 0) out->vlan = rd16(c->p) & 0x0fff;
            type = rd16(c->p + 2);
            skip(c, 4);
            continue;
        case ETH_IPV4:
        case ETH_IPV6: return decode_ip(c, out);
        case ETH_MPLS:
        case ETH_MPLS_MC: {
            decode_pkt_t outer = *out;
            if (decode_mpls(c, out) == 0) return 0;
            *out = outer;                         /* undecodable payload: an ethertype flow */
            return decode_l2_flow(out, type);
        }
        case ETH_ARP: return decode_arp(c, out);
        case ETH_PPPOE_SESS: {
            if (c->cap < 8) return decode_l2_flow(out, type);
            uint16_t ppp = rd16(c->p + 6);
            decode_pkt_t outer = *out;
            out->pppoe = 1;
            skip(c, 8);
            if (decode_ppp_proto(c, ppp, out) == 0) return 0;
            *out = outer;                         /* PPP control (LCP, IPCP...): an ethertype flow */
            return decode_l2_flow(out, ETH_PPPOE_SESS);
        }
        default:
            if (type <= 1500) {                   /* 802.3 length: LLC, maybe SNAP */
                if (c->cap < 3) return fail(SENSOR_DERR_ENCAP);
                if (c->p[0] == 0xaa && c->p[1] == 0xaa && c->cap >= 8 &&
                    c->p[3] == 0 && c->p[4] == 0 && c->p[5] == 0) {
                    uint16_t inner = rd16(c->p + 6);
                    if (inner == ETH_IPV4 || inner == ETH_IPV6) {
                        skip(c, 8);
                        return decode_ip(c, out);
                    }
                }
                out->dport = c->p[0];
                out->sport = c->p[1];
                return decode_l2_flow(out, 0);
            }
            return decode_l2_flow(out, type);
        }
    }
    return fail(SENSOR_DERR_ENCAP);
}

static int decode_ethernet(cursor_t *c, decode_pkt_t *out)
{
    if (c->cap < 14) return fail(SENSOR_DERR_LINK_TRUNC);
    if (++out->depth > 4) return fail(SENSOR_DERR_ENCAP);
    out->has_mac = 1;
    memcpy(out->mac_dst, c->p, 6);
    memcpy(out->mac_src, c->p + 6, 6);
    uint16_t type = rd16(c->p + 12);
    skip(c, 14);
    return decode_ethertype(c, type, out);
}

/* Frame lengths count the Ethernet header, as Argus does, but not the pseudo-headers of cooked
 * link types (SLL, SLL2, NULL/LOOP, PPP): those bytes were never on the wire. */
int decode_packet(int linktype, const uint8_t *data, uint32_t caplen, uint32_t wire_len,
                  decode_pkt_t *out)
{
    memset(out, 0, sizeof *out);
    out->wire_len = wire_len;
    cursor_t c = {data, caplen, wire_len < caplen ? caplen : wire_len};
    switch (linktype) {
    case DECODE_LINK_EN10MB:
        return decode_ethernet(&c, out);
    case DECODE_LINK_NULL:
    case DECODE_LINK_LOOP: {
        /* 4-byte address family, host order of the capturing machine (NULL) or network (LOOP). */
        if (c.cap < 4) return fail(SENSOR_DERR_LINK_TRUNC);
        uint32_t af = linktype == DECODE_LINK_LOOP ? rd32(c.p) : rd32le(c.p);
        if (af > 0xffff) af = rd32(c.p);
        skip(&c, 4);
        out->wire_len = c.wire;
        if (af == 2) return decode_ip(&c, out);
        if (af == 10 || af == 24 || af == 28 || af == 30) return decode_ip(&c, out);
        return fail(SENSOR_DERR_LINKTYPE);
    }
    case DECODE_LINK_RAW:
    case DECODE_LINK_RAW_BSD:
    case DECODE_LINK_RAW_LT:
    case DECODE_LINK_IPV4:
    case DECODE_LINK_IPV6:
        return decode_ip(&c, out);
    case DECODE_LINK_SLL: {
        if (c.cap < 16) return fail(SENSOR_DERR_LINK_TRUNC);
        uint16_t halen = rd16(c.p + 4);
        if (halen == 6) {
            out->has_mac = 1;
            memcpy(out->mac_src, c.p + 6, 6);
        }
        uint16_t type = rd16(c.p + 14);
        skip(&c, 16);
        out->wire_len = c.wire;
        return decode_ethertype(&c, type, out);
    }
    case DECODE_LINK_SLL2: {
        if (c.cap < 20) return fail(SENSOR_DERR_LINK_TRUNC);
        uint16_t type = rd16(c.p);
        if (c.p[11] == 6) {
            out->has_mac = 1;
            memcpy(out->mac_src, c.p + 12, 6);
        }
        skip(&c, 20);
        out->wire_len = c.wire;
        return decode_ethertype(&c, type, out);
    }
    case DECODE_LINK_PPP:
    case DECODE_LINK_PPP_SERIAL:
    case DECODE_LINK_C_HDLC: {
        if (c.cap < 2) return fail(SENSOR_DERR_LINK_TRUNC);
        if (c.p[0] == 0xff && c.p[1] == 0x03) skip(&c, 2);        /* HDLC address/control */
        else if (linktype == DECODE_LINK_C_HDLC && c.cap >= 2) skip(&c, 2);
        if (c.cap < 2) return fail(SENSOR_DERR_LINK_TRUNC);
        uint16_t proto = rd16(c.p);
        skip(&c, 2);
        out->wire_len = c.wire;
        if (linktype == DECODE_LINK_C_HDLC) {                      /* Cisco HDLC carries ethertypes */
            if (proto == ETH_IPV4 || proto == ETH_IPV6) return decode_ip(&c, out);
            if (proto == ETH_MPLS) return decode_mpls(&c, out);
            return fail(SENSOR_DERR_ENCAP);
        }
        return decode_ppp_proto(&c, proto, out);
    }
    default:
        return fail(SENSOR_DERR_LINKTYPE);
    }
}
