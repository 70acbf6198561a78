/* format.h: record values as text, shared by format.c (ra's lines), store.c (archive rows) and
 * cluster.c (racluster's lines). Every function here spells a value exactly as
 * appliance/capture.py's to_record and appliance/fields.py's formatters do. */
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

/* The name tables of sensor.h (format.c), by their short names here. */
#define FT_CAUSES sensor_cause_names
#define FT_STATES sensor_state_names
#define FT_DIRS sensor_dir_names               /* right-aligned in 5 columns, as ra prints them */
#define FT_CONN_STATES sensor_conn_state_names
#define FT_TCP_FLAG_LETTERS sensor_tcp_flag_letters

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

/* --- ra's lines, for other record shapes (cluster.c) ----------------------------------------- */

/* The output cursor: p never passes end. */
typedef struct ft_wbuf {
    char *p, *end;
} ft_wbuf_t;

/* The local H:M:S of the last second printed (ra's clock format, cached like fields.py does). */
typedef struct ft_clock {
    uint64_t sec;
    int valid;
    char hms[9];
} ft_clock_t;

/* What a cell printer returns: printed, out of room, or left to Python (nothing usable printed). */
enum { FT_FMT_OK = 0, FT_FMT_FULL = 1, FT_FMT_PYTHON = 2 };

/* Prints the value of field (SENSOR_FIELD_*) of the record ctx, unpadded. */
typedef int (*ft_cell_fn)(ft_wbuf_t *w, const void *ctx, unsigned field, ft_clock_t *cache);

/* 1 if spec is well formed (column count, fields, pads, lengths). */
int ft_spec_ok(const sensor_format_spec_t *spec);
/* One line of spec's columns, each printed by cell, separated, fitted and '\n'-terminated as
 * output.TextWriter does: FT_FMT_*; on failure the cursor is back where it was. */
int ft_put_line(ft_wbuf_t *w, const sensor_format_spec_t *spec, ft_cell_fn cell, const void *ctx,
                ft_clock_t *cache);
int ft_put(ft_wbuf_t *w, const char *s, size_t n);
int ft_put_i64(ft_wbuf_t *w, int64_t v);                     /* Python's str(int) */
int ft_put_real6(ft_wbuf_t *w, double d);                    /* Python's f"{d:.6f}" */
int ft_put_clock(ft_wbuf_t *w, double t, ft_clock_t *cache); /* fields.py's clock of t seconds */
/* fields.proto_name's table part: the name, or NULL where Python prints the number (ethertypes
 * without a name under -n). */
const char *ft_proto_name(int64_t proto, int ether, int numeric);
const char *ft_llc_sap_name(int64_t sap);                    /* "" when unnamed */

#endif
