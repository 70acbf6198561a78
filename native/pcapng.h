/* pcapng.h: a small, bounds-checked pcapng reader for the one case libpcap 1.10 refuses:
 * pcapng files whose interfaces have different link types. Every other capture stays on libpcap.
 * No globals, no printing; all state lives in the reader handle. */
#ifndef FLOWTAP_PCAPNG_H
#define FLOWTAP_PCAPNG_H
#include <stddef.h>
#include <stdint.h>

typedef struct pcapng_reader pcapng_reader_t;

/* 1 if path is a pcapng file in which two interfaces (in any section) have different link types;
 * 0 otherwise (also 0 on any read error: then libpcap opens it and reports the problem, and for
 * anything but a regular file, such as a pipe, which only libpcap reads).
 * Reads only block headers and IDBs. */
int pcapng_has_mixed_linktypes(const char *path);

/* Open; on success *out is set (the caller frees it with pcapng_close) and 0 returned; on error
 * *out is NULL, -1 is returned and errbuf (errlen bytes, may be 0) says why. */
int pcapng_open(const char *path, pcapng_reader_t **out, char *errbuf, size_t errlen);

/* Next packet: 1 = packet (ts in µs since the epoch honouring if_tsresol, including power-of-2
 * resolutions, and if_tsoffset; caplen, len (original length), the LINKTYPE_* of the packet's
 * interface; *data points into the reader and is valid until the next call), 0 = clean EOF,
 * -1 = corrupt or truncated file (message via pcapng_error). A Simple Packet Block carries no
 * timestamp: it gets the time of the previous packet in the file (0 if none). After -1 or 0 every
 * later call returns the same value. */
int pcapng_next(pcapng_reader_t *r, uint64_t *ts_us, uint32_t *caplen, uint32_t *len,
                int *linktype, const uint8_t **data);

/* Last error message ("" if none); valid until the next call on r. */
const char *pcapng_error(const pcapng_reader_t *r);

void pcapng_close(pcapng_reader_t *r); /* NULL-safe */

#endif
