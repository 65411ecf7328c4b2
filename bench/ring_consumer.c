// SPDX-License-Identifier: (LGPL-2.1 OR BSD-2-Clause)
/* C reference consumers for the ring drain benchmark (flowmeter-bench ring).
 *
 *   ring_consumer PRODUCER.bpf.o RECORDS
 *
 * Loads the producer (bench/ring_producer.bpf.c) with a ring big enough for
 * RECORDS records, prints "ready", then serves one command per stdin line:
 *   a  fill the ring with RECORDS records, drain it counting them;
 *   d  fill, drain aggregating into an open-addressing table keyed by the
 *      flow key (packets and bytes summed);
 *   e  as d, and each record is also copied out whole into an array (kept
 *      between drains, so its pages are mapped), as a collector that logs
 *      every record keeps them until its tick: flowmeterd keeps each one
 *      decoded for the flow log and the API. Not the target's reference (d
 *      is); it shows what keeping the records costs C;
 * and prints "<variant> <drain cpu ns> <records> <flows> <packets> <bytes> <drain wall ns>".
 * Only the ring_buffer__consume call is timed, by this thread's CPU clock
 * (CLOCK_THREAD_CPUTIME_ID) and by the wall clock; the driver compares CPU
 * time, as it measures its own drains: on a machine shared with builds (load
 * 10-20 on 2 vCPUs) the wall clock mostly measured how long the drain waited
 * for its CPU (the C table once 615 ns a record by the wall clock, 28 idle),
 * and the longer drain waits more. The process stays up between
 * commands so that its mappings and table are as warm as those of the Swift
 * consumers, which live in the driver: the driver interleaves variants
 * without timing any process start-up.
 *
 * Every drain is checked (record count; for d, flows and the sums the
 * producer guarantees): a benchmark that silently measured a short batch
 * would be worse than none.
 */
#include <errno.h>
#include <stdint.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <time.h>
#include <unistd.h>
#include <linux/bpf.h>
#include <bpf/bpf.h>
#include <bpf/libbpf.h>
#include "flowmeter_abi.h"

/* As in bench/ring_producer.bpf.c. */
#define FM_BENCH_FLOWS 65536
/* Twice the flows, so linear probing stays short (load factor 1/2). */
#define TABLE_SLOTS (2 * FM_BENCH_FLOWS)

/* One cache line per slot. */
struct slot {
    struct fm_flow_key key;
    uint32_t used;
    uint64_t packets;
    uint64_t bytes;
};
_Static_assert(sizeof(struct slot) == 64, "one cache line per slot");

struct aggregate {
    struct slot *slots;
    /* For e: every record, in arrival order; NULL for d. */
    struct fm_flow_event *kept;
    uint64_t flows;
    uint64_t records;
    uint64_t rejected;
};

static void die(const char *what, int err)
{
    fprintf(stderr, "ring_consumer: %s: %s\n", what, strerror(err));
    exit(1);
}

static int count_record(void *ctx, void *data, size_t size)
{
    (void)data;
    (void)size;
    ++*(uint64_t *)ctx;
    return 0;
}

static inline uint64_t load64(const unsigned char *p)
{
    uint64_t v;
    memcpy(&v, p, sizeof(v));
    return v;
}

/* The 44-byte key as five 8-byte words and one 4-byte word. */
static inline uint64_t key_hash(const struct fm_flow_key *k)
{
    const unsigned char *p = (const unsigned char *)k;
    uint64_t h = 0;
    for (int i = 0; i < 40; i += 8)
        h = (h ^ load64(p + i)) * 0x9E3779B97F4A7C15ull;
    uint32_t tail;
    memcpy(&tail, p + 40, sizeof(tail));
    h = (h ^ tail) * 0x9E3779B97F4A7C15ull;
    /* Multiplying only carries upwards; fold the high bits back into the
     * low ones the table index uses (the murmur3 finaliser). */
    h ^= h >> 33;
    h *= 0xff51afd7ed558ccdull;
    h ^= h >> 33;
    return h;
}

static inline int key_equal(const struct fm_flow_key *a, const struct fm_flow_key *b)
{
    const unsigned char *p = (const unsigned char *)a, *q = (const unsigned char *)b;
    uint64_t diff = 0;
    for (int i = 0; i < 40; i += 8)
        diff |= load64(p + i) ^ load64(q + i);
    uint32_t ta, tb;
    memcpy(&ta, p + 40, sizeof(ta));
    memcpy(&tb, q + 40, sizeof(tb));
    return diff == 0 && ta == tb;
}

static int aggregate_record(void *ctx, void *data, size_t size)
{
    struct aggregate *a = ctx;
    const struct fm_flow_event *ev = data;
    /* The same acceptance test as flowmeterd's decoder. */
    if (size < sizeof(*ev) || ev->version != FM_ABI_VERSION || ev->kind != FM_FLOW_EVENT_OVERFLOW) {
        a->rejected++;
        return 0;
    }
    if (a->kept)
        memcpy(&a->kept[a->records], ev, sizeof(*ev));
    a->records++;
    uint64_t i = key_hash(&ev->key) & (TABLE_SLOTS - 1);
    for (;;) {
        struct slot *s = &a->slots[i];
        if (!s->used) {
            if (a->flows >= TABLE_SLOTS / 2) {
                fprintf(stderr, "ring_consumer: more flows than the table was sized for\n");
                exit(1);
            }
            s->key = ev->key;
            s->used = 1;
            s->packets = ev->stats.packets;
            s->bytes = ev->stats.bytes;
            a->flows++;
            return 0;
        }
        if (key_equal(&s->key, &ev->key)) {
            s->packets += ev->stats.packets;
            s->bytes += ev->stats.bytes;
            return 0;
        }
        i = (i + 1) & (TABLE_SLOTS - 1);
    }
}

static uint64_t clock_ns(clockid_t clock)
{
    struct timespec ts;
    clock_gettime(clock, &ts);
    return (uint64_t)ts.tv_sec * 1000000000ull + (uint64_t)ts.tv_nsec;
}

static void fill(int prog_fd, uint32_t records)
{
    unsigned char packet[64] = {0};
    LIBBPF_OPTS(bpf_test_run_opts, opts, .data_in = packet, .data_size_in = sizeof(packet),
                .repeat = (int)records);
    if (bpf_prog_test_run_opts(prog_fd, &opts) != 0)
        die("run the producer", errno);
}

int main(int argc, char **argv)
{
    if (argc != 3) {
        fprintf(stderr, "usage: ring_consumer PRODUCER.bpf.o RECORDS\n");
        return 2;
    }
    char *end;
    unsigned long records = strtoul(argv[2], &end, 10);
    if (*end || records == 0 || records % FM_BENCH_FLOWS != 0 || records > (1ul << 24)) {
        fprintf(stderr, "ring_consumer: RECORDS must be a multiple of %d, at most 2^24\n", FM_BENCH_FLOWS);
        return 2;
    }
    /* Each record takes its 8-byte header plus the event, rounded to 8. */
    size_t need = records * ((sizeof(struct fm_flow_event) + 8 + 7) & ~(size_t)7);
    size_t ring_bytes = (size_t)sysconf(_SC_PAGESIZE);
    while (ring_bytes <= need)
        ring_bytes <<= 1;

    struct bpf_object *obj = bpf_object__open_file(argv[1], NULL);
    if (!obj)
        die("open the producer object", errno);
    struct bpf_map *ring = bpf_object__find_map_by_name(obj, "bench_flows");
    struct bpf_program *prog = bpf_object__find_program_by_name(obj, "ring_produce");
    if (!ring || !prog)
        die("find bench_flows / ring_produce in the producer", ENOENT);
    int err = bpf_map__set_max_entries(ring, (uint32_t)ring_bytes);
    if (err)
        die("size the ring", -err);
    err = bpf_object__load(obj);
    if (err)
        die("load the producer", -err);
    int prog_fd = bpf_program__fd(prog), ring_fd = bpf_map__fd(ring);

    uint64_t counted = 0;
    struct aggregate agg = {0};
    agg.slots = aligned_alloc(64, sizeof(struct slot) * TABLE_SLOTS);
    struct fm_flow_event *kept = malloc(sizeof(*kept) * records);
    if (!agg.slots || !kept)
        die("allocate the table", ENOMEM);
    memset(kept, 0, sizeof(*kept) * records);
    memset(agg.slots, 0, sizeof(struct slot) * TABLE_SLOTS);
    /* Two readers of the same ring, so neither callback branches on the variant. */
    struct ring_buffer *count_rb = ring_buffer__new(ring_fd, count_record, &counted, NULL);
    struct ring_buffer *agg_rb = ring_buffer__new(ring_fd, aggregate_record, &agg, NULL);
    if (!count_rb || !agg_rb)
        die("open the ring", errno);

    const uint64_t want_packets = records / 2 * 5, want_bytes = records * 575 + records / 2;
    printf("ready %lu %d\n", records, FM_BENCH_FLOWS);
    fflush(stdout);
    char line[64];
    while (fgets(line, sizeof(line), stdin)) {
        char variant = line[0];
        if (variant == 'q')
            break;
        if (variant != 'a' && variant != 'd' && variant != 'e') {
            fprintf(stderr, "ring_consumer: unknown command %s", line);
            return 2;
        }
        fill(prog_fd, (uint32_t)records);
        uint64_t t0, t1, w0, w1, packets = 0, bytes = 0, flows = 0, seen;
        int n;
        if (variant == 'a') {
            counted = 0;
            w0 = clock_ns(CLOCK_MONOTONIC);
            t0 = clock_ns(CLOCK_THREAD_CPUTIME_ID);
            n = ring_buffer__consume(count_rb);
            t1 = clock_ns(CLOCK_THREAD_CPUTIME_ID);
            w1 = clock_ns(CLOCK_MONOTONIC);
            seen = counted;
        } else {
            memset(agg.slots, 0, sizeof(struct slot) * TABLE_SLOTS);
            agg.flows = agg.records = agg.rejected = 0;
            agg.kept = variant == 'e' ? kept : NULL;
            w0 = clock_ns(CLOCK_MONOTONIC);
            t0 = clock_ns(CLOCK_THREAD_CPUTIME_ID);
            n = ring_buffer__consume(agg_rb);
            t1 = clock_ns(CLOCK_THREAD_CPUTIME_ID);
            w1 = clock_ns(CLOCK_MONOTONIC);
            seen = agg.records;
            flows = agg.flows;
            for (size_t i = 0; i < TABLE_SLOTS; i++) {
                packets += agg.slots[i].packets;
                bytes += agg.slots[i].bytes;
            }
            if (agg.rejected || flows != FM_BENCH_FLOWS || packets != want_packets || bytes != want_bytes) {
                fprintf(stderr, "ring_consumer: %c: %lu rejected, %lu flows (want %d), %lu packets (want %lu), "
                        "%lu bytes (want %lu)\n", variant, (unsigned long)agg.rejected, (unsigned long)flows,
                        FM_BENCH_FLOWS, (unsigned long)packets, (unsigned long)want_packets,
                        (unsigned long)bytes, (unsigned long)want_bytes);
                return 1;
            }
        }
        if (n < 0)
            die("consume", -n);
        if (seen != records || (uint64_t)n != records) {
            fprintf(stderr, "ring_consumer: %c: %lu records seen, consume said %d, want %lu\n",
                    variant, (unsigned long)seen, n, records);
            return 1;
        }
        printf("%c %lu %lu %lu %lu %lu %lu\n", variant, (unsigned long)(t1 - t0), (unsigned long)seen,
               (unsigned long)flows, (unsigned long)packets, (unsigned long)bytes, (unsigned long)(w1 - w0));
        fflush(stdout);
    }
    ring_buffer__free(count_rb);
    ring_buffer__free(agg_rb);
    bpf_object__close(obj);
    free(agg.slots);
    free(kept);
    return 0;
}
