/* alertparse.h: Suricata EVE alert lines to the alert store's rows, many lines a call.
 *
 * cffi reads this header as its cdef (lines starting with '#' dropped): declarations only.
 */
#include <stddef.h>
#include <stdint.h>

/* Reads the lines of buf[start, len) (each ends with '\n', the last may not) and writes into out
 * one pickle (protocol 4) of a list with, for each run of lines:
 *   - a tuple of the 18 ROW_FIELDS for a plain alert line fully understood (msg "" when the line
 *     has none: the caller looks it up in its sid map);
 *   - an int n for n lines that are skipped (blank, or an EVE event other than an alert);
 *   - the bytes of a line left to the caller (its '\n' included): anything else.
 * A line whose text (without '\n') is over max_line bytes is always left to the caller.
 * Stops before a line whose worst-case output would not fit in out_cap bytes; *out_len gets the
 * pickle's length. Returns the offset in buf after the last line read (start when out_cap is
 * below ALERTPARSE_MIN_OUT + that line's length). Never reads outside buf[0, len). */
size_t alertparse_eve(const char *buf, size_t len, size_t start, size_t max_line,
                      unsigned char *out, size_t out_cap, size_t *out_len);

/* Bytes of out a line of n bytes may need beyond n. */
#define ALERTPARSE_MIN_OUT 512
