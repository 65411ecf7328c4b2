// SPDX-License-Identifier: GPL-2.0-only OR BSD-2-Clause
/* Flowmeter tc flow accounting.
 *
 * Why tc: it is the one hook that sees every packet of an interface in both
 * directions with the sk_buff already built (so GSO/GRO super-packets carry
 * gso_segs), on every kernel we support, without touching the driver (XDP sees
 * ingress only and needs driver support). The programs attach through TCX links
 * where the kernel has them (6.6+), else as direct-action cls_bpf filters on a
 * clsact qdisc; the same object serves both.
 *
 * Per-packet work stays here: each packet updates a flow entry in a per-CPU
 * hash (no atomics, no ring record). User space evicts by swapping tables: the
 * outer ARRAY_OF_MAPS slot points at the table being written; user space points
 * it at the other table (the update waits for an RCU grace period, so when it
 * returns no program still writes the old one) and then drains the old table
 * with lookup-and-delete batches. No update can race the drain, so eviction
 * loses nothing.
 *
 * When the current table cannot take a new flow, the packet travels alone as a
 * ring record (FM_FLOW_EVENT_OVERFLOW) and FM_STAT_FLOW_INSERT_FAILED goes up;
 * if the ring is full too, FM_STAT_FLOWS_RING_LOST goes up. Loss is counted,
 * never silent.
 *
 * The programs never change the packet and always return TC_ACT_UNSPEC (equal
 * to TCX_NEXT), so whatever runs after us still runs.
 */
#include "vmlinux.h"
#include <bpf/bpf_helpers.h>
#include <bpf/bpf_endian.h>
#include <bpf/bpf_core_read.h>
#include "flowmeter_abi.h"
#include "flowmeter_common.h"

/* uapi macros that vmlinux.h (types only) cannot carry (the IP protocol
 * numbers are in flowmeter_common.h). */
#define TC_ACT_UNSPEC (-1)
#define ETH_HLEN      14
#define ETH_P_IP      0x0800
#define ETH_P_IPV6    0x86DD
#define ETH_P_8021Q   0x8100
#define ETH_P_8021AD  0x88A8
#define IPV6_HOPOPTS  0
#define IPV6_ROUTING  43
#define IPV6_FRAGMENT 44
#define IPV6_DSTOPTS  60
/* At most this many VLAN tags are unwrapped (802.1ad outer + 802.1Q inner). */
#define FM_MAX_VLAN_TAGS 2
/* At most this many IPv6 extension headers are skipped before giving up on L4. */
#define FM_MAX_IPV6_EXT 8
/* The SYN bit of the TCP flag byte (fm_parsed.tcp_flags). */
#define FM_TCP_SYN 0x02

/* The tables the outer map may point at. Sizes are set by the loader
 * (--flow-table-size). Preallocated: inserting a new flow into a
 * BPF_F_NO_PREALLOC per-CPU hash measured 18 us against 0.44 us preallocated
 * (flowmeter-bench tc), at the price of max_entries x possible CPUs x 40 bytes
 * per table, which is why the loader scales the default size with the CPUs. */
struct fm_flow_table {
    __uint(type, BPF_MAP_TYPE_PERCPU_HASH);
    __uint(max_entries, FM_DEFAULT_FLOW_TABLE_SIZE);
    __type(key, struct fm_flow_key);
    __type(value, struct fm_flow_stats);
} flows_a SEC(".maps"), flows_b SEC(".maps");

/* Slot 0 points at the table being written. */
struct {
    __uint(type, BPF_MAP_TYPE_ARRAY_OF_MAPS);
    __uint(max_entries, 1);
    __type(key, __u32);
    __array(values, struct fm_flow_table);
} flow_tables SEC(".maps") = {
    .values = {[0] = &flows_a},
};

/* Packets that found no room in the flow table. */
struct {
    __uint(type, BPF_MAP_TYPE_RINGBUF);
    __uint(max_entries, FM_DEFAULT_FLOWS_RING_BYTES);
} flows SEC(".maps");

/* Self-observability counters, indexed by enum fm_stat (fm_stat_inc). */
struct {
    __uint(type, BPF_MAP_TYPE_PERCPU_ARRAY);
    __uint(max_entries, FM_STAT_COUNT);
    __type(key, __u32);
    __type(value, __u64);
} fm_stats SEC(".maps");

struct fm_vlan_hdr {
    __be16 tci;
    __be16 encap_proto;
};

/* Result of parsing one packet. */
struct fm_parsed {
    struct fm_flow_key key;
    __u64 bytes;
    __u32 segs;
    __u8 tcp_flags;
    /* Set by the direct pass when a header was not in the linear data:
     * the packet is then parsed again with bpf_skb_load_bytes. */
    __u8 not_linear;
};

/* Offsets past this are not read directly (the verifier needs a bound on a
 * variable packet offset; real headers end far before it). */
#define FM_DIRECT_MAX_OFF 1024
/* Every buffer fm_load copies into (its lengths are all even). */
#define FM_ALIGNED __attribute__((aligned(4)))

/* Copies `len` bytes at `off` of the packet to `to`. The parser runs in two
 * passes, chosen by the constant `direct` (__always_inline makes two copies):
 * the direct pass copies straight from the linear data (skb->data ..
 * data_end), and a header that is not all there (paged data, e.g. after some
 * drivers' GRO, or a packet cut short) sets `not_linear` and fails the load;
 * then account() parses the packet again from scratch with
 * bpf_skb_load_bytes, which reads paged data too. Both read the same bytes,
 * so the answer does not depend on the pass. Two whole passes rather than a
 * fallback at each load: a fallback per load rejoined the direct path with
 * different register bounds at each of the up to 14 loads, and the verifier
 * walked 57,750 instructions (a second more at load) instead of 1,643.
 *
 * Why: bpf_skb_load_bytes was a quarter of the existing-flow cost (three
 * calls, each a helper call and a memcpy call with its rep-movsb start-up;
 * every return costs more under the SRSO "safe RET" mitigation of this
 * machine kind: docs/benchmarks.md, "Where the tc program's time goes").
 * `len` is a constant at every call site, so the copy is a few loads and
 * stores. */
static __always_inline long fm_load(struct __sk_buff *skb, struct fm_parsed *parsed, const int direct, __u32 off,
                                    void *to, const __u32 len)
{
    if (!direct)
        return bpf_skb_load_bytes(skb, off, to, len);
    __u8 *data = (__u8 *)(long)skb->data;
    __u8 *end = (__u8 *)(long)skb->data_end;
    if (off <= FM_DIRECT_MAX_OFF) {
        __u8 *p = data + off;
        if (p + len <= end) {
            /* Word copies: clang lowers a memcpy from a byte pointer into
             * single-byte loads. Packet loads may be unaligned (x86 and
             * arm64 allow it, and the verifier checks packet alignment only
             * where the architecture needs it); every destination is a
             * 4-byte-aligned stack buffer (FM_ALIGNED), as stack stores
             * must be aligned. */
            if (len % 4 == 0) {
#pragma unroll
                for (__u32 i = 0; i < len / 4; i++)
                    ((__u32 *)to)[i] = ((const __u32 *)p)[i];
            } else {
#pragma unroll
                for (__u32 i = 0; i < len / 2; i++)
                    ((__u16 *)to)[i] = ((const __u16 *)p)[i];
            }
            return 0;
        }
    }
    parsed->not_linear = 1;
    return -1;
}

static __always_inline void v4_mapped(__u8 *dst, __be32 addr)
{
    __builtin_memset(dst, 0, 10);
    dst[10] = 0xff;
    dst[11] = 0xff;
    __builtin_memcpy(dst + 12, &addr, 4);
}

/* Parses L4 at l4off (l3end = end of the IP datagram). Fills ports/flags and
 * returns the L4 header length counted in every GSO segment (0 if none). */
static __always_inline __u32 parse_l4(struct __sk_buff *skb, struct fm_parsed *p, const int direct, __u32 l4off,
                                      __u32 l3end)
{
    __u8 proto = p->key.protocol;
    if (proto == IPPROTO_TCP_) {
        struct tcphdr th FM_ALIGNED;
        if (l4off + sizeof(th) > l3end || fm_load(skb, p, direct, l4off, &th, sizeof(th)) < 0)
            goto truncated;
        __u32 doff = th.doff * 4;
        if (doff < sizeof(th) || l4off + doff > l3end)
            goto truncated;
        p->key.sport = bpf_ntohs(th.source);
        p->key.dport = bpf_ntohs(th.dest);
        /* Byte 13 of the header: CWR ECE URG ACK PSH RST SYN FIN. */
        p->tcp_flags = ((__u8 *)&th)[13];
        return doff;
    }
    if (proto == IPPROTO_UDP_) {
        struct udphdr uh FM_ALIGNED;
        if (l4off + sizeof(uh) > l3end || fm_load(skb, p, direct, l4off, &uh, sizeof(uh)) < 0)
            goto truncated;
        p->key.sport = bpf_ntohs(uh.source);
        p->key.dport = bpf_ntohs(uh.dest);
        return sizeof(uh);
    }
    if ((proto == IPPROTO_ICMP_ && p->key.family == FM_FAMILY_IPV4) ||
        (proto == IPPROTO_ICMPV6_ && p->key.family == FM_FAMILY_IPV6)) {
        __u8 tc[4] FM_ALIGNED; /* type, code, checksum */
        if (l4off + sizeof(tc) > l3end || fm_load(skb, p, direct, l4off, tc, sizeof(tc)) < 0)
            goto truncated;
        p->key.dport = ((__u16)tc[0] << 8) | tc[1];
        return 0;
    }
    return 0;
truncated:
    p->key.flags |= FM_KEY_L4_TRUNCATED;
    return 0;
}

/* Marks the packet as not-IP-we-trust: counted under its ethertype only. */
static __always_inline void mark_malformed(struct fm_parsed *p, __u16 ethertype)
{
    __builtin_memset(p->key.saddr, 0, sizeof(p->key.saddr));
    __builtin_memset(p->key.daddr, 0, sizeof(p->key.daddr));
    p->key.family = FM_FAMILY_OTHER;
    p->key.protocol = 0;
    p->key.sport = 0;
    p->key.dport = ethertype;
    p->key.flags = FM_KEY_MALFORMED;
    p->tcp_flags = 0;
}

/* The parser. Mirrored, rule for rule, by the Swift reference parser in
 * Tests/FlowmeterBPFTests/ReferenceParser.swift; the differential test holds the
 * two to the same answer on random and mutated packets. */
static __always_inline void parse(struct __sk_buff *skb, struct fm_parsed *p, const int direct)
{
    __u32 len = skb->len;
    __u32 off = ETH_HLEN;
    __be16 h_proto FM_ALIGNED;

    p->segs = skb->gso_segs > 1 ? skb->gso_segs : 1;

    if (len < ETH_HLEN || fm_load(skb, p, direct, 12, &h_proto, sizeof(h_proto)) < 0) {
        mark_malformed(p, 0);
        p->bytes = 0;
        return;
    }
    __u16 proto = bpf_ntohs(h_proto);

#pragma unroll
    for (int i = 0; i < FM_MAX_VLAN_TAGS; i++) {
        if (proto != ETH_P_8021Q && proto != ETH_P_8021AD)
            break;
        struct fm_vlan_hdr vh FM_ALIGNED;
        if (fm_load(skb, p, direct, off, &vh, sizeof(vh)) < 0) {
            mark_malformed(p, proto);
            p->bytes = len - off;
            return;
        }
        proto = bpf_ntohs(vh.encap_proto);
        off += sizeof(vh);
    }

    __u32 l3avail = len - off;
    __u32 l3len, l4off, l4hdr;
    if (proto == ETH_P_IP) {
        struct iphdr ih FM_ALIGNED;
        if (fm_load(skb, p, direct, off, &ih, sizeof(ih)) < 0)
            goto malformed;
        __u32 ihl = ih.ihl * 4;
        __u32 tot = bpf_ntohs(ih.tot_len);
        if (ih.version != 4 || ihl < sizeof(ih) || ihl > l3avail)
            goto malformed;
        if (p->segs > 1) {
            l3len = l3avail; /* the super-packet's tot_len may be 0 (BIG TCP) */
        } else {
            if (tot < ihl || tot > l3avail)
                goto malformed;
            l3len = tot;
        }
        p->key.family = FM_FAMILY_IPV4;
        p->key.protocol = ih.protocol;
        v4_mapped(p->key.saddr, ih.saddr);
        v4_mapped(p->key.daddr, ih.daddr);
        l4off = off + ihl;
        if (bpf_ntohs(ih.frag_off) & 0x1fff) {
            p->key.flags |= FM_KEY_FRAGMENT;
            l4hdr = 0;
        } else {
            l4hdr = parse_l4(skb, p, direct, l4off, off + l3len);
        }
    } else if (proto == ETH_P_IPV6) {
        struct ipv6hdr ih FM_ALIGNED;
        if (fm_load(skb, p, direct, off, &ih, sizeof(ih)) < 0)
            goto malformed;
        if (ih.version != 6)
            goto malformed;
        __u32 plen = bpf_ntohs(ih.payload_len);
        if (p->segs > 1 || plen == 0) {
            l3len = l3avail; /* GSO super-packet, or jumbogram (payload length 0) */
        } else {
            if (sizeof(ih) + plen > l3avail)
                goto malformed;
            l3len = sizeof(ih) + plen;
        }
        p->key.family = FM_FAMILY_IPV6;
        __builtin_memcpy(p->key.saddr, &ih.saddr, 16);
        __builtin_memcpy(p->key.daddr, &ih.daddr, 16);
        __u8 nh = ih.nexthdr;
        __u32 l3end = off + l3len;
        l4off = off + sizeof(ih);
        int done = 0;
#pragma unroll
        for (int i = 0; i < FM_MAX_IPV6_EXT; i++) {
            if (nh != IPV6_HOPOPTS && nh != IPV6_ROUTING && nh != IPV6_DSTOPTS && nh != IPV6_FRAGMENT)
                break;
            __u8 ext[4] FM_ALIGNED; /* next header, length, and (fragment) offset+flags */
            if (l4off + 8 > l3end || fm_load(skb, p, direct, l4off, ext, sizeof(ext)) < 0) {
                p->key.flags |= FM_KEY_L4_TRUNCATED;
                done = 1;
                break;
            }
            if (nh == IPV6_FRAGMENT) {
                __u16 fo = ((__u16)ext[2] << 8) | ext[3];
                nh = ext[0];
                l4off += 8;
                if (fo & 0xfff8) { /* non-first fragment: no L4 header here */
                    p->key.flags |= FM_KEY_FRAGMENT;
                    done = 1;
                    break;
                }
            } else {
                nh = ext[0];
                l4off += ((__u32)ext[1] + 1) * 8;
            }
        }
        p->key.protocol = nh;
        if (done || nh == IPV6_HOPOPTS || nh == IPV6_ROUTING || nh == IPV6_DSTOPTS || nh == IPV6_FRAGMENT)
            l4hdr = 0; /* truncated, a fragment, or more extension headers than we walk */
        else
            l4hdr = parse_l4(skb, p, direct, l4off, l3end);
    } else {
        p->key.family = FM_FAMILY_OTHER;
        p->key.dport = proto;
        p->bytes = (__u64)l3avail * p->segs;
        return;
    }

    if (p->segs > 1)
        /* Every wire segment repeats the L3+L4 headers; the payload is counted once. */
        p->bytes = l3len + (__u64)(p->segs - 1) * (l4off - off + l4hdr);
    else
        p->bytes = l3len;
    return;

malformed:
    mark_malformed(p, proto);
    p->bytes = l3avail;
}

/* The coarse clock's last reading on this CPU and the jiffy it was read in
 * (packet_time). Per CPU: no atomics, and each CPU keeps its own. */
struct fm_clock {
    __u64 jiffies; /* jiffies64 when `ns` was read (0: never; jiffies never is 0) */
    __u64 ns;      /* bpf_ktime_get_coarse_ns() then */
};
struct {
    __uint(type, BPF_MAP_TYPE_PERCPU_ARRAY);
    __uint(max_entries, 1);
    __type(key, __u32);
    __type(value, struct fm_clock);
} fm_clock SEC(".maps");

/* The packet's timestamp. bpf_ktime_get_ns() was a third of the per-packet
 * cost (107 ns against 70 ns with the coarse clock, flowmeter-bench tc on a
 * TSC guest), and flow records only need their first and last packet to the
 * millisecond (IPFIX flowStart/EndMilliseconds, the flow log). The coarse clock
 * is CLOCK_MONOTONIC_COARSE: the same clock read at the last tick, so at most
 * one jiffy behind.
 *
 * The coarse clock moves only at a tick, and a tick first advances jiffies,
 * which bpf_jiffies64() reads without a call (the verifier inlines it on
 * 64-bit JITs). So each CPU keeps its last reading with its jiffy and reads
 * the clock again only once jiffies moved: one helper call per CPU per tick
 * instead of one per packet (the call, with its nested calls, was about 8 ns
 * of the existing-flow packet: docs/benchmarks.md). A reading taken after
 * jiffies moved but before the tick updated the clock (a window of
 * microseconds) still shows the old value; it is not kept, so the next
 * packet reads again. The one case left: a CPU that saw no packet for a
 * whole tick and then reads inside that window keeps a value one tick old
 * for the rest of the tick, so a timestamp may be two jiffies behind, rarely.
 *
 * Kernels before 5.11 lack the coarse helper; the CO-RE check turns into a
 * constant at load time and the verifier drops the branch it cannot take, so
 * those kernels get the precise clock at every packet. */
static __always_inline __u64 packet_time(void)
{
    if (!bpf_core_enum_value_exists(enum bpf_func_id, BPF_FUNC_ktime_get_coarse_ns))
        return bpf_ktime_get_ns();
    __u32 zero = 0;
    struct fm_clock *c = bpf_map_lookup_elem(&fm_clock, &zero);
    if (!c)
        return bpf_ktime_get_coarse_ns();
    __u64 j = bpf_jiffies64();
    if (c->jiffies == j)
        return c->ns;
    __u64 ns = bpf_ktime_get_coarse_ns();
    if (ns != c->ns) {
        c->jiffies = j;
        c->ns = ns;
    }
    return ns;
}

static __always_inline void account(struct __sk_buff *skb, __u8 direction)
{
    struct fm_parsed p;
    __builtin_memset(&p, 0, sizeof(p));
    parse(skb, &p, 1);
    if (p.not_linear) {
        __builtin_memset(&p, 0, sizeof(p));
        parse(skb, &p, 0);
    }
    p.key.ifindex = skb->ifindex;
    p.key.direction = direction;
    if (p.key.flags & FM_KEY_MALFORMED)
        fm_stat_inc(&fm_stats, FM_STAT_MALFORMED);

    __u64 now = packet_time();
    __u32 zero = 0;
    void *table = bpf_map_lookup_elem(&flow_tables, &zero);
    if (table) {
        /* A SYN (or SYN-ACK) opens its flow, so it is inserted without the
         * lookup first: a lookup that misses costs a hash of the key and a
         * cold bucket read, about a fifth of a new flow's time
         * (bench/htab_insert.sh, median of 12 runs: lookup then insert 523
         * ns over the empty program, the insert alone 414). A
         * SYN of a flow the table holds (a retransmission) fails the insert
         * with -EEXIST and is added below like any other packet. */
        struct fm_flow_stats *st = NULL;
        if (!(p.tcp_flags & FM_TCP_SYN))
            st = bpf_map_lookup_elem(table, &p.key);
        if (!st) {
            struct fm_flow_stats init;
            __builtin_memset(&init, 0, sizeof(init));
            init.packets = p.segs;
            init.bytes = p.bytes;
            init.first_seen_ns = now;
            init.last_seen_ns = now;
            init.tcp_flags = p.tcp_flags;
            long err = bpf_map_update_elem(table, &p.key, &init, BPF_NOEXIST);
            if (err == 0)
                return;
            /* -EEXIST: another CPU inserted the key first (its insert left
             * our slot zero), or a SYN's flow was there; add to our slot. */
            st = bpf_map_lookup_elem(table, &p.key);
        }
        if (st) {
            st->packets += p.segs;
            st->bytes += p.bytes;
            st->last_seen_ns = now;
            st->tcp_flags |= p.tcp_flags;
            return;
        }
        fm_stat_inc(&fm_stats, FM_STAT_FLOW_INSERT_FAILED);
    } else {
        fm_stat_inc(&fm_stats, FM_STAT_FLOW_TABLE_MISSING);
    }

    struct fm_flow_event *ev = bpf_ringbuf_reserve(&flows, sizeof(*ev), 0);
    if (!ev) {
        fm_stat_inc(&fm_stats, FM_STAT_FLOWS_RING_LOST);
        return;
    }
    ev->version = FM_ABI_VERSION;
    ev->kind = FM_FLOW_EVENT_OVERFLOW;
    ev->cpu = bpf_get_smp_processor_id();
    ev->key = p.key;
    ev->_pad = 0;
    __builtin_memset(&ev->stats, 0, sizeof(ev->stats));
    ev->stats.packets = p.segs;
    ev->stats.bytes = p.bytes;
    ev->stats.first_seen_ns = now;
    ev->stats.last_seen_ns = now;
    ev->stats.tcp_flags = p.tcp_flags;
    /* Wakes the reader only past a quarter of the ring: a wakeup per record
     * is an IPI per record. */
    fm_ringbuf_submit(&flows, ev);
}

SEC("tc")
int flowmeter_ingress(struct __sk_buff *skb)
{
    account(skb, FM_DIR_RECEIVE);
    return TC_ACT_UNSPEC;
}

SEC("tc")
int flowmeter_egress(struct __sk_buff *skb)
{
    account(skb, FM_DIR_TRANSMIT);
    return TC_ACT_UNSPEC;
}

/* An empty classifier in the same object: the baseline the per-packet cost is
 * measured against (benchmarks, `flowmeterd check`). Never attached. */
SEC("tc")
int flowmeter_noop(struct __sk_buff *skb)
{
    return TC_ACT_UNSPEC;
}

/* GPL-compatible, as the file's SPDX line: the kernel refuses GPL-only helpers otherwise. */
char LICENSE[] SEC("license") = "Dual BSD/GPL";
