// SPDX-License-Identifier: GPL-2.0-only OR BSD-2-Clause
/* Flowmeter packet drops: every packet the kernel drops, counted with the
 * kernel's own drop reason against its interface and 5-tuple.
 *
 * Why this hook: skb:kfree_skb is the one place every dropped sk_buff passes
 * through, whoever drops it (netfilter, a qdisc, the socket layer finding no
 * socket, a full receive queue), and from 5.17 on it carries the reason as
 * enum skb_drop_reason. A packet that was not dropped but used up leaves
 * through consume_skb, which fires skb:consume_skb instead; on kernels where
 * kfree_skb_reason() can be called with SKB_CONSUMED, that value is left out
 * here too, and so is QUEUE_PURGE (a queue freed with its socket or device). The tc programs cannot see drops that
 * happen after them, and nothing of this runs on their per-packet path: this program costs only dropped packets.
 *
 * Twins, one of which the loader enables (bpf_program__set_autoload):
 *   tp_btf/kfree_skb          (BTF-typed arguments: where the kernel allows it)
 *   tracepoint/skb/kfree_skb  (the classic tracepoint: everywhere else)
 * Both read the reason only where the kernel has it (CO-RE: the enum exists
 * in the kernel's BTF), else count under FM_DROP_REASON_NONE ("unknown").
 *
 * Counting: a per-CPU hash keyed by what the metrics need (reason, interface
 * and its network namespace, direction, 5-tuple), one __u64 per CPU, never a
 * ring record per drop. The daemon reads the cumulative counts once an
 * interval and takes differences (docs/metrics.md, "Drops").
 */
#include "vmlinux.h"
#include <bpf/bpf_helpers.h>
#include <bpf/bpf_tracing.h>
#include <bpf/bpf_core_read.h>
#include "flowmeter_abi.h"
#include "flowmeter_common.h"

/* skb->protocol as read on a little-endian host (network order in memory). */
#define ETH_P_IP_BE   0x0008
#define ETH_P_IPV6_BE 0xDD86
/* skb->network_header when no network header was set ((u16)~0U). */
#define NO_HEADER 0xffff
/* The IPv4 fragment offset bits (0x1fff in network order, as read): a
 * non-first fragment carries no ports. */
#define IP_OFFSET_BE 0xff1f

/* The counts: per CPU, so a plain increment is exact. */
struct {
    __uint(type, BPF_MAP_TYPE_PERCPU_HASH);
    __uint(max_entries, FM_DROP_TABLE_SIZE);
    __type(key, struct fm_drop_key);
    __type(value, __u64);
} fm_drops SEC(".maps");

/* Where drops go while "fm_drops" is full (a flood of distinct 5-tuples):
 * the same counts under keys without the 5-tuple, one per reason, interface
 * and direction, so interface counts stay exact. Read and cleaned like
 * "fm_drops". */
struct {
    __uint(type, BPF_MAP_TYPE_PERCPU_HASH);
    __uint(max_entries, FM_DROP_OVERFLOW_TABLE_SIZE);
    __type(key, struct fm_drop_key);
    __type(value, __u64);
} fm_drops_overflow SEC(".maps");

/* Self-observability, indexed by enum fm_drop_stat (fm_stat_inc). */
struct {
    __uint(type, BPF_MAP_TYPE_PERCPU_ARRAY);
    __uint(max_entries, FM_DROP_STAT_COUNT);
    __type(key, __u32);
    __type(value, __u64);
} fm_drop_stats SEC(".maps");

/* Before 6.11 the classic event had no rx_sk: only the fields read here. */
struct trace_event_raw_kfree_skb___fm {
    void *skbaddr;
    enum skb_drop_reason reason;
} __attribute__((preserve_access_index));

/* The 5-tuple of the packet from its headers, where it has them. The
 * network header is set on the receive path from __netif_receive_skb_core
 * on and on the transmit path from the IP layer on; before that (or for
 * other protocols) the key keeps family OTHER and no addresses. */
static __always_inline void fill_tuple(struct sk_buff *skb, struct fm_drop_key *k)
{
    __u16 proto = BPF_CORE_READ(skb, protocol);
    __u16 nh = BPF_CORE_READ(skb, network_header);
    unsigned char *head = BPF_CORE_READ(skb, head);
    if (nh == NO_HEADER || !head)
        return;
    unsigned char *l3 = head + nh;
    __u8 l4proto = 0;
    unsigned char *l4 = 0;
    if (proto == ETH_P_IP_BE) {
        struct iphdr ip;
        if (bpf_probe_read_kernel(&ip, sizeof(ip), l3) || ip.version != 4 || ip.ihl < 5)
            return;
        k->family = FM_FAMILY_IPV4;
        k->saddr[10] = k->saddr[11] = 0xff;
        k->daddr[10] = k->daddr[11] = 0xff;
        __builtin_memcpy(k->saddr + 12, &ip.saddr, 4);
        __builtin_memcpy(k->daddr + 12, &ip.daddr, 4);
        l4proto = ip.protocol;
        if (!(ip.frag_off & IP_OFFSET_BE))
            l4 = l3 + ip.ihl * 4;
    } else if (proto == ETH_P_IPV6_BE) {
        struct ipv6hdr ip6;
        if (bpf_probe_read_kernel(&ip6, sizeof(ip6), l3) || ip6.version != 6)
            return;
        k->family = FM_FAMILY_IPV6;
        __builtin_memcpy(k->saddr, &ip6.saddr, 16);
        __builtin_memcpy(k->daddr, &ip6.daddr, 16);
        /* Extension headers are not walked: their packets keep ports 0. */
        l4proto = ip6.nexthdr;
        l4 = l3 + sizeof(ip6);
    } else {
        return;
    }
    k->protocol = l4proto;
    if (l4 && (l4proto == IPPROTO_TCP_ || l4proto == IPPROTO_UDP_)) {
        __u16 ports[2];
        if (bpf_probe_read_kernel(ports, sizeof(ports), l4) == 0) {
            k->sport = __builtin_bswap16(ports[0]);
            k->dport = __builtin_bswap16(ports[1]);
        }
    }
}

/* One drop under a key `table` does not have: a new entry, or the entry
 * another CPU made meanwhile (its slot for this CPU is zero). 0 when the
 * table is full. */
static __always_inline int count_new(void *table, struct fm_drop_key *k)
{
    __u64 one = 1;
    if (bpf_map_update_elem(table, k, &one, BPF_NOEXIST) == 0)
        return 1;
    __u64 *v = bpf_map_lookup_elem(table, k);
    if (!v)
        return 0;
    *v += 1;
    return 1;
}

/* The body of both twins. */
static __always_inline void on_drop(struct sk_buff *skb, __u32 reason)
{
    if (!skb)
        return;
    /* Not a drop (kernels that pass consumed packets through here). */
    if (bpf_core_enum_value_exists(enum skb_drop_reason, SKB_CONSUMED) &&
        reason == bpf_core_enum_value(enum skb_drop_reason, SKB_CONSUMED))
        return;
    /* Nor is a queue freed with its owner (QUEUE_PURGE, 6.5+): a socket's
     * queues as the socket is destroyed, a device's as it goes away. On a
     * TCP connection whose client closes first, the server's FIN reaches
     * the closed socket and is purged with it: once per connection, on no
     * device (skb->dev is gone by then). Kept, each made a drop-table entry
     * per connection, 1.2 us here and a read and a delete in the daemon,
     * for nothing lost on the network (churn profile, docs/benchmarks.md). */
    if (bpf_core_enum_value_exists(enum skb_drop_reason, SKB_DROP_REASON_QUEUE_PURGE) &&
        reason == bpf_core_enum_value(enum skb_drop_reason, SKB_DROP_REASON_QUEUE_PURGE))
        return;
    struct fm_drop_key k;
    __builtin_memset(&k, 0, sizeof(k));
    k.reason = reason;
    /* The interface: the device the packet is on. On the receive path that
     * is the device it came in on (skb_iif == its ifindex); once routed out
     * (forwarded, or sent by a local socket: skb_iif 0) the device it
     * leaves by. With no device, the one it came in on, if any. */
    struct net_device *dev = BPF_CORE_READ(skb, dev);
    __u32 iif = BPF_CORE_READ(skb, skb_iif);
    if (dev) {
        k.ifindex = BPF_CORE_READ(dev, ifindex);
        k.netns = BPF_CORE_READ(dev, nd_net.net, ns.inum);
        k.direction = iif != 0 && iif == k.ifindex ? FM_DIR_RECEIVE : FM_DIR_TRANSMIT;
    } else if (iif) {
        k.ifindex = iif;
        k.direction = FM_DIR_RECEIVE;
    }
    fill_tuple(skb, &k);
    /* Tied to nothing the metrics know (a netlink message, say): not kept. */
    if (!k.ifindex && k.family == FM_FAMILY_OTHER)
        return;
    fm_stat_inc(&fm_drop_stats, FM_DROP_STAT_SEEN);
    __u64 *v = bpf_map_lookup_elem(&fm_drops, &k);
    if (v) {
        *v += 1;
        return;
    }
    if (count_new(&fm_drops, &k))
        return;
    /* The table is full: keep the interface's count exact at least, in the
     * overflow table, under the key without the 5-tuple. */
    __builtin_memset(k.saddr, 0, sizeof(k.saddr));
    __builtin_memset(k.daddr, 0, sizeof(k.daddr));
    k.sport = k.dport = 0;
    k.family = FM_FAMILY_OTHER;
    k.protocol = 0;
    v = bpf_map_lookup_elem(&fm_drops_overflow, &k);
    if (v)
        *v += 1;
    else if (!count_new(&fm_drops_overflow, &k))
        fm_stat_inc(&fm_drop_stats, FM_DROP_STAT_TABLE_FULL);
}

/* tp_btf twin: arguments (skb, location[, reason 5.17+][, rx_sk 6.11+]).
 * The reason is read only where the kernel's BTF has the enum; elsewhere the
 * verifier never sees that read (the CO-RE constant prunes the branch). */
SEC("tp_btf/kfree_skb")
int fm_drop_tp_btf(__u64 *ctx)
{
    __u32 reason = FM_DROP_REASON_NONE;
    if (bpf_core_type_exists(enum skb_drop_reason))
        reason = (__u32)ctx[2];
    on_drop((struct sk_buff *)ctx[0], reason);
    return 0;
}

/* Classic twin: the trace event's record, read with CO-RE. */
SEC("tracepoint/skb/kfree_skb")
int fm_drop_tp(void *ctx)
{
    struct trace_event_raw_kfree_skb___fm *e = ctx;
    __u32 reason = FM_DROP_REASON_NONE;
    if (bpf_core_field_exists(e->reason))
        reason = BPF_CORE_READ(e, reason);
    on_drop((struct sk_buff *)BPF_CORE_READ(e, skbaddr), reason);
    return 0;
}

/* GPL-compatible, as the file's SPDX line: the tracing helpers are GPL-only. */
char LICENSE[] SEC("license") = "Dual BSD/GPL";
