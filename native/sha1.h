/* sha1.h: SHA-1 (FIPS 180-4) for the Community ID (native/store.c); not used for security. */
#ifndef FLOWTAP_SHA1_H
#define FLOWTAP_SHA1_H
#include <stddef.h>
#include <stdint.h>

void sha1(const void *data, size_t len, uint8_t digest[20]);

#endif
