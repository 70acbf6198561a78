/* store_columns.h: the archive's flows columns that store.c fills, in table order: one X(name)
 * each. appliance/record.py is the column table; tests/test_record_table.py checks that this list
 * (exported as sensor_store_columns) is its stored columns, in the same order. */
#ifndef FLOWTAP_STORE_COLUMNS_H
#define FLOWTAP_STORE_COLUMNS_H

#define SENSOR_STORE_COLUMNS(X)                                                                      \
    X(srcid) X(seq) X(cause) X(stime) X(ltime) X(dur) X(proto) X(saddr) X(sport) X(daddr) X(dport)  \
    X(dir) X(state) X(spkts) X(dpkts) X(sbytes) X(dbytes) X(sappbytes) X(dappbytes) X(stos)        \
    X(dtos) X(sttl) X(dttl) X(smac) X(dmac) X(svlan) X(dvlan) X(smpls) X(dmpls) X(sflags)          \
    X(dflags) X(synack) X(ackdat) X(tcprtt) X(sretrans) X(dretrans) X(sgap) X(dgap) X(smaxsz)      \
    X(sminsz) X(dmaxsz) X(dminsz) X(flgs) X(conn_state) X(history) X(community_id) X(sintf)

#endif
