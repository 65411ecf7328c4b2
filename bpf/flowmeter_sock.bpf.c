// SPDX-License-Identifier: GPL-2.0-only OR BSD-2-Clause
/* Flowmeter socket telemetry: TCP connection lifecycle and UDP sockets, with
 * their owner.
 *
 * Why these hooks: the TCP state machine is the one place every connection
 * passes through on open, close and failure, whatever the application does;
 * UDP has no state machine, so its sockets are seen where payload crosses the
 * socket layer (send, receive) and where the socket is destroyed.
 * Each logical hook has twins sharing one __always_inline body, and the
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
 *   udp send       udp_sendmsg, udpv6_sendmsg   sock:sock_send_length (6.3+)
 *                  (fexit / kretprobe: the return value is what was sent)
 *   udp receive    skb_consume_udp              sock:sock_recv_length (6.3+)
 *   udp close      udp_destroy_sock,            cgroup/sock_release on the cgroup v2 root
 *                  udpv6_destroy_sock           (no tracepoint sees a UDP socket go)
 * Plus the updates of long-lived sockets, the same on every rung, in one of
 * two twins that share one body (update_for):
 *   "fm_updates" (iter/bpf_map_elem) walks this file's socket table when the
 *   daemon reads it (once per interval) and writes an UPDATE for each socket
 *   older than the interval whose bytes changed;
 *   "fm_updates_run" (raw_tp, never attached: the daemon runs it with
 *   BPF_PROG_TEST_RUN on up to FM_UPDATE_RUN_KEYS socket ids it read from
 *   the same table) does the same for those sockets, into "fm_update_ring".
 *   Hardened kernels refuse iterators (EPERM for iter/bpf_map_elem, seen on a
 *   6.18 build) while raw_tp loads; a raw_tp test run exists from 5.10 on.
 * Reading the counters once an interval, rather than on every send and
 * receive, costs the data path nothing, and it bounds updates to one per
 * socket per interval in the kernel. Both twins read the sockets in place
 * (the table is global), so sockets of every network namespace are covered.
 *
 * Facts the bodies rely on (true on every kernel of the matrix):
 *  - connect() moves the socket CLOSE -> SYN_SENT in process context, and
 *    listen() moves it to LISTEN in process context: that is where the owner
 *    (pid, name, cgroup) is recorded. An accepted socket reaches ESTABLISHED in
 *    softirq context; it takes the owner of the listener on its (netns, port).
 *    UDP send and receive hooks run in the calling process.
 *  - TCP payload bytes, smoothed RTT and retransmits come from the kernel's own
 *    tcp_sock counters, read with CO-RE at close and by the iterator: exact,
 *    and the same on every rung. Sent: bytes_sent - bytes_retrans (bytes_acked
 *    would count SYN and FIN). Received: bytes_received, which counts a
 *    received FIN's sequence number too, less 1 when RCV_SHUTDOWN is set at the
 *    CLOSE transition (tcp_fin sets it; tcp_done sets the whole mask only after
 *    the change).
 *  - A connect that fails goes SYN_SENT -> CLOSE with sk_err set: ECONNREFUSED
 *    (a reset), ETIMEDOUT, EHOSTUNREACH/ENETUNREACH.
 *  - tcp_disconnect() (SO_LINGER 0, close with unread data) moves the socket to
 *    CLOSE *before* it sends the reset, so the reset-sent hook no longer finds
 *    the socket. Such a close is the only way from ESTABLISHED or CLOSE_WAIT to
 *    CLOSE with sk_err still 0 (a received reset or a timeout sets it first), so
 *    that transition itself counts as one reset sent.
 *  - udpv6_sendmsg hands a v4-mapped destination to udp_sendmsg with the same
 *    (AF_INET6) socket, so each sendmsg hook counts only sockets of its own
 *    family: every datagram is counted once.
 */
#include "vmlinux.h"
#include <bpf/bpf_helpers.h>
#include <bpf/bpf_tracing.h>
#include <bpf/bpf_core_read.h>
#include "flowmeter_abi.h"
#include "flowmeter_common.h"

/* uapi macros that vmlinux.h cannot carry (the IP protocol numbers and
 * address families are in flowmeter_common.h). */
#define MSG_PEEK_     2
#define MSG_ERRQUEUE_ 0x2000
#define ECONNREFUSED_ 111
#define ETIMEDOUT_    110
#define EHOSTUNREACH_ 113
#define ENETUNREACH_  101
#define RCV_SHUTDOWN_ 1

/* TCP states (include/net/tcp_states.h). */
enum {
    ST_ESTABLISHED = 1,
    ST_SYN_SENT = 2,
    ST_SYN_RECV = 3,
    ST_FIN_WAIT1 = 4,
    ST_FIN_WAIT2 = 5,
    ST_TIME_WAIT = 6,
    ST_CLOSE = 7,
    ST_CLOSE_WAIT = 8,
    ST_LAST_ACK = 9,
    ST_LISTEN = 10,
    ST_CLOSING = 11,
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

/* The socket records (struct fm_sock_event) for the daemon, submitted with
 * fm_ringbuf_submit_stepped. */
struct {
    __uint(type, BPF_MAP_TYPE_RINGBUF);
    __uint(max_entries, FM_DEFAULT_EVENTS_RING_BYTES);
} events SEC(".maps");

/* Self-observability, indexed by enum fm_sock_stat (fm_stat_inc). */
struct {
    __uint(type, BPF_MAP_TYPE_PERCPU_ARRAY);
    __uint(max_entries, FM_SOCK_STAT_COUNT);
    __type(key, __u32);
    __type(value, __u64);
} fm_sock_stats SEC(".maps");

/* Settings the daemon writes, indexed by enum fm_sock_config. */
struct {
    __uint(type, BPF_MAP_TYPE_ARRAY);
    __uint(max_entries, FM_SOCK_CONFIG_COUNT);
    __type(key, __u32);
    __type(value, __u64);
} fm_sock_config SEC(".maps");

/* kprobe rung: the socket of a udp_sendmsg / udpv6_sendmsg in flight, by
 * thread, from the entry probe to the return probe. */
struct {
    __uint(type, BPF_MAP_TYPE_HASH);
    __uint(max_entries, 16384);
    __type(key, __u64);
    __type(value, __u64);
} fm_udp_send_stash SEC(".maps");

/* How a body reads the socket. The fentry and tp_btf twins get the socket as a
 * BTF pointer, which the verifier lets a program load from directly (it turns
 * each load into an exception-protected one, PROBE_MEM): a load each. The
 * kprobe and classic tracepoint twins, and the updates (which hold the socket
 * as a number, the table's key), may only copy through bpf_probe_read_kernel,
 * a helper call per field (BPF_CORE_READ). Under connection churn those calls
 * were most of the state-change program's time (docs/benchmarks.md, "Where a
 * connection's BPF time goes"). `direct` is a constant at every call site and
 * the bodies are __always_inline, so each twin compiles one branch only: the
 * kprobe twins never carry a direct load the verifier would refuse. Both
 * branches name the same fields with CO-RE relocations. */
#define SK_READ(direct, sk, field) ((direct) ? (sk)->field : BPF_CORE_READ(sk, field))

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

static __always_inline void listener_key(struct sock *sk, struct fm_listener_key *k, int direct)
{
    __builtin_memset(k, 0, sizeof(*k));
    if (direct)
        k->netns = sk->__sk_common.skc_net.net->ns.inum;
    else
        k->netns = BPF_CORE_READ(sk, __sk_common.skc_net.net, ns.inum);
    k->port = SK_READ(direct, sk, __sk_common.skc_num);
}

/* Addresses and ports of the socket into the event (IPv4 v4-mapped). */
static __always_inline void fill_addrs(struct sock *sk, struct fm_sock_event *e, int direct)
{
    __u16 family = SK_READ(direct, sk, __sk_common.skc_family);
    __builtin_memset(e->saddr, 0, sizeof(e->saddr));
    __builtin_memset(e->daddr, 0, sizeof(e->daddr));
    if (family == AF_INET) {
        __u32 s = SK_READ(direct, sk, __sk_common.skc_rcv_saddr);
        __u32 d = SK_READ(direct, sk, __sk_common.skc_daddr);
        e->saddr[10] = e->saddr[11] = 0xff;
        e->daddr[10] = e->daddr[11] = 0xff;
        __builtin_memcpy(e->saddr + 12, &s, 4);
        __builtin_memcpy(e->daddr + 12, &d, 4);
        e->family = FM_FAMILY_IPV4;
    } else {
        if (direct) {
            /* Element by element: a load must fit one member of the BTF type. */
            __u32 *s = (__u32 *)e->saddr, *d = (__u32 *)e->daddr;
            s[0] = sk->__sk_common.skc_v6_rcv_saddr.in6_u.u6_addr32[0];
            s[1] = sk->__sk_common.skc_v6_rcv_saddr.in6_u.u6_addr32[1];
            s[2] = sk->__sk_common.skc_v6_rcv_saddr.in6_u.u6_addr32[2];
            s[3] = sk->__sk_common.skc_v6_rcv_saddr.in6_u.u6_addr32[3];
            d[0] = sk->__sk_common.skc_v6_daddr.in6_u.u6_addr32[0];
            d[1] = sk->__sk_common.skc_v6_daddr.in6_u.u6_addr32[1];
            d[2] = sk->__sk_common.skc_v6_daddr.in6_u.u6_addr32[2];
            d[3] = sk->__sk_common.skc_v6_daddr.in6_u.u6_addr32[3];
        } else {
            BPF_CORE_READ_INTO(&e->saddr, sk, __sk_common.skc_v6_rcv_saddr.in6_u.u6_addr8);
            BPF_CORE_READ_INTO(&e->daddr, sk, __sk_common.skc_v6_daddr.in6_u.u6_addr8);
        }
        e->family = FM_FAMILY_IPV6;
    }
    e->sport = SK_READ(direct, sk, __sk_common.skc_num);
    e->dport = __builtin_bswap16(SK_READ(direct, sk, __sk_common.skc_dport));
}

/* Counters so far into the event: UDP from our state, TCP from tcp_sock. */
static __always_inline void fill_counters(struct sock *sk, struct fm_sock_state *st, struct fm_sock_event *e,
                                          int direct)
{
    if (e->protocol == IPPROTO_UDP_) {
        if (st) {
            e->bytes_sent = st->udp_bytes_sent;
            e->bytes_received = st->udp_bytes_received;
        }
        return;
    }
    __u64 received;
    if (direct) {
        /* The verifier types the pointer as struct sock; tcp_sock's fields
         * lie beyond it, so the cast goes through the kernel's checked one. */
        struct tcp_sock *tp = bpf_skc_to_tcp_sock(sk);
        if (!tp)
            return;
        e->bytes_sent = tp->bytes_sent - tp->bytes_retrans;
        received = tp->bytes_received;
        e->srtt_us = tp->srtt_us >> 3;
        e->retransmits = tp->total_retrans;
    } else {
        struct tcp_sock *tp = (struct tcp_sock *)sk;
        e->bytes_sent = BPF_CORE_READ(tp, bytes_sent) - BPF_CORE_READ(tp, bytes_retrans);
        received = BPF_CORE_READ(tp, bytes_received);
        e->srtt_us = BPF_CORE_READ(tp, srtt_us) >> 3;
        e->retransmits = BPF_CORE_READ(tp, total_retrans);
    }
    /* A bitfield before 6.5 (a byte after): one probed read on every rung. */
    if ((BPF_CORE_READ_BITFIELD_PROBED(sk, sk_shutdown) & RCV_SHUTDOWN_) && received > 0)
        received -= 1;
    e->bytes_received = received;
}

/* The record for a socket; sk may be NULL (the cgroup hook cannot read it):
 * then addresses stay zero and the daemon has them from the open. */
static __always_inline void fill_event(struct fm_sock_event *e, __u64 id, struct sock *sk, __u16 kind, __u8 protocol,
                                       struct fm_sock_state *st, int direct)
{
    __builtin_memset(e, 0, sizeof(*e));
    e->version = FM_ABI_VERSION;
    e->kind = kind;
    e->protocol = protocol;
    e->sock_id = id;
    e->ts_ns = bpf_ktime_get_ns();
    if (st) {
        e->role = st->role;
        e->start_ns = st->start_ns;
        e->owner = st->owner;
        e->resets_sent = st->resets_sent;
        e->resets_received = st->resets_received;
    }
    if (sk) {
        fill_addrs(sk, e, direct);
        if (kind == FM_SOCK_CLOSE || kind == FM_SOCK_UPDATE)
            fill_counters(sk, st, e, direct);
    } else if (st && protocol == IPPROTO_UDP_) {
        e->bytes_sent = st->udp_bytes_sent;
        e->bytes_received = st->udp_bytes_received;
    }
    if (e->sport == 0 && st)
        e->sport = st->sport;
}

static __always_inline void emit(struct sock *sk, __u16 kind, struct fm_sock_state *st, __u8 reason, __u32 err,
                                 __u32 inferred_resets_sent, int direct)
{
    fm_stat_inc(&fm_sock_stats, FM_SOCK_STAT_EVENTS_ATTEMPTED);
    struct fm_sock_event *e = bpf_ringbuf_reserve(&events, sizeof(*e), 0);
    if (!e) {
        fm_stat_inc(&fm_sock_stats, FM_SOCK_STAT_EVENTS_LOST);
        return;
    }
    fill_event(e, (__u64)(unsigned long)sk, sk, kind, st ? st->protocol : IPPROTO_TCP_, st, direct);
    e->reason = reason;
    e->err = err;
    e->resets_sent += inferred_resets_sent;
    fm_ringbuf_submit_stepped(&events, e, sizeof(*e));
}

/* A socket starts listening (process context): remember who owns the port. */
static __always_inline void on_listen(struct sock *sk, int direct)
{
    struct fm_listener_key k;
    struct fm_owner o;
    __builtin_memset(&o, 0, sizeof(o));
    listener_key(sk, &k, direct);
    owner_now(&o);
    bpf_map_update_elem(&fm_listeners, &k, &o, BPF_ANY);
}

/* The transitions the state-change body acts on; every other one (FIN_WAIT1,
 * FIN_WAIT2, CLOSE_WAIT, LAST_ACK, SYN_RECV, TIME_WAIT, CLOSING) needs nothing.
 * Half of a TCP connection's ten state changes (five per end under churn,
 * tools/bench churn) are of the second kind, so every twin tests the new state,
 * which its hook hands over as an argument, before it reads the socket. */
static __always_inline int state_wanted(int new)
{
    return new == ST_SYN_SENT || new == ST_ESTABLISHED || new == ST_CLOSE || new == ST_LISTEN;
}

/* The state-change body, shared by the three twins (new: state_wanted). */
static __always_inline void on_state(struct sock *sk, int old, int new, int direct)
{
    if (!sk || SK_READ(direct, sk, sk_protocol) != IPPROTO_TCP_)
        return;
    __u16 family = SK_READ(direct, sk, __sk_common.skc_family);
    if (family != AF_INET && family != AF_INET6)
        return;
    __u64 id = (__u64)(unsigned long)sk;

    if (new == ST_SYN_SENT) {
        struct fm_sock_state st;
        __builtin_memset(&st, 0, sizeof(st));
        owner_now(&st.owner);
        st.role = FM_ROLE_CLIENT;
        st.protocol = IPPROTO_TCP_;
        st.start_ns = bpf_ktime_get_ns();
        if (bpf_map_update_elem(&fm_socks, &id, &st, BPF_ANY))
            fm_stat_inc(&fm_sock_stats, FM_SOCK_STAT_TABLE_FULL);
        return;
    }
    if (new == ST_LISTEN) {
        on_listen(sk, direct);
        return;
    }
    if (new == ST_ESTABLISHED) {
        if (old == ST_SYN_RECV) {
            /* An accepted socket: its state is new, so it is built here, the
             * OPEN written from it, and then it is stored once, marked opened
             * (an UPDATE can only follow an OPEN already on the ring). */
            struct fm_sock_state ns;
            __builtin_memset(&ns, 0, sizeof(ns));
            struct fm_listener_key k;
            listener_key(sk, &k, direct);
            struct fm_owner *o = bpf_map_lookup_elem(&fm_listeners, &k);
            if (o)
                ns.owner = *o;
            ns.role = FM_ROLE_SERVER;
            ns.protocol = IPPROTO_TCP_;
            ns.start_ns = bpf_ktime_get_ns();
            emit(sk, FM_SOCK_OPEN, &ns, 0, 0, 0, direct);
            ns.sport = k.port;
            ns.opened = 1;
            if (bpf_map_update_elem(&fm_socks, &id, &ns, BPF_ANY))
                fm_stat_inc(&fm_sock_stats, FM_SOCK_STAT_TABLE_FULL);
            return;
        }
        struct fm_sock_state *st = bpf_map_lookup_elem(&fm_socks, &id);
        emit(sk, FM_SOCK_OPEN, st, 0, 0, 0, direct);
        if (st) {
            st->sport = SK_READ(direct, sk, __sk_common.skc_num);
            st->opened = 1;
        }
        return;
    }
    /* new == ST_CLOSE */
    if (old == ST_LISTEN) {
        struct fm_listener_key k;
        listener_key(sk, &k, direct);
        bpf_map_delete_elem(&fm_listeners, &k);
        return;
    }
    struct fm_sock_state *st = bpf_map_lookup_elem(&fm_socks, &id);
    __u32 err = SK_READ(direct, sk, sk_err);
    if (old == ST_SYN_SENT) {
        __u8 reason = err == ECONNREFUSED_                            ? FM_FAIL_REFUSED
                      : err == ETIMEDOUT_                             ? FM_FAIL_TIMEOUT
                      : (err == EHOSTUNREACH_ || err == ENETUNREACH_) ? FM_FAIL_UNREACHABLE
                                                                      : FM_FAIL_OTHER;
        emit(sk, FM_SOCK_FAILED, st, reason, err, 0, direct);
    } else if (old != ST_SYN_RECV && old != ST_CLOSE) {
        __u32 abort = (old == ST_ESTABLISHED || old == ST_CLOSE_WAIT) && err == 0;
        emit(sk, FM_SOCK_CLOSE, st, 0, err, abort, direct);
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

/* ---- UDP */

static __always_inline int is_udp_inet(struct sock *sk, __u16 want_family, int direct)
{
    if (!sk || SK_READ(direct, sk, sk_protocol) != IPPROTO_UDP_)
        return 0;
    __u16 family = SK_READ(direct, sk, __sk_common.skc_family);
    if (want_family)
        return family == want_family;
    return family == AF_INET || family == AF_INET6;
}

/* Payload crossed a UDP socket in process context (len: bytes, <= 0 none).
 * The first time sees the socket open: the caller owns it, and a socket that
 * sends first is the client of its exchange, one that receives first the server. */
static __always_inline void on_udp_bytes(struct sock *sk, long len, int sent, int direct)
{
    if (len <= 0)
        return;
    __u64 id = (__u64)(unsigned long)sk;
    struct fm_sock_state *st = bpf_map_lookup_elem(&fm_socks, &id);
    if (!st) {
        struct fm_sock_state ns;
        __builtin_memset(&ns, 0, sizeof(ns));
        owner_now(&ns.owner);
        ns.role = sent ? FM_ROLE_CLIENT : FM_ROLE_SERVER;
        ns.protocol = IPPROTO_UDP_;
        ns.start_ns = bpf_ktime_get_ns();
        ns.sport = SK_READ(direct, sk, __sk_common.skc_num);
        ns.opened = 1;
        /* NOEXIST: of two threads meeting a new socket at once, one opens it. */
        long r = bpf_map_update_elem(&fm_socks, &id, &ns, BPF_NOEXIST);
        if (r == 0)
            emit(sk, FM_SOCK_OPEN, &ns, 0, 0, 0, direct);
        else if (r != -17 /* EEXIST */)
            fm_stat_inc(&fm_sock_stats, FM_SOCK_STAT_TABLE_FULL);
        st = bpf_map_lookup_elem(&fm_socks, &id);
        if (!st)
            return;
    }
    /* Threads of one process may send on one socket at once: a non-fetching
     * atomic add (a fetching one is refused before 5.12). */
    if (sent)
        __atomic_fetch_add(&st->udp_bytes_sent, (__u64)len, __ATOMIC_RELAXED);
    else
        __atomic_fetch_add(&st->udp_bytes_received, (__u64)len, __ATOMIC_RELAXED);
}

static __always_inline void on_udp_close(struct sock *sk, int direct)
{
    __u64 id = (__u64)(unsigned long)sk;
    struct fm_sock_state *st = bpf_map_lookup_elem(&fm_socks, &id);
    if (!st || st->protocol != IPPROTO_UDP_)
        return;
    emit(sk, FM_SOCK_CLOSE, st, 0, 0, 0, direct);
    bpf_map_delete_elem(&fm_socks, &id);
}

/* ---- Updates: once per interval, by one of the two twins below. */
static __always_inline int tcp_alive(struct sock *sk)
{
    int state = BPF_CORE_READ(sk, __sk_common.skc_state);
    return state == ST_ESTABLISHED || state == ST_FIN_WAIT1 || state == ST_FIN_WAIT2 || state == ST_CLOSE_WAIT ||
           state == ST_LAST_ACK || state == ST_CLOSING;
}

/* The UPDATE for the socket `key` into *e, if one is due: it was opened, is
 * older than the update age, still alive (TCP: past CLOSE its close record is
 * on the ring, and an update must not follow it), and its bytes changed since
 * the last one. Returns the new total to store in st->reported once the
 * record is out (so a record that could not be written is tried again next
 * time), or 0 when nothing is due. */
static __always_inline __u64 update_for(__u64 key, struct fm_sock_state *st, struct fm_sock_event *e)
{
    if (!st->opened)
        return 0;
    __u32 idx = FM_SOCK_CONFIG_UPDATE_MIN_AGE_NS;
    __u64 *min_age = bpf_map_lookup_elem(&fm_sock_config, &idx);
    __u64 now = bpf_ktime_get_ns();
    if (min_age && now - st->start_ns < *min_age)
        return 0;
    struct sock *sk = (struct sock *)(unsigned long)key;
    if (st->protocol == IPPROTO_TCP_ && !tcp_alive(sk))
        return 0;
    fill_event(e, key, sk, FM_SOCK_UPDATE, st->protocol, st, 0);
    __u64 total = e->bytes_sent + e->bytes_received;
    if (total == st->reported)
        return 0;
    return total;
}

/* Iterator twin: the records come back through read() of the iterator. */
SEC("iter/bpf_map_elem")
int fm_updates(struct bpf_iter__bpf_map_elem *ctx)
{
    __u64 *key = ctx->key;
    struct fm_sock_state *st = ctx->value;
    if (!key || !st)
        return 0;
    struct fm_sock_event e;
    __u64 total = update_for(*key, st, &e);
    if (total && bpf_seq_write(ctx->meta->seq, &e, sizeof(e)) == 0)
        st->reported = total;
    return 0;
}

/* The update ring of the raw_tp twin: drained by the daemon after each run. */
struct {
    __uint(type, BPF_MAP_TYPE_RINGBUF);
    __uint(max_entries, FM_UPDATE_RING_BYTES);
} fm_update_ring SEC(".maps");

/* One socket of a run: 1 if its UPDATE was written. A subprogram, so the
 * verifier checks one body instead of FM_UPDATE_RUN_KEYS inlined copies. */
static __noinline int update_one(__u64 key)
{
    if (!key)
        return 0;
    struct fm_sock_state *st = bpf_map_lookup_elem(&fm_socks, &key);
    if (!st)
        return 0;
    struct fm_sock_event e;
    __u64 total = update_for(key, st, &e);
    if (!total || bpf_ringbuf_output(&fm_update_ring, &e, sizeof(e), BPF_RB_NO_WAKEUP) != 0)
        return 0;
    st->reported = total;
    return 1;
}

/* Run twin: ctx holds FM_UPDATE_RUN_KEYS socket ids (0: none), put there by
 * BPF_PROG_TEST_RUN; returns how many UPDATEs it wrote. Context reads must
 * be at constant offsets, hence one call per slot. */
SEC("raw_tp")
int fm_updates_run(__u64 *ctx)
{
    int n = 0;
    n += update_one(ctx[0]);
    n += update_one(ctx[1]);
    n += update_one(ctx[2]);
    n += update_one(ctx[3]);
    n += update_one(ctx[4]);
    n += update_one(ctx[5]);
    n += update_one(ctx[6]);
    n += update_one(ctx[7]);
    n += update_one(ctx[8]);
    n += update_one(ctx[9]);
    n += update_one(ctx[10]);
    n += update_one(ctx[11]);
    return n;
}
_Static_assert(FM_UPDATE_RUN_KEYS == 12, "fm_updates_run reads one context slot per key");

/* ---- fentry twins */
SEC("fentry/tcp_set_state")
int BPF_PROG(fm_state_fentry, struct sock *sk, int state)
{
    if (state_wanted(state))
        on_state(sk, sk->__sk_common.skc_state, state, 1);
    return 0;
}

SEC("fentry/inet_csk_listen_start")
int BPF_PROG(fm_listen_fentry, struct sock *sk)
{
    if (sk->sk_protocol == IPPROTO_TCP_)
        on_listen(sk, 1);
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

SEC("fexit/udp_sendmsg")
int BPF_PROG(fm_udp_send_fexit, struct sock *sk, struct msghdr *msg, size_t len, int ret)
{
    if (is_udp_inet(sk, AF_INET, 1))
        on_udp_bytes(sk, ret, 1, 1);
    return 0;
}

SEC("fexit/udpv6_sendmsg")
int BPF_PROG(fm_udp6_send_fexit, struct sock *sk, struct msghdr *msg, size_t len, int ret)
{
    if (is_udp_inet(sk, AF_INET6, 1))
        on_udp_bytes(sk, ret, 1, 1);
    return 0;
}

/* len: what recvmsg returns (copied, or the datagram's length under
 * MSG_TRUNC), negative when peeking. */
SEC("fentry/skb_consume_udp")
int BPF_PROG(fm_udp_recv_fentry, struct sock *sk, struct sk_buff *skb, int len)
{
    if (is_udp_inet(sk, 0, 1))
        on_udp_bytes(sk, len, 0, 1);
    return 0;
}

SEC("fentry/udp_destroy_sock")
int BPF_PROG(fm_udp_close_fentry, struct sock *sk)
{
    on_udp_close(sk, 1);
    return 0;
}

SEC("fentry/udpv6_destroy_sock")
int BPF_PROG(fm_udp6_close_fentry, struct sock *sk)
{
    on_udp_close(sk, 1);
    return 0;
}

/* ---- kprobe twins */
SEC("kprobe/tcp_set_state")
int BPF_KPROBE(fm_state_kprobe, struct sock *sk, int state)
{
    if (state_wanted(state))
        on_state(sk, BPF_CORE_READ(sk, __sk_common.skc_state), state, 0);
    return 0;
}

SEC("kprobe/inet_csk_listen_start")
int BPF_KPROBE(fm_listen_kprobe, struct sock *sk)
{
    if (BPF_CORE_READ(sk, sk_protocol) == IPPROTO_TCP_)
        on_listen(sk, 0);
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

static __always_inline void udp_send_stash(struct sock *sk, __u16 family)
{
    if (!is_udp_inet(sk, family, 0))
        return;
    __u64 tid = bpf_get_current_pid_tgid();
    __u64 v = (__u64)(unsigned long)sk;
    bpf_map_update_elem(&fm_udp_send_stash, &tid, &v, BPF_ANY);
}

/* The stash holds one socket per thread; a return probe takes it only when the
 * socket is of its own family (udpv6_sendmsg's v4-mapped call into
 * udp_sendmsg returns into the v6 probe, which then counts it). */
static __always_inline void udp_send_return(long ret, __u16 family)
{
    __u64 tid = bpf_get_current_pid_tgid();
    __u64 *v = bpf_map_lookup_elem(&fm_udp_send_stash, &tid);
    if (!v)
        return;
    struct sock *sk = (struct sock *)(unsigned long)*v;
    if (BPF_CORE_READ(sk, __sk_common.skc_family) != family)
        return;
    bpf_map_delete_elem(&fm_udp_send_stash, &tid);
    on_udp_bytes(sk, ret, 1, 0);
}

SEC("kprobe/udp_sendmsg")
int BPF_KPROBE(fm_udp_send_kprobe, struct sock *sk)
{
    udp_send_stash(sk, AF_INET);
    return 0;
}

SEC("kretprobe/udp_sendmsg")
int BPF_KRETPROBE(fm_udp_send_kretprobe, int ret)
{
    udp_send_return(ret, AF_INET);
    return 0;
}

SEC("kprobe/udpv6_sendmsg")
int BPF_KPROBE(fm_udp6_send_kprobe, struct sock *sk)
{
    udp_send_stash(sk, AF_INET6);
    return 0;
}

SEC("kretprobe/udpv6_sendmsg")
int BPF_KRETPROBE(fm_udp6_send_kretprobe, int ret)
{
    udp_send_return(ret, AF_INET6);
    return 0;
}

SEC("kprobe/skb_consume_udp")
int BPF_KPROBE(fm_udp_recv_kprobe, struct sock *sk, struct sk_buff *skb, int len)
{
    if (is_udp_inet(sk, 0, 0))
        on_udp_bytes(sk, len, 0, 0);
    return 0;
}

SEC("kprobe/udp_destroy_sock")
int BPF_KPROBE(fm_udp_close_kprobe, struct sock *sk)
{
    on_udp_close(sk, 0);
    return 0;
}

SEC("kprobe/udpv6_destroy_sock")
int BPF_KPROBE(fm_udp6_close_kprobe, struct sock *sk)
{
    on_udp_close(sk, 0);
    return 0;
}

/* ---- tracepoint twins: tp_btf */
SEC("tp_btf/inet_sock_set_state")
int BPF_PROG(fm_state_tp_btf, struct sock *sk, int oldstate, int newstate)
{
    if (state_wanted(newstate))
        on_state(sk, oldstate, newstate, 1);
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

/* sock_sendmsg / sock_recvmsg of every socket (6.3+): UDP ones counted. */
SEC("tp_btf/sock_send_length")
int BPF_PROG(fm_udp_send_tp_btf, struct sock *sk, int ret, int flags)
{
    if (is_udp_inet(sk, 0, 1))
        on_udp_bytes(sk, ret, 1, 1);
    return 0;
}

SEC("tp_btf/sock_recv_length")
int BPF_PROG(fm_udp_recv_tp_btf, struct sock *sk, int ret, int flags)
{
    if (!(flags & (MSG_PEEK_ | MSG_ERRQUEUE_)) && is_udp_inet(sk, 0, 1))
        on_udp_bytes(sk, ret, 0, 1);
    return 0;
}

/* The tracepoint rung's UDP close: no tracepoint sees a UDP socket go, so a
 * cgroup-sock program on the cgroup v2 root (it runs for every socket
 * released on the node). Its context is the socket itself, which it may not
 * read beyond bpf_sock: the record carries no addresses (the daemon has them
 * from the open). */
SEC("cgroup/sock_release")
int fm_udp_close_cgroup(struct bpf_sock *ctx)
{
    if (ctx->protocol != IPPROTO_UDP_)
        return 1;
    __u64 id = (__u64)(unsigned long)ctx;
    struct fm_sock_state *st = bpf_map_lookup_elem(&fm_socks, &id);
    if (!st || st->protocol != IPPROTO_UDP_)
        return 1;
    fm_stat_inc(&fm_sock_stats, FM_SOCK_STAT_EVENTS_ATTEMPTED);
    struct fm_sock_event *e = bpf_ringbuf_reserve(&events, sizeof(*e), 0);
    if (e) {
        fill_event(e, id, 0, FM_SOCK_CLOSE, IPPROTO_UDP_, st, 0);
        fm_ringbuf_submit_stepped(&events, e, sizeof(*e));
    } else {
        fm_stat_inc(&fm_sock_stats, FM_SOCK_STAT_EVENTS_LOST);
    }
    bpf_map_delete_elem(&fm_socks, &id);
    return 1;
}

/* ---- tracepoint twins: classic (kernels whose BTF cannot serve tp_btf) */
SEC("tracepoint/sock/inet_sock_set_state")
int fm_state_tp(struct trace_event_raw_inet_sock_set_state *ctx)
{
    /* The tracepoint's own fields are the context: plain loads. */
    int newstate = ctx->newstate;
    if (state_wanted(newstate))
        on_state((struct sock *)ctx->skaddr, ctx->oldstate, newstate, 0);
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

SEC("tracepoint/sock/sock_send_length")
int fm_udp_send_tp(struct trace_event_raw_sock_msg_length *ctx)
{
    struct sock *sk = (struct sock *)BPF_CORE_READ(ctx, sk);
    if (is_udp_inet(sk, 0, 0))
        on_udp_bytes(sk, BPF_CORE_READ(ctx, ret), 1, 0);
    return 0;
}

SEC("tracepoint/sock/sock_recv_length")
int fm_udp_recv_tp(struct trace_event_raw_sock_msg_length *ctx)
{
    struct sock *sk = (struct sock *)BPF_CORE_READ(ctx, sk);
    if (!(BPF_CORE_READ(ctx, flags) & (MSG_PEEK_ | MSG_ERRQUEUE_)) && is_udp_inet(sk, 0, 0))
        on_udp_bytes(sk, BPF_CORE_READ(ctx, ret), 0, 0);
    return 0;
}

/* GPL-compatible, as the file's SPDX line: the tracing helpers are GPL-only. */
char LICENSE[] SEC("license") = "Dual BSD/GPL";
