/* pcap_floor: the bare libpcap read loop, the floor every metering figure is compared against.
 *
 * Reads a capture with pcap_open_offline + pcap_next_ex, counts packets and wire bytes, and prints
 *   packets N bytes N seconds S
 * where seconds covers the read loop only. Built by bench/run.py:
 *   cc -std=c11 -O2 -Wall -Wextra -o bench/out/pcap_floor bench/pcap_floor.c -lpcap
 */
#define _DEFAULT_SOURCE                  /* u_char and friends in <pcap/pcap.h> under -std=c11 */
#include <pcap/pcap.h>
#include <stdint.h>
#include <stdio.h>
#include <time.h>

static double now_s(void)
{
    struct timespec ts;
    clock_gettime(CLOCK_MONOTONIC, &ts);
    return (double)ts.tv_sec + (double)ts.tv_nsec / 1e9;
}

int main(int argc, char **argv)
{
    char errbuf[PCAP_ERRBUF_SIZE];
    struct pcap_pkthdr *hdr;
    const u_char *data;
    uint64_t packets = 0, bytes = 0, touched = 0;
    int rc;

    if (argc != 2) {
        fprintf(stderr, "usage: %s CAPTURE\n", argv[0]);
        return 2;
    }
    pcap_t *p = pcap_open_offline(argv[1], errbuf);
    if (p == NULL) {
        fprintf(stderr, "pcap_floor: %s\n", errbuf);
        return 1;
    }
    double start = now_s();
    while ((rc = pcap_next_ex(p, &hdr, &data)) == 1) {
        packets++;
        bytes += hdr->len;
        if (hdr->caplen > 0)
            touched += data[0];          /* read one byte, as any decoder must */
    }
    double elapsed = now_s() - start;
    if (rc == PCAP_ERROR) {
        fprintf(stderr, "pcap_floor: %s\n", pcap_geterr(p));
        pcap_close(p);
        return 1;
    }
    pcap_close(p);
    printf("packets %llu bytes %llu seconds %.6f\n", (unsigned long long)packets, (unsigned long long)bytes,
           elapsed);
    return touched == UINT64_MAX;        /* keeps the touch from being optimised away */
}
