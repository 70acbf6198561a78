/* meter_asan.c: meter capture files through the whole native core (sensor.c, decode.c,
 * flowtable.c, pcapng.c, siphash.c) built with -fsanitize=address,undefined, and bind every record
 * into an archive's flows table (store.c, sha1.c, format.c's text helpers).
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
static int store_failed;

/* Drain until a partial batch comes back; returns records taken, or -1 on a stall. */
static long drain_all(sensor_t *s, uint64_t now_us)
{
    long total = 0;
    for (long round = 0; round < MAX_DRAIN_ROUNDS; round++) {
        size_t n = sensor_drain(s, recs, BATCH, now_us);
        total += (long)n;
        if (scratch_store_insert(store, recs, n))
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
    }
    for (int i = first; i < argc; i++) {
        failed |= meter(argv[i], &cfg);
        fflush(stdout);
        if (store_failed) {
            printf("%s STORE FAILED: %s\n", argv[i], sensor_store_error(store));
            failed = 1;
            store_failed = 0;
        }
    }
    sensor_store_close(store);
    return failed;
}
