// SPDX-License-Identifier: GPL-2.0-only OR BSD-2-Clause
/* The tc program on one packet of an existing flow, in a loop, for a
 * sampling profiler (bench/tc_profile.sh runs perf over it). Loads an object
 * file of bpf/flowmeter_tc.bpf.c (any revision: bench/tc_baseline.sh builds
 * one), runs flowmeter_ingress once to create the flow, writes the program's
 * JIT image to JIT_OUT (so samples can be placed on instructions), then runs
 * it with BPF_PROG_TEST_RUN in batches of 1,000,000 for SECONDS and prints the
 * kernel-timed ns per run of each batch and their median.
 * `new`: every run is a single run on a packet of a new flow (IPv4, the
 * source port counting up), as flowmeterd's eviction would, every 50,000
 * flows the other table is made current and the full one drained.
 *   tc_loop OBJ.o SECONDS v4|v6|new JIT_OUT
 */
#include <bpf/bpf.h>
#include <bpf/libbpf.h>
#include <linux/bpf.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <time.h>

/* Ethernet, IPv4 or IPv6, TCP with the timestamp option and 1,448 (IPv6:
 * 1,428) bytes of payload: the packets flowmeter-bench tc uses. */
static size_t packet(int v6, unsigned char *p)
{
    static const unsigned char tcp[32] = {0x9c, 0x40, 0x01, 0xbb, 0, 0, 0, 1, 0, 0, 0, 1, 0x80, 0x10, 0xff, 0xff,
                                          0, 0, 0, 0, 1, 1, 8, 10, 0, 0, 0, 1, 0, 0, 0, 2};
    size_t payload = v6 ? 1428 : 1448, l4 = sizeof(tcp) + payload, off;
    unsigned char eth[14] = {2, 0, 0, 0, 0, 2, 2, 0, 0, 0, 0, 1, v6 ? 0x86 : 0x08, v6 ? 0xdd : 0x00};
    memcpy(p, eth, 14);
    if (v6) {
        unsigned char ip[40] = {0x60, 0, 0, 0, l4 >> 8, l4 & 0xff, 6, 64, 0xfd};
        ip[23] = 1;
        ip[24] = 0xfd;
        ip[39] = 2;
        memcpy(p + 14, ip, 40);
        off = 54;
    } else {
        size_t tot = 20 + l4;
        unsigned char ip[20] = {0x45, 0, tot >> 8, tot & 0xff, 0, 0, 0x40, 0, 64, 6, 0, 0, 10, 0, 0, 1, 10, 0, 0, 2};
        memcpy(p + 14, ip, 20);
        off = 34;
    }
    memcpy(p + off, tcp, sizeof(tcp));
    memset(p + off + sizeof(tcp), 0xab, payload);
    return off + l4;
}

static int cmp(const void *a, const void *b);

/* Single runs on new flows for `limit` seconds; prints the median. */
static int new_flows(struct bpf_object *obj, int fd, unsigned char *pkt, size_t len, double limit)
{
    static unsigned times[10000000];
    int outer = bpf_object__find_map_fd_by_name(obj, "flow_tables");
    int tables[2] = {bpf_object__find_map_fd_by_name(obj, "flows_a"), bpf_object__find_map_fd_by_name(obj, "flows_b")};
    if (outer < 0 || tables[0] < 0 || tables[1] < 0) {
        fprintf(stderr, "tc_loop: flow_tables, flows_a or flows_b missing\n");
        return 1;
    }
    unsigned n = 0, active = 0, inserted = 0, sport = 1;
    struct __sk_buff ctx = {.ifindex = 1};
    struct timespec t0, t;
    clock_gettime(CLOCK_MONOTONIC, &t0);
    do {
        /* The source port (IPv4: bytes 34-35) and, past 65535, the source address's last byte. */
        pkt[34] = sport >> 8;
        pkt[35] = sport & 0xff;
        pkt[29] = 1 + (sport >> 16);
        sport++;
        LIBBPF_OPTS(bpf_test_run_opts, run, .data_in = pkt, .data_size_in = len, .ctx_in = &ctx,
                    .ctx_size_in = sizeof(ctx), .repeat = 1);
        if (bpf_prog_test_run_opts(fd, &run)) {
            perror("tc_loop: test run");
            return 1;
        }
        times[n++] = run.duration;
        if (++inserted == 50000) {
            /* Point the programs at the other table, then empty the full one. */
            __u32 zero = 0, next = tables[active ^ 1];
            if (bpf_map_update_elem(outer, &zero, &next, 0)) {
                perror("tc_loop: swap tables");
                return 1;
            }
            static unsigned char keys[4096 * 64], values[4096 * 1024];
            __u32 count, in = 0, out = 0;
            int first = 1, r;
            do {
                count = 4096;
                r = bpf_map_lookup_and_delete_batch(tables[active], first ? NULL : &in, &out, keys, values, &count, NULL);
                in = out;
                first = 0;
            } while (r == 0);
            active ^= 1;
            inserted = 0;
        }
        clock_gettime(CLOCK_MONOTONIC, &t);
    } while (n < 10000000 && (t.tv_sec - t0.tv_sec) + (t.tv_nsec - t0.tv_nsec) / 1e9 < limit);
    /* The cost grows with the table's fill: the median of each 10,000 runs. */
    for (unsigned b = 0; b + 10000 <= n && b < 100000; b += 10000) {
        static unsigned block[10000];
        memcpy(block, times + b, sizeof(block));
        qsort(block, 10000, sizeof(block[0]), cmp);
        printf("new flows %u-%u (table holds %u-%u): median %u ns\n", b, b + 9999, b % 50000, b % 50000 + 9999,
               block[5000]);
    }
    qsort(times, n, sizeof(times[0]), cmp);
    printf("new flows: %u single runs, median %u ns per run (min %u, max %u)\n", n, times[n / 2], times[0], times[n - 1]);
    return 0;
}

static int cmp(const void *a, const void *b)
{
    return (int)*(const unsigned *)a - (int)*(const unsigned *)b;
}

int main(int argc, char **argv)
{
    if (argc != 5) {
        fprintf(stderr, "usage: tc_loop OBJ.o SECONDS v4|v6|new JIT_OUT\n");
        return 2;
    }
    unsigned char pkt[1600];
    size_t len = packet(strcmp(argv[3], "v6") == 0, pkt);
    struct bpf_object *obj = bpf_object__open_file(argv[1], NULL);
    if (!obj || bpf_object__load(obj)) {
        fprintf(stderr, "tc_loop: cannot load %s\n", argv[1]);
        return 1;
    }
    struct bpf_program *prog = bpf_object__find_program_by_name(obj, "flowmeter_ingress");
    if (!prog) {
        fprintf(stderr, "tc_loop: no flowmeter_ingress in %s\n", argv[1]);
        return 1;
    }
    int fd = bpf_program__fd(prog);
    struct bpf_prog_info info = {0};
    __u32 ilen = sizeof(info);
    if (bpf_obj_get_info_by_fd(fd, &info, &ilen)) {
        perror("tc_loop: program info");
        return 1;
    }
    __u32 jlen = info.jited_prog_len;
    unsigned char *image = malloc(jlen);
    memset(&info, 0, sizeof(info));
    info.jited_prog_len = jlen;
    info.jited_prog_insns = (__u64)(unsigned long)image;
    ilen = sizeof(info);
    FILE *f = fopen(argv[4], "w");
    if (!image || bpf_obj_get_info_by_fd(fd, &info, &ilen) || !f || fwrite(image, 1, jlen, f) != jlen) {
        fprintf(stderr, "tc_loop: cannot write the JIT image to %s\n", argv[4]);
        return 1;
    }
    fclose(f);
    struct __sk_buff ctx = {.ifindex = 1};
    LIBBPF_OPTS(bpf_test_run_opts, once, .data_in = pkt, .data_size_in = len, .ctx_in = &ctx,
                .ctx_size_in = sizeof(ctx), .repeat = 1);
    if (bpf_prog_test_run_opts(fd, &once)) {
        perror("tc_loop: test run");
        return 1;
    }
    static unsigned times[10000000];
    unsigned n = 0;
    struct timespec t0, t;
    clock_gettime(CLOCK_MONOTONIC, &t0);
    double limit = atof(argv[2]);
    if (strcmp(argv[3], "new") == 0)
        return new_flows(obj, fd, pkt, len, limit);
    do {
        LIBBPF_OPTS(bpf_test_run_opts, run, .data_in = pkt, .data_size_in = len, .ctx_in = &ctx,
                    .ctx_size_in = sizeof(ctx), .repeat = 1000000);
        if (bpf_prog_test_run_opts(fd, &run)) {
            perror("tc_loop: test run");
            return 1;
        }
        times[n++] = run.duration;
        clock_gettime(CLOCK_MONOTONIC, &t);
    } while (n < 100000 && (t.tv_sec - t0.tv_sec) + (t.tv_nsec - t0.tv_nsec) / 1e9 < limit);
    qsort(times, n, sizeof(times[0]), cmp);
    printf("%s %s: %u batches of 1000000 runs, median %u ns per run (min %u, max %u)\n", argv[1], argv[3], n,
           times[n / 2], times[0], times[n - 1]);
    return 0;
}
