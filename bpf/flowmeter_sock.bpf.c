// SPDX-License-Identifier: GPL-2.0
/* Flowmeter socket telemetry: TCP connection lifecycle with its owner.
 *
 * Why these hooks: the TCP state machine is the one place every connection
 * passes through on open, close and failure, whatever the application does.
 * Each logical hook has three twins sharing one __always_inline body, and the
 * loader enables exactly one twin per hook (bpf_program__set_autoload):
 *   fentry  (BTF trampolines: cheapest, needs CONFIG_FUNCTION_TRACER + BTF),
 *   kprobe  (any kernel with CONFIG_KPROBES),
 *   tracepoint: tp_btf where BTF allows, else the classic tracepoint.
 *   hook           fentry / kprobe              tracepoint
 *   state change   tcp_set_state                sock:inet_sock_set_state
 *   listen         inet_csk_listen_start        (the state tracepoint: listen() moves the
 *                                               socket to LISTEN through inet_sk_set_state,
 *                                               which fires it but never calls tcp_set_state)
 *   reset received tcp_reset                    tcp:tcp_receive_reset
 *   reset sent     tcp_send_active_reset        tcp:tcp_send_reset
 *
 * Facts the bodies rely on (true on every kernel of the matrix):
 *  - connect() moves the socket CLOSE -> SYN_SENT in process context, and
 *    listen() moves it to LISTEN in process context: that is where the owner
 *    (pid, name, cgroup) is recorded. An accepted socket reaches ESTABLISHED in
 *    softirq context; it takes the owner of the listener on its (netns, port).
 *  - Payload bytes, smoothed RTT and retransmits come from the kernel's own
 *    tcp_sock counters, read with CO-RE at close: exact, and the same on every
 *    rung. Sent: bytes_sent - bytes_retrans (bytes_acked would count SYN and
 *    FIN). Received: bytes_received, which counts a received FIN's sequence
 *    number too, less 1 when RCV_SHUTDOWN is set at the CLOSE transition
 *    (tcp_fin sets it; tcp_done sets the whole mask only after the change).
 *  - A connect that fails goes SYN_SENT -> CLOSE with sk_err set: ECONNREFUSED
 *    (a reset), ETIMEDOUT, EHOSTUNREACH/ENETUNREACH.
 *  - tcp_disconnect() (SO_LINGER 0, close with unread data) moves the socket to
 *    CLOSE *before* it sends the reset, so the reset-sent hook no longer finds
 *    the socket. Such a close is the only way from ESTABLISHED or CLOSE_WAIT to
 *    CLOSE with sk_err still 0 (a received reset or a timeout sets it first), so
 *    that transition itself counts as one reset sent.
 */
#include "vmlinux.h"
#include <bpf/bpf_helpers.h>
#include <bpf/bpf_tracing.h>
#include <bpf/bpf_core_read.h>
#include "flowmeter_abi.h"

#define AF_INET 2
#define AF_INET6 10
#define IPPROTO_TCP_ 6
#define ECONNREFUSED_ 111
#define ETIMEDOUT_ 110
#define EHOSTUNREACH_ 113
#define ENETUNREACH_ 101
#define RCV_SHUTDOWN_ 1

/* TCP states (include/net/tcp_states.h). */
enum {
    ST_ESTABLISHED = 1, ST_SYN_SENT = 2, ST_SYN_RECV = 3, ST_FIN_WAIT1 = 4, ST_FIN_WAIT2 = 5,
    ST_TIME_WAIT = 6, ST_CLOSE = 7, ST_CLOSE_WAIT = 8, ST_LAST_ACK = 9, ST_LISTEN = 10, ST_CLOSING = 11,
};

/* Per-socket state while a connection lives, keyed by the socket's address.
 * LRU, so sockets whose close we never saw (opened before we attached and
 * still open when we stop) cannot fill it. */
struct {
    __uint(type, BPF_MAP_TYPE_LRU_HASH);
    __uint(max_entries, FM_DEFAULT_SOCKET_TABLE_SIZE);
    __type(key, __u64);
    __type(value, struct fm_sock_state);
} fm_socks SEC(".maps");

/* Owner of each listening socket, by (netns, port): accepted sockets take it. */
struct {
    __uint(type, BPF_MAP_TYPE_LRU_HASH);
    __uint(max_entries, 16384);
    __type(key, struct fm_listener_key);
    __type(value, struct fm_owner);
} fm_listeners SEC(".maps");

struct {
    __uint(type, BPF_MAP_TYPE_RINGBUF);
    __uint(max_entries, FM_DEFAULT_EVENTS_RING_BYTES);
} events SEC(".maps");

/* Self-observability, indexed by enum fm_sock_stat. */
struct {
    __uint(type, BPF_MAP_TYPE_PERCPU_ARRAY);
    __uint(max_entries, FM_SOCK_STAT_COUNT);
    __type(key, __u32);
    __type(value, __u64);
} fm_sock_stats SEC(".maps");

static __always_inline void sstat_inc(__u32 idx)
{
    __u64 *v = bpf_map_lookup_elem(&fm_sock_stats, &idx);
    if (v)
        *v += 1;
}

static __always_inline void owner_now(struct fm_owner *o)
{
    __u64 id = bpf_get_current_pid_tgid();
    o->tgid = id >> 32;
    o->pid = (__u32)id;
    o->cgroup_id = bpf_get_current_cgroup_id();
    /* The process name: comm of the thread-group leader (the calling thread may
     * carry a name of its own, e.g. a runtime worker thread). */
    struct task_struct *task = (struct task_struct *)bpf_get_current_task();
    BPF_CORE_READ_STR_INTO(&o->comm, task, group_leader, comm);
}

static __always_inline void listener_key(struct sock *sk, struct fm_listener_key *k)
{
    __builtin_memset(k, 0, sizeof(*k));
    k->netns = BPF_CORE_READ(sk, __sk_common.skc_net.net, ns.inum);
    k->port = BPF_CORE_READ(sk, __sk_common.skc_num);
}

/* Addresses and ports of the socket into the event (IPv4 v4-mapped). */
static __always_inline void fill_addrs(struct sock *sk, struct fm_sock_event *e)
{
    __u16 family = BPF_CORE_READ(sk, __sk_common.skc_family);
    __builtin_memset(e->saddr, 0, sizeof(e->saddr));
    __builtin_memset(e->daddr, 0, sizeof(e->daddr));
    if (family == AF_INET) {
        __u32 s = BPF_CORE_READ(sk, __sk_common.skc_rcv_saddr);
        __u32 d = BPF_CORE_READ(sk, __sk_common.skc_daddr);
        e->saddr[10] = e->saddr[11] = 0xff;
        e->daddr[10] = e->daddr[11] = 0xff;
        __builtin_memcpy(e->saddr + 12, &s, 4);
        __builtin_memcpy(e->daddr + 12, &d, 4);
        e->family = FM_FAMILY_IPV4;
    } else {
        BPF_CORE_READ_INTO(&e->saddr, sk, __sk_common.skc_v6_rcv_saddr.in6_u.u6_addr8);
        BPF_CORE_READ_INTO(&e->daddr, sk, __sk_common.skc_v6_daddr.in6_u.u6_addr8);
        e->family = FM_FAMILY_IPV6;
    }
    e->sport = BPF_CORE_READ(sk, __sk_common.skc_num);
    e->dport = __builtin_bswap16(BPF_CORE_READ(sk, __sk_common.skc_dport));
}

static __always_inline void emit(struct sock *sk, __u16 kind, struct fm_sock_state *st, __u8 reason,
                                 __u32 err, __u32 inferred_resets_sent)
{
    struct fm_sock_event *e = bpf_ringbuf_reserve(&events, sizeof(*e), 0);
    if (!e) {
        sstat_inc(FM_SOCK_STAT_EVENTS_LOST);
        return;
    }
    __builtin_memset(e, 0, sizeof(*e));
    e->version = FM_ABI_VERSION;
    e->kind = kind;
    e->protocol = IPPROTO_TCP_;
    e->reason = reason;
    e->err = err;
    e->sock_id = (__u64)(unsigned long)sk;
    e->ts_ns = bpf_ktime_get_ns();
    if (st) {
        e->role = st->role;
        e->start_ns = st->start_ns;
        e->owner = st->owner;
        e->resets_sent = st->resets_sent;
        e->resets_received = st->resets_received;
    }
    e->resets_sent += inferred_resets_sent;
    fill_addrs(sk, e);
    if (e->sport == 0 && st)
        e->sport = st->sport;
    if (kind == FM_SOCK_CLOSE) {
        struct tcp_sock *tp = (struct tcp_sock *)sk;
        e->bytes_sent = BPF_CORE_READ(tp, bytes_sent) - BPF_CORE_READ(tp, bytes_retrans);
        __u64 received = BPF_CORE_READ(tp, bytes_received);
        if ((BPF_CORE_READ_BITFIELD_PROBED(sk, sk_shutdown) & RCV_SHUTDOWN_) && received > 0)
            received -= 1;
        e->bytes_received = received;
        e->srtt_us = BPF_CORE_READ(tp, srtt_us) >> 3;
        e->retransmits = BPF_CORE_READ(tp, total_retrans);
    }
    bpf_ringbuf_submit(e, 0);
}

/* A socket starts listening (process context): remember who owns the port. */
static __always_inline void on_listen(struct sock *sk)
{
    struct fm_listener_key k;
    struct fm_owner o;
    __builtin_memset(&o, 0, sizeof(o));
    listener_key(sk, &k);
    owner_now(&o);
    bpf_map_update_elem(&fm_listeners, &k, &o, BPF_ANY);
}

/* The state-change body, shared by the three twins. */
static __always_inline void on_state(struct sock *sk, int old, int new)
{
    if (!sk || BPF_CORE_READ(sk, sk_protocol) != IPPROTO_TCP_)
        return;
    __u16 family = BPF_CORE_READ(sk, __sk_common.skc_family);
    if (family != AF_INET && family != AF_INET6)
        return;
    __u64 id = (__u64)(unsigned long)sk;

    if (new == ST_SYN_SENT) {
        struct fm_sock_state st;
        __builtin_memset(&st, 0, sizeof(st));
        owner_now(&st.owner);
        st.role = FM_ROLE_CLIENT;
        st.start_ns = bpf_ktime_get_ns();
        if (bpf_map_update_elem(&fm_socks, &id, &st, BPF_ANY))
            sstat_inc(FM_SOCK_STAT_TABLE_FULL);
        return;
    }
    if (new == ST_LISTEN) {
        on_listen(sk);
        return;
    }
    if (new == ST_ESTABLISHED) {
        struct fm_sock_state *st = bpf_map_lookup_elem(&fm_socks, &id);
        if (old == ST_SYN_RECV) {
            struct fm_sock_state ns;
            __builtin_memset(&ns, 0, sizeof(ns));
            struct fm_listener_key k;
            listener_key(sk, &k);
            struct fm_owner *o = bpf_map_lookup_elem(&fm_listeners, &k);
            if (o)
                ns.owner = *o;
            ns.role = FM_ROLE_SERVER;
            ns.start_ns = bpf_ktime_get_ns();
            if (bpf_map_update_elem(&fm_socks, &id, &ns, BPF_ANY))
                sstat_inc(FM_SOCK_STAT_TABLE_FULL);
            st = bpf_map_lookup_elem(&fm_socks, &id);
        }
        if (st)
            st->sport = BPF_CORE_READ(sk, __sk_common.skc_num);
        emit(sk, FM_SOCK_OPEN, st, 0, 0, 0);
        return;
    }
    if (new != ST_CLOSE)
        return;

    if (old == ST_LISTEN) {
        struct fm_listener_key k;
        listener_key(sk, &k);
        bpf_map_delete_elem(&fm_listeners, &k);
        return;
    }
    struct fm_sock_state *st = bpf_map_lookup_elem(&fm_socks, &id);
    __u32 err = BPF_CORE_READ(sk, sk_err);
    if (old == ST_SYN_SENT) {
        __u8 reason = err == ECONNREFUSED_ ? FM_FAIL_REFUSED
                    : err == ETIMEDOUT_ ? FM_FAIL_TIMEOUT
                    : (err == EHOSTUNREACH_ || err == ENETUNREACH_) ? FM_FAIL_UNREACHABLE
                    : FM_FAIL_OTHER;
        emit(sk, FM_SOCK_FAILED, st, reason, err, 0);
    } else if (old != ST_SYN_RECV && old != ST_CLOSE) {
        __u32 abort = (old == ST_ESTABLISHED || old == ST_CLOSE_WAIT) && err == 0;
        emit(sk, FM_SOCK_CLOSE, st, 0, err, abort);
    }
    if (st)
        bpf_map_delete_elem(&fm_socks, &id);
}

static __always_inline void on_reset(struct sock *sk, int sent)
{
    if (!sk)
        return;
    __u64 id = (__u64)(unsigned long)sk;
    struct fm_sock_state *st = bpf_map_lookup_elem(&fm_socks, &id);
    if (!st)
        return;
    /* Both reset paths run with the socket locked, so a plain increment is
     * exact; and an atomic would compile (-mcpu=v3) to a fetching atomic that
     * kernels before 5.12 reject ("BPF_STX uses reserved fields"). */
    if (sent)
        st->resets_sent += 1;
    else
        st->resets_received += 1;
}

/* ---- fentry twins */
SEC("fentry/tcp_set_state")
int BPF_PROG(fm_state_fentry, struct sock *sk, int state)
{
    on_state(sk, BPF_CORE_READ(sk, __sk_common.skc_state), state);
    return 0;
}

SEC("fentry/inet_csk_listen_start")
int BPF_PROG(fm_listen_fentry, struct sock *sk)
{
    if (BPF_CORE_READ(sk, sk_protocol) == IPPROTO_TCP_)
        on_listen(sk);
    return 0;
}

SEC("fentry/tcp_reset")
int BPF_PROG(fm_reset_rx_fentry, struct sock *sk)
{
    on_reset(sk, 0);
    return 0;
}

SEC("fentry/tcp_send_active_reset")
int BPF_PROG(fm_reset_tx_fentry, struct sock *sk)
{
    on_reset(sk, 1);
    return 0;
}

/* ---- kprobe twins */
SEC("kprobe/tcp_set_state")
int BPF_KPROBE(fm_state_kprobe, struct sock *sk, int state)
{
    on_state(sk, BPF_CORE_READ(sk, __sk_common.skc_state), state);
    return 0;
}

SEC("kprobe/inet_csk_listen_start")
int BPF_KPROBE(fm_listen_kprobe, struct sock *sk)
{
    if (BPF_CORE_READ(sk, sk_protocol) == IPPROTO_TCP_)
        on_listen(sk);
    return 0;
}

SEC("kprobe/tcp_reset")
int BPF_KPROBE(fm_reset_rx_kprobe, struct sock *sk)
{
    on_reset(sk, 0);
    return 0;
}

SEC("kprobe/tcp_send_active_reset")
int BPF_KPROBE(fm_reset_tx_kprobe, struct sock *sk)
{
    on_reset(sk, 1);
    return 0;
}

/* ---- tracepoint twins: tp_btf */
SEC("tp_btf/inet_sock_set_state")
int BPF_PROG(fm_state_tp_btf, struct sock *sk, int oldstate, int newstate)
{
    on_state(sk, oldstate, newstate);
    return 0;
}

SEC("tp_btf/tcp_receive_reset")
int BPF_PROG(fm_reset_rx_tp_btf, struct sock *sk)
{
    on_reset(sk, 0);
    return 0;
}

SEC("tp_btf/tcp_send_reset")
int BPF_PROG(fm_reset_tx_tp_btf, struct sock *sk)
{
    on_reset(sk, 1);
    return 0;
}

/* ---- tracepoint twins: classic (kernels whose BTF cannot serve tp_btf) */
SEC("tracepoint/sock/inet_sock_set_state")
int fm_state_tp(struct trace_event_raw_inet_sock_set_state *ctx)
{
    on_state((struct sock *)BPF_CORE_READ(ctx, skaddr), BPF_CORE_READ(ctx, oldstate), BPF_CORE_READ(ctx, newstate));
    return 0;
}

SEC("tracepoint/tcp/tcp_receive_reset")
int fm_reset_rx_tp(struct trace_event_raw_tcp_event_sk *ctx)
{
    on_reset((struct sock *)BPF_CORE_READ(ctx, skaddr), 0);
    return 0;
}

/* Before 6.x the event used the shared tcp_event_sk_skb layout. */
struct trace_event_raw_tcp_event_sk_skb___fm {
    const void *skbaddr;
    const void *skaddr;
} __attribute__((preserve_access_index));

SEC("tracepoint/tcp/tcp_send_reset")
int fm_reset_tx_tp(void *ctx)
{
    const void *sk;
    if (bpf_core_type_exists(struct trace_event_raw_tcp_send_reset))
        sk = BPF_CORE_READ((struct trace_event_raw_tcp_send_reset *)ctx, skaddr);
    else
        sk = BPF_CORE_READ((struct trace_event_raw_tcp_event_sk_skb___fm *)ctx, skaddr);
    on_reset((struct sock *)sk, 1);
    return 0;
}

char LICENSE[] SEC("license") = "GPL";
