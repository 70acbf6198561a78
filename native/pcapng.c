/* pcapng.c: bounds-checked pcapng reader for files with mixed link types (see pcapng.h).
 *
 * Format (https://www.ietf.org/archive/id/draft-ietf-opsawg-pcapng): the file is a sequence of
 * blocks, each "type u32, total length u32, body, total length u32", total length a multiple of 4.
 * A Section Header Block (SHB) starts every section and fixes its byte order through the magic
 * 0x1A2B3C4D; Interface Description Blocks (IDB) number the interfaces 0, 1, ... within the
 * section; packets come in Enhanced (EPB), Simple (SPB) or obsolete Packet Blocks (PB).
 *
 * Every block is read whole into r->buf (at most PCAPNG_MAX_BLOCK bytes) and its trailer is
 * checked before any field is parsed; every field read is bounds-checked against the body length
 * and goes through the byte helpers below. */
#include "pcapng.h"

#include <errno.h>
#include <stdarg.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/stat.h>

enum {
    PCAPNG_MAX_BLOCK = 16 * 1024 * 1024,  /* larger blocks are treated as corruption */
    PCAPNG_MAX_IFACES = 65536,            /* per section */
    PCAPNG_ERR_SIZE = 256
};

enum {
    BT_PB = 0x00000002u,   /* obsolete Packet Block */
    BT_IDB = 0x00000001u,
    BT_SPB = 0x00000003u,
    BT_EPB = 0x00000006u,
    BT_SHB = 0x0A0D0D0Au   /* same value in either byte order */
};

enum { OPT_ENDOFOPT = 0, OPT_IF_TSRESOL = 9, OPT_IF_TSOFFSET = 14 };

struct pcapng_iface {
    int64_t tsoffset;      /* if_tsoffset, seconds */
    uint32_t linktype;
    uint32_t snaplen;      /* 0 = unlimited */
    uint8_t tsres_pow2;    /* 1: resolution is 2^-tsres_exp s; 0: 10^-tsres_exp s */
    uint8_t tsres_exp;
};

struct pcapng_reader {
    FILE *f;
    uint8_t *buf;                 /* body of the current block; owned, freed by pcapng_close */
    size_t bufcap;
    struct pcapng_iface *ifs;     /* interfaces of the current section; owned */
    uint32_t nifs, ifcap;
    uint64_t pos;                 /* file offset of the next byte to read */
    uint64_t block_pos;           /* file offset of the current block (for messages) */
    uint64_t last_ts_us;          /* time of the last EPB/PB: given to SPBs, which have none */
    int big_endian;               /* byte order of the current section */
    int in_section;               /* an SHB has been seen */
    int headers_only;             /* pcapng_has_mixed_linktypes: seek over non-SHB/IDB bodies */
    int state;                    /* 0 reading, 1 EOF reached, -1 error reported */
    char err[PCAPNG_ERR_SIZE];
};

/* ---- byte helpers: never cast the buffer to a struct ---- */

static uint16_t rd16(const uint8_t *p, int be)
{
    return be ? (uint16_t)((unsigned)p[0] << 8 | p[1]) : (uint16_t)((unsigned)p[1] << 8 | p[0]);
}

static uint32_t rd32(const uint8_t *p, int be)
{
    if (be)
        return (uint32_t)p[0] << 24 | (uint32_t)p[1] << 16 | (uint32_t)p[2] << 8 | p[3];
    return (uint32_t)p[3] << 24 | (uint32_t)p[2] << 16 | (uint32_t)p[1] << 8 | p[0];
}

static uint64_t rd64(const uint8_t *p, int be)
{
    uint64_t a = rd32(p, be), b = rd32(p + 4, be);
    return be ? (a << 32 | b) : (b << 32 | a);
}

static uint64_t mul_sat(uint64_t a, uint64_t b)
{
    if (a != 0 && b > UINT64_MAX / a)
        return UINT64_MAX;
    return a * b;
}

static uint64_t add_sat(uint64_t a, uint64_t b)
{
    return a > UINT64_MAX - b ? UINT64_MAX : a + b;
}

#if defined(__GNUC__)
__attribute__((format(printf, 2, 3)))
#endif
static void set_err(pcapng_reader_t *r, const char *fmt, ...)
{
    va_list ap;
    int n = snprintf(r->err, sizeof r->err, "pcapng block at offset %llu: ",
                     (unsigned long long)r->block_pos);
    if (n < 0 || (size_t)n >= sizeof r->err)
        n = 0;
    va_start(ap, fmt);
    vsnprintf(r->err + n, sizeof r->err - (size_t)n, fmt, ap);
    va_end(ap);
    r->state = -1;
}

/* Convert a timestamp in interface units to µs since the epoch, saturating at 0 and UINT64_MAX. */
static uint64_t ts_to_us(uint64_t t, const struct pcapng_iface *ifc)
{
    static const uint64_t pow10[20] = {
        1ull, 10ull, 100ull, 1000ull, 10000ull, 100000ull, 1000000ull, 10000000ull,
        100000000ull, 1000000000ull, 10000000000ull, 100000000000ull, 1000000000000ull,
        10000000000000ull, 100000000000000ull, 1000000000000000ull, 10000000000000000ull,
        100000000000000000ull, 1000000000000000000ull, 10000000000000000000ull
    };
    unsigned e = ifc->tsres_exp;
    uint64_t us;

    if (ifc->tsres_pow2) {
        /* t / 2^e seconds: whole seconds plus the fraction, scaled without overflow. */
        uint64_t secs = e >= 64 ? 0 : t >> e;
        uint64_t frac = e >= 64 ? t : (e == 0 ? 0 : t & ((1ull << e) - 1));
        unsigned sh = e;
        if (sh > 44) {          /* keep frac < 2^44 so frac * 10^6 < 2^64 */
            unsigned d = sh - 44;
            frac = d >= 64 ? 0 : frac >> d;
            sh = 44;
        }
        us = add_sat(mul_sat(secs, 1000000u), (frac * 1000000u) >> sh);
    } else if (e <= 6) {
        us = mul_sat(t, pow10[6 - e]);
    } else if (e - 6 < 20) {
        us = t / pow10[e - 6];
    } else {
        us = 0;
    }

    if (ifc->tsoffset > 0) {
        us = add_sat(us, mul_sat((uint64_t)ifc->tsoffset, 1000000u));
    } else if (ifc->tsoffset < 0) {
        uint64_t mag = (uint64_t)(-(ifc->tsoffset + 1)) + 1;   /* safe for INT64_MIN */
        uint64_t sub = mul_sat(mag, 1000000u);
        us = us > sub ? us - sub : 0;
    }
    return us;
}

/* Read exactly n bytes. 1 = done, 0 = EOF before the first byte (only if eof_ok), -1 = error. */
static int read_exact(pcapng_reader_t *r, void *dst, size_t n, int eof_ok, const char *what)
{
    size_t got = fread(dst, 1, n, r->f);
    r->pos += got;
    if (got == n)
        return 1;
    if (ferror(r->f)) {
        set_err(r, "read error in %s: %s", what, strerror(errno));
        return -1;
    }
    if (got == 0 && eof_ok)
        return 0;
    set_err(r, "truncated file: %s needs %zu bytes, only %zu left", what, n, got);
    return -1;
}

static int ensure_buf(pcapng_reader_t *r, size_t need)
{
    size_t cap;
    uint8_t *nb;

    if (need <= r->bufcap)
        return 0;
    cap = r->bufcap ? r->bufcap : 4096;
    while (cap < need)
        cap *= 2;               /* need <= PCAPNG_MAX_BLOCK, so this stays small */
    nb = realloc(r->buf, cap);
    if (nb == NULL) {
        set_err(r, "out of memory for a %zu-byte block", need);
        return -1;
    }
    r->buf = nb;
    r->bufcap = cap;
    return 0;
}

/* Read the next block. On 1, *type is set and the body (*body_len bytes) is in r->buf, its trailer
 * already checked; in headers_only mode bodies of blocks other than SHB/IDB are skipped and
 * *body_len is still set. 0 = clean EOF at a block boundary, -1 = error (r->err set). */
static int read_block(pcapng_reader_t *r, uint32_t *type, uint32_t *body_len)
{
    uint8_t hdr[12], trail[4];
    uint32_t total, blen, have = 0;
    int rc;

    r->block_pos = r->pos;
    rc = read_exact(r, hdr, 8, 1, "block header");
    if (rc <= 0)
        return rc;

    if (memcmp(hdr, "\x0A\x0D\x0D\x0A", 4) == 0) {
        /* SHB: the byte-order magic right after the length decides how to read the length. */
        if (read_exact(r, hdr + 8, 4, 0, "section header") < 0)
            return -1;
        if (memcmp(hdr + 8, "\x1A\x2B\x3C\x4D", 4) == 0) {
            r->big_endian = 1;
        } else if (memcmp(hdr + 8, "\x4D\x3C\x2B\x1A", 4) == 0) {
            r->big_endian = 0;
        } else {
            set_err(r, "section header has a bad byte-order magic");
            return -1;
        }
        have = 4;
    } else if (!r->in_section) {
        set_err(r, "not a pcapng file (no section header block first)");
        return -1;
    }

    *type = rd32(hdr, r->big_endian);
    total = rd32(hdr + 4, r->big_endian);
    if (total % 4 != 0 || total < 12 || total > PCAPNG_MAX_BLOCK ||
        (*type == BT_SHB && total < 28)) {
        set_err(r, "block type 0x%08x has an invalid total length %u", (unsigned)*type,
                (unsigned)total);
        return -1;
    }
    blen = total - 12;

    if (r->headers_only && *type != BT_SHB && *type != BT_IDB) {
        /* Skip the body; blen <= 16 MiB fits a long. */
        if (fseek(r->f, (long)blen, SEEK_CUR) != 0) {
            set_err(r, "seek failed: %s", strerror(errno));
            return -1;
        }
        r->pos += blen;
    } else {
        if (ensure_buf(r, blen ? blen : 1) < 0)
            return -1;
        memcpy(r->buf, hdr + 8, have);
        if (blen > have && read_exact(r, r->buf + have, blen - have, 0, "block body") < 0)
            return -1;
    }
    if (read_exact(r, trail, 4, 0, "block trailer") < 0)
        return -1;
    if (rd32(trail, r->big_endian) != total) {
        set_err(r, "block total length in header (%u) and trailer (%u) differ", (unsigned)total,
                (unsigned)rd32(trail, r->big_endian));
        return -1;
    }
    *body_len = blen;
    return 1;
}

/* SHB body: magic(4) major(2) minor(2) section_length(8) options. Starts a new interface list. */
static int handle_shb(pcapng_reader_t *r, uint32_t blen)
{
    uint16_t major;

    if (blen < 16) {
        set_err(r, "section header body too short (%u bytes)", (unsigned)blen);
        return -1;
    }
    major = rd16(r->buf + 4, r->big_endian);
    if (major != 1) {
        set_err(r, "unsupported pcapng major version %u", (unsigned)major);
        return -1;
    }
    r->nifs = 0;
    r->in_section = 1;
    return 0;
}

/* IDB body: linktype(2) reserved(2) snaplen(4) options. Appends to the section's interfaces. */
static int handle_idb(pcapng_reader_t *r, uint32_t blen)
{
    const uint8_t *b = r->buf;
    struct pcapng_iface ifc = { .tsres_exp = 6 };   /* default resolution: 10^-6 s */
    uint32_t p = 8;

    if (blen < 8) {
        set_err(r, "interface description body too short (%u bytes)", (unsigned)blen);
        return -1;
    }
    ifc.linktype = rd16(b, r->big_endian);
    ifc.snaplen = rd32(b + 4, r->big_endian);

    while (blen - p >= 4) {
        uint16_t code = rd16(b + p, r->big_endian);
        uint16_t olen = rd16(b + p + 2, r->big_endian);
        uint32_t padded = ((uint32_t)olen + 3u) & ~3u;
        p += 4;
        if (olen > blen - p) {
            set_err(r, "interface option %u of length %u runs past the block", (unsigned)code,
                    (unsigned)olen);
            return -1;
        }
        if (code == OPT_ENDOFOPT)
            break;
        if (code == OPT_IF_TSRESOL) {
            if (olen != 1) {
                set_err(r, "if_tsresol option has length %u, not 1", (unsigned)olen);
                return -1;
            }
            ifc.tsres_pow2 = (b[p] & 0x80) != 0;
            ifc.tsres_exp = b[p] & 0x7f;
        } else if (code == OPT_IF_TSOFFSET) {
            if (olen != 8) {
                set_err(r, "if_tsoffset option has length %u, not 8", (unsigned)olen);
                return -1;
            }
            uint64_t v = rd64(b + p, r->big_endian);
            memcpy(&ifc.tsoffset, &v, sizeof v);    /* two's complement reinterpretation */
        }
        if (padded > blen - p)      /* last option without its padding: tolerate */
            break;
        p += padded;
    }

    if (r->nifs == r->ifcap) {
        uint32_t ncap = r->ifcap ? r->ifcap * 2 : 8;
        struct pcapng_iface *n;
        if (r->nifs >= PCAPNG_MAX_IFACES) {
            set_err(r, "more than %u interfaces in one section", (unsigned)PCAPNG_MAX_IFACES);
            return -1;
        }
        n = realloc(r->ifs, (size_t)ncap * sizeof *n);
        if (n == NULL) {
            set_err(r, "out of memory for interface %u", (unsigned)r->nifs);
            return -1;
        }
        r->ifs = n;
        r->ifcap = ncap;
    }
    r->ifs[r->nifs++] = ifc;
    return 0;
}

/* Allocates the reader and opens path; on success *out is owned by the caller (pcapng_close). */
static int reader_new(const char *path, int headers_only, pcapng_reader_t **out, char *errbuf,
                      size_t errlen)
{
    pcapng_reader_t *r = NULL;
    uint32_t type = 0, blen = 0;
    int rc;

    *out = NULL;
    if (errlen > 0)
        errbuf[0] = '\0';
    if (path == NULL) {
        if (errlen > 0)
            snprintf(errbuf, errlen, "pcapng: no path");
        goto fail;
    }
    r = calloc(1, sizeof *r);
    if (r == NULL) {
        if (errlen > 0)
            snprintf(errbuf, errlen, "pcapng: out of memory");
        goto fail;
    }
    r->headers_only = headers_only;
    r->f = fopen(path, "rb");
    if (r->f == NULL) {
        if (errlen > 0)
            snprintf(errbuf, errlen, "%s: %s", path, strerror(errno));
        goto fail;
    }
    rc = read_block(r, &type, &blen);
    if (rc == 0)
        set_err(r, "empty file");
    if (rc <= 0 || handle_shb(r, blen) < 0) {
        if (errlen > 0)
            snprintf(errbuf, errlen, "%s: %s", path, r->err);
        goto fail;
    }
    *out = r;
    return 0;

fail:
    pcapng_close(r);
    return -1;
}

int pcapng_has_mixed_linktypes(const char *path)
{
    pcapng_reader_t *r = NULL;
    uint32_t type, blen, first = 0;
    int have_first = 0, mixed = 0;

    struct stat st;
    if (stat(path, &st) < 0 || !S_ISREG(st.st_mode))
        return 0;                     /* a pipe can be read once only: libpcap gets it whole */
    if (reader_new(path, 1, &r, NULL, 0) < 0)
        return 0;
    while (!mixed && read_block(r, &type, &blen) == 1) {
        if (type == BT_SHB) {
            if (handle_shb(r, blen) < 0)
                break;
        } else if (type == BT_IDB) {
            uint32_t lt;
            if (blen < 8)
                break;
            lt = rd16(r->buf, r->big_endian);
            if (!have_first) {
                first = lt;
                have_first = 1;
            } else if (lt != first) {
                mixed = 1;
            }
        }
    }
    pcapng_close(r);
    return mixed;
}

int pcapng_open(const char *path, pcapng_reader_t **out, char *errbuf, size_t errlen)
{
    if (out == NULL) {
        if (errlen > 0)
            snprintf(errbuf, errlen, "pcapng: no output handle");
        return -1;
    }
    return reader_new(path, 0, out, errbuf, errlen);
}

static int get_iface(pcapng_reader_t *r, uint32_t id, const char *what,
                     const struct pcapng_iface **ifc)
{
    if (id >= r->nifs) {
        set_err(r, "%s refers to interface %u, but the section has %u", what, (unsigned)id,
                (unsigned)r->nifs);
        return -1;
    }
    *ifc = &r->ifs[id];
    return 0;
}

int pcapng_next(pcapng_reader_t *r, uint64_t *ts_us, uint32_t *caplen, uint32_t *len,
                int *linktype, const uint8_t **data)
{
    if (r == NULL)
        return -1;
    while (r->state == 0) {
        const struct pcapng_iface *ifc = NULL;
        const uint8_t *b;
        uint32_t type, blen, cap, orig, room;
        uint64_t ts = 0;
        int rc = read_block(r, &type, &blen);

        if (rc == 0) {
            r->state = 1;
            break;
        }
        if (rc < 0)
            return -1;
        b = r->buf;

        switch (type) {
        case BT_SHB:
            if (handle_shb(r, blen) < 0)
                return -1;
            continue;
        case BT_IDB:
            if (handle_idb(r, blen) < 0)
                return -1;
            continue;
        case BT_EPB:    /* if_id(4) ts_hi(4) ts_lo(4) caplen(4) len(4) data options */
        case BT_PB:     /* if_id(2) drops(2) ts_hi(4) ts_lo(4) caplen(4) len(4) data options */
            if (blen < 20) {
                set_err(r, "packet block body too short (%u bytes)", (unsigned)blen);
                return -1;
            }
            if (get_iface(r, type == BT_EPB ? rd32(b, r->big_endian) : rd16(b, r->big_endian),
                          "packet block", &ifc) < 0)
                return -1;
            ts = (uint64_t)rd32(b + 4, r->big_endian) << 32 | rd32(b + 8, r->big_endian);
            cap = rd32(b + 12, r->big_endian);
            orig = rd32(b + 16, r->big_endian);
            room = blen - 20;
            if (cap > room) {
                set_err(r, "captured length %u exceeds the %u bytes the block holds",
                        (unsigned)cap, (unsigned)room);
                return -1;
            }
            *data = b + 20;
            break;
        case BT_SPB:    /* len(4) data; caplen = min(len, snaplen, room); no timestamp */
            if (blen < 4) {
                set_err(r, "simple packet block body too short (%u bytes)", (unsigned)blen);
                return -1;
            }
            if (get_iface(r, 0, "simple packet block", &ifc) < 0)
                return -1;
            orig = rd32(b, r->big_endian);
            room = blen - 4;
            cap = orig < room ? orig : room;
            if (ifc->snaplen != 0 && cap > ifc->snaplen)
                cap = ifc->snaplen;
            *data = b + 4;
            break;
        default:        /* NRB, ISB, DSB, custom and unknown blocks */
            continue;
        }

        if (type != BT_SPB)
            r->last_ts_us = ts_to_us(ts, ifc);
        *ts_us = r->last_ts_us;
        *caplen = cap;
        *len = orig;
        *linktype = (int)ifc->linktype;
        return 1;
    }
    return r->state < 0 ? -1 : 0;
}

const char *pcapng_error(const pcapng_reader_t *r)
{
    return r ? r->err : "pcapng: no reader";
}

void pcapng_close(pcapng_reader_t *r)
{
    if (r == NULL)
        return;
    if (r->f != NULL)
        fclose(r->f);
    free(r->buf);
    free(r->ifs);
    free(r);
}
