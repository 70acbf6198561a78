/* flowtable.h: the bidirectional flow table. Fixed capacity, keyed hash, per-class LRU lists; every
 * record leaves through one ring (during packets) or straight into the caller's buffer (drain). */
#ifndef FLOWTAP_FLOWTABLE_H
#define FLOWTAP_FLOWTABLE_H
#include <stddef.h>
#include <stdint.h>

#include "decode.h"
#include "sensor.h"

typedef struct ft_table ft_table_t;

/* Records one packet can add to the ring at most (status cut, restart, eviction, fragment eviction). */
enum { FT_RECORDS_PER_PACKET = 4 };

/* Allocate a table for cfg (capacity, timeouts). Caller frees with ft_destroy. NULL on ENOMEM. */
ft_table_t *ft_create(const sensor_config_t *cfg, const uint8_t seed[16]);
void ft_destroy(ft_table_t *t);                    /* NULL-safe */
/* New timeouts and status interval; open flows are kept. */
void ft_configure(ft_table_t *t, const sensor_config_t *cfg);
/* Meter one decoded packet seen at ts_us. Needs FT_RECORDS_PER_PACKET free ring slots. */
void ft_packet(ft_table_t *t, const decode_pkt_t *p, uint64_t ts_us, uint8_t ifindex);
/* Meter up to FT_BATCH packets in order, exactly as n ft_packet calls would, overlapping the cache
 * misses of their hash-chain and entry lookups. Needs n * FT_RECORDS_PER_PACKET free ring slots. */
enum { FT_BATCH = 64 };
void ft_packets(ft_table_t *t, const decode_pkt_t *p, const uint64_t *ts, size_t n, uint8_t ifindex);
/* A packet's flow key, side and hash chain. A pure function of the packet and the table's seed and
 * size (both fixed at create time), so a capture file's reader thread makes it ahead (ft_lookup)
 * while this thread meters earlier packets with ft_packets_looked. */
typedef struct ft_key {
    uint8_t  addr[2][16];
    uint16_t port[2];
    uint16_t proto;
    uint8_t  addr_type;
    uint8_t  icmp_query;      /* request type of an ICMP query pair, else 0 */
    uint8_t  icmp_code;       /* ICMP errors: the code (the quoted port is in the port slot) */
    uint8_t  pad[3];          /* keys are compared with memcmp: always zeroed */
} ft_key_t;

typedef struct ft_lookup {
    ft_key_t key;
    uint32_t bucket;
    int side;
} ft_lookup_t;

/* Reads only what never changes after ft_create: safe beside metering on another thread. Not for
 * later fragments (their flow comes from the fragment table). */
void ft_lookup(const ft_table_t *t, const decode_pkt_t *p, ft_lookup_t *out);
/* ft_packets for any n, with look[i] = ft_lookup of p[i] (ignored for later fragments). */
void ft_packets_looked(ft_table_t *t, const decode_pkt_t *p, const ft_lookup_t *look, const uint64_t *ts,
                       size_t n, uint8_t ifindex);
size_t ft_ring_free(const ft_table_t *t);
/* Pending ring records, then flows idle at now_us (and all flows after ft_end_all), into out. */
size_t ft_drain(ft_table_t *t, sensor_flow_t *out, size_t cap, uint64_t now_us);
void ft_end_all(ft_table_t *t, int cause);
/* The (at most 64) open flows with the most bytes so far, biggest first; the table is unchanged. */
size_t ft_top(const ft_table_t *t, sensor_flow_t *out, size_t n);
void ft_stats(const ft_table_t *t, sensor_stats_t *out);
size_t ft_entry_size(void);

#endif
