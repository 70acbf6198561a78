/* sensor.h: the only header cffi sees. Plain declarations only: build_ffi.py drops lines starting
 * with '#' and hands the rest to cdef(), so nothing here may need the preprocessor. */
#ifndef FLOWTAP_SENSOR_H
#define FLOWTAP_SENSOR_H
#include <stdint.h>
#include <stddef.h>

enum { SENSOR_ABI_VERSION = 1 };
enum { SENSOR_ERRBUF_SIZE = 512, SENSOR_MAX_SOURCES = 8 };

/* Return codes: >= 0 is success (a count where one is meaningful). */
enum {
    SENSOR_OK = 0,
    SENSOR_EOF = -1,        /* capture file fully read */
    SENSOR_ENOMEM = -2,
    SENSOR_EPCAP = -3,      /* libpcap refused to open or activate */
    SENSOR_EINVAL = -4,     /* bad argument or configuration value */
    SENSOR_EFILE = -5,      /* capture file truncated or corrupt after some packets */
    SENSOR_EFILTER = -6,    /* BPF expression did not compile */
    SENSOR_ESTORE = -7,     /* SQLite could not open an archive (store.c): errbuf says why */
    SENSOR_EDECLINE = -8    /* cluster.c cannot print exactly what Python would: Python does it */
};

/* Why a record left the flow table (the `cause` column). */
enum {
    SENSOR_CAUSE_START = 0, SENSOR_CAUSE_STATUS = 1, SENSOR_CAUSE_STOP = 2,
    SENSOR_CAUSE_TIMEOUT = 3, SENSOR_CAUSE_EVICT = 4, SENSOR_CAUSE_SHUTDOWN = 5
};

/* Argus `state` column for TCP/UDP/other; ICMP: named by type and code (sensor_icmp*_names). */
enum {
    SENSOR_STATE_NONE = 0, SENSOR_STATE_REQ = 1, SENSOR_STATE_ACC = 2, SENSOR_STATE_CON = 3,
    SENSOR_STATE_INT = 4, SENSOR_STATE_FIN = 5, SENSOR_STATE_RST = 6, SENSOR_STATE_CLO = 7,
    SENSOR_STATE_ICMP = 8
};

/* Argus `dir` column. */
enum {
    SENSOR_DIR_OUT = 0,       /* "->"  initiator known, one way */
    SENSOR_DIR_BOTH = 1,      /* "<->" both ways (UDP, ICMP) */
    SENSOR_DIR_IN = 2,        /* "<-"  only the responder spoke (echo reply only) */
    SENSOR_DIR_UNK_BOTH = 3,  /* "<?>" initiator guessed (no handshake seen), both ways */
    SENSOR_DIR_UNK_OUT = 4,   /* "?>"  initiator guessed, one way */
    SENSOR_DIR_WHO = 5        /* "who" ARP */
};

/* Zeek conn_state for TCP flows (0 for others). */
enum {
    SENSOR_ZEEK_NONE = 0, SENSOR_ZEEK_S0 = 1, SENSOR_ZEEK_S1 = 2, SENSOR_ZEEK_SF = 3,
    SENSOR_ZEEK_REJ = 4, SENSOR_ZEEK_S2 = 5, SENSOR_ZEEK_S3 = 6, SENSOR_ZEEK_RSTO = 7,
    SENSOR_ZEEK_RSTR = 8, SENSOR_ZEEK_RSTOS0 = 9, SENSOR_ZEEK_RSTRH = 10, SENSOR_ZEEK_SH = 11,
    SENSOR_ZEEK_SHR = 12, SENSOR_ZEEK_OTH = 13
};

/* What the two address slots hold. */
enum { SENSOR_ADDR_IP4 = 4, SENSOR_ADDR_IP6 = 6, SENSOR_ADDR_MAC = 2 };

/* `flgs` bits (Argus letters in parentheses). */
enum {
    SENSOR_FLG_VLAN = 1,        /* 802.1Q tag seen */
    SENSOR_FLG_MPLS = 2,        /* MPLS label seen (m) */
    SENSOR_FLG_PPPOE = 4,       /* PPPoE session */
    SENSOR_FLG_FRAG = 8,        /* fragments attributed (F) */
    SENSOR_FLG_FRAG_ORPHAN = 16,/* fragments whose first fragment was never seen (f) */
    SENSOR_FLG_GAP = 32,        /* sequence gap: data acknowledged that was never seen (g) */
    SENSOR_FLG_RETRANS = 64,    /* retransmissions seen (s/d) */
    SENSOR_FLG_QINQ = 128,      /* two or more VLAN tags */
    SENSOR_FLG_ICMP_UNREACH = 256, /* an ICMP unreachable quoted this flow (U) */
    SENSOR_FLG_TRUNC = 512,     /* some frames cut by the snaplen before their L4 header */
    SENSOR_FLG_TUNNEL = 1024    /* carried in or carrying a tunnel (GRE, IP-in-IP) */
};

/* Decode problems, counted by reason; never fatal. */
enum {
    SENSOR_DERR_LINK_TRUNC = 0,     /* frame shorter than its link header */
    SENSOR_DERR_LINKTYPE = 1,       /* link type we do not decode */
    SENSOR_DERR_IP_TRUNC = 2,       /* captured bytes end inside the IP header */
    SENSOR_DERR_IP_VERSION = 3,     /* version nibble is not 4 or 6 */
    SENSOR_DERR_IP_HDRLEN = 4,      /* IHL below 5 or beyond the packet */
    SENSOR_DERR_IP_TOTLEN = 5,      /* total/payload length inconsistent with the frame */
    SENSOR_DERR_L4_TRUNC = 6,       /* captured bytes end inside the TCP/UDP/ICMP header */
    SENSOR_DERR_TCP_HDRLEN = 7,     /* TCP data offset below 5 or beyond the segment */
    SENSOR_DERR_ENCAP = 8,          /* VLAN/MPLS/PPPoE stack too deep or malformed */
    SENSOR_DERR_FRAG_TABLE = 9,     /* fragment table full: fragment counted on its own */
    SENSOR_DERR_COUNT = 10
};

typedef struct sensor_config {
    uint32_t max_flows;            /* flow table capacity (entries) */
    uint32_t max_frags;            /* fragment-tracking table capacity */
    uint32_t timeout_tcp_s;        /* idle timeouts per protocol class */
    uint32_t timeout_udp_s;
    uint32_t timeout_icmp_s;
    uint32_t timeout_other_s;
    uint32_t timeout_closed_s;     /* after FIN both ways or RST: how long stragglers still join */
    uint32_t timeout_frag_s;
    uint32_t status_interval_s;    /* 0 = no Status records */
    uint32_t record_ring;          /* records buffered between drains */
    uint32_t snaplen;              /* live only */
    uint32_t ring_bytes;           /* live only: TPACKET_V3 buffer size */
    uint32_t promisc;              /* live only */
    uint32_t inbound_only;         /* live only: capture PCAP_D_IN on a bridge member port */
    uint32_t timeout_ms;           /* live only: ring block timeout */
    uint32_t reserved;
} sensor_config_t;

/* Exported record: plain data, no pointers. Index 0 is the initiator (s*), 1 the responder (d*).
 * 208 bytes, no padding: _Static_assert in sensor.c, format in appliance/capture.py. */
typedef struct sensor_flow {
    uint64_t seq;                  /* record number, per sensor handle */
    uint64_t stime_us, ltime_us;   /* packet clock, µs since the epoch */
    uint64_t pkts[2], bytes[2];    /* bytes: frame length on the wire (pcap len) */
    uint64_t appbytes[2];          /* L4 payload (ICMP: whole message), Argus -A */
    uint32_t synack_us, ackdat_us; /* SYN→SYN/ACK and SYN/ACK→ACK, 0 = not seen */
    uint32_t retrans[2];
    uint32_t maxsz[2], minsz[2];   /* frame sizes on the wire */
    uint32_t mpls[2];              /* top MPLS label, 0xFFFFFFFF = none */
    uint32_t gaps[2];              /* bytes acknowledged but never seen */
    uint16_t port[2];              /* host order; ICMP: type and code, echo: type and id */
    uint16_t proto;                /* IP protocol, or the ethertype for non-IP flows (0 = LLC) */
    uint16_t vlan[2];              /* last 802.1Q id seen, 0xFFFF = none */
    uint16_t flgs;                 /* SENSOR_FLG_* */
    uint8_t  addr[2][16];          /* IPv4 in the first 4 bytes; MAC in the first 6 */
    uint8_t  mac[2][6];
    uint8_t  addr_type;            /* SENSOR_ADDR_* */
    uint8_t  cause, state, dir, conn_state;
    uint8_t  tos[2], ttl[2];       /* last seen; ttl 0 with no packets from that side */
    uint8_t  tcpflags[2];          /* TCP flags OR'd per direction */
    uint8_t  ifindex;              /* capture point that saw the initiator's first frame */
    uint8_t  icmp_code;            /* ICMP/ICMPv6 code of the first message */
    char     history[19];          /* Zeek history, NUL-padded */
} sensor_flow_t;

typedef struct sensor_stats {
    uint64_t packets, bytes;               /* frames handed to the decoder */
    uint64_t decode_errors[10];            /* indexed by SENSOR_DERR_* */
    uint64_t flows_active, flows_created, flows_ended, flows_evicted;
    uint64_t flows_capacity;
    uint64_t records;                      /* records produced */
    uint64_t frags_tracked, frags_orphaned;
    uint64_t gap_acks;                     /* ACKs above a gap (capture loss indicator) */
    uint64_t pcap_recv, pcap_drop, pcap_ifdrop;
    uint64_t last_packet_us;               /* highest packet time seen */
    uint64_t warnings;                     /* pcap_activate warnings */
} sensor_stats_t;

typedef struct sensor sensor_t;            /* opaque; caller owns; free with sensor_close */

/* Open a pcap/pcapng file. On success *out is the handle (free with sensor_close); on error *out is
 * NULL and errbuf (SENSOR_ERRBUF_SIZE bytes) says why. */
int sensor_open_file(const sensor_config_t *cfg, const char *path, char *errbuf, sensor_t **out);
/* Open a live interface (TPACKET_V3 ring through libpcap). bpf may be NULL or "". Same ownership. */
int sensor_open_live(const sensor_config_t *cfg, const char *iface, const char *bpf,
                     char *errbuf, sensor_t **out);
/* Add another live interface feeding the same flow table (bridge member ports): each frame is
 * metered once and records carry the index of the source that saw the initiator first.
 * Returns the source index (>= 0) or SENSOR_E* with errbuf set. */
int sensor_add_live(sensor_t *s, const sensor_config_t *cfg, const char *iface, const char *bpf,
                    char *errbuf);
/* Replace the BPF filter of every live source (or of a file: filters what is metered). */
int sensor_set_filter(sensor_t *s, const char *bpf);
/* Change timeouts and the status interval of an open handle (open flows are kept). */
int sensor_reconfigure(sensor_t *s, const sensor_config_t *cfg);
/* Read and meter up to max_packets packets: >= 0 handled, SENSOR_EOF, or SENSOR_E* (< 0).
 * With until_us > 0 it also stops right after the first packet at or past until_us, so callers can
 * act on packet-time boundaries (rotation, status rows) while reading files. A file is read and
 * decoded ahead on a thread of its own from the first poll on (so set a BPF filter before it). */
int sensor_poll(sensor_t *s, int max_packets, uint64_t until_us);
/* Copy up to cap finished records into out, expiring flows idle at now_us first. */
size_t sensor_drain(sensor_t *s, sensor_flow_t *out, size_t cap, uint64_t now_us);
/* End every open flow with the given cause; the records then come out of sensor_drain. */
void sensor_end_all(sensor_t *s, int cause);
void sensor_get_stats(sensor_t *s, sensor_stats_t *out);
/* Snapshot of the (at most 64) busiest open flows by bytes, biggest first, cause Start, seq 0.
 * Walks every open flow: call it every few seconds, not per batch. */
size_t sensor_top_flows(sensor_t *s, sensor_flow_t *out, size_t n);
/* Per-source counters (packets seen by this source and its libpcap statistics). */
typedef struct sensor_source_stats {
    uint64_t packets, bytes;
    uint64_t pcap_recv, pcap_drop, pcap_ifdrop;
} sensor_source_stats_t;
int sensor_source_count(const sensor_t *s);
int sensor_source_stats(sensor_t *s, int source, sensor_source_stats_t *out);
/* The pcap file descriptor of a live source (for poll/select), or -1. */
int sensor_fileno(const sensor_t *s, int source);
const char *sensor_last_error(const sensor_t *s);  /* valid until the next call on s */
/* Bytes one flow-table entry costs (for the memory figure in status and benches). */
size_t sensor_entry_size(void);
void sensor_close(sensor_t *s);                    /* NULL-safe */

/* --- Names (format.c): the one copy of every name table, read once by appliance/capture.py and
 * appliance/fields.py. A NULL name ends a number -> name table. */
typedef struct sensor_name {
    uint32_t number;
    const char *name;
} sensor_name_t;
extern const char *const sensor_cause_names[6];        /* by SENSOR_CAUSE_* */
extern const char *const sensor_state_names[9];        /* by SENSOR_STATE_* ("" for ICMP: named below) */
extern const char *const sensor_dir_names[6];          /* by SENSOR_DIR_*, right-aligned in 5 columns */
extern const char *const sensor_conn_state_names[14];  /* by SENSOR_ZEEK_* ("" for none) */
extern const char sensor_tcp_flag_letters[9];          /* tcpflags bit 0 (FIN) .. bit 7 (CWR) */
extern const char sensor_argus_flag_letters[9];        /* the same bits as ra -Z spells them */
extern const sensor_name_t sensor_ip_proto_names[];    /* IP protocols as ra prints them */
extern const sensor_name_t sensor_ether_proto_names[]; /* ethertypes of non-IP flows (0: LLC) */
extern const sensor_name_t sensor_llc_sap_names[];     /* 802.3 LLC SAPs (the port columns) */
extern const sensor_name_t sensor_icmp4_names[];       /* ICMP state names by type */
extern const sensor_name_t sensor_icmp4_unreach_names[]; /* ... and for unreachables by code */
extern const sensor_name_t sensor_icmp6_names[];       /* ICMPv6 state names by type */

/* --- Text output (format.c): ra's -c and column lines straight from records, as appliance/fields.py
 * and appliance/output.py print them. Field ids name record values (aliases share an id: svid is
 * SENSOR_FIELD_SVLAN). */
enum {
    SENSOR_FIELD_SRCID = 0, SENSOR_FIELD_SEQ = 1, SENSOR_FIELD_CAUSE = 2, SENSOR_FIELD_STIME = 3,
    SENSOR_FIELD_LTIME = 4, SENSOR_FIELD_DUR = 5, SENSOR_FIELD_TRANS = 6, SENSOR_FIELD_FLGS = 7,
    SENSOR_FIELD_PROTO = 8, SENSOR_FIELD_SADDR = 9, SENSOR_FIELD_SPORT = 10, SENSOR_FIELD_DIR = 11,
    SENSOR_FIELD_DADDR = 12, SENSOR_FIELD_DPORT = 13, SENSOR_FIELD_SPKTS = 14, SENSOR_FIELD_DPKTS = 15,
    SENSOR_FIELD_PKTS = 16, SENSOR_FIELD_SBYTES = 17, SENSOR_FIELD_DBYTES = 18, SENSOR_FIELD_BYTES = 19,
    SENSOR_FIELD_SAPPBYTES = 20, SENSOR_FIELD_DAPPBYTES = 21, SENSOR_FIELD_APPBYTES = 22,
    SENSOR_FIELD_STATE = 23, SENSOR_FIELD_STOS = 24, SENSOR_FIELD_DTOS = 25, SENSOR_FIELD_STTL = 26,
    SENSOR_FIELD_DTTL = 27, SENSOR_FIELD_SMAC = 28, SENSOR_FIELD_DMAC = 29, SENSOR_FIELD_SVLAN = 30,
    SENSOR_FIELD_DVLAN = 31, SENSOR_FIELD_SMPLS = 32, SENSOR_FIELD_DMPLS = 33, SENSOR_FIELD_SFLAGS = 34,
    SENSOR_FIELD_DFLAGS = 35, SENSOR_FIELD_SYNACK = 36, SENSOR_FIELD_ACKDAT = 37,
    SENSOR_FIELD_TCPRTT = 38, SENSOR_FIELD_SRETRANS = 39, SENSOR_FIELD_DRETRANS = 40,
    SENSOR_FIELD_SGAP = 41, SENSOR_FIELD_DGAP = 42, SENSOR_FIELD_SMAXSZ = 43, SENSOR_FIELD_SMINSZ = 44,
    SENSOR_FIELD_DMAXSZ = 45, SENSOR_FIELD_DMINSZ = 46, SENSOR_FIELD_CONN_STATE = 47,
    SENSOR_FIELD_HISTORY = 48, SENSOR_FIELD_COUNT = 49
};
enum {
    SENSOR_FMT_UTIME = 1,         /* -u: times as Unix seconds with 6 decimals, else local H:M:S.us */
    SENSOR_FMT_DELIMITED = 2,     /* -c given: Flgs is padded to 10, not 9 */
    SENSOR_FMT_RSTRIP = 4         /* aligned columns: trailing blanks cut from each line */
};
enum { SENSOR_PAD_NONE = 0, SENSOR_PAD_RIGHT = 1, SENSOR_PAD_LEFT = 2 };  /* rjust / ljust */
enum { SENSOR_SEP_DELIM = 0, SENSOR_SEP_PORT = 1 };  /* PORT: '.' before a non-empty port, else ' ' */
enum { SENSOR_FORMAT_MAX_COLUMNS = 64 };

typedef struct sensor_format_column {
    uint8_t  field;               /* SENSOR_FIELD_* */
    uint8_t  pad;                 /* SENSOR_PAD_*: fit to width; longer values keep width-1 chars + '*' */
    uint8_t  sep;                 /* SENSOR_SEP_*: what precedes this column (not the first) */
    uint8_t  reserved;
    uint16_t width;               /* >= 1 when pad is not NONE */
    uint16_t reserved2;
} sensor_format_column_t;

typedef struct sensor_format_spec {
    uint32_t ncolumns;            /* 1 .. SENSOR_FORMAT_MAX_COLUMNS */
    uint32_t flags;               /* SENSOR_FMT_* */
    uint8_t  numeric;             /* -n count: 1 numeric ports, 2 numeric protocols too */
    uint8_t  zflags;              /* -Z: 0, 's', 'd' or 'b' */
    uint8_t  delim_len;           /* bytes of delim (0 .. 8) */
    uint8_t  srcid_len;           /* bytes of srcid (0 .. 64) */
    char     delim[8];            /* column separator (" " for aligned columns) */
    char     srcid[64];           /* the srcid value, printable ASCII */
    sensor_format_column_t column[SENSOR_FORMAT_MAX_COLUMNS];
} sensor_format_spec_t;

/* Format recs[0..n) as text lines ("\n"-terminated) into out[0..cap). Returns how many records were
 * written; *used is the bytes written. Allocates nothing and never writes past out + cap. It stops
 * before the first record whose line does not fit in what is left of out, or that it leaves to the
 * Python formatter (named TCP/UDP ports, unknown address kinds, out-of-range enum values). So a
 * call on an empty out that returns 0 means "format recs[0] in Python" (its line may also just be
 * longer than cap). */
size_t sensor_format(const sensor_flow_t *recs, size_t n, const sensor_format_spec_t *spec,
                     char *out, size_t cap, size_t *used);

/* --- Archive rows (store.c): records inserted into an archive's flows table without Python objects.
 * appliance/archive.py owns schema, transactions and errors; a handle is one SQLite connection. */
typedef struct sensor_store sensor_store_t;    /* opaque; free with sensor_store_close */
/* Open an existing archive (schema made) for inserting records stamped with srcid (<= 256 bytes of UTF-8).
 * SENSOR_OK, or SENSOR_EINVAL / SENSOR_ENOMEM / SENSOR_ESTORE with errbuf set; *out NULL then. */
int sensor_store_open(const char *path, const char *srcid, char *errbuf, sensor_store_t **out);
/* Run SQL without parameters or rows (BEGIN, COMMIT, ROLLBACK): an SQLite result code. */
int sensor_store_exec(sensor_store_t *st, const char *sql);
/* Insert recs[0..n) into flows with the values to_record gives them: SQLITE_OK (0) or the code of
 * the insert that failed (the ones before it are in the open transaction). */
int sensor_store_insert(sensor_store_t *st, const sensor_flow_t *recs, size_t n);
/* INSERT OR REPLACE one archive_info row (value: JSON text): an SQLite result code. */
int sensor_store_set_info(sensor_store_t *st, const char *key, const char *json_value);
const char *sensor_store_error(const sensor_store_t *st);   /* the last failure's message */
/* The flows columns sensor_store_insert fills, in order, then NULL (appliance/record.py's). */
extern const char *const sensor_store_columns[];
int sensor_store_system_errno(const sensor_store_t *st);    /* its OS errno (ENOSPC, EIO), or 0 */
void sensor_store_close(sensor_store_t *st);               /* NULL-safe */

/* --- racluster over archives (cluster.c): rows of archive files merged by -m keys with the rules of
 * appliance/cluster.py's Clusterer, then printed as sensor_format prints (one spec, -Z excepted).
 * Values are kept as Python holds them (None, int, float, str); whatever C would not print exactly
 * as Python does makes a call return SENSOR_EDECLINE before anything is printed, and the caller
 * clusters in Python instead. A handle holds one read-only SQLite connection at a time. */
typedef struct sensor_cluster sensor_cluster_t;    /* opaque; free with sensor_cluster_close */
enum { SENSOR_CLUSTER_MAX_KEYS = 8 };
enum { SENSOR_PARAM_NULL = 0, SENSOR_PARAM_INT = 1, SENSOR_PARAM_REAL = 2, SENSOR_PARAM_TEXT = 3 };
typedef struct sensor_sql_param {            /* one statement parameter, by type */
    int64_t i;
    double d;
    const char *text;                        /* UTF-8, NUL-terminated; copied when bound */
    uint32_t type;                           /* SENSOR_PARAM_* */
    uint32_t reserved;
} sensor_sql_param_t;
/* A clusterer merging by key_fields[0..nkeys) (SENSOR_FIELD_* of srcid proto saddr sport daddr
 * dport, in cluster.parse_keys order; prefixes[k] >= 0 masks an address key) and reading
 * fields[0..nfields) (the statement's columns, in that order: the keys, stime, ltime, every printed
 * field, and spkts/dpkts with a side's packet sizes). norep: trans prints as 0. On success *out is
 * the handle (free with sensor_cluster_close); else NULL, with SENSOR_EINVAL / SENSOR_ENOMEM and
 * errbuf (SENSOR_ERRBUF_SIZE bytes) saying why. */
int sensor_cluster_open(const uint8_t *key_fields, const int16_t *prefixes, size_t nkeys,
                        const uint8_t *fields, size_t nfields, int norep, char *errbuf,
                        sensor_cluster_t **out);
/* Open the archive at uri (an SQLite file: URI, read-only), run sql with params[0..nparams) and
 * merge every row, in the order they come. SENSOR_OK, SENSOR_EDECLINE (rows Python must merge, or
 * SQL only Python runs), SENSOR_ESTORE (SQLite failed), SENSOR_EINVAL or SENSOR_ENOMEM; the reason
 * is in sensor_cluster_error. The rows of a failed call may be merged in part: close the handle. */
int sensor_cluster_read(sensor_cluster_t *c, const char *uri, const char *sql,
                        const sensor_sql_param_t *params, size_t nparams);
/* Sort the clusters as racluster prints them and check that every line prints exactly with spec:
 * the number of lines (>= 0), or SENSOR_EDECLINE / SENSOR_EINVAL / SENSOR_ENOMEM. */
int sensor_cluster_finish(sensor_cluster_t *c, const sensor_format_spec_t *spec);
/* The next lines ("\n"-terminated) into out[0..cap): how many (0 when all are out), *used the bytes;
 * SENSOR_EINVAL when not finished or one line does not fit in cap. Never writes past out + cap. */
int sensor_cluster_format(sensor_cluster_t *c, char *out, size_t cap, size_t *used);
const char *sensor_cluster_error(const sensor_cluster_t *c);   /* the last failure's message */
void sensor_cluster_close(sensor_cluster_t *c);               /* NULL-safe */
/* The merge rule of a field (SENSOR_FIELD_*) as appliance/record.py names it ("sum", "last", ...),
 * or NULL for one C does not merge. */
const char *sensor_cluster_merge_rule(unsigned field);
extern const char sensor_cluster_letter_order[];   /* merged TCP flag letters come in this order */

/* Compile a BPF filter for Ethernet without a device: SENSOR_OK, or SENSOR_EFILTER with libpcap's
 * message in errbuf (SENSOR_ERRBUF_SIZE bytes). Needs no privileges (the web page checks filters). */
int sensor_check_filter(const char *bpf, char *errbuf);

#endif
