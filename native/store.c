/* store.c: sensor_store, finished records inserted into an archive's flows table straight from C.
 *
 * The recorder's hot path after metering: turning each record into Python objects only to bind them
 * again cost more than the SQLite insert itself (bench/RESULTS.md "Archives and queries"). The values
 * are exactly those of appliance/capture.py's to_record (tests/test_archive.py compares archives with
 * metered records on every shared capture). appliance/archive.py owns the schema, the transactions
 * and every decision; this file only binds values. It uses its own connection to the file. */
#include "format.h"
#include "sha1.h"
#include "store_columns.h"

#include <sqlite3.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

/* The text values of the record being inserted: handed to SQLite without a copy (SQLITE_STATIC),
 * so they live here until its row is made. */
typedef struct row_text {
    char addr[2][64], mac[2][18], tcpflags[2][8], flgs[9], community_id[30];
} row_text_t;

/* The flows columns this fills (store_columns.h): COL_seq is seq's index. */
#define COLUMN_INDEX(name) COL_##name,
#define COLUMN_NAME(name) #name,
enum { SENSOR_STORE_COLUMNS(COLUMN_INDEX) NCOLUMNS };
const char *const sensor_store_columns[] = {SENSOR_STORE_COLUMNS(COLUMN_NAME) NULL};
enum { COLUMNS_TEXT = 1024 };       /* "srcid, seq, ...": the column names joined */

/* One value of the row being inserted: type is SQLite's (SQLITE_NULL where to_record has None). */
typedef struct cell {
    int type, n;                    /* n: a text's length */
    union { sqlite3_int64 i; double d; const char *t; } v;
} cell_t;

struct sensor_store {
    sqlite3 *db;
    sqlite3_stmt *insert, *info;
    char srcid[257];                /* 64 characters of UTF-8 */
    row_text_t text;
    cell_t cell[NCOLUMNS];          /* the current record's values (fill_row) */
    const sensor_flow_t *batch;     /* what the ft_batch table holds while insert runs */
    size_t batch_n;
    char columns[COLUMNS_TEXT];     /* the column list of INSERT and of ft_batch's declaration */
};

static void fill_row(sensor_store_t *st, const sensor_flow_t *r);

/* A whole batch goes in with one statement, INSERT ... SELECT from the virtual table ft_batch
 * (its rows are the batch's records): SQLite then keeps its cursors open from row to row, where
 * one INSERT per record paid the statement's set-up each time (a third of the insert time on 1 M
 * distinct sessions, bench/query_bench.py). */
static const char INFO_SQL[] = "INSERT OR REPLACE INTO archive_info (key, value) VALUES (?1, ?2)";

static const char B64[] = "ABCDEFGHIJKLMNOPQRSTUVWXYZabcdefghijklmnopqrstuvwxyz0123456789+/";

/* The Community ID spec's ICMP request/reply pairs (pycommunityid's icmp.py and icmp6.py, after
 * Zeek's ICMP4_counterpart/ICMP6_counterpart), as capture.ICMP_PAIRS: 1 and *other = the
 * counterpart of a paired type. */
static int icmp_pair(unsigned proto, unsigned type, unsigned *other)
{
    static const uint8_t v4[][2] = {{8, 0}, {13, 14}, {15, 16}, {10, 9}, {17, 18}};
    static const uint8_t v6[][2] = {{128, 129}, {130, 131}, {133, 134}, {135, 136}, {139, 140}, {144, 145}};
    const uint8_t (*pairs)[2] = proto == 1 ? v4 : v6;
    size_t n = proto == 1 ? sizeof v4 / sizeof v4[0] : sizeof v6 / sizeof v6[0];
    for (size_t i = 0; i < n; i++)
        for (int j = 0; j < 2; j++)
            if (pairs[i][j] == type) {
                *other = pairs[i][!j];
                return 1;
            }
    return 0;
}

/* The replies of the queries decode.c keys by identifier (capture.ICMP_REPLIES): a record whose sport
 * is one of these saw only replies, and its side 0 is the requester they went to (fill_record). */
static int icmp_reply(unsigned proto, unsigned type)
{
    return proto == 1 ? type == 0 || type == 14 || type == 16 || type == 18 : type == 129;
}

/* Community ID v1 with seed 0, as capture.community_id: "1:" and 28 base64 characters. ICMP records
 * are turned back into the message as sent: a paired type with its counterpart as the ports (ordered),
 * any other type with its code (the port slot holds the quoted port for errors), not reordered. */
static void community_id(const sensor_flow_t *r, const facts_t *f, char out[30])
{
    size_t alen = r->addr_type == SENSOR_ADDR_IP4 ? 4 : 16;
    const uint8_t *a = r->addr[0], *b = r->addr[1];
    unsigned sp = f->ported ? r->port[0] : 0, dp = f->ported ? r->port[1] : 0;
    int ordered = 1;
    if ((r->proto == 1 || r->proto == 58) && f->ported) {
        unsigned other;
        if (!icmp_pair(r->proto, sp, &other)) {
            dp = r->icmp_code;
            ordered = 0;
        } else if (icmp_reply(r->proto, sp)) {   /* sent by side 1: its request type is side 0's */
            dp = sp;
            sp = other;
        } else {
            dp = other;
        }
    }
    if (ordered) {
        int c = memcmp(a, b, alen);
        if (c > 0 || (c == 0 && sp > dp)) {
            const uint8_t *t = a;
            a = b;
            b = t;
            unsigned tp = sp;
            sp = dp;
            dp = tp;
        }
    }
    uint8_t data[2 + 32 + 2 + 4];
    size_t n = 0;
    data[n++] = 0;
    data[n++] = 0;
    memcpy(data + n, a, alen);
    n += alen;
    memcpy(data + n, b, alen);
    n += alen;
    data[n++] = (uint8_t)r->proto;
    data[n++] = 0;
    if (f->ported) {
        uint8_t ports[4] = {(uint8_t)(sp >> 8), (uint8_t)sp, (uint8_t)(dp >> 8), (uint8_t)dp};
        memcpy(data + n, ports, 4);
        n += 4;
    }
    uint8_t d[21] = {0};
    sha1(data, n, d);
    out[0] = '1';
    out[1] = ':';
    for (int i = 0; i < 7; i++) {               /* 20 bytes: 6 whole groups, then 2 bytes and '=' */
        uint32_t v = (uint32_t)d[3 * i] << 16 | (uint32_t)d[3 * i + 1] << 8 | d[3 * i + 2];
        char *o = out + 2 + 4 * i;
        o[0] = B64[v >> 18];
        o[1] = B64[v >> 12 & 63];
        o[2] = B64[v >> 6 & 63];
        o[3] = i < 6 ? B64[v & 63] : '=';
    }
}

/* --- ft_batch: an eponymous virtual table whose rows are the batch being inserted ------------- */

typedef struct batch_vtab {
    sqlite3_vtab base;
    sensor_store_t *st;
} batch_vtab_t;

typedef struct batch_cursor {
    sqlite3_vtab_cursor base;
    size_t i;                       /* the record whose values st->cell holds */
} batch_cursor_t;

static sensor_store_t *store_of(sqlite3_vtab_cursor *cur)
{
    return ((batch_vtab_t *)cur->pVtab)->st;
}

static int batch_connect(sqlite3 *db, void *aux, int argc, const char *const *argv,
                         sqlite3_vtab **out, char **err)
{
    (void)argc, (void)argv, (void)err;
    sensor_store_t *st = aux;
    char sql[COLUMNS_TEXT + 32];
    snprintf(sql, sizeof sql, "CREATE TABLE x(%s)", st->columns);
    int rc = sqlite3_declare_vtab(db, sql);
    if (rc != SQLITE_OK)
        return rc;
    batch_vtab_t *vt = sqlite3_malloc(sizeof *vt);
    if (!vt)
        return SQLITE_NOMEM;
    memset(vt, 0, sizeof *vt);
    vt->st = aux;
    *out = &vt->base;
    return SQLITE_OK;
}

static int batch_disconnect(sqlite3_vtab *vt)
{
    sqlite3_free(vt);
    return SQLITE_OK;
}

static int batch_best_index(sqlite3_vtab *vt, sqlite3_index_info *info)
{
    (void)vt;
    info->estimatedCost = 1.0;      /* one way to read it: every row in order */
    info->estimatedRows = 1000;
    return SQLITE_OK;
}

static int batch_open(sqlite3_vtab *vt, sqlite3_vtab_cursor **out)
{
    (void)vt;
    batch_cursor_t *c = sqlite3_malloc(sizeof *c);
    if (!c)
        return SQLITE_NOMEM;
    memset(c, 0, sizeof *c);
    *out = &c->base;
    return SQLITE_OK;
}

static int batch_close(sqlite3_vtab_cursor *cur)
{
    sqlite3_free(cur);
    return SQLITE_OK;
}

static int batch_next(sqlite3_vtab_cursor *cur)
{
    batch_cursor_t *c = (batch_cursor_t *)cur;
    sensor_store_t *st = store_of(cur);
    if (++c->i < st->batch_n)
        fill_row(st, &st->batch[c->i]);
    return SQLITE_OK;
}

static int batch_filter(sqlite3_vtab_cursor *cur, int idx, const char *idx_str, int argc,
                        sqlite3_value **argv)
{
    (void)idx, (void)idx_str, (void)argc, (void)argv;
    batch_cursor_t *c = (batch_cursor_t *)cur;
    sensor_store_t *st = store_of(cur);
    c->i = 0;
    if (st->batch_n)
        fill_row(st, &st->batch[0]);
    return SQLITE_OK;
}

static int batch_eof(sqlite3_vtab_cursor *cur)
{
    return ((batch_cursor_t *)cur)->i >= store_of(cur)->batch_n;
}

static int batch_column(sqlite3_vtab_cursor *cur, sqlite3_context *ctx, int col)
{
    const cell_t *v = &store_of(cur)->cell[col];
    switch (v->type) {
    case SQLITE_INTEGER: sqlite3_result_int64(ctx, v->v.i); break;
    case SQLITE_FLOAT: sqlite3_result_double(ctx, v->v.d); break;
    case SQLITE_TEXT: sqlite3_result_text(ctx, v->v.t, v->n, SQLITE_STATIC); break;
    default: sqlite3_result_null(ctx); break;
    }
    return SQLITE_OK;
}

static int batch_rowid(sqlite3_vtab_cursor *cur, sqlite3_int64 *rowid)
{
    *rowid = (sqlite3_int64)((batch_cursor_t *)cur)->i;
    return SQLITE_OK;
}

static const sqlite3_module BATCH_MODULE = {
    .iVersion = 0,
    .xCreate = NULL,                /* eponymous-only: "FROM ft_batch" needs no CREATE */
    .xConnect = batch_connect,
    .xBestIndex = batch_best_index,
    .xDisconnect = batch_disconnect,
    .xOpen = batch_open,
    .xClose = batch_close,
    .xFilter = batch_filter,
    .xNext = batch_next,
    .xEof = batch_eof,
    .xColumn = batch_column,
    .xRowid = batch_rowid,
};

/* The column names joined by ", " into out (COLUMNS_TEXT bytes: the names are short). */
static void join_columns(char out[COLUMNS_TEXT])
{
    size_t n = 0;
    for (int i = 0; i < NCOLUMNS; i++)
        n += (size_t)snprintf(out + n, COLUMNS_TEXT - n, "%s%s", i ? ", " : "", sensor_store_columns[i]);
}

static void error_text(sqlite3 *db, char *errbuf)
{
    snprintf(errbuf, SENSOR_ERRBUF_SIZE, "%s", db ? sqlite3_errmsg(db) : "out of memory");
}

int sensor_store_open(const char *path, const char *srcid, char *errbuf, sensor_store_t **out)
{
    *out = NULL;
    if (strlen(srcid) >= sizeof ((sensor_store_t *)0)->srcid) {
        snprintf(errbuf, SENSOR_ERRBUF_SIZE, "sensor id longer than 256 bytes");
        return SENSOR_EINVAL;
    }
    sensor_store_t *st = calloc(1, sizeof *st);
    if (!st) {
        snprintf(errbuf, SENSOR_ERRBUF_SIZE, "out of memory");
        return SENSOR_ENOMEM;
    }
    strcpy(st->srcid, srcid);
    join_columns(st->columns);
    char insert[2 * COLUMNS_TEXT + 64];
    snprintf(insert, sizeof insert, "INSERT INTO flows (%s) SELECT %s FROM ft_batch", st->columns, st->columns);
    /* One thread uses the handle (the writer's): no mutex around each SQLite call. */
    int rc = sqlite3_open_v2(path, &st->db, SQLITE_OPEN_READWRITE | SQLITE_OPEN_NOMUTEX, NULL);
    if (rc == SQLITE_OK)
        /* FULL: each commit is on the medium when it returns (WAL with NORMAL syncs only at a
         * checkpoint, so a power cut could take back every commit since: more than one interval). */
        rc = sqlite3_exec(st->db, "PRAGMA synchronous = FULL", NULL, NULL, NULL);
    if (rc == SQLITE_OK)
        rc = sqlite3_busy_timeout(st->db, 5000);
    if (rc == SQLITE_OK)
        rc = sqlite3_create_module(st->db, "ft_batch", &BATCH_MODULE, st);
    if (rc == SQLITE_OK)
        rc = sqlite3_prepare_v3(st->db, insert, -1, SQLITE_PREPARE_PERSISTENT, &st->insert, NULL);
    if (rc == SQLITE_OK)
        rc = sqlite3_prepare_v3(st->db, INFO_SQL, -1, SQLITE_PREPARE_PERSISTENT, &st->info, NULL);
    if (rc != SQLITE_OK) {
        error_text(st->db, errbuf);
        sensor_store_close(st);
        return SENSOR_ESTORE;
    }
    *out = st;
    return SENSOR_OK;
}

int sensor_store_exec(sensor_store_t *st, const char *sql)
{
    return sqlite3_exec(st->db, sql, NULL, NULL, NULL);
}

int sensor_store_set_info(sensor_store_t *st, const char *key, const char *json_value)
{
    sqlite3_stmt *s = st->info;
    sqlite3_bind_text(s, 1, key, -1, SQLITE_TRANSIENT);
    sqlite3_bind_text(s, 2, json_value, -1, SQLITE_TRANSIENT);
    int rc = sqlite3_step(s);
    sqlite3_reset(s);
    return rc == SQLITE_DONE ? SQLITE_OK : rc;
}

/* Column i (COL_*) of the row being filled. */
static void put_int(cell_t *c, int i, sqlite3_int64 v)
{
    c[i].type = SQLITE_INTEGER;
    c[i].v.i = v;
}

static void put_double(cell_t *c, int i, double v)
{
    c[i].type = SQLITE_FLOAT;
    c[i].v.d = v;
}

static void put_text(cell_t *c, int i, const char *text, size_t n)
{
    c[i].type = SQLITE_TEXT;                /* row_text_t or the record: kept until the row is made */
    c[i].v.t = text;
    c[i].n = (int)n;
}

static void put_str(cell_t *c, int i, const char *text)
{
    put_text(c, i, text, strlen(text));          /* names: static storage */
}

static void put_u64(cell_t *c, int i, uint64_t v)
{
    if (v > INT64_MAX)                          /* not reachable by counters; never wrap */
        put_double(c, i, (double)v);
    else
        put_int(c, i, (sqlite3_int64)v);
}

/* One record's values as to_record makes them (NULL where it has None). */
static void fill_row(sensor_store_t *st, const sensor_flow_t *r)
{
    cell_t *s = st->cell;
    for (int i = 0; i < NCOLUMNS; i++)
        s[i].type = SQLITE_NULL;
    facts_t f;
    int ok = ft_record_facts(r, &f);             /* else: enum columns NULL, the rest as they are */
    row_text_t *t = &st->text;
    size_t n;
    int tcp = r->proto == 6 && f.ip;

    put_str(s, COL_srcid, st->srcid);
    put_u64(s, COL_seq, r->seq);
    if (ok)
        put_str(s, COL_cause, FT_CAUSES[r->cause]);
    put_double(s, COL_stime, (double)r->stime_us / 1e6);
    put_double(s, COL_ltime, (double)r->ltime_us / 1e6);
    put_double(s, COL_dur, (double)((int64_t)(r->ltime_us - r->stime_us)) / 1e6);
    put_int(s, COL_proto, r->proto);
    if ((n = ft_addr_text(r, 0, t->addr[0])))
        put_text(s, COL_saddr, t->addr[0], n);
    if ((n = ft_addr_text(r, 1, t->addr[1])))
        put_text(s, COL_daddr, t->addr[1], n);
    if (f.ported) {
        put_int(s, COL_sport, r->port[0]);
        put_int(s, COL_dport, r->port[1]);
    }
    if (ok) {
        const char *dir = FT_DIRS[r->dir];
        put_str(s, COL_dir, dir + strspn(dir, " "));
        put_str(s, COL_state, ft_state_text(r));
    }
    put_u64(s, COL_spkts, r->pkts[0]);
    put_u64(s, COL_dpkts, r->pkts[1]);
    put_u64(s, COL_sbytes, r->bytes[0]);
    put_u64(s, COL_dbytes, r->bytes[1]);
    put_u64(s, COL_sappbytes, r->appbytes[0]);
    put_u64(s, COL_dappbytes, r->appbytes[1]);
    if (f.sip && r->pkts[0]) {
        put_int(s, COL_stos, r->tos[0]);
        put_int(s, COL_sttl, r->ttl[0]);
    }
    if (f.sip && r->pkts[1]) {
        put_int(s, COL_dtos, r->tos[1]);
        put_int(s, COL_dttl, r->ttl[1]);
    }
    ft_mac_text(r->mac[0], t->mac[0]);
    put_text(s, COL_smac, t->mac[0], 17);
    ft_mac_text(r->mac[1], t->mac[1]);
    put_text(s, COL_dmac, t->mac[1], 17);
    if (r->vlan[0] != 0xFFFF)
        put_int(s, COL_svlan, r->vlan[0]);
    if (r->vlan[1] != 0xFFFF)
        put_int(s, COL_dvlan, r->vlan[1]);
    if (r->mpls[0] != 0xFFFFFFFFu)
        put_int(s, COL_smpls, r->mpls[0]);
    if (r->mpls[1] != 0xFFFFFFFFu)
        put_int(s, COL_dmpls, r->mpls[1]);
    put_text(s, COL_sflags, t->tcpflags[0], ft_flag_letters(r->tcpflags[0], FT_TCP_FLAG_LETTERS, t->tcpflags[0]));
    put_text(s, COL_dflags, t->tcpflags[1], ft_flag_letters(r->tcpflags[1], FT_TCP_FLAG_LETTERS, t->tcpflags[1]));
    put_double(s, COL_synack, r->synack_us / 1e6);
    put_double(s, COL_ackdat, r->ackdat_us / 1e6);
    put_double(s, COL_tcprtt, ((uint64_t)r->synack_us + r->ackdat_us) / 1e6);
    put_int(s, COL_sretrans, r->retrans[0]);
    put_int(s, COL_dretrans, r->retrans[1]);
    put_int(s, COL_sgap, r->gaps[0]);
    put_int(s, COL_dgap, r->gaps[1]);
    put_int(s, COL_smaxsz, r->maxsz[0]);
    put_int(s, COL_sminsz, r->minsz[0]);
    put_int(s, COL_dmaxsz, r->maxsz[1]);
    put_int(s, COL_dminsz, r->minsz[1]);
    ft_flgs_text(r, t->flgs);
    put_text(s, COL_flgs, t->flgs, 9);
    if (tcp && ok) {
        if (r->conn_state)                       /* 0: not classified, None in to_record */
            put_str(s, COL_conn_state, FT_CONN_STATES[r->conn_state]);
        put_text(s, COL_history, r->history, strnlen(r->history, sizeof r->history));
    }
    if (f.sip && r->proto <= 255 && (r->addr_type == SENSOR_ADDR_IP4 || r->addr_type == SENSOR_ADDR_IP6)) {
        community_id(r, &f, t->community_id);
        put_text(s, COL_community_id, t->community_id, 30);
    }
    put_int(s, COL_sintf, r->ifindex);
}

int sensor_store_insert(sensor_store_t *st, const sensor_flow_t *recs, size_t n)
{
    if (n == 0)
        return SQLITE_OK;
    st->batch = recs;
    st->batch_n = n;
    int rc = sqlite3_step(st->insert);
    sqlite3_reset(st->insert);
    st->batch = NULL;
    st->batch_n = 0;
    return rc == SQLITE_DONE ? SQLITE_OK : rc;
}

const char *sensor_store_error(const sensor_store_t *st)
{
    return sqlite3_errmsg(st->db);
}

int sensor_store_system_errno(const sensor_store_t *st)
{
    return sqlite3_system_errno(st->db);
}

void sensor_store_close(sensor_store_t *st)
{
    if (!st)
        return;
    sqlite3_finalize(st->insert);
    sqlite3_finalize(st->info);
    sqlite3_close(st->db);
    free(st);
}
