// SPDX-License-Identifier: GPL-2.0-only OR BSD-2-Clause
/* What inserting one new flow costs the kernel, without the tc program
 * around it (bench/htab_insert.c times these with single BPF_PROG_TEST_RUN
 * runs, interleaved with flowmeter_tc's own programs): why the tc program's
 * new-flow packet costs what it does (docs/benchmarks.md, "Where a new flow's
 * time goes"). Each program reads a flow key straight from the first bytes of
 * the packet (the driver makes every packet a new key) and does one thing
 * with it, each in its own map so that they do not share buckets or
 * freelists. Why tc programs: they run through the same test-run path as
 * flowmeter_ingress, so the harness cost is the same for all.
 *
 * The key and value are flowmeter's own (struct fm_flow_key, fm_flow_stats:
 * 44 and 40 bytes); the maps have the tc program's default size. */
#include "vmlinux.h"
#include <bpf/bpf_helpers.h>
#include "flowmeter_abi.h"

#define TC_ACT_UNSPEC (-1)
#define ETH_HLEN      14
#define TABLE_SIZE    65536
/* The small table: its buckets and elements stay in the caches. */
#define SMALL_SIZE 1024

#define PCPU_TABLE(name, type_, size, key_t)                                                                           \
    struct {                                                                                                           \
        __uint(type, type_);                                                                                           \
        __uint(max_entries, size);                                                                                     \
        __type(key, key_t);                                                                                            \
        __type(value, struct fm_flow_stats);                                                                           \
    } name SEC(".maps")

PCPU_TABLE(t_insert, BPF_MAP_TYPE_PERCPU_HASH, TABLE_SIZE, struct fm_flow_key);
PCPU_TABLE(t_lookup_insert, BPF_MAP_TYPE_PERCPU_HASH, TABLE_SIZE, struct fm_flow_key);
PCPU_TABLE(t_lookup, BPF_MAP_TYPE_PERCPU_HASH, TABLE_SIZE, struct fm_flow_key);
PCPU_TABLE(t_small, BPF_MAP_TYPE_PERCPU_HASH, SMALL_SIZE, struct fm_flow_key);
PCPU_TABLE(t_shared, BPF_MAP_TYPE_HASH, TABLE_SIZE, struct fm_flow_key);
PCPU_TABLE(t_lru, BPF_MAP_TYPE_LRU_PERCPU_HASH, TABLE_SIZE, struct fm_flow_key);

/* A 20-byte key (an IPv4 flow: addresses, ports, ifindex): one jhash2 mix
 * round fewer, and smaller elements. */
struct key20 {
    __u32 w[5];
};
PCPU_TABLE(t_key20, BPF_MAP_TYPE_PERCPU_HASH, TABLE_SIZE, struct key20);

/* A direct-mapped per-CPU array slot: the key and the counters together. */
struct slot {
    struct fm_flow_key key;
    __u32 used;
    struct fm_flow_stats stats;
};
struct {
    __uint(type, BPF_MAP_TYPE_PERCPU_ARRAY);
    __uint(max_entries, TABLE_SIZE);
    __type(key, __u32);
    __type(value, struct slot);
} t_array SEC(".maps");

/* The key: the 44 bytes after the Ethernet header (the IPv4 header and the
 * TCP ports, sequence and acknowledgement numbers), as words. */
static __always_inline int packet_key(struct __sk_buff *skb, struct fm_flow_key *k)
{
    __u8 *data = (__u8 *)(long)skb->data, *end = (__u8 *)(long)skb->data_end;
    if (data + ETH_HLEN + sizeof(*k) > end)
        return -1;
#pragma unroll
    for (int i = 0; i < sizeof(*k) / 4; i++)
        ((__u32 *)k)[i] = ((__u32 *)(data + ETH_HLEN))[i];
    return 0;
}

static __always_inline void new_stats(struct fm_flow_stats *st, struct __sk_buff *skb)
{
    __builtin_memset(st, 0, sizeof(*st));
    st->packets = 1;
    st->bytes = skb->len;
}

static __always_inline int insert(struct __sk_buff *skb, void *table)
{
    struct fm_flow_key k;
    struct fm_flow_stats st;
    if (packet_key(skb, &k) == 0) {
        new_stats(&st, skb);
        bpf_map_update_elem(table, &k, &st, BPF_NOEXIST);
    }
    return TC_ACT_UNSPEC;
}

SEC("tc")
int hi_empty(struct __sk_buff *skb)
{
    return TC_ACT_UNSPEC;
}

/* Only the key copy (the part every variant has). */
SEC("tc")
int hi_key_only(struct __sk_buff *skb)
{
    struct fm_flow_key k;
    if (packet_key(skb, &k) == 0 && k.ifindex == 0xffffffff)
        return 0; /* keeps the copy from being optimised away */
    return TC_ACT_UNSPEC;
}

SEC("tc")
int hi_insert(struct __sk_buff *skb)
{
    return insert(skb, &t_insert);
}

/* The lookup alone, missing: the key hashed and its bucket read. */
SEC("tc")
int hi_lookup(struct __sk_buff *skb)
{
    struct fm_flow_key k;
    if (packet_key(skb, &k) == 0 && bpf_map_lookup_elem(&t_lookup, &k))
        return 0;
    return TC_ACT_UNSPEC;
}

/* What flowmeter_ingress does for a new flow: a lookup that misses, then the
 * insert (the key hashed and its bucket walked twice). */
SEC("tc")
int hi_lookup_insert(struct __sk_buff *skb)
{
    struct fm_flow_key k;
    struct fm_flow_stats st;
    if (packet_key(skb, &k) == 0 && !bpf_map_lookup_elem(&t_lookup_insert, &k)) {
        new_stats(&st, skb);
        bpf_map_update_elem(&t_lookup_insert, &k, &st, BPF_NOEXIST);
    }
    return TC_ACT_UNSPEC;
}

SEC("tc")
int hi_insert_small(struct __sk_buff *skb)
{
    return insert(skb, &t_small);
}

SEC("tc")
int hi_insert_shared(struct __sk_buff *skb)
{
    return insert(skb, &t_shared);
}

SEC("tc")
int hi_insert_lru(struct __sk_buff *skb)
{
    return insert(skb, &t_lru);
}

SEC("tc")
int hi_insert_key20(struct __sk_buff *skb)
{
    struct fm_flow_key k;
    struct fm_flow_stats st;
    if (packet_key(skb, &k) == 0) {
        /* The words that vary (addresses, ports) and one more. */
        struct key20 k20 = {{((__u32 *)&k)[3], ((__u32 *)&k)[4], ((__u32 *)&k)[5], ((__u32 *)&k)[6], ((__u32 *)&k)[7]}};
        new_stats(&st, skb);
        bpf_map_update_elem(&t_key20, &k20, &st, BPF_NOEXIST);
    }
    return TC_ACT_UNSPEC;
}

/* A direct-mapped per-CPU array indexed by a multiply-xor hash of the key:
 * what a flow cache in front of the hash would pay for a new flow that finds
 * its slot free (the array lookup is inlined by the verifier: no call, no
 * lock, no freelist). */
SEC("tc")
int hi_array(struct __sk_buff *skb)
{
    struct fm_flow_key k;
    if (packet_key(skb, &k) != 0)
        return TC_ACT_UNSPEC;
    __u32 h = 0;
#pragma unroll
    for (int i = 0; i < sizeof(k) / 4; i++)
        h = (h ^ ((__u32 *)&k)[i]) * 0x9e3779b1;
    __u32 idx = h >> 16; /* TABLE_SIZE = 2^16 slots */
    struct slot *s = bpf_map_lookup_elem(&t_array, &idx);
    if (!s)
        return TC_ACT_UNSPEC;
    __u32 diff = !s->used;
#pragma unroll
    for (int i = 0; i < sizeof(k) / 4; i++)
        diff |= ((__u32 *)&s->key)[i] ^ ((__u32 *)&k)[i];
    if (!diff) {
        s->stats.packets++;
        return TC_ACT_UNSPEC;
    }
    s->key = k;
    s->used = 1;
    new_stats(&s->stats, skb);
    return TC_ACT_UNSPEC;
}

char LICENSE[] SEC("license") = "Dual BSD/GPL";
