/* Flowmeter kernel/user ABI: the only definition of what crosses the boundary.
 *
 * Included by the BPF programs (after vmlinux.h, which provides the __uN types)
 * and imported by Swift as the FlowmeterABI C module. Rules, so that clang -target
 * bpf, the host C compiler and Swift's importer all see the same bytes:
 *  - fixed-width types only, fixed arrays, explicit padding, no bitfields, unions,
 *    bool, size_t or __int128 (Swift drops __int128 fields silently);
 *  - every struct size and field offset is pinned by _Static_assert in
 *    abi_asserts.c and checked again from Swift (Tests/FlowmeterBPFTests/ABITests);
 *  - records that travel through a ring buffer start with a version field;
 *  - integers are host byte order, addresses are network order.
 * Changing a layout means bumping FM_ABI_VERSION.
 */
#ifndef FLOWMETER_ABI_H
#define FLOWMETER_ABI_H

#ifndef __VMLINUX_H__
#include <linux/types.h>
#endif

/* Version carried by every ring record; user space rejects other versions
 * instead of misreading them. */
#define FM_ABI_VERSION 1

/* Direction of a packet relative to the interface it was seen on. */
enum fm_direction {
    FM_DIR_RECEIVE = 0,  /* tc ingress */
    FM_DIR_TRANSMIT = 1, /* tc egress */
};

/* Address family of a flow key. FM_FAMILY_OTHER marks frames that are not IP,
 * or IP headers too malformed to trust: they are still counted (so interface
 * totals stay complete) but carry no addresses. */
enum fm_family {
    FM_FAMILY_OTHER = 0,
    FM_FAMILY_IPV4 = 4,
    FM_FAMILY_IPV6 = 6,
};

/* fm_flow_key.flags bits. */
enum fm_key_flags {
    /* Non-first IP fragment: no L4 header, so ports are 0 and the fragments
     * of a datagram count toward this port-less flow. */
    FM_KEY_FRAGMENT = 1,
    /* IP header was fine but the L4 header was missing or cut short: ports 0. */
    FM_KEY_L4_TRUNCATED = 2,
    /* Not trusted as IP (family OTHER): bad version, header length or total
     * length, or a truncated IP header. */
    FM_KEY_MALFORMED = 4,
};

/* Flow map key: one flow per interface, direction and 5-tuple. 44 bytes. */
struct fm_flow_key {
    __u8 saddr[16];  /* source address, network order; IPv4 stored v4-mapped (::ffff:a.b.c.d) */
    __u8 daddr[16];  /* destination address, same encoding; all zero for FM_FAMILY_OTHER */
    __u32 ifindex;   /* interface index the tc program ran on (skb->ifindex) */
    __u16 sport;     /* source port, host order; 0 when the protocol has none or for fragments;
                      * ICMP/ICMPv6: 0 */
    __u16 dport;     /* destination port, host order; ICMP/ICMPv6: (type << 8) | code, as
                      * IPFIX collectors expect; FM_FAMILY_OTHER: the frame's ethertype */
    __u8 direction;  /* enum fm_direction */
    __u8 family;     /* enum fm_family */
    __u8 protocol;   /* IP protocol number (final next-header for IPv6); 0 for FAMILY_OTHER */
    __u8 flags;      /* enum fm_key_flags bits */
};

/* Counters of one flow on one CPU (the flow maps are per-CPU hashes, so no
 * atomics on the packet path; user space sums CPUs). 40 bytes. */
struct fm_flow_stats {
    __u64 packets;       /* wire packets: a GSO/GRO super-packet counts gso_segs */
    __u64 bytes;         /* L3 wire bytes: the sum of the IP total lengths of those wire
                          * packets (IPv6: payload length + 40); FAMILY_OTHER: frame length
                          * after the link-layer header(s) */
    __u64 first_seen_ns; /* CLOCK_MONOTONIC of the first packet, read at the last tick
                          * (bpf_ktime_get_coarse_ns, read once per CPU per jiffy: up to
                          * one jiffy behind, rarely two; kernels before 5.11:
                          * bpf_ktime_get_ns) */
    __u64 last_seen_ns;  /* CLOCK_MONOTONIC of the latest packet, the same clock */
    __u8 tcp_flags;      /* OR of the TCP flag bytes seen (FIN=0x01 ... CWR=0x80) */
    __u8 _pad[7];        /* explicit padding, always zero */
};

/* Kinds of record in the "flows" ring buffer. */
enum fm_flow_event_kind {
    /* The flow map could not take a new flow (full), so this one packet travels
     * alone; user space merges it like an evicted map entry. */
    FM_FLOW_EVENT_OVERFLOW = 1,
};

/* Record in the "flows" ring buffer. 96 bytes. */
struct fm_flow_event {
    __u16 version;              /* FM_ABI_VERSION */
    __u16 kind;                 /* enum fm_flow_event_kind */
    __u32 cpu;                  /* CPU that produced it (diagnostics) */
    struct fm_flow_key key;     /* as in the flow map */
    __u32 _pad;                 /* explicit padding to 8-byte alignment, always zero */
    struct fm_flow_stats stats; /* this packet's counters */
};

/* Indexes of the per-CPU "fm_stats" array of __u64 counters. */
enum fm_stat {
    FM_STAT_FLOWS_RING_LOST = 0,     /* failed reservations on the "flows" ring */
    FM_STAT_FLOW_INSERT_FAILED = 1,  /* new flows the flow map could not take */
    FM_STAT_MALFORMED = 2,           /* packets recorded as FAMILY_OTHER + MALFORMED */
    FM_STAT_FLOW_TABLE_MISSING = 3,  /* packets seen while no flow table was installed */
    FM_STAT_COUNT = 4,               /* number of entries, not a counter */
};

/* Default number of flows each of the two flow tables holds. */
#define FM_DEFAULT_FLOW_TABLE_SIZE 65536
/* Default size of the "flows" ring buffer in bytes (power of two, page multiple). */
#define FM_DEFAULT_FLOWS_RING_BYTES 4194304 /* 4 MiB; a literal so Swift imports it */


/* ---- Socket telemetry (bpf/flowmeter_sock.bpf.c) ---- */

/* Kinds of record in the "events" ring buffer. */
enum fm_sock_event_kind {
    FM_SOCK_OPEN = 1,   /* connection established (client: SYN_SENT->ESTABLISHED, server: SYN_RECV->ESTABLISHED) */
    FM_SOCK_CLOSE = 2,  /* connection closed, with final counters */
    FM_SOCK_FAILED = 3, /* connect failed (SYN_SENT->CLOSE), with a reason */
    FM_SOCK_UPDATE = 4, /* counters so far of a socket older than one interval (the
                         * "fm_updates" iterator: at most one per socket per run,
                         * none while nothing changed) */
};

/* Which end of the connection the local socket is. */
enum fm_role {
    FM_ROLE_UNKNOWN = 0, /* opened before flowmeterd attached */
    FM_ROLE_CLIENT = 1,
    FM_ROLE_SERVER = 2,
};

/* Why a connect failed (from sk_err at SYN_SENT -> CLOSE). */
enum fm_fail_reason {
    FM_FAIL_NONE = 0,
    FM_FAIL_REFUSED = 1,     /* ECONNREFUSED: the peer answered with a reset */
    FM_FAIL_TIMEOUT = 2,     /* ETIMEDOUT: SYN retransmissions ran out */
    FM_FAIL_UNREACHABLE = 3, /* EHOSTUNREACH / ENETUNREACH */
    FM_FAIL_OTHER = 4,       /* any other errno (see fm_sock_event.err) */
};

/* The process that owns a socket. 32 bytes. */
struct fm_owner {
    __u64 cgroup_id; /* cgroup v2 id of the task (bpf_get_current_cgroup_id) */
    __u32 tgid;      /* process id (thread group id) */
    __u32 pid;       /* thread id */
    __u8 comm[16];   /* task name, NUL-padded (TASK_COMM_LEN) */
};

/* Per-socket state kept in the kernel while a TCP connection or a UDP socket
 * lives, keyed by the socket's kernel address. 80 bytes. */
struct fm_sock_state {
    struct fm_owner owner;     /* who opened it (client), listens for it (server), or
                                * first sent or received on it (UDP) */
    __u64 start_ns;            /* CLOCK_MONOTONIC when the connect began / it was
                                * accepted / UDP: first seen */
    __u64 udp_bytes_sent;      /* UDP only: payload bytes sent (TCP reads tcp_sock) */
    __u64 udp_bytes_received;  /* UDP only: payload bytes received */
    __u64 reported;            /* bytes sent + received in the last UPDATE: none is
                                * sent while this has not changed */
    __u32 resets_sent;         /* resets this socket sent while it lived */
    __u32 resets_received;     /* resets this socket received */
    __u16 sport;               /* local port, host order, kept from ESTABLISHED: the
                                * kernel has released it by the time TCP reaches CLOSE */
    __u8 role;                 /* enum fm_role */
    __u8 protocol;             /* IP protocol: 6 (TCP) or 17 (UDP) */
    __u8 opened;               /* 1 once the OPEN record was sent: UPDATEs only after it */
    __u8 _pad[3];              /* explicit padding, always zero */
};

/* Index of the "fm_sock_config" array (one __u64 each), written by the daemon. */
enum fm_sock_config {
    FM_SOCK_CONFIG_UPDATE_MIN_AGE_NS = 0, /* sockets younger than this get no UPDATE
                                           * (short ones send only open and close) */
    FM_SOCK_CONFIG_COUNT = 1,             /* number of entries, not a setting */
};

/* Key of the listener-owner table. 8 bytes. */
struct fm_listener_key {
    __u32 netns; /* network namespace inode number */
    __u16 port;  /* local port, host order */
    __u16 _pad;  /* explicit padding, always zero */
};

/* Record in the "events" ring buffer. 136 bytes. */
struct fm_sock_event {
    __u16 version;         /* FM_ABI_VERSION */
    __u16 kind;            /* enum fm_sock_event_kind */
    __u8 role;             /* enum fm_role */
    __u8 family;           /* enum fm_family */
    __u8 protocol;         /* IP protocol: 6 (TCP) or 17 (UDP) */
    __u8 reason;           /* enum fm_fail_reason (FAILED only) */
    __u64 sock_id;         /* kernel address of the socket: identity while it lives */
    __u64 ts_ns;           /* CLOCK_MONOTONIC of the event */
    __u64 start_ns;        /* CLOCK_MONOTONIC of the open (0 if unknown) */
    struct fm_owner owner; /* all zero if the socket predates flowmeterd */
    __u8 saddr[16];        /* local address, network order, IPv4 v4-mapped; all zero
                            * with family 0 when the hook cannot read the socket (UDP
                            * close on the tracepoint rung: the daemon has them from
                            * the open) */
    __u8 daddr[16];        /* remote address, same encoding (UDP: the connected peer,
                            * zero for an unconnected socket) */
    __u16 sport;           /* local port, host order (0 for a failed connect: never bound) */
    __u16 dport;           /* remote port, host order */
    __u32 srtt_us;         /* TCP smoothed RTT in microseconds (CLOSE, UPDATE) */
    __u64 bytes_sent;      /* payload bytes so far (CLOSE, UPDATE). TCP: transmitted,
                            * each once: tcp_sock.bytes_sent - bytes_retrans (SYN and FIN
                            * carry none). UDP: what sendmsg reported sent */
    __u64 bytes_received;  /* TCP: received in order: tcp_sock.bytes_received less the
                            * sequence number a received FIN takes. UDP: what recvmsg
                            * handed to the application (MSG_PEEK not counted) */
    __u32 retransmits;     /* TCP segments retransmitted (tcp_sock.total_retrans) */
    __u32 resets_sent;     /* TCP resets sent (CLOSE, UPDATE) */
    __u32 resets_received; /* TCP resets received (CLOSE, UPDATE) */
    __u32 err;             /* sk_err at the event (positive errno, 0 if none) */
};

/* Indexes of the per-CPU "fm_sock_stats" array of __u64 counters. */
enum fm_sock_stat {
    FM_SOCK_STAT_EVENTS_LOST = 0, /* failed reservations on the "events" ring */
    FM_SOCK_STAT_TABLE_FULL = 1,  /* sockets the socket table could not take */
    /* Reservations tried on the "events" ring: one per record the socket
     * programs meant to emit, counted before the reservation, so that
     * EVENTS_LOST + records the reader received == EVENTS_ATTEMPTED once the
     * ring is drained. It exists so that loss accounting can be checked
     * (Tests/e2e/test_ring_overflow.py reads it with bpftool); the daemon does
     * not read it. */
    FM_SOCK_STAT_EVENTS_ATTEMPTED = 2,
    FM_SOCK_STAT_COUNT = 3,       /* number of entries, not a counter */
};

/* Default number of live sockets tracked, and the "events" ring size in bytes. */
#define FM_DEFAULT_SOCKET_TABLE_SIZE 65536
#define FM_DEFAULT_EVENTS_RING_BYTES 1048576

/* The update path without iterators (fm_updates_run, a raw_tp program the
 * daemon runs with BPF_PROG_TEST_RUN): the socket ids one run takes, as its
 * context (u64 arguments; 12 is the kernel's limit for a raw_tp test run,
 * MAX_BPF_FUNC_ARGS; an id of 0 is no socket), and the bytes of the
 * "fm_update_ring" it writes UPDATE records to. The daemon drains that ring
 * after every run, so it needs room for one run's records only
 * (12 x (136 + 8) = 1,728 bytes); a page is the least a ring can be. */
#define FM_UPDATE_RUN_KEYS 12
#define FM_UPDATE_RING_BYTES 4096

/* ---- Packet drops (bpf/flowmeter_drops.bpf.c) ---- */

/* fm_drop_key.reason on kernels whose skb:kfree_skb has no reason (before
 * 5.17): the daemon reports it as reason="unknown". Never a value of the
 * kernel's enum skb_drop_reason (its values are small). */
#define FM_DROP_REASON_NONE 0xffffffff

/* Key of the "fm_drops" per-CPU hash (value: __u64 packets dropped, per CPU,
 * cumulative since load). 56 bytes. */
struct fm_drop_key {
    __u8 saddr[16];  /* source address from the packet's IP header, network order,
                      * IPv4 v4-mapped; all zero when the packet had no IP header
                      * yet (family OTHER) */
    __u8 daddr[16];  /* destination address, same encoding */
    __u32 reason;    /* the kernel's enum skb_drop_reason value, named by the daemon
                      * from the running kernel's BTF; FM_DROP_REASON_NONE without */
    __u32 ifindex;   /* the device the packet was on (skb->dev; without one, the
                      * device it came in on, skb->skb_iif); 0: none */
    __u32 netns;     /* inode number of that device's network namespace; 0 when
                      * unknown (no device): ifindexes are per namespace */
    __u16 sport;     /* source port, host order (TCP, UDP; else 0) */
    __u16 dport;     /* destination port, host order */
    __u8 direction;  /* enum fm_direction: RECEIVE while the packet is on the device
                      * it came in on (skb_iif), TRANSMIT once routed out of one */
    __u8 family;     /* enum fm_family */
    __u8 protocol;   /* IP protocol number (IPv6: the first next-header); 0 for OTHER */
    __u8 _pad[5];    /* explicit padding, always zero */
};

/* Indexes of the per-CPU "fm_drop_stats" array of __u64 counters. */
enum fm_drop_stat {
    FM_DROP_STAT_SEEN = 0,       /* drops the program kept (tied to an interface or a
                                  * 5-tuple; consumed packets are not drops) */
    FM_DROP_STAT_TABLE_FULL = 1, /* of those, drops neither "fm_drops" nor, under
                                  * their interface's key without the 5-tuple,
                                  * "fm_drops_overflow" had room for: counted nowhere */
    FM_DROP_STAT_COUNT = 2,      /* number of entries, not a counter */
};

/* Entries of "fm_drops": distinct (reason, interface, direction, 5-tuple)
 * keys at once; of "fm_drops_overflow": (reason, interface, direction) keys
 * of drops while "fm_drops" is full. The daemon removes keys idle for an
 * interval from both. */
#define FM_DROP_TABLE_SIZE 16384
#define FM_DROP_OVERFLOW_TABLE_SIZE 4096


/* ---- DNS (bpf/flowmeter_dns.bpf.c) ---- */

/* Bytes of a DNS message each record carries at most: enough for the
 * question of any name (255 bytes of name, 4 of type and class, 12 of
 * header) and the first answers; the rest is left out and the record says
 * so (FM_DNS_TRUNCATED). */
#define FM_DNS_COPY_BYTES 512
/* Entries of the "fm_dns_ports" array: one per port number. */
#define FM_DNS_PORT_SLOTS 65536
/* Default number of queries waiting for their answer at once ("fm_dns_pending"). */
#define FM_DNS_PENDING_SIZE 16384
/* Default size of the "fm_dns_events" ring in bytes (power of two, page multiple). */
#define FM_DNS_RING_BYTES 1048576

/* Kinds of DNS record. */
enum fm_dns_kind {
    FM_DNS_QUERY = 1,    /* a local client sent a query (QR 0) */
    FM_DNS_RESPONSE = 2, /* a local client received a response (QR 1) */
};

/* fm_dns_event.flags bits. */
enum fm_dns_flags {
    FM_DNS_TRUNCATED = 1,   /* the message is longer than what `payload` holds
                             * (FM_DNS_COPY_BYTES, or less of it was in the packet) */
    FM_DNS_MATCHED = 2,     /* RESPONSE: its query was pending; latency_ns is set */
    FM_DNS_NOT_TRACKED = 4, /* QUERY: "fm_dns_pending" was full: its answer cannot
                             * be matched (counted in FM_DNS_STAT_PENDING_FULL) */
    FM_DNS_REPEATED = 8,    /* QUERY: the same (flow, id) was already pending (a
                             * retransmission): timed from the first */
};

/* Key of "fm_dns_pending": one query, from the client's side. 40 bytes. */
struct fm_dns_key {
    __u8 client[16]; /* the local client's address, network order, IPv4 v4-mapped */
    __u8 server[16]; /* the server's address, same encoding */
    __u16 cport;     /* the client's port, host order */
    __u16 sport;     /* the server's port, host order */
    __u16 txid;      /* the DNS transaction id, host order */
    __u8 protocol;   /* IP protocol: 6 (TCP) or 17 (UDP) */
    __u8 _pad;       /* explicit padding, always zero */
};

/* Record in the "fm_dns_events" ring: one DNS message a local client sent
 * or received. 592 bytes. */
struct fm_dns_event {
    __u16 version;      /* FM_ABI_VERSION */
    __u16 kind;         /* enum fm_dns_kind */
    __u8 family;        /* enum fm_family */
    __u8 flags;         /* enum fm_dns_flags bits */
    __u8 rcode;         /* RESPONSE: the header's RCODE (low 4 bits of byte 3) */
    __u8 _pad;          /* explicit padding, always zero */
    struct fm_dns_key key; /* the flow and transaction id */
    __u16 qdcount;      /* header: questions */
    __u16 ancount;      /* header: answers */
    __u16 length;       /* the whole DNS message's length (UDP: the datagram's
                         * payload; TCP: the two-byte length prefix) */
    __u16 copied;       /* bytes of it in `payload` (at most FM_DNS_COPY_BYTES) */
    __u64 ts_ns;        /* CLOCK_MONOTONIC when the program saw it */
    __u64 latency_ns;   /* RESPONSE with FM_DNS_MATCHED: since its query was sent */
    __u64 cgroup_id;    /* cgroup v2 id of the socket (bpf_skb_cgroup_id) */
    __u8 payload[FM_DNS_COPY_BYTES]; /* the message from its header on, `copied` bytes */
};

/* Indexes of the per-CPU "fm_dns_stats" array of __u64 counters. */
enum fm_dns_stat {
    FM_DNS_STAT_MESSAGES = 0,     /* DNS messages seen (queries and responses) */
    FM_DNS_STAT_RING_LOST = 1,    /* records the "fm_dns_events" ring had no room for */
    FM_DNS_STAT_PENDING_FULL = 2, /* queries "fm_dns_pending" had no room for */
    FM_DNS_STAT_COUNT = 3,        /* number of entries, not a counter */
};

#ifndef __VMLINUX_H__
/* User space only: sizeof(struct fm_flow_event) as the C compiler saw it, so the
 * Swift tests compare it with what Swift's importer made of the same struct. */
extern const unsigned int fm_abi_flow_event_size;
#endif

#endif /* FLOWMETER_ABI_H */
