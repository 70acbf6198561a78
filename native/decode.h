/* decode.h: one captured frame → the header facts the flow table needs. No allocation, no state. */
#ifndef FLOWTAP_DECODE_H
#define FLOWTAP_DECODE_H
#include <stdint.h>

/* Link types as pcap_datalink() and pcapng IDBs report them (DLT_* / LINKTYPE_*). */
enum {
    DECODE_LINK_NULL = 0, DECODE_LINK_EN10MB = 1, DECODE_LINK_PPP = 9, DECODE_LINK_RAW = 12,
    DECODE_LINK_RAW_BSD = 14, DECODE_LINK_PPP_SERIAL = 50, DECODE_LINK_PPP_ETHER = 51,
    DECODE_LINK_RAW_LT = 101, DECODE_LINK_C_HDLC = 104, DECODE_LINK_LOOP = 108,
    DECODE_LINK_SLL = 113, DECODE_LINK_IPV4 = 228, DECODE_LINK_IPV6 = 229, DECODE_LINK_SLL2 = 276
};

/* What a frame turned out to be. */
enum { DECODE_KIND_IP = 1, DECODE_KIND_ARP = 2, DECODE_KIND_ETHER = 3, DECODE_KIND_LLC = 4 };

/* Fragment position of an IP packet. */
enum { DECODE_FRAG_NONE = 0, DECODE_FRAG_FIRST = 1, DECODE_FRAG_LATER = 2 };

/* ICMP message roles: queries pair a request with its reply in one flow, as Argus does. */
enum { DECODE_ICMP_OTHER = 0, DECODE_ICMP_REQUEST = 1, DECODE_ICMP_REPLY = 2 };

typedef struct decode_pkt {
    uint32_t wire_len;            /* frame length on the wire (pcap len) */
    uint8_t  kind;                /* DECODE_KIND_* */
    uint8_t  addr_type;           /* SENSOR_ADDR_* */
    uint8_t  has_mac, vlan_count;
    uint8_t  mac_src[6], mac_dst[6];
    uint16_t vlan;                /* outermost 802.1Q/802.1ad id */
    uint8_t  has_mpls, pppoe, tunnel;
    uint8_t  depth;               /* Ethernet headers nested (pseudowires, GRE): bounded */
    uint32_t mpls;                /* top label */
    uint8_t  src[16], dst[16];    /* IPv4 in the first 4 bytes; MACs in the first 6 */
    uint16_t proto;               /* IP protocol, or ethertype (0 = LLC) */
    uint8_t  has_ports;
    uint16_t sport, dport;        /* host order; LLC: SSAP/DSAP; ICMP: see icmp_* */
    uint8_t  tos, ttl;
    uint8_t  l4_ok;               /* transport header fully decoded */
    uint8_t  tcp_flags;
    uint32_t tcp_seq, tcp_ack;
    uint16_t tcp_win;
    uint8_t  icmp_type, icmp_code, icmp_role;
    uint16_t icmp_id;
    uint8_t  icmp_query;          /* request type of the query pair (8, 13, 15, 17, 128) */
    uint8_t  quoted;              /* ICMP error quoting a TCP/UDP/SCTP packet: fields below valid */
    uint8_t  quoted_proto;
    uint8_t  quoted_src[16], quoted_dst[16];
    uint16_t quoted_sport, quoted_dport;
    uint8_t  anomaly;             /* 1 + SENSOR_DERR_* noticed but metered anyway, 0 = none */
    uint8_t  frag;                /* DECODE_FRAG_* */
    uint32_t frag_id;
    uint32_t frag_offset;         /* bytes */
    uint8_t  frag_more;           /* more fragments follow */
    uint32_t ip_payload;          /* bytes after the IP header(s), per the IP length fields */
    uint32_t app_len;             /* payload after the transport header (Argus app bytes) */
} decode_pkt_t;

/* Decode one frame. Reads only data[0..caplen). Returns 0 when the packet can be metered, or
 * -1 - SENSOR_DERR_* when it cannot (the caller counts the reason). */
int decode_packet(int linktype, const uint8_t *data, uint32_t caplen, uint32_t wire_len,
                  decode_pkt_t *out);

#endif
