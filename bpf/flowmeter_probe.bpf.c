// SPDX-License-Identifier: (LGPL-2.1 OR BSD-2-Clause)
/* Feature probes for `flowmeterd check` and the hook ladder.
 *
 * Why these hooks: each program is the smallest possible user of one rung of
 * the socket-hook ladder (fentry, kprobe, tp_btf, classic tracepoint) on the
 * function/tracepoint the socket programs rely on most (TCP state changes).
 * A rung counts as available only if its program both loads and attaches: a
 * kprobe program loads fine on a kernel without CONFIG_KPROBES and only fails
 * at attach, and fentry may load yet be refused at attach (EPERM here).
 * Each is loaded alone (the others' autoload turned off) and detached at once.
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

char LICENSE[] SEC("license") = "GPL";
