/* libbpf as Swift sees it.
 *
 * libbpf 1.1's option structs are meant to be built with LIBBPF_OPTS, which
 * Swift cannot import; these static inline wrappers build them in C (setting
 * .sz) so the Swift side passes plain values. They add no logic of their own.
 * Also: constants that libbpf 1.1 / the 6.1 uapi headers predate (TCX). */
#ifndef FLOWMETER_CLIBBPF_SHIM_H
#define FLOWMETER_CLIBBPF_SHIM_H

#include <errno.h>
#include <string.h>
#include <unistd.h>
#include <sys/socket.h>
#include <sys/vfs.h>      /* statfs: is the pin directory on bpffs */
#include <linux/bpf.h>
#include <linux/netlink.h>  /* link events (LinkMonitor) */
#include <linux/rtnetlink.h>
#include <bpf/libbpf.h>
#include <bpf/bpf.h>
#include <bpf/btf.h>

/* enum bpf_attach_type values added in Linux 6.6 (TCX). */
#define FM_BPF_TCX_INGRESS 46
#define FM_BPF_TCX_EGRESS 47
/* Link-create flag (6.6+): attach before the given relative program; with no
 * relative program, at the head of the chain. */
#define FM_BPF_F_BEFORE (1U << 3)

/* Attach a SCHED_CLS program through a TCX link (kernel 6.6+), at the head of
 * the chain: accounting must see a packet before another program (a CNI's, say)
 * redirects or drops it, and ours returns TCX_NEXT so those still run.
 * Returns the link fd or -errno. */
static inline int fm_tcx_attach(int prog_fd, int ifindex, int ingress)
{
    struct bpf_link_create_opts opts;
    memset(&opts, 0, sizeof(opts));
    opts.sz = sizeof(opts);
    opts.flags = FM_BPF_F_BEFORE;
    int fd = bpf_link_create(prog_fd, ifindex, ingress ? FM_BPF_TCX_INGRESS : FM_BPF_TCX_EGRESS, &opts);
    return fd < 0 ? -errno : fd;
}

static inline void fm_tc_hook_init(struct bpf_tc_hook *hook, int ifindex, int ingress)
{
    memset(hook, 0, sizeof(*hook));
    hook->sz = sizeof(*hook);
    hook->ifindex = ifindex;
    hook->attach_point = ingress ? BPF_TC_INGRESS : BPF_TC_EGRESS;
}

/* Create the clsact qdisc. Returns 0 if created, -EEXIST if it was there, else -errno. */
static inline int fm_clsact_create(int ifindex)
{
    struct bpf_tc_hook hook;
    fm_tc_hook_init(&hook, ifindex, 1);
    hook.attach_point = BPF_TC_INGRESS | BPF_TC_EGRESS;
    return bpf_tc_hook_create(&hook);
}

/* Whether a clsact qdisc sits on ifindex: 1 yes, 0 no, negative errno if the
 * netlink dump failed. libbpf has no qdisc query; the attacher needs to know
 * before creating one, so that it can record the qdisc as its own before it
 * exists (a kill between creating and recording would otherwise leave a qdisc
 * that no later run knows it made). */
static inline int fm_clsact_exists(int ifindex)
{
    int fd = socket(AF_NETLINK, SOCK_RAW | SOCK_CLOEXEC, NETLINK_ROUTE);
    if (fd < 0)
        return -errno;
    struct {
        struct nlmsghdr n;
        struct tcmsg t;
    } req;
    memset(&req, 0, sizeof(req));
    req.n.nlmsg_len = NLMSG_LENGTH(sizeof(struct tcmsg));
    req.n.nlmsg_type = RTM_GETQDISC;
    req.n.nlmsg_flags = NLM_F_REQUEST | NLM_F_DUMP;
    req.n.nlmsg_seq = 1;
    req.t.tcm_family = AF_UNSPEC;
    req.t.tcm_ifindex = ifindex;
    if (send(fd, &req, req.n.nlmsg_len, 0) < 0) {
        int e = errno;
        close(fd);
        return -e;
    }
    static __thread char buf[32768];
    int found = 0;
    for (;;) {
        ssize_t len = recv(fd, buf, sizeof(buf), 0);
        if (len < 0) {
            int e = errno;
            if (e == EINTR)
                continue;
            close(fd);
            return -e;
        }
        if (len == 0)
            break;
        for (struct nlmsghdr *h = (struct nlmsghdr *)buf; NLMSG_OK(h, (unsigned)len); h = NLMSG_NEXT(h, len)) {
            if (h->nlmsg_type == NLMSG_DONE) {
                close(fd);
                return found;
            }
            if (h->nlmsg_type == NLMSG_ERROR) {
                struct nlmsgerr *err = NLMSG_DATA(h);
                close(fd);
                return err->error ? err->error : -EIO;
            }
            if (h->nlmsg_type != RTM_NEWQDISC)
                continue;
            struct tcmsg *t = NLMSG_DATA(h);
            if (t->tcm_ifindex != ifindex)
                continue; /* the kernel dumps every device; filter here */
            int alen = (int)h->nlmsg_len - (int)NLMSG_LENGTH(sizeof(*t));
            for (struct rtattr *a = (struct rtattr *)((char *)t + NLMSG_ALIGN(sizeof(*t))); RTA_OK(a, alen);
                 a = RTA_NEXT(a, alen)) {
                if (a->rta_type == TCA_KIND && strcmp((const char *)RTA_DATA(a), "clsact") == 0)
                    found = 1;
            }
        }
    }
    close(fd);
    return found;
}

/* Delete the clsact qdisc (and every filter on it). */
static inline int fm_clsact_destroy(int ifindex)
{
    struct bpf_tc_hook hook;
    fm_tc_hook_init(&hook, ifindex, 1);
    hook.attach_point = BPF_TC_INGRESS | BPF_TC_EGRESS;
    return bpf_tc_hook_destroy(&hook);
}

/* The filter identity (handle, priority) as bpf_tc_opts. */
static inline void fm_tc_opts_init(struct bpf_tc_opts *opts, __u32 handle, __u32 priority)
{
    memset(opts, 0, sizeof(*opts));
    opts->sz = sizeof(*opts);
    opts->handle = handle;
    opts->priority = priority;
}

/* Attach a direct-action cls_bpf filter at (handle, priority). 0 or -errno. */
static inline int fm_tc_attach(int prog_fd, int ifindex, int ingress, __u32 handle, __u32 priority)
{
    struct bpf_tc_hook hook;
    struct bpf_tc_opts opts;
    fm_tc_hook_init(&hook, ifindex, ingress);
    fm_tc_opts_init(&opts, handle, priority);
    opts.prog_fd = prog_fd;
    return bpf_tc_attach(&hook, &opts);
}

/* The program id of the filter at (handle, priority), 0 if none. */
static inline __u32 fm_tc_query(int ifindex, int ingress, __u32 handle, __u32 priority)
{
    struct bpf_tc_hook hook;
    struct bpf_tc_opts opts;
    fm_tc_hook_init(&hook, ifindex, ingress);
    fm_tc_opts_init(&opts, handle, priority);
    return bpf_tc_query(&hook, &opts) == 0 ? opts.prog_id : 0;
}

static inline int fm_tc_detach(int ifindex, int ingress, __u32 handle, __u32 priority)
{
    struct bpf_tc_hook hook;
    struct bpf_tc_opts opts;
    fm_tc_hook_init(&hook, ifindex, ingress);
    fm_tc_opts_init(&opts, handle, priority);
    return bpf_tc_detach(&hook, &opts);
}

/* Replace the program of our filter at (handle, priority) in one netlink
 * request (BPF_TC_F_REPLACE): every packet meets the old program or the new
 * one, none meets neither. Adopting a --persist attachment. 0 or -errno. */
static inline int fm_tc_replace(int prog_fd, int ifindex, int ingress, __u32 handle, __u32 priority)
{
    struct bpf_tc_hook hook;
    struct bpf_tc_opts opts;
    fm_tc_hook_init(&hook, ifindex, ingress);
    fm_tc_opts_init(&opts, handle, priority);
    opts.prog_fd = prog_fd;
    opts.flags = BPF_TC_F_REPLACE;
    return bpf_tc_attach(&hook, &opts);
}

/* Swap the program a link runs (BPF_LINK_UPDATE), atomically, as above:
 * adopting a pinned TCX link. 0 or -errno. */
static inline int fm_link_update(int link_fd, int prog_fd)
{
    return bpf_link_update(link_fd, prog_fd, NULL) ? -errno : 0;
}

/* Pin an object (map, link) at a bpffs path. 0 or -errno. */
static inline int fm_obj_pin(int fd, const char *path)
{
    return bpf_obj_pin(fd, path) ? -errno : 0;
}

/* Open a pinned object. The fd or -errno (-ENOENT: nothing pinned there). */
static inline int fm_obj_get(const char *path)
{
    int fd = bpf_obj_get(path);
    return fd < 0 ? -errno : fd;
}

/* A one-entry array map (__u32 key) of `value_size` bytes. The fd or -errno. */
static inline int fm_array_create(const char *name, __u32 value_size)
{
    int fd = bpf_map_create(BPF_MAP_TYPE_ARRAY, name, sizeof(__u32), value_size, 1, NULL);
    return fd < 0 ? -errno : fd;
}

/* Detach a link whoever holds it (BPF_LINK_DETACH): uninstall. 0 or -errno. */
static inline int fm_link_detach(int link_fd)
{
    return bpf_link_detach(link_fd) ? -errno : 0;
}

/* A link's type and, for a TCX link, its interface (0 once the interface is gone: the link is
 * defunct) and attach type. The 6.1 uapi headers this builds against
 * predate the tcx member of bpf_link_info, so it is read by its offset:
 * type, id, prog_id (3 x __u32), then the 8-aligned union, whose tcx member
 * is { __u32 ifindex; __u32 attach_type; }. 0 or -errno. */
static inline int fm_tcx_link_info(int link_fd, __u32 *type, __u32 *ifindex, __u32 *attach_type, __u32 *prog_id)
{
    __u64 raw[16];
    __u32 len = sizeof(raw);
    memset(raw, 0, sizeof(raw));
    if (bpf_obj_get_info_by_fd(link_fd, raw, &len))
        return -errno;
    const __u32 *w = (const __u32 *)raw;
    *type = w[0];
    *prog_id = w[2];
    *ifindex = w[4];
    *attach_type = w[5];
    return 0;
}

/* Run a program once or `repeat` times on `data` (BPF_PROG_TEST_RUN).
 * ctx/ctx_size: optional struct __sk_buff (ifindex, gso_segs ...).
 * Returns 0 or -errno; *retval and *duration_ns (average per run) filled. */
static inline int fm_prog_test_run(int prog_fd, const void *data, __u32 size,
                                   const void *ctx, __u32 ctx_size, int repeat,
                                   __u32 *retval, __u32 *duration_ns)
{
    struct bpf_test_run_opts opts;
    memset(&opts, 0, sizeof(opts));
    opts.sz = sizeof(opts);
    opts.data_in = data;
    opts.data_size_in = size;
    opts.ctx_in = ctx;
    opts.ctx_size_in = ctx_size;
    opts.repeat = repeat;
    int err = bpf_prog_test_run_opts(prog_fd, &opts);
    if (err)
        return -errno;
    *retval = opts.retval;
    *duration_ns = opts.duration;
    return 0;
}

/* One batch of BPF_MAP_LOOKUP_AND_DELETE_BATCH. *count in: capacity, out: got.
 * Returns 0, -ENOENT when the map is exhausted (entries may still have been
 * returned), or another -errno (-EINVAL/-ENOTSUP/-EOPNOTSUPP: no batch ops). */
static inline int fm_map_lookup_and_delete_batch(int fd, void *in_batch, void *out_batch,
                                                 void *keys, void *values, __u32 *count)
{
    struct bpf_map_batch_opts opts;
    memset(&opts, 0, sizeof(opts));
    opts.sz = sizeof(opts);
    int err = bpf_map_lookup_and_delete_batch(fd, in_batch, out_batch, keys, values, count, &opts);
    return err ? -errno : 0;
}

/* Load a one-instruction-pair program (r0 = -1; exit) of `type`: the smallest
 * probe of whether the kernel has a program type. Returns fd or -errno. */
static inline int fm_probe_load_trivial(enum bpf_prog_type type)
{
    struct bpf_insn insns[2];
    memset(insns, 0, sizeof(insns));
    insns[0].code = BPF_ALU64 | BPF_MOV | BPF_K; /* r0 = -1 */
    insns[0].dst_reg = BPF_REG_0;
    insns[0].imm = -1;
    insns[1].code = BPF_JMP | BPF_EXIT;
    int fd = bpf_prog_load(type, "fm_probe", "GPL", insns, 2, NULL);
    return fd < 0 ? -errno : fd;
}

/* Attach an "iter/bpf_map_elem" program to the map it walks. NULL on failure
 * (errno set). */
static inline struct bpf_link *fm_attach_map_iter(struct bpf_program *prog, int map_fd)
{
    union bpf_iter_link_info linfo;
    memset(&linfo, 0, sizeof(linfo));
    linfo.map.map_fd = map_fd;
    LIBBPF_OPTS(bpf_iter_attach_opts, opts, .link_info = &linfo, .link_info_len = sizeof(linfo));
    return bpf_program__attach_iter(prog, &opts);
}

static inline int fm_errno(void) { return errno; }

/* mallopt and malloc_trim are declared in <malloc.h>, which Swift's Glibc
 * module omits. */
#include <malloc.h>
static inline void fm_malloc_fixed_thresholds(int mmap_bytes, int trim_bytes)
{
    mallopt(M_MMAP_THRESHOLD, mmap_bytes);
    mallopt(M_TRIM_THRESHOLD, trim_bytes);
}
static inline void fm_malloc_trim(void) { malloc_trim(0); }

#endif
