/* cluster.c: sensor_cluster, racluster -m over archives merged and printed in C.
 *
 * appliance/query.py plans each archive file (which rows, the WHERE clause and its parameters) and
 * hands the SELECT to this file, which reads the rows over its own read-only connection and merges
 * them in a hash table keyed by the (masked) -m key values, with exactly the rules of
 * appliance/cluster.py's Clusterer (correction off, as for every -m key). The merged records come
 * out sorted as Clusterer.results sorts them, printed by format.c's line assembly as
 * output.TextWriter prints them.
 *
 * Values are kept as Python would hold them (None, int, float, str), so the merge rules apply to
 * them unchanged. Wherever Python would print something this file cannot spell the same way (a
 * value of another type than the column's, text beyond printable ASCII, sums beyond 64 bits,
 * service names, an IPv6 mask result Python versions spell differently, a SQL function only
 * Python provides), it returns SENSOR_EDECLINE before printing anything, and the caller clusters
 * in Python. tests/test_cluster_native.py compares both paths byte for byte. */
#include "format.h"
#include "siphash.h"

#include <arpa/inet.h>
#include <sqlite3.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/random.h>
#include <sys/socket.h>

enum { V_NULL = 0, V_INT = 1, V_REAL = 2, V_TEXT = 3 };

/* One value as Python holds it; text is an id into the string pool (equal ids: equal strings). */
typedef struct value {
    uint32_t type;
    uint32_t s;
    union {
        int64_t i;
        double d;
    };
} value_t;

/* Each column's Python type (None allowed everywhere but stime/ltime) and merge rule. */
enum { K_INT = V_INT, K_REAL = V_REAL, K_TEXT = V_TEXT };
enum { M_FIRST, M_IDENTITY, M_SUM, M_MIN, M_MAX, M_DUR, M_STATE, M_LASTANY, M_LETTERS, M_FLGS,
       M_LAST, M_MAXSZ, M_MINSZ, M_RTT, M_NONE };

typedef struct column_rule {
    uint8_t kind, merge;
} column_rule_t;

static const column_rule_t RULES[SENSOR_FIELD_COUNT] = {
    [SENSOR_FIELD_SRCID] = {K_TEXT, M_IDENTITY},   [SENSOR_FIELD_SEQ] = {K_INT, M_FIRST},
    [SENSOR_FIELD_CAUSE] = {K_TEXT, M_LASTANY},    [SENSOR_FIELD_STIME] = {K_REAL, M_MIN},
    [SENSOR_FIELD_LTIME] = {K_REAL, M_MAX},        [SENSOR_FIELD_DUR] = {K_REAL, M_DUR},
    [SENSOR_FIELD_TRANS] = {0, M_NONE},            [SENSOR_FIELD_FLGS] = {K_TEXT, M_FLGS},
    [SENSOR_FIELD_PROTO] = {K_INT, M_IDENTITY},    [SENSOR_FIELD_SADDR] = {K_TEXT, M_IDENTITY},
    [SENSOR_FIELD_SPORT] = {K_INT, M_IDENTITY},    [SENSOR_FIELD_DIR] = {K_TEXT, M_FIRST},
    [SENSOR_FIELD_DADDR] = {K_TEXT, M_IDENTITY},   [SENSOR_FIELD_DPORT] = {K_INT, M_IDENTITY},
    [SENSOR_FIELD_SPKTS] = {K_INT, M_SUM},         [SENSOR_FIELD_DPKTS] = {K_INT, M_SUM},
    [SENSOR_FIELD_PKTS] = {K_INT, M_SUM},          [SENSOR_FIELD_SBYTES] = {K_INT, M_SUM},
    [SENSOR_FIELD_DBYTES] = {K_INT, M_SUM},        [SENSOR_FIELD_BYTES] = {K_INT, M_SUM},
    [SENSOR_FIELD_SAPPBYTES] = {K_INT, M_SUM},     [SENSOR_FIELD_DAPPBYTES] = {K_INT, M_SUM},
    [SENSOR_FIELD_APPBYTES] = {K_INT, M_SUM},      [SENSOR_FIELD_STATE] = {K_TEXT, M_STATE},
    [SENSOR_FIELD_STOS] = {K_INT, M_LAST},         [SENSOR_FIELD_DTOS] = {K_INT, M_LAST},
    [SENSOR_FIELD_STTL] = {K_INT, M_LAST},         [SENSOR_FIELD_DTTL] = {K_INT, M_LAST},
    [SENSOR_FIELD_SMAC] = {K_TEXT, M_LAST},        [SENSOR_FIELD_DMAC] = {K_TEXT, M_LAST},
    [SENSOR_FIELD_SVLAN] = {K_INT, M_LAST},        [SENSOR_FIELD_DVLAN] = {K_INT, M_LAST},
    [SENSOR_FIELD_SMPLS] = {K_INT, M_LAST},        [SENSOR_FIELD_DMPLS] = {K_INT, M_LAST},
    [SENSOR_FIELD_SFLAGS] = {K_TEXT, M_LETTERS},   [SENSOR_FIELD_DFLAGS] = {K_TEXT, M_LETTERS},
    [SENSOR_FIELD_SYNACK] = {K_REAL, M_RTT},       [SENSOR_FIELD_ACKDAT] = {K_REAL, M_RTT},
    [SENSOR_FIELD_TCPRTT] = {K_REAL, M_RTT},       [SENSOR_FIELD_SRETRANS] = {K_INT, M_SUM},
    [SENSOR_FIELD_DRETRANS] = {K_INT, M_SUM},      [SENSOR_FIELD_SGAP] = {K_INT, M_SUM},
    [SENSOR_FIELD_DGAP] = {K_INT, M_SUM},          [SENSOR_FIELD_SMAXSZ] = {K_INT, M_MAXSZ},
    [SENSOR_FIELD_SMINSZ] = {K_INT, M_MINSZ},      [SENSOR_FIELD_DMAXSZ] = {K_INT, M_MAXSZ},
    [SENSOR_FIELD_DMINSZ] = {K_INT, M_MINSZ},      [SENSOR_FIELD_CONN_STATE] = {K_TEXT, M_LAST},
    [SENSOR_FIELD_HISTORY] = {K_TEXT, M_LAST},
};

const char sensor_cluster_letter_order[] = "FSRPAUEC78";   /* read by cluster.py */
#define LETTER_ORDER sensor_cluster_letter_order
/* appliance/record.py's names of the M_* rules, in that order (M_NONE: none). */
static const char *const MERGE_NAMES[M_NONE + 1] = {
    "first", "identity", "sum", "min", "max", "dur", "state", "lastany", "letters", "flgs", "last",
    "maxsz", "minsz", "rtt", NULL};

const char *sensor_cluster_merge_rule(unsigned field)
{
    return field < SENSOR_FIELD_COUNT ? MERGE_NAMES[RULES[field].merge] : NULL;
}

enum { NO_SLOT = 0xFF, NO_ID = 0xFFFFFFFFu, MAX_TEXT = 255, MAX_MASKED = 2 };

/* Interned strings: bytes in one arena, an open-addressing index of entry numbers. */
typedef struct pstr {
    uint32_t off, len;
    uint32_t masked[MAX_MASKED];    /* id + 1 of the masked text per masked key, 0: not yet */
} pstr_t;

typedef struct pool {
    char *bytes;
    size_t used, cap;
    pstr_t *s;
    uint32_t n, ncap;
    uint32_t *index;                /* NO_ID: empty */
    uint32_t imask;
} pool_t;

/* Per cluster, beside its values. */
typedef struct head {
    uint64_t trans, updated;        /* records merged; rank of the last update (dict order) */
    uint64_t vary;                  /* bit f: identity field f differs between records (None) */
    uint64_t hash;
} head_t;

/* Per cluster and address key, for sorting (fields.sort_value). */
typedef struct addr_sort {
    uint8_t cls, fam;               /* 0 an address of family fam (4 or 6), 1 other text, 2 None */
    uint8_t bytes[16];
    uint32_t s;                     /* the text, for cls 1 */
} addr_sort_t;

struct sensor_cluster {
    size_t nkeys;
    uint8_t key_field[SENSOR_CLUSTER_MAX_KEYS];
    int16_t key_prefix[SENSOR_CLUSTER_MAX_KEYS];   /* -1: none */
    int8_t key_masked[SENSOR_CLUSTER_MAX_KEYS];    /* index into pstr.masked, -1 */
    int8_t key_addr[SENSOR_CLUSTER_MAX_KEYS];      /* index among address keys, -1 */
    size_t naddr;
    uint64_t key_bits;              /* bit f: field f is a key */
    size_t nslots;
    uint8_t slot_of[SENSOR_FIELD_COUNT];
    uint8_t field_of[SENSOR_FIELD_COUNT];
    int norep;
    uint8_t seed[16];
    pool_t pool;
    uint32_t id_req, id_int, id_empty;
    value_t *vals;                  /* n * nslots */
    head_t *head;
    size_t n, cap;
    uint32_t *table;                /* NO_ID: empty; cluster numbers */
    size_t tmask;
    uint64_t updates;
    value_t *row;                   /* nslots: the row being merged */
    /* after finish */
    uint32_t *order;
    addr_sort_t *asort;
    sensor_format_spec_t spec;
    size_t next;
    int finished;
    char err[SENSOR_ERRBUF_SIZE];
};

static int fail(sensor_cluster_t *c, int rc, const char *what)
{
    snprintf(c->err, sizeof c->err, "%s", what);
    return rc;
}

/* --- strings ------------------------------------------------------------------------------ */

static uint64_t hash_bytes(const sensor_cluster_t *c, const void *p, size_t n)
{
    return siphash13(c->seed, p, n);
}

/* The id of the string s[0..n), added if new: SENSOR_OK or SENSOR_ENOMEM. */
static int intern(sensor_cluster_t *c, const char *s, size_t n, uint32_t *id)
{
    pool_t *p = &c->pool;
    if ((size_t)p->n * 2 >= (size_t)p->imask + 1) {          /* grow the index to keep it half empty */
        uint32_t size = (p->imask + 1) * 2;
        uint32_t *index = malloc((size_t)size * sizeof *index);
        if (!index)
            return SENSOR_ENOMEM;
        memset(index, 0xFF, (size_t)size * sizeof *index);
        for (uint32_t k = 0; k < p->n; k++) {
            uint32_t h = (uint32_t)hash_bytes(c, p->bytes + p->s[k].off, p->s[k].len) & (size - 1);
            while (index[h] != NO_ID)
                h = (h + 1) & (size - 1);
            index[h] = k;
        }
        free(p->index);
        p->index = index;
        p->imask = size - 1;
    }
    uint32_t h = (uint32_t)hash_bytes(c, s, n) & p->imask;
    for (; p->index[h] != NO_ID; h = (h + 1) & p->imask) {
        const pstr_t *e = &p->s[p->index[h]];
        if (e->len == n && memcmp(p->bytes + e->off, s, n) == 0) {
            *id = p->index[h];
            return SENSOR_OK;
        }
    }
    if (p->n == p->ncap) {
        uint32_t ncap = p->ncap ? p->ncap * 2 : 1024;
        pstr_t *grown = realloc(p->s, (size_t)ncap * sizeof *grown);
        if (!grown)
            return SENSOR_ENOMEM;
        p->s = grown;
        p->ncap = ncap;
    }
    if (p->cap - p->used < n) {
        size_t cap = p->cap ? p->cap : 65536;
        while (cap - p->used < n)
            cap *= 2;
        char *grown = realloc(p->bytes, cap);
        if (!grown)
            return SENSOR_ENOMEM;
        p->bytes = grown;
        p->cap = cap;
    }
    if (n)
        memcpy(p->bytes + p->used, s, n);
    pstr_t *e = &p->s[p->n];
    e->off = (uint32_t)p->used;
    e->len = (uint32_t)n;
    memset(e->masked, 0, sizeof e->masked);
    p->used += n;
    p->index[h] = p->n;
    *id = p->n++;
    return SENSOR_OK;
}

static const char *text_of(const sensor_cluster_t *c, uint32_t id, size_t *len)
{
    *len = c->pool.s[id].len;
    return c->pool.bytes + c->pool.s[id].off;
}

/* --- addresses ---------------------------------------------------------------------------- */

/* fields.is_mac */
static int is_mac(const char *s, size_t n)
{
    if (n != 17)
        return 0;
    int colons = 0;
    for (size_t i = 0; i < n; i++)
        if (s[i] == ':') {
            colons++;
            if (i && s[i - 1] == ':')
                return 0;
        }
    return colons == 5;
}

/* Python's str(IPv6Address): lowercase hextets, the first longest run (>= 2) of zeros as "::". */
static size_t ip6_text(const uint8_t a[16], char out[48])
{
    unsigned h[8];
    for (int i = 0; i < 8; i++)
        h[i] = (unsigned)a[2 * i] << 8 | a[2 * i + 1];
    int best = -1, best_len = 0;
    for (int i = 0; i < 8;) {
        if (h[i]) {
            i++;
            continue;
        }
        int j = i;
        while (j < 8 && !h[j])
            j++;
        if (j - i > best_len) {
            best = i;
            best_len = j - i;
        }
        i = j;
    }
    if (best_len < 2)
        best = -1;
    size_t n = 0;
    for (int i = 0; i < 8; i++) {
        if (i == best) {
            out[n++] = ':';
            if (i == 0)
                out[n++] = ':';
            i += best_len - 1;
            continue;
        }
        n += (size_t)snprintf(out + n, 48 - n, "%x", h[i]);
        if (i < 7)
            out[n++] = ':';
    }
    return n;
}

/* cluster._mask of text id under prefix into *out (an id): SENSOR_OK, or SENSOR_EDECLINE where
 * Python's result is not spelled the same by every version (IPv4-mapped) or not parsed alike. */
static int mask_text(sensor_cluster_t *c, uint32_t id, int prefix, uint32_t *out)
{
    size_t n;
    const char *s = text_of(c, id, &n);
    int dot = memchr(s, '.', n) != NULL, colon = memchr(s, ':', n) != NULL;
    if (!dot && (!colon || is_mac(s, n))) {
        *out = id;                                 /* a MAC or other text: unchanged */
        return SENSOR_OK;
    }
    char tmp[64];
    if (n >= sizeof tmp || (dot && colon))
        return fail(c, SENSOR_EDECLINE, "an address C does not mask as Python");
    memcpy(tmp, s, n);
    tmp[n] = '\0';
    uint8_t a[16];
    int fam = dot ? AF_INET : AF_INET6;
    if (inet_pton(fam, tmp, a) != 1)
        return fail(c, SENSOR_EDECLINE, "an address C does not parse as Python");
    int bits = dot ? 32 : 128;
    if (prefix > bits)
        prefix = bits;
    for (int i = 0; i < bits / 8; i++) {
        int keep = prefix - 8 * i;
        a[i] &= keep >= 8 ? 0xFF : keep <= 0 ? 0 : (uint8_t)(0xFF << (8 - keep));
    }
    if (dot) {
        n = (size_t)snprintf(tmp, sizeof tmp, "%u.%u.%u.%u", a[0], a[1], a[2], a[3]);
    } else {
        static const uint8_t mapped[12] = {0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0xFF, 0xFF};
        if (memcmp(a, mapped, 12) == 0)
            return fail(c, SENSOR_EDECLINE, "an IPv4-mapped mask result");
        n = ip6_text(a, tmp);
    }
    return intern(c, tmp, n, out);
}

/* fields.sort_value of an address value. */
static void addr_sort_key(const sensor_cluster_t *c, const value_t *v, addr_sort_t *k)
{
    memset(k, 0, sizeof *k);
    if (v->type != V_TEXT) {
        k->cls = 2;
        return;
    }
    size_t n;
    const char *s = text_of(c, v->s, &n);
    char tmp[64];
    k->s = v->s;
    k->cls = 1;
    if (n >= sizeof tmp)
        return;
    memcpy(tmp, s, n);
    tmp[n] = '\0';
    if (inet_pton(AF_INET, tmp, k->bytes) == 1) {
        k->cls = 0;
        k->fam = 4;
    } else if (inet_pton(AF_INET6, tmp, k->bytes) == 1) {
        k->cls = 0;
        k->fam = 6;
    }
}

/* --- the table ---------------------------------------------------------------------------- */

static value_t *vals_of(const sensor_cluster_t *c, size_t k)
{
    return c->vals + k * c->nslots;
}

static int same(const value_t *a, const value_t *b)
{
    if (a->type != b->type)
        return 0;
    switch (a->type) {
    case V_INT: return a->i == b->i;
    case V_REAL: return a->d == b->d;
    case V_TEXT: return a->s == b->s;
    default: return 1;
    }
}

static uint64_t key_hash(const sensor_cluster_t *c, const value_t *kv)
{
    uint8_t buf[SENSOR_CLUSTER_MAX_KEYS * 9];
    size_t n = 0;
    for (size_t k = 0; k < c->nkeys; k++) {
        int64_t payload = kv[k].type == V_TEXT ? (int64_t)kv[k].s : kv[k].type == V_INT ? kv[k].i : 0;
        buf[n++] = (uint8_t)kv[k].type;
        memcpy(buf + n, &payload, 8);
        n += 8;
    }
    return hash_bytes(c, buf, n);
}

static int grow_table(sensor_cluster_t *c)
{
    size_t size = c->tmask ? (c->tmask + 1) * 2 : 4096;
    uint32_t *t = malloc(size * sizeof *t);
    if (!t)
        return SENSOR_ENOMEM;
    memset(t, 0xFF, size * sizeof *t);
    for (size_t k = 0; k < c->n; k++) {
        size_t h = c->head[k].hash & (size - 1);
        while (t[h] != NO_ID)
            h = (h + 1) & (size - 1);
        t[h] = (uint32_t)k;
    }
    free(c->table);
    c->table = t;
    c->tmask = size - 1;
    return SENSOR_OK;
}

static int new_cluster(sensor_cluster_t *c, size_t *k)
{
    if (c->n == c->cap) {
        size_t cap = c->cap ? c->cap * 2 : 4096;
        if (cap > NO_ID / 2)
            return fail(c, SENSOR_EDECLINE, "too many clusters");
        value_t *vals = realloc(c->vals, cap * c->nslots * sizeof *vals);
        if (!vals)
            return SENSOR_ENOMEM;
        c->vals = vals;
        head_t *head = realloc(c->head, cap * sizeof *head);
        if (!head)
            return SENSOR_ENOMEM;
        c->head = head;
        c->cap = cap;
    }
    if ((c->n + 1) * 2 > c->tmask + 1) {
        int rc = grow_table(c);
        if (rc)
            return rc;
    }
    *k = c->n++;
    return SENSOR_OK;
}

/* --- merging ------------------------------------------------------------------------------ */

static int truthy(const value_t *v)
{
    return (v->type == V_INT && v->i) || (v->type == V_REAL && v->d != 0) || v->type == V_TEXT;
}

/* cluster._or_letters: the union of two letter strings, FSRPAUEC78 first, then the others sorted. */
static int or_letters(sensor_cluster_t *c, const value_t *a, const value_t *b, value_t *out)
{
    uint8_t have[128] = {0};
    const value_t *both[2] = {a, b};
    for (int i = 0; i < 2; i++)
        if (both[i]->type == V_TEXT) {
            size_t n;
            const char *s = text_of(c, both[i]->s, &n);
            for (size_t j = 0; j < n; j++)
                have[(uint8_t)s[j] & 127] = 1;
        }
    char tmp[128];
    size_t n = 0;
    for (const char *l = LETTER_ORDER; *l; l++)
        if (have[(uint8_t)*l]) {
            tmp[n++] = *l;
            have[(uint8_t)*l] = 0;
        }
    for (int ch = 0; ch < 128; ch++)
        if (have[ch])
            tmp[n++] = (char)ch;
    out->type = V_TEXT;
    return intern(c, tmp, n, &out->s);
}

/* cluster._BOTH: letters that mean "both sides" together. */
static char both_letter(char x, char y)
{
    static const char pairs[][3] = {{'s', 'd', '*'}, {'i', 'r', '&'}, {'S', 'D', '@'}, {'x', 't', 'E'}};
    for (size_t i = 0; i < sizeof pairs / sizeof pairs[0]; i++)
        if ((x == pairs[i][0] && y == pairs[i][1]) || (x == pairs[i][1] && y == pairs[i][0]))
            return pairs[i][2];
    return y;
}

/* cluster._or_flgs */
static int or_flgs(sensor_cluster_t *c, const value_t *a, const value_t *b, value_t *out)
{
    size_t na = 0, nb = 0;
    const char *sa = a->type == V_TEXT ? text_of(c, a->s, &na) : "";
    const char *sb = b->type == V_TEXT ? text_of(c, b->s, &nb) : "";
    out->type = V_TEXT;
    if (na != nb) {
        if (nb > na)
            return intern(c, sb, nb, &out->s);
        return intern(c, sa, na, &out->s);
    }
    if (a->type == V_TEXT && b->type == V_TEXT && a->s == b->s) {
        out->s = a->s;
        return SENSOR_OK;
    }
    char tmp[MAX_TEXT];
    for (size_t i = 0; i < na; i++) {
        char x = sa[i], y = sb[i];
        tmp[i] = x == y || y == ' ' ? x : x == ' ' ? y : both_letter(x, y);
    }
    return intern(c, tmp, na, &out->s);
}

static int merge(sensor_cluster_t *c, size_t k, const value_t *r)
{
    value_t *a = vals_of(c, k);
    head_t *h = &c->head[k];
    h->trans++;
    for (size_t slot = 0; slot < c->nslots; slot++) {
        unsigned f = c->field_of[slot];
        value_t *x = &a[slot];
        const value_t *y = &r[slot];
        int rc = SENSOR_OK;
        switch (RULES[f].merge) {
        case M_SUM: {
            int64_t p = x->type == V_INT ? x->i : 0, q = y->type == V_INT ? y->i : 0, sum;
            if (__builtin_add_overflow(p, q, &sum))
                return fail(c, SENSOR_EDECLINE, "a sum beyond 64 bits");
            x->type = V_INT;
            x->i = sum;
            break;
        }
        case M_MIN:
            if (y->d < x->d)
                *x = *y;
            break;
        case M_MAX:
            if (y->d > x->d)
                *x = *y;
            break;
        case M_STATE:
            if (!(y->type == V_TEXT && y->s == c->id_req && x->type == V_TEXT && x->s == c->id_int))
                *x = *y;
            break;
        case M_LASTANY:
            *x = *y;
            break;
        case M_LETTERS:
            rc = or_letters(c, x, y, x);
            break;
        case M_FLGS:
            rc = or_flgs(c, x, y, x);
            break;
        case M_LAST:
            if (y->type != V_NULL)
                *x = *y;
            break;
        case M_RTT:
            if (!truthy(x) && truthy(y))
                *x = *y;
            break;
        case M_IDENTITY:
            if (!(c->key_bits >> f & 1) && !same(x, y))
                h->vary |= 1ull << f;
            break;
        default:                                   /* first value; sizes and dur below */
            break;
        }
        if (rc)
            return rc;
    }
    /* dur from the merged times; packet sizes only where that side of r sent packets. */
    if (c->slot_of[SENSOR_FIELD_DUR] != NO_SLOT) {
        value_t *d = &a[c->slot_of[SENSOR_FIELD_DUR]];
        d->type = V_REAL;
        d->d = a[c->slot_of[SENSOR_FIELD_LTIME]].d - a[c->slot_of[SENSOR_FIELD_STIME]].d;
    }
    static const unsigned sizes[2][3] = {{SENSOR_FIELD_SPKTS, SENSOR_FIELD_SMAXSZ, SENSOR_FIELD_SMINSZ},
                                         {SENSOR_FIELD_DPKTS, SENSOR_FIELD_DMAXSZ, SENSOR_FIELD_DMINSZ}};
    for (int side = 0; side < 2; side++) {
        uint8_t pk = c->slot_of[sizes[side][0]], mx = c->slot_of[sizes[side][1]],
                mn = c->slot_of[sizes[side][2]];
        if (pk == NO_SLOT || !truthy(&r[pk]))
            continue;
        if (mx != NO_SLOT && r[mx].type == V_INT && (a[mx].type == V_NULL || r[mx].i > a[mx].i))
            a[mx] = r[mx];
        if (mn != NO_SLOT && r[mn].type == V_INT && (!truthy(&a[mn]) || r[mn].i < a[mn].i))
            a[mn] = r[mn];
    }
    return SENSOR_OK;
}

/* Read column i of the current row into v, checking its type against the column's. */
static int read_value(sensor_cluster_t *c, sqlite3_stmt *st, int i, unsigned f, value_t *v)
{
    int t = sqlite3_column_type(st, i);
    v->s = 0;
    v->i = 0;
    if (t == SQLITE_NULL) {
        v->type = V_NULL;
        if (f == SENSOR_FIELD_STIME || f == SENSOR_FIELD_LTIME)
            return fail(c, SENSOR_EDECLINE, "a record without stime or ltime");
        return SENSOR_OK;
    }
    int kind = RULES[f].kind;
    if (t == SQLITE_INTEGER && kind == K_INT) {
        v->type = V_INT;
        v->i = sqlite3_column_int64(st, i);
        return SENSOR_OK;
    }
    if (t == SQLITE_FLOAT && kind == K_REAL) {
        v->type = V_REAL;
        v->d = sqlite3_column_double(st, i);
        return SENSOR_OK;
    }
    if (t == SQLITE_TEXT && kind == K_TEXT) {
        const unsigned char *s = sqlite3_column_text(st, i);
        int n = sqlite3_column_bytes(st, i);
        if (!s)
            return SENSOR_ENOMEM;
        if (n > MAX_TEXT)
            return fail(c, SENSOR_EDECLINE, "a text value longer than C keeps");
        for (int j = 0; j < n; j++)
            if (s[j] < 0x20 || s[j] > 0x7E)
                return fail(c, SENSOR_EDECLINE, "text beyond printable ASCII");
        v->type = V_TEXT;
        return intern(c, (const char *)s, (size_t)n, &v->s);
    }
    return fail(c, SENSOR_EDECLINE, "a value of another type than its column's");
}

/* Merge the current row (already in c->row) into its cluster. */
static int add_row(sensor_cluster_t *c)
{
    value_t kv[SENSOR_CLUSTER_MAX_KEYS];
    for (size_t k = 0; k < c->nkeys; k++) {
        kv[k] = c->row[c->slot_of[c->key_field[k]]];
        int m = c->key_masked[k];
        if (m >= 0 && kv[k].type == V_TEXT) {
            pstr_t *e = &c->pool.s[kv[k].s];
            if (!e->masked[m]) {
                uint32_t id;
                int rc = mask_text(c, kv[k].s, c->key_prefix[k], &id);
                if (rc)
                    return rc;
                c->pool.s[kv[k].s].masked[m] = id + 1;     /* e may have moved */
            }
            kv[k].s = c->pool.s[kv[k].s].masked[m] - 1;
        }
    }
    uint64_t hash = key_hash(c, kv);
    size_t h = c->tmask ? hash & c->tmask : 0;
    if (c->tmask)
        for (; c->table[h] != NO_ID; h = (h + 1) & c->tmask) {
            size_t k = c->table[h];
            if (c->head[k].hash != hash)
                continue;
            const value_t *a = vals_of(c, k);
            size_t j = 0;
            while (j < c->nkeys && same(&a[c->slot_of[c->key_field[j]]], &kv[j]))
                j++;
            if (j == c->nkeys) {
                int rc = merge(c, k, c->row);
                c->head[k].updated = c->updates++;
                return rc;
            }
        }
    size_t k;
    int rc = new_cluster(c, &k);
    if (rc)
        return rc;
    h = hash & c->tmask;                           /* the table may have grown */
    while (c->table[h] != NO_ID)
        h = (h + 1) & c->tmask;
    c->table[h] = (uint32_t)k;
    value_t *a = vals_of(c, k);
    memcpy(a, c->row, c->nslots * sizeof *a);
    for (size_t j = 0; j < c->nkeys; j++)
        a[c->slot_of[c->key_field[j]]] = kv[j];
    c->head[k] = (head_t){.trans = 1, .updated = c->updates++, .vary = 0, .hash = hash};
    return SENSOR_OK;
}

/* --- SQL functions the filter compiler uses (filter.register_sql_functions) ------------------- */

/* fields.address_family: 4 for dotted text, 6 for other text with ':' that is no MAC, else 0. */
static void sql_family(sqlite3_context *ctx, int argc, sqlite3_value **argv)
{
    (void)argc;
    int type = sqlite3_value_type(argv[0]);
    if (type != SQLITE_TEXT && type != SQLITE_NULL) {
        sqlite3_result_error(ctx, "ft_family of a non-text value", -1);   /* Python would differ */
        return;
    }
    const unsigned char *s = type == SQLITE_TEXT ? sqlite3_value_text(argv[0]) : NULL;
    int n = s ? sqlite3_value_bytes(argv[0]) : 0;
    int fam = 0;
    if (s && n > 0) {
        if (memchr(s, '.', (size_t)n))
            fam = 4;
        else if (memchr(s, ':', (size_t)n) && !is_mac((const char *)s, (size_t)n))
            fam = 6;
    }
    sqlite3_result_int(ctx, fam);
}

/* --- the API ------------------------------------------------------------------------------ */

int sensor_cluster_open(const uint8_t *key_fields, const int16_t *prefixes, size_t nkeys,
                        const uint8_t *fields, size_t nfields, int norep, char *errbuf,
                        sensor_cluster_t **out)
{
    *out = NULL;
    if (nkeys > SENSOR_CLUSTER_MAX_KEYS || nfields > SENSOR_FIELD_COUNT) {
        snprintf(errbuf, SENSOR_ERRBUF_SIZE, "too many keys or fields");
        return SENSOR_EINVAL;
    }
    sensor_cluster_t *c = calloc(1, sizeof *c);
    if (!c) {
        snprintf(errbuf, SENSOR_ERRBUF_SIZE, "out of memory");
        return SENSOR_ENOMEM;
    }
    int rc = SENSOR_EINVAL;
    const char *why = "a field C does not merge";
    memset(c->slot_of, NO_SLOT, sizeof c->slot_of);
    for (size_t i = 0; i < nfields; i++) {
        unsigned f = fields[i];
        if (f >= SENSOR_FIELD_COUNT || RULES[f].merge == M_NONE || c->slot_of[f] != NO_SLOT)
            goto fail;
        c->slot_of[f] = (uint8_t)c->nslots;
        c->field_of[c->nslots++] = (uint8_t)f;
    }
    why = "stime and ltime must be read";
    if (c->slot_of[SENSOR_FIELD_STIME] == NO_SLOT || c->slot_of[SENSOR_FIELD_LTIME] == NO_SLOT)
        goto fail;
    why = "packet sizes merge only with the packet counts of their side";
    if ((c->slot_of[SENSOR_FIELD_SMAXSZ] != NO_SLOT || c->slot_of[SENSOR_FIELD_SMINSZ] != NO_SLOT)
        && c->slot_of[SENSOR_FIELD_SPKTS] == NO_SLOT)
        goto fail;
    if ((c->slot_of[SENSOR_FIELD_DMAXSZ] != NO_SLOT || c->slot_of[SENSOR_FIELD_DMINSZ] != NO_SLOT)
        && c->slot_of[SENSOR_FIELD_DPKTS] == NO_SLOT)
        goto fail;
    why = "a key C does not merge by (srcid proto saddr sport daddr dport, masks on addresses)";
    int masked = 0;
    for (size_t k = 0; k < nkeys; k++) {
        unsigned f = key_fields[k];
        int addr = f == SENSOR_FIELD_SADDR || f == SENSOR_FIELD_DADDR;
        if (f >= SENSOR_FIELD_COUNT || RULES[f].merge != M_IDENTITY || c->slot_of[f] == NO_SLOT
            || (c->key_bits >> f & 1) || (prefixes[k] >= 0 && (!addr || prefixes[k] > 128)))
            goto fail;
        c->key_field[k] = (uint8_t)f;
        c->key_prefix[k] = prefixes[k] < 0 ? -1 : prefixes[k];
        c->key_masked[k] = -1;
        c->key_addr[k] = addr ? (int8_t)c->naddr++ : -1;
        if (prefixes[k] >= 0) {
            if (masked == MAX_MASKED)
                goto fail;
            c->key_masked[k] = (int8_t)masked++;
        }
        c->key_bits |= 1ull << f;
    }
    c->nkeys = nkeys;
    c->norep = norep;
    rc = SENSOR_ENOMEM;
    why = "out of memory";
    c->row = calloc(c->nslots ? c->nslots : 1, sizeof *c->row);
    c->pool.index = malloc(1024 * sizeof *c->pool.index);
    if (!c->row || !c->pool.index)
        goto fail;
    memset(c->pool.index, 0xFF, 1024 * sizeof *c->pool.index);
    c->pool.imask = 1023;
    if (getrandom(c->seed, sizeof c->seed, 0) != (ssize_t)sizeof c->seed) {
        rc = SENSOR_EINVAL;
        why = "getrandom failed: no seed for the cluster hash";
        goto fail;
    }
    if (intern(c, "REQ", 3, &c->id_req) || intern(c, "INT", 3, &c->id_int)
        || intern(c, "", 0, &c->id_empty))
        goto fail;
    *out = c;
    return SENSOR_OK;
fail:
    snprintf(errbuf, SENSOR_ERRBUF_SIZE, "%s", why);
    sensor_cluster_close(c);
    return rc;
}

int sensor_cluster_read(sensor_cluster_t *c, const char *uri, const char *sql,
                        const sensor_sql_param_t *params, size_t nparams)
{
    if (c->finished)
        return fail(c, SENSOR_EINVAL, "read after finish");
    sqlite3 *db = NULL;
    sqlite3_stmt *st = NULL;
    int rc = sqlite3_open_v2(uri, &db, SQLITE_OPEN_READONLY | SQLITE_OPEN_URI, NULL);
    if (rc == SQLITE_OK)
        rc = sqlite3_create_function(db, "ft_family", 1, SQLITE_UTF8 | SQLITE_DETERMINISTIC, NULL,
                                     sql_family, NULL, NULL);
    if (rc == SQLITE_OK)
        rc = sqlite3_prepare_v2(db, sql, -1, &st, NULL);
    if (rc != SQLITE_OK) {
        /* most often a SQL function only Python has (ft_in_net): Python reads this */
        snprintf(c->err, sizeof c->err, "%s", db ? sqlite3_errmsg(db) : "out of memory");
        rc = SENSOR_EDECLINE;
        goto done;
    }
    if ((size_t)sqlite3_column_count(st) != c->nslots || (size_t)sqlite3_bind_parameter_count(st) != nparams) {
        rc = fail(c, SENSOR_EINVAL, "the statement's columns or parameters do not match");
        goto done;
    }
    for (size_t i = 0; i < nparams && rc == SQLITE_OK; i++) {
        const sensor_sql_param_t *p = &params[i];
        int at = (int)i + 1;
        rc = p->type == SENSOR_PARAM_INT ? sqlite3_bind_int64(st, at, p->i)
           : p->type == SENSOR_PARAM_REAL ? sqlite3_bind_double(st, at, p->d)
           : p->type == SENSOR_PARAM_TEXT && p->text ? sqlite3_bind_text(st, at, p->text, -1, SQLITE_TRANSIENT)
           : p->type == SENSOR_PARAM_NULL ? sqlite3_bind_null(st, at) : SQLITE_MISUSE;
    }
    if (rc != SQLITE_OK) {
        rc = fail(c, SENSOR_EINVAL, "a parameter C cannot bind");
        goto done;
    }
    while ((rc = sqlite3_step(st)) == SQLITE_ROW) {
        for (size_t i = 0; i < c->nslots; i++) {
            rc = read_value(c, st, (int)i, c->field_of[i], &c->row[i]);
            if (rc)
                goto done;
        }
        rc = add_row(c);
        if (rc)
            goto done;
    }
    if (rc != SQLITE_DONE) {
        snprintf(c->err, sizeof c->err, "%s", sqlite3_errmsg(db));
        rc = SENSOR_ESTORE;
        goto done;
    }
    rc = SENSOR_OK;
done:
    if (rc == SENSOR_ENOMEM)
        fail(c, rc, "out of memory");
    sqlite3_finalize(st);
    sqlite3_close(db);
    return rc;
}

/* --- output ------------------------------------------------------------------------------- */

/* Clusterer.results' order: by the key fields' sort values, then by last update. */
static int compare(const void *pa, const void *pb, void *arg)
{
    const sensor_cluster_t *c = arg;
    uint32_t ka = *(const uint32_t *)pa, kb = *(const uint32_t *)pb;
    const value_t *a = vals_of(c, ka), *b = vals_of(c, kb);
    for (size_t k = 0; k < c->nkeys; k++) {
        int d = 0;
        if (c->key_addr[k] >= 0) {
            const addr_sort_t *x = &c->asort[(size_t)ka * c->naddr + (size_t)c->key_addr[k]];
            const addr_sort_t *y = &c->asort[(size_t)kb * c->naddr + (size_t)c->key_addr[k]];
            d = (x->cls > y->cls) - (x->cls < y->cls);
            if (!d && x->cls == 0) {
                d = (x->fam > y->fam) - (x->fam < y->fam);
                if (!d)
                    d = memcmp(x->bytes, y->bytes, x->fam == 4 ? 4 : 16);
            } else if (!d && x->cls == 1) {
                size_t nx, ny;
                const char *sx = text_of(c, x->s, &nx), *sy = text_of(c, y->s, &ny);
                d = memcmp(sx, sy, nx < ny ? nx : ny);
                if (!d)
                    d = (nx > ny) - (nx < ny);
            }
        } else {
            const value_t *x = &a[c->slot_of[c->key_field[k]]], *y = &b[c->slot_of[c->key_field[k]]];
            d = (x->type == V_NULL) - (y->type == V_NULL);           /* None last */
            if (!d && x->type == V_INT)
                d = (x->i > y->i) - (x->i < y->i);
            else if (!d && x->type == V_TEXT) {
                size_t nx, ny;
                const char *sx = text_of(c, x->s, &nx), *sy = text_of(c, y->s, &ny);
                d = memcmp(sx, sy, nx < ny ? nx : ny);
                if (!d)
                    d = (nx > ny) - (nx < ny);
            }
        }
        if (d)
            return d < 0 ? -1 : 1;
    }
    uint64_t ua = c->head[ka].updated, ub = c->head[kb].updated;
    return (ua > ub) - (ua < ub);
}

/* A cluster being printed, for cluster_cell. */
typedef struct cell_ctx {
    const sensor_cluster_t *c;
    size_t k;
} cell_ctx_t;

static const value_t NONE = {V_NULL, 0, {0}};

static const value_t *value(const sensor_cluster_t *c, size_t k, unsigned f)
{
    if (c->slot_of[f] == NO_SLOT || (c->head[k].vary >> f & 1))
        return &NONE;
    return &vals_of(c, k)[c->slot_of[f]];
}

static int put_text(ft_wbuf_t *w, const sensor_cluster_t *c, const value_t *v)
{
    if (v->type != V_TEXT)
        return FT_FMT_OK;
    size_t n;
    const char *s = text_of(c, v->s, &n);
    return ft_put(w, s, n);
}

/* fields.formatter's text of field f of cluster k, for the options in c->spec. */
static int cluster_cell(ft_wbuf_t *w, const void *ctx, unsigned f, ft_clock_t *cache)
{
    const cell_ctx_t *cc = ctx;
    const sensor_cluster_t *c = cc->c;
    const sensor_format_spec_t *spec = &c->spec;
    if (f == SENSOR_FIELD_TRANS)
        return ft_put_i64(w, c->norep ? 0 : (int64_t)c->head[cc->k].trans);
    const value_t *v = value(c, cc->k, f);
    switch (f) {
    case SENSOR_FIELD_STIME:
    case SENSOR_FIELD_LTIME:
        if (v->type == V_NULL)
            return FT_FMT_OK;
        return spec->flags & SENSOR_FMT_UTIME ? ft_put_real6(w, v->d) : ft_put_clock(w, v->d, cache);
    case SENSOR_FIELD_PROTO: {
        if (v->type == V_NULL)
            return FT_FMT_OK;
        if (spec->numeric >= 2)
            return ft_put_i64(w, v->i);
        const value_t *sa = value(c, cc->k, SENSOR_FIELD_SADDR);
        size_t n = 0;
        const char *s = sa->type == V_TEXT ? text_of(c, sa->s, &n) : NULL;
        int ether = v->i > 255 || (v->i == 0 && s && is_mac(s, n));
        const char *name = ft_proto_name(v->i, ether, spec->numeric);
        return name ? ft_put(w, name, strlen(name)) : ft_put_i64(w, v->i);
    }
    case SENSOR_FIELD_SPORT:
    case SENSOR_FIELD_DPORT: {
        if (v->type == V_NULL)
            return FT_FMT_OK;
        const value_t *p = value(c, cc->k, SENSOR_FIELD_PROTO);
        if (p->type == V_INT && p->i == 1) {
            if (v->i < 0 || v->i > 0xFFFF)
                return FT_FMT_PYTHON;
            char tmp[7];
            snprintf(tmp, sizeof tmp, "0x%04x", (unsigned)v->i);
            return ft_put(w, tmp, 6);
        }
        if (spec->numeric == 0 && p->type == V_INT) {
            const value_t *sa = value(c, cc->k, SENSOR_FIELD_SADDR);
            size_t n = 0;
            const char *s = sa->type == V_TEXT ? text_of(c, sa->s, &n) : NULL;
            if (p->i > 255 || (p->i == 0 && s && is_mac(s, n))) {
                const char *name = p->i == 0 ? ft_llc_sap_name(v->i) : "";
                return ft_put(w, name, strlen(name));
            }
            if (p->i == 6 || p->i == 17)
                return FT_FMT_PYTHON;                  /* service names: socket.getservbyport */
        }
        return ft_put_i64(w, v->i);
    }
    case SENSOR_FIELD_DIR: {
        size_t n = 0;
        const char *s = v->type == V_TEXT ? text_of(c, v->s, &n) : "";
        if (n < 5) {
            int rc = ft_put(w, "     ", 5 - n);
            if (rc)
                return rc;
        }
        return ft_put(w, s, n);
    }
    case SENSOR_FIELD_FLGS: {
        size_t n = 0, pad = spec->flags & SENSOR_FMT_DELIMITED ? 10 : 9;
        const char *s = v->type == V_TEXT ? text_of(c, v->s, &n) : "";
        while (n && s[n - 1] == ' ')
            n--;
        int rc = ft_put(w, s, n);
        return rc || n >= pad ? rc : ft_put(w, "          ", pad - n);
    }
    case SENSOR_FIELD_STATE:
        return spec->zflags ? FT_FMT_PYTHON : put_text(w, c, v);
    default:
        switch (v->type) {
        case V_NULL: return FT_FMT_OK;
        case V_INT: return RULES[f].kind == K_INT ? ft_put_i64(w, v->i) : FT_FMT_PYTHON;
        case V_REAL: return ft_put_real6(w, v->d);
        default: return put_text(w, c, v);
        }
    }
}

int sensor_cluster_finish(sensor_cluster_t *c, const sensor_format_spec_t *spec)
{
    if (c->finished)
        return fail(c, SENSOR_EINVAL, "finished twice");
    if (!ft_spec_ok(spec))
        return fail(c, SENSOR_EINVAL, "a malformed format spec");
    for (uint32_t i = 0; i < spec->ncolumns; i++) {
        unsigned f = spec->column[i].field;
        if (f != SENSOR_FIELD_TRANS && c->slot_of[f] == NO_SLOT)
            return fail(c, SENSOR_EINVAL, "a printed field that was not read");
    }
    if (spec->zflags)
        return fail(c, SENSOR_EDECLINE, "-Z is printed in Python");
    c->spec = *spec;
    c->order = malloc((c->n ? c->n : 1) * sizeof *c->order);
    size_t nsort = c->n * c->naddr;
    c->asort = malloc((nsort ? nsort : 1) * sizeof *c->asort);
    if (!c->order || !c->asort)
        return fail(c, SENSOR_ENOMEM, "out of memory");
    for (size_t k = 0; k < c->n; k++) {
        c->order[k] = (uint32_t)k;
        for (size_t j = 0; j < c->nkeys; j++)
            if (c->key_addr[j] >= 0)
                addr_sort_key(c, &vals_of(c, k)[c->slot_of[c->key_field[j]]],
                              &c->asort[k * c->naddr + (size_t)c->key_addr[j]]);
    }
    qsort_r(c->order, c->n, sizeof *c->order, compare, c);
    /* Every line once into scratch space: nothing is printed unless all of them can be. */
    char line[4096];
    ft_clock_t cache = {0, 0, ""};
    for (size_t i = 0; i < c->n; i++) {
        ft_wbuf_t w = {line, line + sizeof line};
        cell_ctx_t ctx = {c, c->order[i]};
        if (ft_put_line(&w, &c->spec, cluster_cell, &ctx, &cache) != FT_FMT_OK)
            return fail(c, SENSOR_EDECLINE, "a value C does not print as Python (or a line over 4 KiB)");
    }
    c->finished = 1;
    return (int)(c->n > (size_t)INT32_MAX ? INT32_MAX : c->n);
}

int sensor_cluster_format(sensor_cluster_t *c, char *out, size_t cap, size_t *used)
{
    *used = 0;
    if (!c->finished)
        return fail(c, SENSOR_EINVAL, "format before finish");
    ft_wbuf_t w = {out, out + cap};
    ft_clock_t cache = {0, 0, ""};
    int lines = 0;
    while (c->next < c->n && lines < INT32_MAX) {
        cell_ctx_t ctx = {c, c->order[c->next]};
        int rc = ft_put_line(&w, &c->spec, cluster_cell, &ctx, &cache);
        if (rc == FT_FMT_FULL && lines)
            break;
        if (rc != FT_FMT_OK)
            return fail(c, SENSOR_EINVAL, rc == FT_FMT_FULL ? "out too small for one line"
                                                          : "a line that printed before did not");
        c->next++;
        lines++;
    }
    *used = (size_t)(w.p - out);
    return lines;
}

const char *sensor_cluster_error(const sensor_cluster_t *c)
{
    return c->err;
}

void sensor_cluster_close(sensor_cluster_t *c)
{
    if (!c)
        return;
    free(c->pool.bytes);
    free(c->pool.s);
    free(c->pool.index);
    free(c->vals);
    free(c->head);
    free(c->table);
    free(c->row);
    free(c->order);
    free(c->asort);
    free(c);
}
