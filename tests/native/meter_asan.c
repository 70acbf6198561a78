/* meter_asan.c: meter capture files through the whole native core (sensor.c, decode.c,
 * flowtable.c, pcapng.c, siphash.c) built with -fsanitize=address,undefined, and bind every record
 * into an archive's flows table (store.c, sha1.c, format.c's text helpers). With --store, each
 * file's records are also kept in a second scratch archive (SCRATCH.sqlite.cluster) and clustered
 * and printed by cluster.c under several keys and options.
 *
 * Usage: meter_asan [--store SCRATCH.sqlite] FILE...   One line per file:
 *   PATH packets=N records=N decode_errors=N [(reason:count ...)] [error="..."]
 * where reason is the SENSOR_DERR_* index.
 * A capture that fails to open or is corrupt is an expected outcome: it is reported on its line and
 * the exit status stays 0. The exit status is non-zero when a sanitizer fires (the build uses
 * -fno-sanitize-recover=all, so that is automatic) or when the core stops making progress (a
 * poll/drain loop that would never end), which is reported as STALL. This is a test harness, so it
 * prints; the core never does. */
#include "sensor.h"
#include "scratch_store.h"

#include <stdio.h>
#include <string.h>

enum {
    BATCH = 256,
    MAX_IDLE_POLLS = 1000,        /* consecutive polls with no packet and no EOF: a stall */
    MAX_DRAIN_ROUNDS = 1000000    /* full drains in a row: records would never run out */
};

static sensor_flow_t recs[BATCH];
static sensor_store_t *store;      /* every drained record is inserted (and rolled back) */
static sensor_store_t *kept;       /* and inserted for good, for cluster_file, then deleted */
static int store_failed;
static char kept_path[4096];
static long clustered, declined;     /* cluster_file runs printed / declined, for the last line */

/* The columns cluster_file reads, as appliance/query.py selects them (SENSOR_FIELD_* order). */
static const char CLUSTER_SQL[] =
    "SELECT srcid, seq, cause, stime, ltime, dur, flgs, proto, saddr, sport, dir, daddr, dport,"
    " spkts, dpkts, spkts + dpkts, sbytes, dbytes, sbytes + dbytes, sappbytes, dappbytes,"
    " sappbytes + dappbytes, state, stos, dtos, sttl, dttl, smac, dmac, svlan, dvlan, smpls, dmpls,"
    " sflags, dflags, synack, ackdat, tcprtt, sretrans, dretrans, sgap, dgap, smaxsz, sminsz, dmaxsz,"
    " dminsz, conn_state, history FROM flows WHERE proto != ?1 ORDER BY rowid";

/* Cluster the kept records under a few keys, every field printed: 0, or 1 on a failure that is
 * not a decline. */
static int cluster_file(void)
{
    static const struct { uint8_t keys[3]; int16_t prefix[3]; size_t n; } sets[] = {
        {{SENSOR_FIELD_SADDR, SENSOR_FIELD_DADDR}, {-1, -1}, 2},
        {{SENSOR_FIELD_PROTO, SENSOR_FIELD_DPORT}, {-1, -1}, 2},
        {{SENSOR_FIELD_SADDR, SENSOR_FIELD_DADDR}, {24, 64}, 2},
        {{0}, {0}, 0},
    };
    uint8_t fields[SENSOR_FIELD_COUNT];
    size_t nf = 0;
    for (unsigned f = 0; f < SENSOR_FIELD_COUNT; f++)
        if (f != SENSOR_FIELD_TRANS)
            fields[nf++] = (uint8_t)f;
    char uri[4200], errbuf[SENSOR_ERRBUF_SIZE];
    snprintf(uri, sizeof uri, "file:%s?mode=ro", kept_path);
    sensor_sql_param_t param = {.i = 2054, .type = SENSOR_PARAM_INT};
    static char text[1 << 16];
    int failed = 0;
    for (size_t k = 0; k < sizeof sets / sizeof sets[0]; k++) {
        sensor_cluster_t *c = NULL;
        if (sensor_cluster_open(sets[k].keys, sets[k].prefix, sets[k].n, fields, nf, (int)(k & 1),
                                errbuf, &c) != SENSOR_OK) {
            printf("cluster: open: %s\n", errbuf);
            return 1;
        }
        sensor_format_spec_t spec;
        memset(&spec, 0, sizeof spec);
        spec.ncolumns = SENSOR_FIELD_COUNT;
        spec.flags = k & 1 ? SENSOR_FMT_UTIME | SENSOR_FMT_DELIMITED : SENSOR_FMT_RSTRIP;
        spec.numeric = (uint8_t)(1 + (k & 1));
        spec.delim_len = 1;
        spec.delim[0] = k & 1 ? ',' : ' ';
        for (unsigned f = 0; f < SENSOR_FIELD_COUNT; f++)
            spec.column[f] = (sensor_format_column_t){.field = (uint8_t)f,
                .pad = (uint8_t)(k & 1 ? SENSOR_PAD_NONE : f % 3 ? SENSOR_PAD_RIGHT : SENSOR_PAD_LEFT),
                .sep = (uint8_t)(f == SENSOR_FIELD_SPORT && !(k & 1) ? SENSOR_SEP_PORT : SENSOR_SEP_DELIM),
                .width = (uint16_t)(1 + f % 13)};
        int rc = sensor_cluster_read(c, uri, CLUSTER_SQL, &param, 1);
        if (rc == SENSOR_OK)
            rc = sensor_cluster_finish(c, &spec);
        long lines = 0;
        size_t used;
        int n;
        while (rc >= 0 && (n = sensor_cluster_format(c, text, sizeof text, &used)) > 0)
            lines += n;
        clustered += rc >= 0;
        declined += rc == SENSOR_EDECLINE;
        if (rc >= 0 && lines != rc) {
            printf("cluster: %d clusters, %ld lines\n", rc, lines);
            failed = 1;
        } else if (rc < 0 && rc != SENSOR_EDECLINE) {
            printf("cluster: %d: %s\n", rc, sensor_cluster_error(c));
            failed = 1;
        }
        sensor_cluster_close(c);
    }
    return failed;
}

/* Drain until a partial batch comes back; returns records taken, or -1 on a stall. */
static long drain_all(sensor_t *s, uint64_t now_us)
{
    long total = 0;
    for (long round = 0; round < MAX_DRAIN_ROUNDS; round++) {
        size_t n = sensor_drain(s, recs, BATCH, now_us);
        total += (long)n;
        if (scratch_store_insert(store, recs, n))
            store_failed = 1;
        if (kept && n && sensor_store_insert(kept, recs, n))
            store_failed = 1;
        if (n < BATCH)
            return total;
    }
    return -1;
}

/* Meter one file; returns 0, or 1 when the core stalled. */
static int meter(const char *path, const sensor_config_t *cfg)
{
    char errbuf[SENSOR_ERRBUF_SIZE];
    char err[SENSOR_ERRBUF_SIZE] = "";
    sensor_t *s = NULL;
    sensor_stats_t st;
    long records = 0, n;
    int rc, idle = 0, stalled = 0;
    uint64_t derr = 0;

    errbuf[0] = '\0';
    rc = sensor_open_file(cfg, path, errbuf, &s);
    if (rc < 0 || s == NULL) {
        printf("%s packets=0 records=0 decode_errors=0 error=\"open %d: %s\"\n", path, rc, errbuf);
        return 0;
    }
    for (;;) {
        rc = sensor_poll(s, BATCH, 0);
        memset(&st, 0, sizeof st);
        sensor_get_stats(s, &st);
        n = drain_all(s, st.last_packet_us);
        if (n < 0) {
            stalled = 1;
            break;
        }
        records += n;
        if (rc == SENSOR_EOF)
            break;
        if (rc < 0) {
            snprintf(err, sizeof err, "poll %d: %s", rc, sensor_last_error(s));
            break;
        }
        idle = rc == 0 ? idle + 1 : 0;
        if (idle >= MAX_IDLE_POLLS) {
            stalled = 1;
            break;
        }
    }
    sensor_end_all(s, SENSOR_CAUSE_SHUTDOWN);
    sensor_get_stats(s, &st);
    n = drain_all(s, st.last_packet_us);
    if (n < 0)
        stalled = 1;
    else
        records += n;
    sensor_get_stats(s, &st);
    for (size_t i = 0; i < sizeof st.decode_errors / sizeof st.decode_errors[0]; i++)
        derr += st.decode_errors[i];

    printf("%s packets=%llu records=%ld decode_errors=%llu", path,
           (unsigned long long)st.packets, records, (unsigned long long)derr);
    if (derr > 0) {                 /* by SENSOR_DERR_* reason: " (reason:count ...)" */
        const char *sep = " (";
        for (size_t i = 0; i < sizeof st.decode_errors / sizeof st.decode_errors[0]; i++) {
            if (st.decode_errors[i] > 0) {
                printf("%s%zu:%llu", sep, i, (unsigned long long)st.decode_errors[i]);
                sep = " ";
            }
        }
        printf(")");
    }
    if (err[0] != '\0')
        printf(" error=\"%s\"", err);
    if (stalled)
        printf(" STALL (poll or drain made no progress)");
    printf("\n");
    sensor_close(s);
    return stalled;
}

int main(int argc, char **argv)
{
    sensor_config_t cfg;
    int failed = 0;

    memset(&cfg, 0, sizeof cfg);
    cfg.max_flows = 4096;           /* small, so that eviction paths run */
    cfg.max_frags = 1024;
    cfg.timeout_tcp_s = 60;
    cfg.timeout_udp_s = 30;
    cfg.timeout_icmp_s = 5;
    cfg.timeout_other_s = 30;
    cfg.timeout_closed_s = 5;
    cfg.timeout_frag_s = 5;
    cfg.status_interval_s = 5;
    cfg.record_ring = 1024;

    int first = 1;
    if (argc > 2 && strcmp(argv[1], "--store") == 0) {
        if (!(store = scratch_store_open(argv[2], 0))) {
            printf("store: cannot open %s\n", argv[2]);
            return 1;
        }
        first = 3;
        snprintf(kept_path, sizeof kept_path, "%s.cluster", argv[2]);
        unlink(kept_path);
        if (!(kept = scratch_store_open(kept_path, 0))) {
            printf("store: cannot open %s\n", kept_path);
            return 1;
        }
    }
    for (int i = first; i < argc; i++) {
        if (kept && sensor_store_exec(kept, "BEGIN"))
            store_failed = 1;
        failed |= meter(argv[i], &cfg);
        if (kept) {
            if (sensor_store_exec(kept, "COMMIT"))
                store_failed = 1;
            else
                failed |= cluster_file();
            if (sensor_store_exec(kept, "DELETE FROM flows"))
                store_failed = 1;
        }
        fflush(stdout);
        if (store_failed) {
            printf("%s STORE FAILED: %s\n", argv[i], sensor_store_error(store));
            failed = 1;
            store_failed = 0;
        }
    }
    sensor_store_close(store);
    if (kept)
        printf("cluster: %ld runs printed, %ld declined\n", clustered, declined);
    sensor_store_close(kept);
    return failed;
}
