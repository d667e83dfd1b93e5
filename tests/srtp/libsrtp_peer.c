/*
 * libsrtp_peer: a tiny stdin/stdout driver around libsrtp2, used by the
 * dialerd SRTP interoperability tests.
 *
 *   libsrtp_peer <suite> <direction> <key-hex> [bench]
 *
 *   suite      AES_CM_128_HMAC_SHA1_80 | AES_CM_128_HMAC_SHA1_32 |
 *              AEAD_AES_128_GCM
 *   direction  protect | unprotect
 *   key-hex    master key || master salt, hex encoded
 *              (30 bytes for the AES_CM suites, 28 bytes for GCM)
 *
 * Line protocol (one request line in, one response line out, flushed):
 *
 *   in:  rtp <hex>   |  rtcp <hex>
 *   out: ok <hex>    |  err <srtp_err_status_t number>  |  err bad-line
 *
 * With the optional fourth argument "bench" nothing is read from stdin;
 * instead the per-packet cost of the chosen direction is measured and
 * printed as "ns_per_packet <float>".
 *
 * Build:
 *   cc -O2 -Wall -Wextra -o libsrtp_peer libsrtp_peer.c \
 *      $(pkg-config --cflags --libs libsrtp2)
 */

#define _POSIX_C_SOURCE 200809L

#include <srtp2/srtp.h>

#include <stdint.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <time.h>

/* Largest plaintext packet we accept for protection. */
#define MAX_PLAIN 1500
/*
 * Working buffer: plaintext plus the largest trailer libsrtp may append.
 * SRTCP additionally appends the 4-byte E-flag/index word, hence the +4.
 * The same buffer also holds inbound SRTP/SRTCP packets for unprotect.
 */
#define BUF_LEN (MAX_PLAIN + SRTP_MAX_TRAILER_LEN + 4)

#define BENCH_N 1000000L
#define BENCH_PKT_LEN 172 /* 12-byte RTP header + 160 bytes payload */

enum direction { DIR_PROTECT, DIR_UNPROTECT };

static void usage(void)
{
    fprintf(stderr,
            "usage: libsrtp_peer <AES_CM_128_HMAC_SHA1_80|"
            "AES_CM_128_HMAC_SHA1_32|AEAD_AES_128_GCM> "
            "<protect|unprotect> <key-hex> [bench]\n");
}

static int hex_nibble(char c)
{
    if (c >= '0' && c <= '9')
        return c - '0';
    if (c >= 'a' && c <= 'f')
        return c - 'a' + 10;
    if (c >= 'A' && c <= 'F')
        return c - 'A' + 10;
    return -1;
}

/*
 * Decode exactly `len` hex characters from `hex` into `out` (capacity
 * `cap`).  Returns the number of bytes written, or -1 on odd length,
 * a non-hex character, or overflow.
 */
static long hex_decode(const char *hex, size_t len, uint8_t *out, size_t cap)
{
    if (len % 2 != 0 || len / 2 > cap)
        return -1;
    for (size_t i = 0; i < len / 2; i++) {
        int hi = hex_nibble(hex[2 * i]);
        int lo = hex_nibble(hex[2 * i + 1]);
        if (hi < 0 || lo < 0)
            return -1;
        out[i] = (uint8_t)((hi << 4) | lo);
    }
    return (long)(len / 2);
}

static void print_hex_line(const char *prefix, const uint8_t *p, int len)
{
    static const char digits[] = "0123456789abcdef";
    fputs(prefix, stdout);
    for (int i = 0; i < len; i++) {
        putchar(digits[p[i] >> 4]);
        putchar(digits[p[i] & 0x0f]);
    }
    putchar('\n');
    fflush(stdout);
}

/*
 * Fill in the crypto policies for `suite`.  Returns the expected master
 * key+salt length in bytes, or 0 for an unknown suite.
 */
static size_t set_suite(srtp_policy_t *pol, const char *suite)
{
    if (strcmp(suite, "AES_CM_128_HMAC_SHA1_80") == 0) {
        srtp_crypto_policy_set_aes_cm_128_hmac_sha1_80(&pol->rtp);
        srtp_crypto_policy_set_aes_cm_128_hmac_sha1_80(&pol->rtcp);
        return SRTP_AES_ICM_128_KEY_LEN_WSALT;
    }
    if (strcmp(suite, "AES_CM_128_HMAC_SHA1_32") == 0) {
        /* RFC 4568 6.2.1: the _32 tag applies to SRTP only; SRTCP keeps
         * the 80-bit tag. */
        srtp_crypto_policy_set_aes_cm_128_hmac_sha1_32(&pol->rtp);
        srtp_crypto_policy_set_rtp_default(&pol->rtcp);
        return SRTP_AES_ICM_128_KEY_LEN_WSALT;
    }
    if (strcmp(suite, "AEAD_AES_128_GCM") == 0) {
        srtp_crypto_policy_set_aes_gcm_128_16_auth(&pol->rtp);
        srtp_crypto_policy_set_aes_gcm_128_16_auth(&pol->rtcp);
        return SRTP_AES_GCM_128_KEY_LEN_WSALT;
    }
    return 0;
}

/* Create one session for `dir` using the suite/key already in `tmpl`. */
static srtp_err_status_t make_session(srtp_t *out, const srtp_policy_t *tmpl,
                                      enum direction dir)
{
    srtp_policy_t pol = *tmpl;
    pol.ssrc.type = dir == DIR_PROTECT ? ssrc_any_outbound : ssrc_any_inbound;
    pol.ssrc.value = 0;
    pol.window_size = 128;
    pol.allow_repeat_tx = 0;
    pol.next = NULL;
    return srtp_create(out, &pol);
}

static double now_ns(void)
{
    struct timespec ts;
    clock_gettime(CLOCK_MONOTONIC, &ts);
    return (double)ts.tv_sec * 1e9 + (double)ts.tv_nsec;
}

/* Build the benchmark RTP packet: V=2, PT=0, given seq, fixed ts/ssrc. */
static void bench_packet(uint8_t *p, uint16_t seq)
{
    memset(p, 0, BENCH_PKT_LEN);
    p[0] = 0x80;
    p[1] = 0x00;
    p[2] = (uint8_t)(seq >> 8);
    p[3] = (uint8_t)seq;
    p[4] = 0x00; p[5] = 0x00; p[6] = 0x0f; p[7] = 0xa0; /* timestamp */
    p[8] = 0xde; p[9] = 0xad; p[10] = 0xbe; p[11] = 0xef; /* SSRC */
    for (int i = 12; i < BENCH_PKT_LEN; i++)
        p[i] = (uint8_t)i;
}

/*
 * Protect benchmark: BENCH_N srtp_protect calls on one session, with an
 * incrementing sequence number (libsrtp tracks the ROC across the 16-bit
 * wrap).  Before every call the 172-byte plaintext is restored with a
 * memcpy and the seq patched in; that small copy is inside the timed loop.
 */
static int bench_protect(const srtp_policy_t *tmpl)
{
    static uint8_t plain[BENCH_PKT_LEN];
    static uint8_t buf[BUF_LEN];
    srtp_t tx;
    srtp_err_status_t st = make_session(&tx, tmpl, DIR_PROTECT);
    if (st != srtp_err_status_ok) {
        fprintf(stderr, "srtp_create failed: %d\n", (int)st);
        return 1;
    }
    bench_packet(plain, 0);

    double t0 = now_ns();
    for (long i = 0; i < BENCH_N; i++) {
        int len = BENCH_PKT_LEN;
        memcpy(buf, plain, BENCH_PKT_LEN);
        buf[2] = (uint8_t)(i >> 8);
        buf[3] = (uint8_t)i;
        st = srtp_protect(tx, buf, &len);
        if (st != srtp_err_status_ok) {
            fprintf(stderr, "srtp_protect failed at %ld: %d\n", i, (int)st);
            return 1;
        }
    }
    double t1 = now_ns();

    srtp_dealloc(tx);
    printf("ns_per_packet %.1f\n", (t1 - t0) / (double)BENCH_N);
    fflush(stdout);
    return 0;
}

/*
 * Unprotect benchmark.
 *
 * Pre-protecting all BENCH_N packets would need ~190 MB, and simply
 * re-unprotecting one packet would be refused by the replay check.  So we
 * run a protect session alongside the unprotect session and work in
 * batches: protect BENCH_BATCH packets with consecutive sequence numbers
 * into memory (untimed), then time only the srtp_unprotect calls over
 * that batch.  Sequence numbers keep increasing across batches (the ROC
 * advances on both sides in step), so every packet is fresh for the
 * receiver's default replay protection and must authenticate for real.
 */
#define BENCH_BATCH 1000

static int bench_unprotect(const srtp_policy_t *tmpl)
{
    static uint8_t pkts[BENCH_BATCH][BUF_LEN];
    static int lens[BENCH_BATCH];
    srtp_t tx, rx;
    srtp_err_status_t st;

    if ((st = make_session(&tx, tmpl, DIR_PROTECT)) != srtp_err_status_ok ||
        (st = make_session(&rx, tmpl, DIR_UNPROTECT)) != srtp_err_status_ok) {
        fprintf(stderr, "srtp_create failed: %d\n", (int)st);
        return 1;
    }

    double total = 0.0;
    long seq = 0;
    for (long done = 0; done < BENCH_N; done += BENCH_BATCH) {
        /* Untimed: prepare one batch of fresh SRTP packets. */
        for (int k = 0; k < BENCH_BATCH; k++, seq++) {
            bench_packet(pkts[k], (uint16_t)seq);
            lens[k] = BENCH_PKT_LEN;
            st = srtp_protect(tx, pkts[k], &lens[k]);
            if (st != srtp_err_status_ok) {
                fprintf(stderr, "srtp_protect failed: %d\n", (int)st);
                return 1;
            }
        }
        /* Timed: unprotect the batch in order. */
        double t0 = now_ns();
        for (int k = 0; k < BENCH_BATCH; k++) {
            st = srtp_unprotect(rx, pkts[k], &lens[k]);
            if (st != srtp_err_status_ok) {
                fprintf(stderr, "srtp_unprotect failed: %d\n", (int)st);
                return 1;
            }
        }
        total += now_ns() - t0;
    }

    srtp_dealloc(tx);
    srtp_dealloc(rx);
    printf("ns_per_packet %.1f\n", total / (double)BENCH_N);
    fflush(stdout);
    return 0;
}

/*
 * Handle one request line (already stripped of its line terminator).
 * Prints exactly one response line.
 */
static void handle_line(srtp_t session, enum direction dir, const char *line,
                        size_t n)
{
    static uint8_t buf[BUF_LEN];
    int is_rtcp;
    size_t skip;

    if (n >= 4 && memcmp(line, "rtp ", 4) == 0) {
        is_rtcp = 0;
        skip = 4;
    } else if (n >= 5 && memcmp(line, "rtcp ", 5) == 0) {
        is_rtcp = 1;
        skip = 5;
    } else {
        puts("err bad-line");
        fflush(stdout);
        return;
    }

    /* Plaintext must leave room for the trailer; SRTP input may use it. */
    size_t cap = dir == DIR_PROTECT ? MAX_PLAIN : BUF_LEN;
    long got = hex_decode(line + skip, n - skip, buf, cap);
    if (got <= 0) {
        puts("err bad-line");
        fflush(stdout);
        return;
    }

    int len = (int)got;
    srtp_err_status_t st;
    if (dir == DIR_PROTECT)
        st = is_rtcp ? srtp_protect_rtcp(session, buf, &len)
                     : srtp_protect(session, buf, &len);
    else
        st = is_rtcp ? srtp_unprotect_rtcp(session, buf, &len)
                     : srtp_unprotect(session, buf, &len);

    if (st == srtp_err_status_ok) {
        print_hex_line("ok ", buf, len);
    } else {
        printf("err %d\n", (int)st);
        fflush(stdout);
    }
}

int main(int argc, char **argv)
{
    if (argc != 4 && argc != 5) {
        usage();
        return 2;
    }

    srtp_policy_t tmpl;
    memset(&tmpl, 0, sizeof tmpl);

    size_t key_len = set_suite(&tmpl, argv[1]);
    if (key_len == 0) {
        fprintf(stderr, "unknown suite: %s\n", argv[1]);
        usage();
        return 2;
    }

    enum direction dir;
    if (strcmp(argv[2], "protect") == 0) {
        dir = DIR_PROTECT;
    } else if (strcmp(argv[2], "unprotect") == 0) {
        dir = DIR_UNPROTECT;
    } else {
        fprintf(stderr, "unknown direction: %s\n", argv[2]);
        usage();
        return 2;
    }

    /* libsrtp reads key_len bytes from policy.key: master key then salt. */
    uint8_t key[SRTP_MAX_KEY_LEN];
    long klen = hex_decode(argv[3], strlen(argv[3]), key, sizeof key);
    if (klen < 0 || (size_t)klen != key_len) {
        fprintf(stderr, "key must be %zu bytes (%zu hex chars) for %s\n",
                key_len, 2 * key_len, argv[1]);
        return 2;
    }
    tmpl.key = key;

    int bench = 0;
    if (argc == 5) {
        if (strcmp(argv[4], "bench") != 0) {
            fprintf(stderr, "unknown mode: %s\n", argv[4]);
            usage();
            return 2;
        }
        bench = 1;
    }

    srtp_err_status_t st = srtp_init();
    if (st != srtp_err_status_ok) {
        fprintf(stderr, "srtp_init failed: %d\n", (int)st);
        return 1;
    }

    if (bench) {
        int rc = dir == DIR_PROTECT ? bench_protect(&tmpl)
                                    : bench_unprotect(&tmpl);
        srtp_shutdown();
        return rc;
    }

    srtp_t session;
    st = make_session(&session, &tmpl, dir);
    if (st != srtp_err_status_ok) {
        fprintf(stderr, "srtp_create failed: %d\n", (int)st);
        return 1;
    }

    char *line = NULL;
    size_t cap = 0;
    ssize_t n;
    while ((n = getline(&line, &cap, stdin)) >= 0) {
        while (n > 0 && (line[n - 1] == '\n' || line[n - 1] == '\r'))
            n--;
        handle_line(session, dir, line, (size_t)n);
    }

    free(line);
    srtp_dealloc(session);
    srtp_shutdown();
    return 0;
}
