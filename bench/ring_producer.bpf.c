// SPDX-License-Identifier: (LGPL-2.1 OR BSD-2-Clause)
/* Record producer for the ring drain benchmark (flowmeter-bench ring).
 *
 * Why a tc program under BPF_PROG_TEST_RUN: flowmeterd's "flows" records are
 * written by its tc program, so reserving and submitting from a SCHED_CLS
 * program takes the same helper path in the same program context, while
 * test_run's `repeat` fills the ring with a million records in one syscall,
 * with nothing attached and no traffic on any interface. (A SYSCALL program
 * would be simpler but test_run refuses `repeat` for it.) This lives outside
 * bpf/ because everything there is embedded into flowmeterd.
 *
 * The ring is this object's own, so the loader can size it for a whole batch
 * (bench/ring_consumer.c and the Swift bench set max_entries before load):
 * the drain is timed on a ring that holds every record at once.
 *
 * Each run submits one struct fm_flow_event. Run i is flow i % FM_BENCH_FLOWS
 * with packets 1 + i % 4 and bytes 64 + i % 1024, so any FM_BENCH_FLOWS
 * consecutive runs (a multiple of 1024) visit every flow once, and any batch of
 * N (a multiple of FM_BENCH_FLOWS) runs sums to exactly 5N/2 packets and
 * 575.5 N bytes, whichever run it starts at: the consumers check those sums
 * without reading any state back from here.
 */
#include "vmlinux.h"
#include <bpf/bpf_helpers.h>
#include "flowmeter_abi.h"

/* 65536 flows: about what overflows when a default-sized flow table
 * (FM_DEFAULT_FLOW_TABLE_SIZE) is full and as many flows again arrive, and
 * enough that an aggregation table (8 MiB in C) lives in L3 rather than L2,
 * as a real flow table would. bench/ring_consumer.c and flowmeter-bench ring
 * check that they saw exactly this many distinct flows. */
#define FM_BENCH_FLOWS 65536
#define TC_ACT_UNSPEC (-1)

struct {
    __uint(type, BPF_MAP_TYPE_RINGBUF);
    __uint(max_entries, 4096); /* set by the loader */
} bench_flows SEC(".maps");

/* test_run executes the repeats back to back on one CPU, and nothing else runs
 * this program, so a plain counter is enough. */
__u64 run_seq = 0;

SEC("tc")
int ring_produce(struct __sk_buff *skb)
{
    __u64 i = run_seq++;
    __u32 f = (__u32)(i % FM_BENCH_FLOWS);
    struct fm_flow_event *ev = bpf_ringbuf_reserve(&bench_flows, sizeof(*ev), 0);
    if (!ev)
        return TC_ACT_UNSPEC; /* a short batch: the consumers' count check fails */
    __builtin_memset(ev, 0, sizeof(*ev));
    ev->version = FM_ABI_VERSION;
    ev->kind = FM_FLOW_EVENT_OVERFLOW;
    ev->cpu = bpf_get_smp_processor_id();
    /* Distinct IPv4 client addresses (v4-mapped 10.a.b.1) towards one server,
     * TCP and UDP, both directions, four interfaces. */
    ev->key.saddr[10] = 0xff;
    ev->key.saddr[11] = 0xff;
    ev->key.saddr[12] = 10;
    ev->key.saddr[13] = (__u8)(f >> 8);
    ev->key.saddr[14] = (__u8)f;
    ev->key.saddr[15] = 1;
    ev->key.daddr[10] = 0xff;
    ev->key.daddr[11] = 0xff;
    ev->key.daddr[12] = 192;
    ev->key.daddr[13] = 168;
    ev->key.daddr[14] = 0;
    ev->key.daddr[15] = 1;
    ev->key.ifindex = 1 + (f & 3);
    ev->key.sport = (__u16)(1024 + (f & 0x7fff));
    ev->key.dport = (f & 4) ? 53 : 443;
    ev->key.direction = (f >> 3) & 1;
    ev->key.family = FM_FAMILY_IPV4;
    ev->key.protocol = (f & 4) ? 17 : 6;
    __u64 now = bpf_ktime_get_coarse_ns();
    ev->stats.packets = 1 + (i & 3);
    ev->stats.bytes = 64 + (i & 1023);
    ev->stats.first_seen_ns = now;
    ev->stats.last_seen_ns = now;
    ev->stats.tcp_flags = (f & 4) ? 0 : 0x10;
    bpf_ringbuf_submit(ev, 0);
    return TC_ACT_UNSPEC;
}

char LICENSE[] SEC("license") = "Dual BSD/GPL";
