// SPDX-License-Identifier: GPL-2.0-only OR BSD-2-Clause
/* The kernel's cost of inserting a new flow, measured apart from the tc
 * program (docs/benchmarks.md, "Where a new flow's time goes"): single
 * BPF_PROG_TEST_RUN runs, as `flowmeter-bench tc` times a new flow, of the
 * programs of bench/htab_insert.bpf.c (an empty one, the key copy alone, an
 * insert into a per-CPU hash like the flow table, lookup-then-insert, and the
 * same insert into other kinds of table) and of flowmeter_tc's own
 * flowmeter_noop and flowmeter_ingress, interleaved: in every round each
 * program runs PER times, in a shuffled order, each time on a packet whose
 * key no map has seen; then every table is emptied, as flowmeter-bench's
 * eviction empties the flow table between rounds. Prints per program the
 * median of the per-round medians, and the ratio to the empty programs.
 * With OLD_TC_OBJ (another build of bpf/flowmeter_tc.bpf.c, e.g. from
 * bench/tc_baseline.sh REV), its flowmeter_ingress runs in the same rounds.
 *   htab_insert HTAB_OBJ.o TC_OBJ.o [ROUNDS] [PER] [OLD_TC_OBJ.o]
 * (bench/htab_insert.sh builds both and runs it.)
 */
#include <bpf/bpf.h>
#include <bpf/libbpf.h>
#include <linux/bpf.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#define MAX_ROUNDS 200
#define MAX_PER    2000

struct prog {
    const char *obj; /* "h": the htab object, "t": the tc object, "o": the old tc object */
    const char *name;
    const char *what;
    int syn; /* the packet is a SYN (else an ACK, as flowmeter-bench tc's) */
    int fd;
    double round_median[MAX_ROUNDS];
};

static struct prog progs[] = {
    {"t", "flowmeter_noop", "flowmeter_tc: empty classifier"},
    {"t", "flowmeter_ingress", "flowmeter_tc: new flow"},
    {"t", "flowmeter_ingress", "flowmeter_tc: new flow, a SYN", 1},
    {"o", "flowmeter_ingress", "OLD flowmeter_tc: new flow"},
    {"o", "flowmeter_ingress", "OLD flowmeter_tc: new flow, a SYN", 1},
    {"h", "hi_empty", "empty"},
    {"h", "hi_key_only", "key copied from the packet, nothing else"},
    {"h", "hi_lookup", "lookup (miss), per-CPU hash (as the flow table)"},
    {"h", "hi_insert", "insert, per-CPU hash (as the flow table)"},
    {"h", "hi_lookup_insert", "lookup (miss) then insert, per-CPU hash"},
    {"h", "hi_insert_small", "insert, per-CPU hash of 1,024 entries"},
    {"h", "hi_insert_key20", "insert, per-CPU hash, 20-byte key"},
    {"h", "hi_insert_shared", "insert, shared (not per-CPU) hash"},
    {"h", "hi_insert_lru", "insert, LRU per-CPU hash"},
    {"h", "hi_array", "direct-mapped per-CPU array slot"},
};
#define NPROGS (sizeof(progs) / sizeof(progs[0]))

/* The tables emptied after each round. */
static const char *const htab_tables[] = {"t_insert", "t_lookup_insert", "t_small", "t_key20", "t_shared", "t_lru"};

static int cmp(const void *a, const void *b)
{
    double x = *(const double *)a, y = *(const double *)b;
    return x < y ? -1 : x > y;
}

static double median(double *xs, int n)
{
    qsort(xs, n, sizeof(xs[0]), cmp);
    return n % 2 ? xs[n / 2] : (xs[n / 2 - 1] + xs[n / 2]) / 2;
}

static struct bpf_object *load(const char *path)
{
    struct bpf_object *obj = bpf_object__open_file(path, NULL);
    if (!obj || bpf_object__load(obj)) {
        fprintf(stderr, "htab_insert: cannot load %s\n", path);
        exit(1);
    }
    return obj;
}

/* Deletes every entry (a few hundred: one key at a time is fast enough). */
static void empty(int fd, size_t key_size)
{
    unsigned char key[64];
    if (key_size > sizeof(key))
        exit(1);
    while (bpf_map_get_next_key(fd, NULL, key) == 0)
        if (bpf_map_delete_elem(fd, key)) {
            perror("htab_insert: delete");
            exit(1);
        }
}

static int map_fd(struct bpf_object *obj, const char *name)
{
    int fd = bpf_object__find_map_fd_by_name(obj, name);
    if (fd < 0) {
        fprintf(stderr, "htab_insert: no map %s\n", name);
        exit(1);
    }
    return fd;
}

int main(int argc, char **argv)
{
    if (argc < 3 || argc > 6) {
        fprintf(stderr, "usage: htab_insert HTAB_OBJ.o TC_OBJ.o [ROUNDS] [PER] [OLD_TC_OBJ.o]\n");
        return 2;
    }
    int rounds = argc > 3 ? atoi(argv[3]) : 15, per = argc > 4 ? atoi(argv[4]) : 200;
    if (rounds < 1 || rounds > MAX_ROUNDS || per < 1 || per > MAX_PER) {
        fprintf(stderr, "htab_insert: ROUNDS 1..%d, PER 1..%d\n", MAX_ROUNDS, MAX_PER);
        return 2;
    }
    struct bpf_object *h = load(argv[1]), *t = load(argv[2]), *o = argc > 5 ? load(argv[5]) : NULL;
    size_t nprogs = 0;
    for (size_t i = 0; i < NPROGS; i++) {
        if (progs[i].obj[0] == 'o' && !o)
            continue;
        progs[nprogs] = progs[i];
        struct bpf_object *obj = progs[i].obj[0] == 'h' ? h : progs[i].obj[0] == 't' ? t : o;
        struct bpf_program *p = bpf_object__find_program_by_name(obj, progs[i].name);
        if (!p) {
            fprintf(stderr, "htab_insert: no program %s\n", progs[i].name);
            return 1;
        }
        progs[nprogs++].fd = bpf_program__fd(p);
    }
    /* The packet flowmeter-bench tc uses for a new flow: IPv4 TCP, 10.0.0.1 ->
     * 10.0.0.2, port 443, the timestamp option, 1,448 bytes of payload; the
     * source port (bytes 34-35) and the source address's last byte (29) count
     * up, so every run is a key no table holds. */
    static unsigned char pkt[14 + 20 + 32 + 1448];
    static const unsigned char head[] = {2,    0, 0,    0,    0, 2,  2,  0, 0, 0,  0, 1, 0x08, 0,    0x45, 0,    0x05,
                                         0xdc, 0, 0,    0,    0, 64, 6,  0, 0, 10, 0, 0, 1,    10,   0,    0,    2,
                                         0,    0, 0x01, 0xbb, 0, 0,  0,  1, 0, 0,  0, 1, 0x80, 0x10, 0xff, 0xff, 0,
                                         0,    0, 0,    1,    1, 8,  10, 0, 0, 0,  1, 0, 0,    0,    2};
    memcpy(pkt, head, sizeof(head));
    memset(pkt + sizeof(head), 0xab, sizeof(pkt) - sizeof(head));
    static double times[NPROGS][MAX_PER];
    unsigned flow = 1;
    struct __sk_buff ctx = {.ifindex = 1};
    for (int r = 0; r < rounds; r++) {
        for (int i = 0; i < per; i++) {
            /* A new order every time: a fixed cycle (even rotated) gives each
             * program the same predecessor. What stays is where each table
             * landed in memory: the first object's flow table measured up to
             * 100 ns dearer per new flow whichever build it was, so compare
             * builds with both orders of the two objects (several runs). */
            size_t order[NPROGS];
            for (size_t j = 0; j < nprogs; j++)
                order[j] = j;
            for (size_t j = nprogs - 1; j > 0; j--) {
                size_t x = (size_t)rand() % (j + 1), tmp = order[j];
                order[j] = order[x];
                order[x] = tmp;
            }
            for (size_t j = 0; j < nprogs; j++) {
                size_t k = order[j];
                pkt[47] = progs[k].syn ? 0x02 : 0x10; /* the TCP flags */
                pkt[34] = flow >> 8;
                pkt[35] = flow & 0xff;
                pkt[29] = 1 + (flow >> 16);
                flow++;
                LIBBPF_OPTS(bpf_test_run_opts, run, .data_in = pkt, .data_size_in = sizeof(pkt), .ctx_in = &ctx,
                            .ctx_size_in = sizeof(ctx), .repeat = 1);
                if (bpf_prog_test_run_opts(progs[k].fd, &run)) {
                    perror("htab_insert: test run");
                    return 1;
                }
                times[k][i] = run.duration;
            }
        }
        for (size_t k = 0; k < nprogs; k++)
            progs[k].round_median[r] = median(times[k], per);
        for (size_t m = 0; m < sizeof(htab_tables) / sizeof(htab_tables[0]); m++)
            empty(map_fd(h, htab_tables[m]), strcmp(htab_tables[m], "t_key20") == 0 ? 20 : 44);
        empty(map_fd(t, "flows_a"), 44);
        if (o)
            empty(map_fd(o, "flows_a"), 44);
    }
    double base = 0, tcbase = 0;
    for (size_t k = 0; k < nprogs; k++) {
        if (strcmp(progs[k].name, "hi_empty") == 0)
            base = median(progs[k].round_median, rounds);
        if (strcmp(progs[k].name, "flowmeter_noop") == 0)
            tcbase = median(progs[k].round_median, rounds);
    }
    printf("single runs, a new key each; median of %d rounds of %d runs per program (shuffled order)\n", rounds, per);
    printf("%-46s %9s %9s %9s\n", "program", "median", "-empty", "/empty");
    for (size_t k = 0; k < nprogs; k++) {
        double m = median(progs[k].round_median, rounds), b = progs[k].obj[0] == 'h' ? base : tcbase;
        printf("%-46s %6.0f ns %6.0f ns %8.2fx\n", progs[k].what, m, m - b, m / b);
    }
    return 0;
}
