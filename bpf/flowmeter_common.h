// SPDX-License-Identifier: GPL-2.0-only OR BSD-2-Clause
/* What flowmeter_tc.bpf.c and flowmeter_sock.bpf.c share: uapi numbers that
 * vmlinux.h (types only) cannot carry, the self-observability counter
 * increment, and the rule for waking a ring's reader.
 *
 * The maps stay in each program file (each object has its own), so the
 * helpers take the map as an argument; they are __always_inline, so the map
 * is a constant again at every call site and the verifier sees the same
 * map references as if each file spelled the helper out.
 */
#ifndef FLOWMETER_COMMON_H
#define FLOWMETER_COMMON_H

#include "vmlinux.h"
#include <bpf/bpf_helpers.h>

/* IP protocol numbers (uapi linux/in.h, linux/in6.h: macros and enum
 * constants that vmlinux.h leaves out or that would clash with it, hence the
 * trailing underscore). */
#define IPPROTO_ICMP_   1
#define IPPROTO_TCP_    6
#define IPPROTO_UDP_    17
#define IPPROTO_ICMPV6_ 58

/* Address families (linux/socket.h), as in sock->__sk_common.skc_family. */
#define AF_INET  2
#define AF_INET6 10

/* Adds one to slot `idx` of a per-CPU counter array (`stats`: a
 * BPF_MAP_TYPE_PERCPU_ARRAY of __u64, e.g. fm_stats or fm_sock_stats). Per
 * CPU, so a plain increment is exact. */
static __always_inline void fm_stat_inc(void *stats, __u32 idx)
{
    __u64 *v = bpf_map_lookup_elem(stats, &idx);
    if (v)
        *v += 1;
}

/* Submits a reserved ring record without waking the reader unless the ring
 * is filling up. A plain submit wakes the reader whenever it has caught up,
 * which for a reader that keeps up is every record, and each wakeup is an
 * irq_work self-IPI: under connection churn that IPI was 11 of the 13% of all
 * CPU the state-change program took (perf, tools/bench churn; the APIC write
 * traps to the hypervisor on a VM). The readers poll with a timeout anyway,
 * so records wait at most one poll period; past a quarter of the ring the
 * reader is woken at once, so a burst cannot fill the ring while it sleeps. */
static __always_inline void fm_ringbuf_submit(void *ring, void *record)
{
    __u64 wake = bpf_ringbuf_query(ring, BPF_RB_AVAIL_DATA) >= bpf_ringbuf_query(ring, BPF_RB_RING_SIZE) / 4;
    bpf_ringbuf_submit(record, wake ? BPF_RB_FORCE_WAKEUP : BPF_RB_NO_WAKEUP);
}

/* As fm_ringbuf_submit, for a record of `size` bytes, but past a quarter of
 * the ring it wakes the reader only when this record crosses an eighth of the
 * ring (the quarter, three eighths, half, ...), not for every record. A reader
 * that lags (a loaded machine, a debug build) keeps the ring past a quarter,
 * and then fm_ringbuf_submit sent one self-IPI per record: under connection
 * churn on a loaded 2-CPU VM that was 45% of the state-change program's
 * samples (perf, irq_work_queue -> native_apic_msr_write; docs/benchmarks.md,
 * "Where a connection's BPF time goes"). A reader asleep is still woken
 * before the ring grows by another eighth, so a burst cannot fill the ring
 * while it sleeps: at the latest at seven eighths. Records other CPUs reserve
 * at the same moment may hide a crossing from both submitters; the next
 * eighth, or the reader's poll timeout, wakes it then. */
static __always_inline void fm_ringbuf_submit_stepped(void *ring, void *record, __u64 size)
{
    __u64 avail = bpf_ringbuf_query(ring, BPF_RB_AVAIL_DATA);
    __u64 eighth = bpf_ringbuf_query(ring, BPF_RB_RING_SIZE) / 8;
    /* The record with its 8-byte header, rounded up to 8 as the kernel does. */
    __u64 used = (size + 8 + 7) & ~7ULL;
    __u64 before = avail > used ? avail - used : 0;
    __u64 wake = eighth && avail >= 2 * eighth && avail / eighth != before / eighth;
    bpf_ringbuf_submit(record, wake ? BPF_RB_FORCE_WAKEUP : BPF_RB_NO_WAKEUP);
}

#endif
