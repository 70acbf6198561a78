/* format.h: record values as text, shared by format.c (ra's lines) and store.c (archive rows).
 * Every function here spells a value exactly as appliance/capture.py's to_record does. */
#ifndef FLOWTAP_FORMAT_H
#define FLOWTAP_FORMAT_H
#include "sensor.h"

#include <stddef.h>

/* What to_record derives from the raw fields, once per record. */
typedef struct facts {
    int ip;              /* not a MAC-addressed (non-IP) flow */
    int sip;             /* IP and not ARP: tos/ttl apply */
    int ported;          /* sport/dport are printed */
    int ether;           /* proto holds an ethertype (fields.is_ether_proto) */
} facts_t;

extern const char *const FT_CAUSES[6];
extern const char *const FT_STATES[9];
extern const char *const FT_DIRS[6];          /* right-aligned in 5 columns, as ra prints them */
extern const char *const FT_CONN_STATES[14];
extern const char FT_TCP_FLAG_LETTERS[];

/* 1 if to_record accepts the record (enum values in range, printable history), filling f. */
int ft_record_facts(const sensor_flow_t *r, facts_t *f);
/* The state column (ICMP records: Argus's name for the type and code). */
const char *ft_state_text(const sensor_flow_t *r);
/* Address of side 0 or 1 as inet_ntop (MACs as bytes.hex(":")): its length, 0 if unprintable. */
size_t ft_addr_text(const sensor_flow_t *r, int side, char out[64]);
/* A MAC as aa:bb:cc:dd:ee:ff (17 characters, no NUL). */
void ft_mac_text(const uint8_t m[6], char out[17]);
/* The letters of the set bits, bit 0 first: their number. */
size_t ft_flag_letters(uint8_t bits, const char *letters, char out[8]);
/* The flgs column: 9 characters of Argus letters (no NUL). */
void ft_flgs_text(const sensor_flow_t *r, char out[9]);

#endif
