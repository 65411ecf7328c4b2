// SPDX-License-Identifier: GPL-2.0-only OR BSD-2-Clause
/* Feature probes for `flowmeterd check` and the hook ladder.
 *
 * Why these hooks: each program is the smallest possible user of one rung of
 * the socket-hook ladder (fentry, kprobe, tp_btf, classic tracepoint) on the
 * function/tracepoint the socket programs rely on most (TCP state changes).
 * A rung counts as available only if its program both loads and attaches: a
 * kprobe program loads fine on a kernel without CONFIG_KPROBES and only fails
 * at attach, and fentry may load yet be refused at attach (EPERM here).
 * Each is loaded alone (the others' autoload turned off) and detached at once.
 *
 * Beside the rungs, one program per other program type the socket object
 * uses, so that `check` and the loader know which of them the kernel
 * refuses before loading the real ones (hardened kernels refuse single
 * types: iterators, trampolines): fexit and kretprobe (the UDP send twins),
 * the map-element iterator and the raw_tp program run by BPF_PROG_TEST_RUN
 * (the two update twins), and cgroup/sock_release (the tracepoint rung's
 * UDP close).
 */
#include "vmlinux.h"
#include <bpf/bpf_helpers.h>
#include <bpf/bpf_tracing.h>

SEC("fentry/tcp_set_state")
int BPF_PROG(probe_fentry, struct sock *sk, int state)
{
    return 0;
}

SEC("kprobe/tcp_set_state")
int probe_kprobe(struct pt_regs *ctx)
{
    return 0;
}

SEC("tp_btf/inet_sock_set_state")
int BPF_PROG(probe_tp_btf, const struct sock *sk, int oldstate, int newstate)
{
    return 0;
}

SEC("tracepoint/sock/inet_sock_set_state")
int probe_tracepoint(void *ctx)
{
    return 0;
}

SEC("fexit/tcp_set_state")
int BPF_PROG(probe_fexit, struct sock *sk, int state)
{
    return 0;
}

SEC("kretprobe/tcp_set_state")
int probe_kretprobe(struct pt_regs *ctx)
{
    return 0;
}

/* Attached to a scratch map and read once. */
SEC("iter/bpf_map_elem")
int probe_iter_map_elem(struct bpf_iter__bpf_map_elem *ctx)
{
    return 0;
}

/* Never attached: run once with BPF_PROG_TEST_RUN; returns its first argument + 1. */
SEC("raw_tp")
int probe_raw_tp_run(__u64 *ctx)
{
    return ctx[0] + 1;
}

SEC("cgroup/sock_release")
int probe_cgroup_sock_release(struct bpf_sock *ctx)
{
    return 1;
}

/* GPL-compatible, as the file's SPDX line and the socket object's: a probe
 * must be refused or accepted for its type, never for its license. */
char LICENSE[] SEC("license") = "Dual BSD/GPL";
