// SPDX-License-Identifier: GPL-2.0-only OR BSD-2-Clause
/* Flowmeter DNS: every DNS message a local client sends or receives, with
 * its query timed in the kernel.
 *
 * Why this hook: cgroup_skb on the cgroup v2 root runs for the packets of
 * every local socket, in every network namespace, and only for those: the
 * client's query on its way out (egress) and the answer on its way in
 * (ingress, after the socket was found). That is the one view the daemon
 * needs (which local client asked, whom, and how long the answer took; what
 * a client resolved names its peers), and it sees each message once, where
 * the tc programs see a message between two local namespaces on every veth
 * it crosses. The tc programs' per-packet path stays as it was: DNS costs
 * nothing there. Packets of DNS servers (a query arriving, an answer
 * leaving) are not the client's side and are skipped by the same port test.
 *
 * Per packet: the IP and L4 headers, then one array lookup per port (the
 * configured DNS ports, "fm_dns_ports", which the verifier inlines to a
 * load). Only a DNS packet goes further: its header (id, flags, counts),
 * the pending-query table ("fm_dns_pending": a bounded hash; a full table is
 * counted, never silent), and one ring record with the message's first
 * FM_DNS_COPY_BYTES bytes, which the daemon parses (names, answers). Reads
 * go through bpf_skb_load_bytes with lengths checked against the packet:
 * nothing is read past it.
 *
 * TCP: a segment whose payload starts with the two-byte length prefix and a
 * header is a message (one per segment: a client's query and a server's
 * answer are written whole; a second message in the same segment, or a
 * message's continuation, is not parsed). A response is only believed when
 * its (flow, id) is pending, so a continuation that looks like a header
 * counts nothing.
 *
 * The programs never drop: they return 1 (pass).
 */
#include "vmlinux.h"
#include <bpf/bpf_helpers.h>
#include <bpf/bpf_endian.h>
#include "flowmeter_abi.h"
#include "flowmeter_common.h"

#define DNS_HDR 12

/* Ports whose traffic is DNS (value 1), written by the daemon (--dns-ports). */
struct {
    __uint(type, BPF_MAP_TYPE_ARRAY);
    __uint(max_entries, FM_DNS_PORT_SLOTS);
    __type(key, __u32);
    __type(value, __u8);
} fm_dns_ports SEC(".maps");

/* Queries waiting for their answer: value the CLOCK_MONOTONIC of the first
 * send. The response removes its entry; the daemon removes those that time
 * out (--dns-timeout). Sized by the loader. */
struct {
    __uint(type, BPF_MAP_TYPE_HASH);
    __uint(max_entries, FM_DNS_PENDING_SIZE);
    __type(key, struct fm_dns_key);
    __type(value, __u64);
} fm_dns_pending SEC(".maps");

struct {
    __uint(type, BPF_MAP_TYPE_RINGBUF);
    __uint(max_entries, FM_DNS_RING_BYTES);
} fm_dns_events SEC(".maps");

/* Self-observability, indexed by enum fm_dns_stat (fm_stat_inc). */
struct {
    __uint(type, BPF_MAP_TYPE_PERCPU_ARRAY);
    __uint(max_entries, FM_DNS_STAT_COUNT);
    __type(key, __u32);
    __type(value, __u64);
} fm_dns_stats SEC(".maps");

static __always_inline int is_dns_port(__u16 port)
{
    __u32 k = port;
    __u8 *v = bpf_map_lookup_elem(&fm_dns_ports, &k);
    return v && *v;
}

static __always_inline void v4_mapped(__u8 *dst, __be32 addr)
{
    __builtin_memset(dst, 0, 10);
    dst[10] = 0xff;
    dst[11] = 0xff;
    __builtin_memcpy(dst + 12, &addr, 4);
}

/* The per-packet test, by direct packet access (no helper call): 1 when the
 * packet is surely not DNS on the client's side (not TCP or UDP, or not to /
 * from a DNS port); 0 when it may be, or when its headers are not in the
 * linear part (on_packet then reads them with bpf_skb_load_bytes). The
 * helper-call version cost 125-141 ns per non-DNS packet (tools/bench dns). */
static __always_inline int surely_not_dns(struct __sk_buff *skb, int egress)
{
    void *data = (void *)(long)skb->data, *end = (void *)(long)skb->data_end;
    __u8 *first = data;
    if ((void *)(first + 1) > end)
        return 0;
    __u32 l4;
    __u8 proto;
    if ((*first >> 4) == 4) {
        struct iphdr *ih = data;
        if ((void *)(ih + 1) > end)
            return 0;
        proto = ih->protocol;
        l4 = ih->ihl * 4;
    } else if ((*first >> 4) == 6) {
        struct ipv6hdr *ih = data;
        if ((void *)(ih + 1) > end)
            return 0;
        proto = ih->nexthdr; /* extension headers: not parsed by on_packet either */
        l4 = sizeof(*ih);
    } else {
        return 1;
    }
    if (proto != IPPROTO_UDP_ && proto != IPPROTO_TCP_)
        return 1;
    __u16 *ports = data + l4;
    if ((void *)(ports + 2) > end)
        return 0;
    return !is_dns_port(bpf_ntohs(egress ? ports[1] : ports[0]));
}

/* One packet of a local socket. `egress`: the socket sends it. */
static __always_inline void on_packet(struct __sk_buff *skb, int egress)
{
    if (surely_not_dns(skb, egress))
        return;
    __u32 len = skb->len;
    __u8 first;
    if (bpf_skb_load_bytes(skb, 0, &first, 1) < 0)
        return;
    struct fm_dns_key key;
    __builtin_memset(&key, 0, sizeof(key));
    __u8 src[16], dst[16], family;
    __u32 l4off, l3end;
    __u8 proto;
    if ((first >> 4) == 4) {
        struct iphdr ih;
        if (bpf_skb_load_bytes(skb, 0, &ih, sizeof(ih)) < 0)
            return;
        __u32 ihl = ih.ihl * 4;
        __u32 tot = bpf_ntohs(ih.tot_len);
        if (ihl < sizeof(ih) || (bpf_ntohs(ih.frag_off) & 0x1fff))
            return;
        proto = ih.protocol;
        l4off = ihl;
        /* A GSO super-packet's tot_len may be 0: the packet is the bound then. */
        l3end = tot >= ihl && tot <= len ? tot : len;
        v4_mapped(src, ih.saddr);
        v4_mapped(dst, ih.daddr);
        family = FM_FAMILY_IPV4;
    } else if ((first >> 4) == 6) {
        struct ipv6hdr ih;
        if (bpf_skb_load_bytes(skb, 0, &ih, sizeof(ih)) < 0)
            return;
        /* Extension headers are not walked: DNS packets do not carry them. */
        proto = ih.nexthdr;
        l4off = sizeof(ih);
        __u32 plen = bpf_ntohs(ih.payload_len);
        l3end = plen && sizeof(ih) + plen <= len ? sizeof(ih) + plen : len;
        __builtin_memcpy(src, &ih.saddr, 16);
        __builtin_memcpy(dst, &ih.daddr, 16);
        family = FM_FAMILY_IPV6;
    } else {
        return;
    }
    if (proto != IPPROTO_UDP_ && proto != IPPROTO_TCP_)
        return;
    __u16 ports[2];
    if (bpf_skb_load_bytes(skb, l4off, ports, sizeof(ports)) < 0)
        return;
    __u16 psrc = bpf_ntohs(ports[0]), pdst = bpf_ntohs(ports[1]);
    /* The client's side only: a query leaves towards a DNS port, an answer
     * comes in from one. */
    if (!is_dns_port(egress ? pdst : psrc))
        return;

    __u32 msg;  /* offset of the DNS header */
    __u32 mlen; /* the message's length as its framing says */
    if (proto == IPPROTO_UDP_) {
        msg = l4off + 8;
        if (msg > l3end)
            return;
        mlen = l3end - msg;
    } else {
        __u8 doff;
        if (bpf_skb_load_bytes(skb, l4off + 12, &doff, 1) < 0)
            return;
        __u32 pl = l4off + (doff >> 4) * 4;
        __u16 prefix;
        if (pl + 2 > l3end || bpf_skb_load_bytes(skb, pl, &prefix, 2) < 0)
            return;
        msg = pl + 2;
        mlen = bpf_ntohs(prefix);
    }
    if (mlen < DNS_HDR || msg + DNS_HDR > l3end)
        return;
    __u8 hdr[DNS_HDR];
    if (bpf_skb_load_bytes(skb, msg, hdr, DNS_HDR) < 0)
        return;
    int response = hdr[2] >> 7;
    if (response == egress)
        return; /* a client sends queries and receives answers */

    if (egress) {
        __builtin_memcpy(key.client, src, 16);
        __builtin_memcpy(key.server, dst, 16);
        key.cport = psrc;
        key.sport = pdst;
    } else {
        __builtin_memcpy(key.client, dst, 16);
        __builtin_memcpy(key.server, src, 16);
        key.cport = pdst;
        key.sport = psrc;
    }
    key.txid = ((__u16)hdr[0] << 8) | hdr[1];
    key.protocol = proto;

    __u64 now = bpf_ktime_get_ns();
    __u8 flags = 0;
    __u64 latency = 0;
    if (!response) {
        if (((__u16)hdr[4] << 8 | hdr[5]) == 0)
            return; /* no question: not a query a client waits on */
        long err = bpf_map_update_elem(&fm_dns_pending, &key, &now, BPF_NOEXIST);
        if (err == -17 /* EEXIST */)
            flags |= FM_DNS_REPEATED;
        else if (err) {
            flags |= FM_DNS_NOT_TRACKED;
            fm_stat_inc(&fm_dns_stats, FM_DNS_STAT_PENDING_FULL);
        }
    } else {
        __u64 *sent = bpf_map_lookup_elem(&fm_dns_pending, &key);
        if (!sent)
            if (proto == IPPROTO_TCP_)
                return; /* not an answer to anything: a continuation, say */
        if (sent) {
            latency = now - *sent;
            flags |= FM_DNS_MATCHED;
            bpf_map_delete_elem(&fm_dns_pending, &key);
        }
    }
    fm_stat_inc(&fm_dns_stats, FM_DNS_STAT_MESSAGES);

    struct fm_dns_event *ev = bpf_ringbuf_reserve(&fm_dns_events, sizeof(*ev), 0);
    if (!ev) {
        fm_stat_inc(&fm_dns_stats, FM_DNS_STAT_RING_LOST);
        return;
    }
    ev->version = FM_ABI_VERSION;
    ev->kind = response ? FM_DNS_RESPONSE : FM_DNS_QUERY;
    ev->family = family;
    ev->rcode = hdr[3] & 0x0f;
    ev->_pad = 0;
    ev->key = key;
    ev->qdcount = (__u16)hdr[4] << 8 | hdr[5];
    ev->ancount = (__u16)hdr[6] << 8 | hdr[7];
    ev->length = mlen > 0xffff ? 0xffff : mlen;
    ev->ts_ns = now;
    ev->latency_ns = latency;
    ev->cgroup_id = bpf_skb_cgroup_id(skb);
    /* What the packet holds of the message, at most FM_DNS_COPY_BYTES. */
    __u32 avail = l3end - msg;
    __u32 n = mlen < avail ? mlen : avail;
    if (n > FM_DNS_COPY_BYTES)
        n = FM_DNS_COPY_BYTES;
    if (n < mlen)
        flags |= FM_DNS_TRUNCATED;
    ev->copied = 0;
    if (n >= DNS_HDR && n <= FM_DNS_COPY_BYTES && bpf_skb_load_bytes(skb, msg, ev->payload, n) == 0)
        ev->copied = n;
    ev->flags = flags;
    /* A plain submit wakes the reader (unlike the other rings): an answer's
     * names must reach the daemon before the connection the client opens
     * right after it, and DNS messages are few. */
    bpf_ringbuf_submit(ev, 0);
}

SEC("cgroup_skb/egress")
int fm_dns_egress(struct __sk_buff *skb)
{
    on_packet(skb, 1);
    return 1;
}

SEC("cgroup_skb/ingress")
int fm_dns_ingress(struct __sk_buff *skb)
{
    on_packet(skb, 0);
    return 1;
}

/* GPL-compatible, as the file's SPDX line. */
char LICENSE[] SEC("license") = "Dual BSD/GPL";
