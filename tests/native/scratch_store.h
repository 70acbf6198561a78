/* scratch_store.h: a scratch archive for the harnesses, so every record they drain is also bound
 * by store.c (and, in the fuzzer, printed by format.c). Header-only: each harness is one file. */
#ifndef FLOWTAP_SCRATCH_STORE_H
#define FLOWTAP_SCRATCH_STORE_H
#include "sensor.h"
#include "store_columns.h"

#include <sqlite3.h>
#include <unistd.h>

/* The flows table's columns (store_columns.h), untyped: enough for store.c; one more column
 * after them takes the list's trailing comma. */
#define SCRATCH_COLUMN(name) #name ","
static const char SCRATCH_SCHEMA[] =
    "CREATE TABLE IF NOT EXISTS flows (" SENSOR_STORE_COLUMNS(SCRATCH_COLUMN) " scratch_end);"
    "CREATE TABLE IF NOT EXISTS archive_info (key TEXT PRIMARY KEY, value TEXT NOT NULL);";

/* Make the scratch archive at path and open a store on it: the store, or NULL. With unlink_after,
 * the file is removed at once (the open connection keeps it). */
static sensor_store_t *scratch_store_open(const char *path, int unlink_after)
{
    char errbuf[SENSOR_ERRBUF_SIZE];
    sensor_store_t *st = NULL;
    sqlite3 *db = NULL;
    int rc = sqlite3_open(path, &db);
    if (rc == SQLITE_OK)
        rc = sqlite3_exec(db, SCRATCH_SCHEMA, NULL, NULL, NULL);
    sqlite3_close(db);
    if (rc != SQLITE_OK || sensor_store_open(path, "scratch-sensor", errbuf, &st) != SENSOR_OK)
        st = NULL;
    else if (sensor_store_exec(st, "PRAGMA journal_mode = MEMORY")) {   /* no journal file per batch */
        sensor_store_close(st);
        st = NULL;
    }
    if (unlink_after)
        unlink(path);
    return st;
}

/* Bind recs[0..n) in a transaction that is rolled back (the scratch file stays small): 0 or 1. */
static int scratch_store_insert(sensor_store_t *st, const sensor_flow_t *recs, size_t n)
{
    if (!st || !n)
        return 0;
    return sensor_store_exec(st, "BEGIN") || sensor_store_insert(st, recs, n)
           || sensor_store_exec(st, "ROLLBACK");
}

#endif
