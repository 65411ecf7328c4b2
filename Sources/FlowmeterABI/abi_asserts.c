/* Compile-time pins of the ABI layout. The same numbers are checked from Swift
 * (MemoryLayout) in Tests/FlowmeterBPFTests/ABITests.swift, and the BPF side
 * compiles the same header, so a drift in any of the three fails the build or
 * the tests instead of silently misreading records. */
#include <stddef.h>
#include "flowmeter_abi.h"

_Static_assert(sizeof(struct fm_flow_key) == 44, "fm_flow_key size");
_Static_assert(offsetof(struct fm_flow_key, saddr) == 0, "saddr");
_Static_assert(offsetof(struct fm_flow_key, daddr) == 16, "daddr");
_Static_assert(offsetof(struct fm_flow_key, ifindex) == 32, "ifindex");
_Static_assert(offsetof(struct fm_flow_key, sport) == 36, "sport");
_Static_assert(offsetof(struct fm_flow_key, dport) == 38, "dport");
_Static_assert(offsetof(struct fm_flow_key, direction) == 40, "direction");
_Static_assert(offsetof(struct fm_flow_key, family) == 41, "family");
_Static_assert(offsetof(struct fm_flow_key, protocol) == 42, "protocol");
_Static_assert(offsetof(struct fm_flow_key, flags) == 43, "flags");

_Static_assert(sizeof(struct fm_flow_stats) == 40, "fm_flow_stats size");
_Static_assert(offsetof(struct fm_flow_stats, packets) == 0, "packets");
_Static_assert(offsetof(struct fm_flow_stats, bytes) == 8, "bytes");
_Static_assert(offsetof(struct fm_flow_stats, first_seen_ns) == 16, "first_seen_ns");
_Static_assert(offsetof(struct fm_flow_stats, last_seen_ns) == 24, "last_seen_ns");
_Static_assert(offsetof(struct fm_flow_stats, tcp_flags) == 32, "tcp_flags");

_Static_assert(sizeof(struct fm_flow_event) == 96, "fm_flow_event size");
_Static_assert(offsetof(struct fm_flow_event, version) == 0, "version");
_Static_assert(offsetof(struct fm_flow_event, kind) == 2, "kind");
_Static_assert(offsetof(struct fm_flow_event, cpu) == 4, "cpu");
_Static_assert(offsetof(struct fm_flow_event, key) == 8, "key");
_Static_assert(offsetof(struct fm_flow_event, stats) == 56, "stats");

_Static_assert(sizeof(struct fm_owner) == 32, "fm_owner size");
_Static_assert(offsetof(struct fm_owner, tgid) == 8, "owner tgid");
_Static_assert(offsetof(struct fm_owner, comm) == 16, "owner comm");
_Static_assert(sizeof(struct fm_sock_state) == 80, "fm_sock_state size");
_Static_assert(offsetof(struct fm_sock_state, udp_bytes_sent) == 40, "state udp_bytes_sent");
_Static_assert(offsetof(struct fm_sock_state, sport) == 72, "state sport");
_Static_assert(offsetof(struct fm_sock_state, opened) == 76, "state opened");
_Static_assert(sizeof(struct fm_listener_key) == 8, "fm_listener_key size");
_Static_assert(sizeof(struct fm_sock_event) == 136, "fm_sock_event size");
_Static_assert(offsetof(struct fm_sock_event, sock_id) == 8, "sock_id");
_Static_assert(offsetof(struct fm_sock_event, ts_ns) == 16, "ts_ns");
_Static_assert(offsetof(struct fm_sock_event, start_ns) == 24, "start_ns");
_Static_assert(offsetof(struct fm_sock_event, owner) == 32, "owner");
_Static_assert(offsetof(struct fm_sock_event, saddr) == 64, "ev saddr");
_Static_assert(offsetof(struct fm_sock_event, daddr) == 80, "ev daddr");
_Static_assert(offsetof(struct fm_sock_event, sport) == 96, "ev sport");
_Static_assert(offsetof(struct fm_sock_event, srtt_us) == 100, "srtt_us");
_Static_assert(offsetof(struct fm_sock_event, bytes_sent) == 104, "bytes_sent");
_Static_assert(offsetof(struct fm_sock_event, bytes_received) == 112, "bytes_received");
_Static_assert(offsetof(struct fm_sock_event, retransmits) == 120, "retransmits");
_Static_assert(offsetof(struct fm_sock_event, err) == 132, "err");

_Static_assert(sizeof(struct fm_dns_key) == 40, "fm_dns_key size");
_Static_assert(offsetof(struct fm_dns_key, cport) == 32, "dns cport");
_Static_assert(offsetof(struct fm_dns_key, txid) == 36, "dns txid");
_Static_assert(offsetof(struct fm_dns_key, protocol) == 38, "dns protocol");
_Static_assert(sizeof(struct fm_dns_event) == 592, "fm_dns_event size");
_Static_assert(offsetof(struct fm_dns_event, key) == 8, "dns key");
_Static_assert(offsetof(struct fm_dns_event, qdcount) == 48, "dns qdcount");
_Static_assert(offsetof(struct fm_dns_event, copied) == 54, "dns copied");
_Static_assert(offsetof(struct fm_dns_event, ts_ns) == 56, "dns ts_ns");
_Static_assert(offsetof(struct fm_dns_event, cgroup_id) == 72, "dns cgroup_id");
_Static_assert(offsetof(struct fm_dns_event, payload) == 80, "dns payload");
_Static_assert(sizeof(struct fm_drop_key) == 56, "fm_drop_key size");
_Static_assert(offsetof(struct fm_drop_key, daddr) == 16, "drop daddr");
_Static_assert(offsetof(struct fm_drop_key, reason) == 32, "drop reason");
_Static_assert(offsetof(struct fm_drop_key, ifindex) == 36, "drop ifindex");
_Static_assert(offsetof(struct fm_drop_key, netns) == 40, "drop netns");
_Static_assert(offsetof(struct fm_drop_key, sport) == 44, "drop sport");
_Static_assert(offsetof(struct fm_drop_key, dport) == 46, "drop dport");
_Static_assert(offsetof(struct fm_drop_key, direction) == 48, "drop direction");
_Static_assert(offsetof(struct fm_drop_key, family) == 49, "drop family");
_Static_assert(offsetof(struct fm_drop_key, protocol) == 50, "drop protocol");

/* Exported so the layout can be compared at run time with what the loaded
 * BPF object's BTF says (FlowmeterBPF checks the record size). */
const unsigned int fm_abi_flow_event_size = sizeof(struct fm_flow_event);
