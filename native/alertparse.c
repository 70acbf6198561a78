/* alertparse.c: Suricata EVE alert lines to the alert store's rows (appliance.alert_formats).
 *
 * The rules are those of alert_formats._eve_row and _eve_values, for the plain case only: a line
 * of printable ASCII, one JSON object whose keys have no escapes and appear once, the fields the
 * row takes in the types Suricata writes (no escape in their strings, an IPv4 address in its
 * canonical dotted form, the timestamp with six fraction digits). Anything else is left to the
 * caller, which reads it as before: the rows are the same either way, only faster here.
 * The output is a pickle, so that Python makes its objects in C (pickle.loads) and not one by one.
 */
#include "alertparse.h"

#include <stdbool.h>
#include <stdio.h>
#include <string.h>

#define U32_MAX_V 4294967295ULL
#define FLOW_ID_MAX 9223372036854775807ULL
#define MAX_TIME 253402300800LL          /* 10000-01-01T00:00:00Z */
#define MAX_DEPTH 32                     /* deeper skipped values are left to the caller */
#define ROW_SLACK 512                    /* a row's output beyond its strings' bytes */

/* --- BLAKE2b (RFC 7693), 8-byte digest, no key: the row's id ---------------------------------- */

static const uint64_t B2_IV[8] = {
    0x6a09e667f3bcc908ULL, 0xbb67ae8584caa73bULL, 0x3c6ef372fe94f82bULL, 0xa54ff53a5f1d36f1ULL,
    0x510e527fade682d1ULL, 0x9b05688c2b3e6c1fULL, 0x1f83d9abfb41bd6bULL, 0x5be0cd19137e2179ULL};

static const uint8_t B2_SIGMA[12][16] = {
    {0, 1, 2, 3, 4, 5, 6, 7, 8, 9, 10, 11, 12, 13, 14, 15}, {14, 10, 4, 8, 9, 15, 13, 6, 1, 12, 0, 2, 11, 7, 5, 3},
    {11, 8, 12, 0, 5, 2, 15, 13, 10, 14, 3, 6, 7, 1, 9, 4}, {7, 9, 3, 1, 13, 12, 11, 14, 2, 6, 5, 10, 4, 0, 15, 8},
    {9, 0, 5, 7, 2, 4, 10, 15, 14, 1, 11, 12, 6, 8, 3, 13}, {2, 12, 6, 10, 0, 11, 8, 3, 4, 13, 7, 5, 15, 14, 1, 9},
    {12, 5, 1, 15, 14, 13, 4, 10, 0, 7, 6, 3, 9, 2, 8, 11}, {13, 11, 7, 14, 12, 1, 3, 9, 5, 0, 15, 4, 8, 6, 2, 10},
    {6, 15, 14, 9, 11, 3, 0, 8, 12, 2, 13, 7, 1, 4, 10, 5}, {10, 2, 8, 4, 7, 6, 1, 5, 15, 11, 9, 14, 3, 12, 13, 0},
    {0, 1, 2, 3, 4, 5, 6, 7, 8, 9, 10, 11, 12, 13, 14, 15}, {14, 10, 4, 8, 9, 15, 13, 6, 1, 12, 0, 2, 11, 7, 5, 3}};

static uint64_t rotr64(uint64_t x, int n) { return (x >> n) | (x << (64 - n)); }

static uint64_t load64le(const uint8_t *p)
{
    uint64_t v = 0;
    for (int i = 7; i >= 0; i--)
        v = (v << 8) | p[i];
    return v;
}

#define B2_G(a, b, c, d, x, y)                                   \
    do {                                                         \
        v[a] = v[a] + v[b] + (x); v[d] = rotr64(v[d] ^ v[a], 32); \
        v[c] = v[c] + v[d];       v[b] = rotr64(v[b] ^ v[c], 24); \
        v[a] = v[a] + v[b] + (y); v[d] = rotr64(v[d] ^ v[a], 16); \
        v[c] = v[c] + v[d];       v[b] = rotr64(v[b] ^ v[c], 63); \
    } while (0)

static void b2_compress(uint64_t h[8], const uint8_t block[128], uint64_t counter, bool last)
{
    uint64_t m[16], v[16];
    for (int i = 0; i < 16; i++)
        m[i] = load64le(block + 8 * i);
    for (int i = 0; i < 8; i++) {
        v[i] = h[i];
        v[i + 8] = B2_IV[i];
    }
    v[12] ^= counter;                    /* messages here are far below 2^64 bytes */
    if (last)
        v[14] = ~v[14];
    for (int r = 0; r < 12; r++) {
        const uint8_t *s = B2_SIGMA[r];
        B2_G(0, 4, 8, 12, m[s[0]], m[s[1]]);
        B2_G(1, 5, 9, 13, m[s[2]], m[s[3]]);
        B2_G(2, 6, 10, 14, m[s[4]], m[s[5]]);
        B2_G(3, 7, 11, 15, m[s[6]], m[s[7]]);
        B2_G(0, 5, 10, 15, m[s[8]], m[s[9]]);
        B2_G(1, 6, 11, 12, m[s[10]], m[s[11]]);
        B2_G(2, 7, 8, 13, m[s[12]], m[s[13]]);
        B2_G(3, 4, 9, 14, m[s[14]], m[s[15]]);
    }
    for (int i = 0; i < 8; i++)
        h[i] ^= v[i] ^ v[i + 8];
}

/* alert_types.row_id(b"eve", raw): BLAKE2b-64 of "eve\0" + raw, its digest read big-endian, signed. */
static int64_t eve_row_id(const uint8_t *raw, size_t n)
{
    uint64_t h[8];
    uint8_t block[128];
    memcpy(h, B2_IV, sizeof h);
    h[0] ^= 0x01010000ULL ^ 8;           /* depth 1, fanout 1, no key, 8-byte digest */
    size_t total = n + 4, done = 0;      /* bytes of "eve\0" + raw, and hashed so far */
    memcpy(block, "eve", 4);
    size_t fill = 4, from = 0;           /* bytes in block; next byte of raw */
    for (;;) {
        size_t take = n - from < 128 - fill ? n - from : 128 - fill;
        memcpy(block + fill, raw + from, take);
        fill += take;
        from += take;
        if (done + fill == total) {      /* the last block, zero-padded, even when full */
            memset(block + fill, 0, 128 - fill);
            b2_compress(h, block, total, true);
            break;
        }
        done += 128;
        b2_compress(h, block, done, false);
        fill = 0;
    }
    uint64_t be = 0;                     /* the digest's 8 bytes (h[0] little-endian) read big-endian */
    for (int i = 0; i < 8; i++)
        be = (be << 8) | ((h[0] >> (8 * i)) & 0xff);
    return (int64_t)be;
}

/* --- a JSON object, the plain case ------------------------------------------------------------- */

enum kind { ABSENT, NUL, STR, INT };

typedef struct {
    enum kind kind;
    const uint8_t *s;                    /* STR: the text, no escapes */
    size_t n;
    uint64_t i;                          /* INT: 0 .. 2^63 - 1 */
} value_t;

typedef struct {
    const uint8_t *p, *end;
} cursor_t;

enum field {
    F_TIMESTAMP, F_EVENT_TYPE, F_SRC_IP, F_DEST_IP, F_PROTO, F_SRC_PORT, F_DEST_PORT, F_FLOW_ID,
    F_COMMUNITY_ID, F_APP_PROTO, F_GID, F_SID, F_REV, F_SIGNATURE, F_CATEGORY, F_SEVERITY, F_ACTION,
    N_FIELDS
};

static const char *const TOP_KEYS[] = {"timestamp", "event_type", "src_ip", "dest_ip", "proto", "src_port",
                                       "dest_port", "flow_id", "community_id", "app_proto"};
static const char *const ALERT_KEYS[] = {"gid", "signature_id", "rev", "signature", "category", "severity",
                                         "action"};

static void skip_ws(cursor_t *c)
{
    while (c->p < c->end && *c->p == ' ')   /* the line has no other byte below 0x20 */
        c->p++;
}

static bool eat(cursor_t *c, uint8_t ch)
{
    skip_ws(c);
    if (c->p < c->end && *c->p == ch) {
        c->p++;
        return true;
    }
    return false;
}

static bool is_digit(uint8_t ch) { return ch >= '0' && ch <= '9'; }

static bool is_hex(uint8_t ch) { return is_digit(ch) || ((ch | 0x20) >= 'a' && (ch | 0x20) <= 'f'); }

static int hex_value(uint8_t ch) { return is_digit(ch) ? ch - '0' : (ch | 0x20) - 'a' + 10; }

/* A string after its opening quote; *escaped says whether it had escapes (orjson's rules, but
 * surrogate \u escapes are refused: they need pairing). */
static bool scan_string(cursor_t *c, const uint8_t **s, size_t *n, bool *escaped)
{
    const uint8_t *start = c->p;
    *escaped = false;
    while (c->p < c->end) {
        uint8_t ch = *c->p++;
        if (ch == '"') {
            *s = start;
            *n = (size_t)(c->p - 1 - start);
            return true;
        }
        if (ch != '\\')
            continue;
        *escaped = true;
        if (c->p >= c->end)
            return false;
        ch = *c->p++;
        if (ch == 'u') {
            if (c->end - c->p < 4 || !is_hex(c->p[0]) || !is_hex(c->p[1]) || !is_hex(c->p[2]) || !is_hex(c->p[3]))
                return false;
            int cp = hex_value(c->p[0]) << 12 | hex_value(c->p[1]) << 8 | hex_value(c->p[2]) << 4 | hex_value(c->p[3]);
            if (cp >= 0xD800 && cp <= 0xDFFF)
                return false;
            c->p += 4;
        } else if (!strchr("\"\\/bfnrt", ch) || ch == 0) {
            return false;
        }
    }
    return false;
}

/* A JSON number; a plain unsigned integer of at most 19 digits goes into *whole (else *is_whole is
 * false). Exponents and integer parts over 18 digits are refused: orjson's floats there are not
 * worth matching. */
static bool scan_number(cursor_t *c, uint64_t *whole, bool *is_whole)
{
    bool negative = c->p < c->end && *c->p == '-';
    if (negative)
        c->p++;
    const uint8_t *digits = c->p;
    while (c->p < c->end && is_digit(*c->p))
        c->p++;
    size_t n = (size_t)(c->p - digits);
    if (n == 0 || n > 19 || (n > 1 && digits[0] == '0'))
        return false;
    bool fraction = c->p < c->end && *c->p == '.';
    if (fraction) {
        const uint8_t *f = ++c->p;
        while (c->p < c->end && is_digit(*c->p))
            c->p++;
        if (c->p == f || n > 18)
            return false;
    }
    if (c->p < c->end && (*c->p == 'e' || *c->p == 'E'))
        return false;
    *is_whole = !negative && !fraction;
    *whole = 0;
    for (const uint8_t *d = digits; *is_whole && d < digits + n; d++)
        *whole = *whole * 10 + (uint64_t)(*d - '0');
    if (*is_whole && n == 19 && *whole > FLOW_ID_MAX)   /* also catches a wrapped 20th-digit value */
        *is_whole = false;
    return true;
}

static bool skip_value(cursor_t *c, int depth);

static bool skip_container(cursor_t *c, int depth, uint8_t close)
{
    if (depth > MAX_DEPTH)
        return false;
    if (eat(c, close))
        return true;
    do {
        if (close == '}') {
            const uint8_t *s;
            size_t n;
            bool escaped;
            if (!eat(c, '"') || !scan_string(c, &s, &n, &escaped) || !eat(c, ':'))
                return false;
        }
        if (!skip_value(c, depth + 1))
            return false;
    } while (eat(c, ','));
    return eat(c, close);
}

static bool literal(cursor_t *c, const char *word)
{
    size_t n = strlen(word);
    if ((size_t)(c->end - c->p) < n || memcmp(c->p, word, n) != 0)
        return false;
    c->p += n;
    return true;
}

/* Any JSON value, checked as orjson would (or refused), kept nowhere. */
static bool skip_value(cursor_t *c, int depth)
{
    skip_ws(c);
    if (c->p >= c->end)
        return false;
    uint8_t ch = *c->p;
    if (ch == '"') {
        const uint8_t *s;
        size_t n;
        bool escaped;
        c->p++;
        return scan_string(c, &s, &n, &escaped);
    }
    if (ch == '{' || ch == '[') {
        c->p++;
        return skip_container(c, depth, ch == '{' ? '}' : ']');
    }
    if (ch == 't')
        return literal(c, "true");
    if (ch == 'f')
        return literal(c, "false");
    if (ch == 'n')
        return literal(c, "null");
    uint64_t whole;
    bool is_whole;
    return scan_number(c, &whole, &is_whole);
}

/* A field's value: a string without escapes, a whole number or null; anything else refuses the line. */
static bool field_value(cursor_t *c, value_t *v)
{
    skip_ws(c);
    if (v->kind != ABSENT || c->p >= c->end)  /* a key twice: orjson keeps the last, not worth it */
        return false;
    if (*c->p == '"') {
        bool escaped;
        c->p++;
        v->kind = STR;
        return scan_string(c, &v->s, &v->n, &escaped) && !escaped;
    }
    if (*c->p == 'n') {
        v->kind = NUL;
        return literal(c, "null");
    }
    bool is_whole;
    v->kind = INT;
    return scan_number(c, &v->i, &is_whole) && is_whole;
}

static int key_index(const uint8_t *s, size_t n, const char *const *keys, int count)
{
    for (int i = 0; i < count; i++)
        if (strlen(keys[i]) == n && memcmp(keys[i], s, n) == 0)
            return i;
    return -1;
}

/* An object's members after its '{': the keys in `keys` into v[first + index], "alert" (top
 * level only) as the alert object; every other value checked and passed over. */
static bool parse_object(cursor_t *c, value_t *v, bool top, bool *saw_alert)
{
    if (eat(c, '}'))
        return true;
    do {
        const uint8_t *key;
        size_t n;
        bool escaped;
        if (!eat(c, '"') || !scan_string(c, &key, &n, &escaped) || escaped || !eat(c, ':'))
            return false;
        int i = top ? key_index(key, n, TOP_KEYS, F_GID) : key_index(key, n, ALERT_KEYS, N_FIELDS - F_GID);
        bool ok;
        if (i >= 0) {
            ok = field_value(c, &v[top ? i : F_GID + i]);
        } else if (top && n == 5 && memcmp(key, "alert", 5) == 0) {
            ok = !*saw_alert && eat(c, '{') && parse_object(c, v, false, saw_alert);
            *saw_alert = true;
        } else {
            ok = skip_value(c, 1);
        }
        if (!ok)
            return false;
    } while (eat(c, ','));
    return eat(c, '}');
}

/* --- fields as _eve_values takes them ------------------------------------------------------------ */

static bool str_is(const value_t *v, const char *text)
{
    return v->kind == STR && v->n == strlen(text) && memcmp(v->s, text, v->n) == 0;
}

/* _DOTTED: four decimal octets 0..255 without leading zeros. */
static bool dotted_ipv4(const value_t *v)
{
    if (v->kind != STR)
        return false;
    const uint8_t *p = v->s, *end = v->s + v->n;
    for (int octet = 0; octet < 4; octet++) {
        if (octet > 0 && (p >= end || *p++ != '.'))
            return false;
        const uint8_t *d = p;
        unsigned value = 0;
        while (p < end && is_digit(*p) && p - d < 3)
            value = value * 10 + (unsigned)(*p++ - '0');
        if (p == d || value > 255 || (p - d > 1 && d[0] == '0'))
            return false;
    }
    return p == end;
}

/* An IPv6 address already in the text Python's ipaddress gives it (RFC 5952: lower case, no
 * leading zeros, the first longest run of two or more zero groups as "::"). IPv4-mapped ones are
 * left to Python: its text for them changed in 3.13. */
static bool canonical_ipv6(const value_t *v)
{
    uint16_t group[8];
    int count = 0, gap = -1;             /* groups read; where "::" stands */
    const uint8_t *p = v->s, *end = v->s + v->n;
    if (v->kind != STR || v->n < 2 || v->n > 39)
        return false;
    if (p[0] == ':' && p[1] == ':') {
        gap = 0;
        p += 2;
    }
    while (p < end && count < 8) {
        unsigned value = 0;
        const uint8_t *d = p;
        while (p < end && p - d < 4 && (is_digit(*p) || (*p >= 'a' && *p <= 'f')))
            value = value * 16 + (unsigned)hex_value(*p++);
        if (p == d)
            return false;
        group[count++] = (uint16_t)value;
        if (p == end)
            break;
        if (*p++ != ':')
            return false;
        if (p < end && *p == ':') {
            if (gap >= 0)
                return false;
            gap = count;
            p++;
        } else if (p == end) {
            return false;                /* a trailing single ':' */
        }
    }
    if (p != end || (gap < 0 && count != 8) || (gap >= 0 && count > 7))
        return false;
    uint16_t full[8] = {0};
    int tail = gap < 0 ? 0 : count - gap;
    for (int i = 0; i < count; i++)
        full[i < count - tail ? i : 8 - tail + (i - (count - tail))] = group[i];
    if (full[0] == 0 && full[1] == 0 && full[2] == 0 && full[3] == 0 && full[4] == 0 && full[5] == 0xffff)
        return false;
    int best = -1, best_n = 1;           /* the first longest zero run, two groups at least */
    for (int i = 0; i < 8;) {
        int j = i;
        while (j < 8 && full[j] == 0)
            j++;
        if (j - i > best_n) {
            best = i;
            best_n = j - i;
        }
        i = j > i ? j : i + 1;
    }
    char text[48];
    size_t n = 0;
    for (int i = 0; i < 8; i++) {
        if (i == best) {
            n += (size_t)snprintf(text + n, sizeof text - n, i == 0 ? "::" : ":");
            i += best_n - 1;
            continue;
        }
        n += (size_t)snprintf(text + n, sizeof text - n, "%x%s", full[i], i < 7 ? ":" : "");
    }
    return n == v->n && memcmp(text, v->s, n) == 0;
}

/* _proto: -1 for None, -2 when the line is not the plain case; "icmp" is 58 for IPv6 (v6). */
static int proto_of(const value_t *v, bool v6)
{
    static const struct { const char *name; int number; } names[] = {
        {"tcp", 6}, {"udp", 17}, {"icmp", 1}, {"icmp6", 58}, {"icmpv6", 58}, {"ipv6-icmp", 58}, {"sctp", 132},
        {"igmp", 2}, {"gre", 47}, {"esp", 50}, {"ah", 51}, {"ospf", 89}, {"pim", 103}, {"vrrp", 112}};
    if (v->kind == ABSENT || v->kind == NUL)
        return -1;
    if (v->kind == INT)
        return v->i <= 255 ? (int)v->i : -2;
    char lower[16];
    if (v->n >= sizeof lower)
        return -2;
    for (size_t i = 0; i < v->n; i++)
        lower[i] = (char)(v->s[i] >= 'A' && v->s[i] <= 'Z' ? v->s[i] | 0x20 : v->s[i]);
    for (size_t i = 0; i < sizeof names / sizeof names[0]; i++)
        if (strlen(names[i].name) == v->n && memcmp(names[i].name, lower, v->n) == 0)
            return names[i].number == 1 && v6 ? 58 : names[i].number;
    return -2;                           /* "ip", "proto-47", digits...: as Python says */
}

static bool opt_uint(const value_t *v, uint64_t hi)
{
    return v->kind == ABSENT || v->kind == NUL || (v->kind == INT && v->i <= hi);
}

static bool opt_str(const value_t *v) { return v->kind == ABSENT || v->kind == NUL || v->kind == STR; }

static int64_t days_from_civil(int64_t y, unsigned m, unsigned d)
{
    y -= m <= 2;
    int64_t era = y / 400;
    unsigned yoe = (unsigned)(y - era * 400);
    unsigned doy = (153 * (m > 2 ? m - 3 : m + 9) + 2) / 5 + d - 1;
    unsigned doe = yoe * 365 + yoe / 4 - yoe / 100 + doy;
    return era * 146097 + (int64_t)doe - 719468;
}

static int digits_at(const uint8_t *s, size_t n)
{
    int value = 0;
    for (size_t i = 0; i < n; i++) {
        if (!is_digit(s[i]))
            return -1;
        value = value * 10 + (s[i] - '0');
    }
    return value;
}

/* _eve_time of YYYY-MM-DD[T ]HH:MM:SS.ffffff[Z|+hhmm|+hh:mm], in the same double operations. */
static bool eve_time(const value_t *v, double *out)
{
    static const uint8_t month_days[13] = {0, 31, 29, 31, 30, 31, 30, 31, 31, 30, 31, 30, 31};
    if (v->kind != STR || v->n < 26)
        return false;
    const uint8_t *s = v->s;
    if (s[4] != '-' || s[7] != '-' || (s[10] != 'T' && s[10] != ' ') || s[13] != ':' || s[16] != ':' || s[19] != '.')
        return false;
    int year = digits_at(s, 4), month = digits_at(s + 5, 2), day = digits_at(s + 8, 2);
    int hour = digits_at(s + 11, 2), minute = digits_at(s + 14, 2), second = digits_at(s + 17, 2);
    int frac = digits_at(s + 20, 6);
    if (year < 1970 || year > 9999 || month < 1 || month > 12 || day < 1 || day > month_days[month]
        || hour < 0 || hour > 23 || minute < 0 || minute > 59 || second < 0 || second > 59 || frac < 0)
        return false;                    /* -1: not digits */
    bool leap = (year % 4 == 0 && year % 100 != 0) || year % 400 == 0;
    if (month == 2 && day == 29 && !leap)
        return false;
    int64_t t = days_from_civil(year, (unsigned)month, (unsigned)day) * 86400 + hour * 3600 + minute * 60;
    const uint8_t *zone = s + 26;
    size_t zn = v->n - 26;
    if (zn == 1 && zone[0] == 'Z') {
        /* UTC */
    } else if ((zn == 5 || (zn == 6 && zone[3] == ':')) && (zone[0] == '+' || zone[0] == '-')) {
        int hh = digits_at(zone + 1, 2), mm = digits_at(zone + zn - 2, 2);
        if (hh < 0 || mm < 0)
            return false;
        int64_t offset = hh * 3600 + mm * 60;   /* not range-checked: as _minute */
        t -= zone[0] == '+' ? offset : -offset;
    } else if (zn != 0) {
        return false;
    }
    if (t < 0 || t >= MAX_TIME - 60)
        return false;
    *out = (double)(t + second) + (double)frac / 1e6;
    return true;
}

/* --- the pickle ---------------------------------------------------------------------------------- */

typedef struct {
    unsigned char *p, *end;
} sink_t;

static void put(sink_t *o, const void *data, size_t n)
{
    if ((size_t)(o->end - o->p) < n) {  /* cannot happen: room is checked per line; never overrun */
        o->p = o->end;
        return;
    }
    memcpy(o->p, data, n);
    o->p += n;
}

static void put_byte(sink_t *o, unsigned char b) { put(o, &b, 1); }

static void put_le(sink_t *o, uint64_t v, int n)
{
    unsigned char b[8];
    for (int i = 0; i < n; i++)
        b[i] = (unsigned char)(v >> (8 * i));
    put(o, b, (size_t)n);
}

static void put_int(sink_t *o, int64_t v)
{
    if (v >= 0 && v < 256) {
        put_byte(o, 'K');                /* BININT1 */
        put_byte(o, (unsigned char)v);
    } else if (v >= INT32_MIN && v <= INT32_MAX) {
        put_byte(o, 'J');                /* BININT: signed 4 bytes */
        put_le(o, (uint64_t)v, 4);
    } else {
        put_byte(o, 0x8a);               /* LONG1: 8 bytes two's complement */
        put_byte(o, 8);
        put_le(o, (uint64_t)v, 8);
    }
}

static void put_none(sink_t *o) { put_byte(o, 'N'); }

static void put_str(sink_t *o, const uint8_t *s, size_t n)
{
    if (n < 256) {
        put_byte(o, 0x8c);               /* SHORT_BINUNICODE */
        put_byte(o, (unsigned char)n);
    } else {
        put_byte(o, 'X');                /* BINUNICODE */
        put_le(o, n, 4);
    }
    put(o, s, n);
}

static void put_bytes(sink_t *o, const uint8_t *s, size_t n)
{
    if (n < 256) {
        put_byte(o, 'C');                /* SHORT_BINBYTES */
        put_byte(o, (unsigned char)n);
    } else {
        put_byte(o, 'B');                /* BINBYTES */
        put_le(o, n, 4);
    }
    put(o, s, n);
}

static void put_double(sink_t *o, double d)
{
    uint64_t bits;
    memcpy(&bits, &d, sizeof bits);
    put_byte(o, 'G');                    /* BINFLOAT: big-endian */
    for (int i = 7; i >= 0; i--)
        put_byte(o, (unsigned char)(bits >> (8 * i)));
}

static void put_opt_int(sink_t *o, const value_t *v)
{
    if (v->kind == INT)
        put_int(o, (int64_t)v->i);
    else
        put_none(o);
}

static void put_opt_str(sink_t *o, const value_t *v, bool empty_is_none)
{
    if (v->kind == STR && !(empty_is_none && v->n == 0))
        put_str(o, v->s, v->n);
    else
        put_none(o);
}

/* --- lines --------------------------------------------------------------------------------------- */

/* The first match of _EVE_TYPE ("event_type"\s*:\s*"([^"\\]*)") in the line: its group, or false. */
static bool first_event_type(const uint8_t *s, size_t n, const uint8_t **kind, size_t *kind_n)
{
    static const char key[] = "\"event_type\"";
    const size_t key_n = sizeof key - 1;
    for (const uint8_t *p = s; (size_t)(s + n - p) >= key_n; p++) {
        if (*p != '"' || memcmp(p, key, key_n) != 0)
            continue;
        cursor_t c = {p + key_n, s + n};
        if (!eat(&c, ':') || !eat(&c, '"'))
            continue;
        const uint8_t *start = c.p;
        while (c.p < c.end && *c.p != '"' && *c.p != '\\')
            c.p++;
        if (c.p < c.end && *c.p == '"') {
            *kind = start;
            *kind_n = (size_t)(c.p - start);
            return true;
        }
    }
    return false;
}

enum verdict { ROW, SKIP, DECLINE };

/* What a line's text (no '\n', no final '\r') is, and its values when a ROW. */
static enum verdict judge(const uint8_t *s, size_t n, value_t *v, double *time, int *proto)
{
    if (n == 0)
        return SKIP;
    for (size_t i = 0; i < n; i++)
        if (s[i] < 0x20 || s[i] >= 0x80)   /* decode_line and \s differ on these: Python decides */
            return DECLINE;
    const uint8_t *kind;
    size_t kind_n;
    if (!first_event_type(s, n, &kind, &kind_n))
        return DECLINE;
    if (!(kind_n == 5 && memcmp(kind, "alert", 5) == 0))
        return s[0] == '{' && s[n - 1] == '}' ? SKIP : DECLINE;    /* as _eve, on sight */
    cursor_t c = {s, s + n};
    bool saw_alert = false;
    memset(v, 0, sizeof(value_t) * N_FIELDS);
    if (!eat(&c, '{') || !parse_object(&c, v, true, &saw_alert) || c.p != c.end || !saw_alert)
        return DECLINE;
    const value_t *src = &v[F_SRC_IP], *dst = &v[F_DEST_IP];
    bool v6 = src->kind == STR && memchr(src->s, ':', src->n) != NULL;   /* _eve's ":" in saddr */
    *proto = proto_of(&v[F_PROTO], v6);
    bool ok = str_is(&v[F_EVENT_TYPE], "alert") && (dotted_ipv4(src) || canonical_ipv6(src))
        && (dotted_ipv4(dst) || canonical_ipv6(dst)) && *proto != -2 && eve_time(&v[F_TIMESTAMP], time)
        && (v[F_GID].kind == ABSENT || (v[F_GID].kind == INT && v[F_GID].i <= U32_MAX_V))
        && v[F_SID].kind == INT && v[F_SID].i <= U32_MAX_V
        && (v[F_REV].kind == ABSENT || (v[F_REV].kind == INT && v[F_REV].i <= U32_MAX_V))
        && opt_uint(&v[F_SRC_PORT], 65535) && opt_uint(&v[F_DEST_PORT], 65535)
        && opt_uint(&v[F_SEVERITY], U32_MAX_V) && opt_uint(&v[F_FLOW_ID], FLOW_ID_MAX)
        && opt_str(&v[F_COMMUNITY_ID]) && (v[F_COMMUNITY_ID].kind != STR || v[F_COMMUNITY_ID].n <= 64)
        && opt_str(&v[F_SIGNATURE]) && opt_str(&v[F_CATEGORY]) && opt_str(&v[F_APP_PROTO])
        && opt_str(&v[F_ACTION]);
    return ok ? ROW : DECLINE;
}

static void put_row(sink_t *o, const uint8_t *raw, size_t n, const value_t *v, double time, int proto)
{
    bool ported = proto == -1 || proto == 6 || proto == 17 || proto == 132;   /* else ICMP's type/code */
    put_byte(o, '(');                    /* MARK */
    put_int(o, eve_row_id(raw, n));
    put_double(o, time);
    put_int(o, v[F_GID].kind == INT ? (int64_t)v[F_GID].i : 1);
    put_int(o, (int64_t)v[F_SID].i);
    put_int(o, v[F_REV].kind == INT ? (int64_t)v[F_REV].i : 0);
    if (v[F_SIGNATURE].kind == STR)
        put_str(o, v[F_SIGNATURE].s, v[F_SIGNATURE].n);
    else
        put_str(o, (const uint8_t *)"", 0);
    put_opt_int(o, &v[F_SEVERITY]);
    put_opt_str(o, &v[F_CATEGORY], true);
    if (proto < 0)
        put_none(o);
    else
        put_int(o, proto);
    put_str(o, v[F_SRC_IP].s, v[F_SRC_IP].n);
    if (ported)
        put_opt_int(o, &v[F_SRC_PORT]);
    else
        put_none(o);
    put_str(o, v[F_DEST_IP].s, v[F_DEST_IP].n);
    if (ported)
        put_opt_int(o, &v[F_DEST_PORT]);
    else
        put_none(o);
    put_opt_str(o, &v[F_COMMUNITY_ID], false);
    put_opt_int(o, &v[F_FLOW_ID]);
    put_opt_str(o, &v[F_APP_PROTO], false);
    put_opt_str(o, &v[F_ACTION], false);
    put_str(o, (const uint8_t *)"eve", 3);
    put_byte(o, 't');                    /* TUPLE */
}

size_t alertparse_eve(const char *buf, size_t len, size_t start, size_t max_line,
                      unsigned char *out, size_t out_cap, size_t *out_len)
{
    const uint8_t *data = (const uint8_t *)buf;
    sink_t o = {out, out + out_cap};
    size_t pos = start < len ? start : len, skipped = 0;
    *out_len = 0;
    if (out_cap < 16)
        return pos;
    put(&o, "\x80\x04](", 4);            /* PROTO 4, EMPTY_LIST, MARK */
    while (pos < len) {
        const uint8_t *nl = memchr(data + pos, '\n', len - pos);
        size_t next = nl ? (size_t)(nl - data) + 1 : len;
        size_t n = (nl ? (size_t)(nl - data) : len) - pos;     /* the text, '\r' included */
        if ((size_t)(o.end - o.p) < n + 1 + ROW_SLACK + 16)    /* this line, a skip count, the end */
            break;
        value_t v[N_FIELDS];
        double time = 0;
        int proto = -1;
        size_t text_n = n > 0 && data[pos + n - 1] == '\r' ? n - 1 : n;
        enum verdict verdict = n > max_line ? DECLINE : judge(data + pos, text_n, v, &time, &proto);
        if (verdict == SKIP) {
            skipped++;
        } else {
            if (skipped)
                put_int(&o, (int64_t)skipped);
            skipped = 0;
            if (verdict == ROW)
                put_row(&o, data + pos, text_n, v, time, proto);
            else
                put_bytes(&o, data + pos, next - pos);
        }
        pos = next;
    }
    if (skipped)
        put_int(&o, (int64_t)skipped);
    put(&o, "e.", 2);                    /* APPENDS, STOP */
    *out_len = (size_t)(o.p - out);
    return pos;
}
