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

/* Exported so the layout can be compared at run time with what the loaded
 * BPF object's BTF says (FlowmeterBPF checks the record size). */
const unsigned int fm_abi_flow_event_size = sizeof(struct fm_flow_event);
