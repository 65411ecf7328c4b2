#define _GNU_SOURCE
#include "fm_privileges.h"

#include <dirent.h>
#include <errno.h>
#include <linux/capability.h>
#include <pthread.h>
#include <signal.h>
#include <stdatomic.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/prctl.h>
#include <sys/syscall.h>
#include <time.h>
#include <unistd.h>

#ifndef PR_CAP_AMBIENT
#define PR_CAP_AMBIENT 47
#define PR_CAP_AMBIENT_CLEAR_ALL 4
#endif

#define FM_MAX_THREADS 4096

/* Read by the signal handler; written only while no signal of ours is in
 * flight (before the first tgkill of a call). */
static uint64_t target_keep;
static int target_last_cap;
static int target_drop_bounding;

static atomic_int acked_count;
static atomic_int acked_tids[FM_MAX_THREADS];
static atomic_int failed_count;
static atomic_int first_error;

static pthread_mutex_t call_lock = PTHREAD_MUTEX_INITIALIZER;
/* Static rather than on the stack: the caller may be a thread with a small stack. */
static int scanned[FM_MAX_THREADS];
static int sent[FM_MAX_THREADS];
static char inherited[FM_MAX_THREADS]; /* sent[i] needed no signal */

static int gettid_raw(void) { return (int)syscall(SYS_gettid); }

/* Async-signal-safe: raw system calls only. The bounding set goes first
 * because dropping from it needs CAP_SETPCAP, which the capset below removes. */
static int restrict_this_thread(void)
{
    if (target_drop_bounding) {
        for (int c = 0; c <= target_last_cap && c < 64; c++) {
            if (target_keep & (1ULL << c))
                continue;
            /* Already gone (a thread made after an earlier drop): dropping
             * again would fail without CAP_SETPCAP. */
            if (prctl(PR_CAPBSET_READ, c, 0, 0, 0) != 1)
                continue;
            if (prctl(PR_CAPBSET_DROP, c, 0, 0, 0) != 0)
                return errno;
        }
    }
    /* EINVAL: a kernel before 4.3 has no ambient set to clear. */
    if (prctl(PR_CAP_AMBIENT, PR_CAP_AMBIENT_CLEAR_ALL, 0, 0, 0) != 0 && errno != EINVAL)
        return errno;
    if (prctl(PR_SET_NO_NEW_PRIVS, 1, 0, 0, 0) != 0)
        return errno;
    struct __user_cap_header_struct hdr = { .version = _LINUX_CAPABILITY_VERSION_3, .pid = 0 };
    struct __user_cap_data_struct data[_LINUX_CAPABILITY_U32S_3];
    memset(data, 0, sizeof data);
    data[0].effective = data[0].permitted = (uint32_t)target_keep;
    data[1].effective = data[1].permitted = (uint32_t)(target_keep >> 32);
    if (syscall(SYS_capset, &hdr, data) != 0)
        return errno;
    return 0;
}

static void on_signal(int sig, siginfo_t *si, void *ctx)
{
    (void)sig;
    (void)ctx;
    /* Only what fm_priv_restrict_all_threads sent: a tgkill from this process. */
    if (si == NULL || si->si_code != SI_TKILL || si->si_pid != getpid())
        return;
    int saved = errno;
    int e = restrict_this_thread();
    if (e != 0) {
        atomic_fetch_add(&failed_count, 1);
        int none = 0;
        atomic_compare_exchange_strong(&first_error, &none, e);
    }
    int slot = atomic_fetch_add(&acked_count, 1);
    if (slot < FM_MAX_THREADS)
        atomic_store(&acked_tids[slot], gettid_raw());
    errno = saved;
}

static int has_acked(int tid)
{
    int n = atomic_load(&acked_count);
    if (n > FM_MAX_THREADS)
        n = FM_MAX_THREADS;
    for (int i = 0; i < n; i++)
        if (atomic_load(&acked_tids[i]) == tid)
            return 1;
    return 0;
}

static int is_alive(pid_t pid, int tid)
{
    return !(syscall(SYS_tgkill, pid, tid, 0) != 0 && errno == ESRCH);
}

static int list_threads(int *tids, int max)
{
    DIR *d = opendir("/proc/self/task");
    if (d == NULL)
        return -errno;
    int n = 0;
    struct dirent *ent;
    while ((ent = readdir(d)) != NULL) {
        if (ent->d_name[0] < '0' || ent->d_name[0] > '9')
            continue;
        if (n == max) {
            closedir(d);
            return -E2BIG;
        }
        tids[n++] = atoi(ent->d_name);
    }
    closedir(d);
    return n;
}

static long long now_ms(void)
{
    struct timespec ts;
    clock_gettime(CLOCK_MONOTONIC, &ts);
    return (long long)ts.tv_sec * 1000 + ts.tv_nsec / 1000000;
}

/* Real-time signals would be the natural choice, but libdispatch blocks every
 * asynchronous signal, real-time ones included, in its worker threads (the
 * Swift concurrency pool, and every thread they create inherits the mask).
 * It leaves the synchronous ones open; of those, SIGSYS and SIGPROF are raised
 * only by seccomp traps and profiling timers, which flowmeterd does not use. */
static int pick_signal(struct sigaction *old)
{
    static const int candidates[] = { SIGSYS, SIGPROF };
    for (size_t i = 0; i < sizeof candidates / sizeof candidates[0]; i++) {
        if (sigaction(candidates[i], NULL, old) == 0 && !(old->sa_flags & SA_SIGINFO)
            && old->sa_handler == SIG_DFL)
            return candidates[i];
    }
    return 0;
}

static int hex_field(const char *text, const char *key, unsigned long long *v)
{
    const char *p = strstr(text, key);
    if (p == NULL)
        return 0;
    *v = strtoull(p + strlen(key), NULL, 16);
    return 1;
}

/* A thread made by one that has already switched inherited the reduced sets:
 * it needs no signal, so a pool that keeps growing cannot keep us waiting. */
static int already_restricted(int tid)
{
    char path[64], text[4096];
    snprintf(path, sizeof path, "/proc/self/task/%d/status", tid);
    FILE *f = fopen(path, "re");
    if (f == NULL)
        return 0;
    size_t n = fread(text, 1, sizeof text - 1, f);
    fclose(f);
    text[n] = 0;
    unsigned long long eff, prm, inh, bnd, amb = 0, nnp;
    if (!hex_field(text, "\nCapEff:", &eff) || !hex_field(text, "\nCapPrm:", &prm)
        || !hex_field(text, "\nCapInh:", &inh) || !hex_field(text, "\nCapBnd:", &bnd)
        || !hex_field(text, "\nNoNewPrivs:", &nnp))
        return 0;
    hex_field(text, "\nCapAmb:", &amb);
    return eff == target_keep && prm == target_keep && inh == 0 && amb == 0 && nnp == 1
        && (!target_drop_bounding || bnd == target_keep);
}

static int is_sent(int tid, int nsent)
{
    for (int i = 0; i < nsent; i++)
        if (sent[i] == tid)
            return 1;
    return 0;
}

int fm_priv_restrict_all_threads(uint64_t keep, int last_cap, int drop_bounding,
                                 int timeout_ms, struct fm_priv_result *out)
{
    memset(out, 0, sizeof *out);
    pthread_mutex_lock(&call_lock);
    target_keep = keep;
    target_last_cap = last_cap;
    target_drop_bounding = drop_bounding;
    atomic_store(&acked_count, 0);
    atomic_store(&failed_count, 0);
    atomic_store(&first_error, 0);
    for (int i = 0; i < FM_MAX_THREADS; i++)
        atomic_store(&acked_tids[i], 0);

    const pid_t pid = getpid();
    const int self = gettid_raw();
    int e = restrict_this_thread();
    if (e != 0) {
        out->failed = 1;
        out->first_error = e;
        pthread_mutex_unlock(&call_lock);
        return -1;
    }
    out->threads = 1;

    struct sigaction old, sa;
    const int sig = pick_signal(&old);
    if (sig == 0) {
        /* Both signals are taken: only a process of one thread is done. */
        int n = list_threads(scanned, FM_MAX_THREADS);
        pthread_mutex_unlock(&call_lock);
        if (n == 1)
            return 0;
        out->unacknowledged = n > 1 ? n - 1 : 0;
        out->first_error = n < 0 ? -n : EBUSY;
        return -1;
    }
    memset(&sa, 0, sizeof sa);
    sa.sa_sigaction = on_signal;
    sa.sa_flags = SA_SIGINFO | SA_RESTART;
    sigfillset(&sa.sa_mask);
    if (sigaction(sig, &sa, NULL) != 0) {
        out->first_error = errno;
        pthread_mutex_unlock(&call_lock);
        return -1;
    }
    out->signal = sig;

    /* Threads keep being made while we work (the concurrency pool grows on
     * demand). One made by a thread that has already switched inherits the
     * reduced sets; one made by a thread that has not yet is listed in
     * /proc/self/task before its maker's clone returns, so before its maker
     * can acknowledge. Hence: signal, wait for every acknowledgement, list
     * again, and stop at the first listing with nobody new to signal. */
    const long long deadline = now_ms() + timeout_ms;
    int nsent = 0, error = 0, timed_out = 0;
    for (;;) {
        int n = list_threads(scanned, FM_MAX_THREADS);
        if (n < 0) {
            error = -n;
            break;
        }
        int fresh = 0;
        for (int i = 0; i < n && !error; i++) {
            int tid = scanned[i];
            if (tid == self || is_sent(tid, nsent))
                continue;
            if (nsent == FM_MAX_THREADS) {
                error = E2BIG;
            } else if (already_restricted(tid)) {
                inherited[nsent] = 1;
                sent[nsent++] = tid;
            } else if (syscall(SYS_tgkill, pid, tid, sig) == 0) {
                inherited[nsent] = 0;
                sent[nsent++] = tid;
                fresh++;
            } else if (errno != ESRCH) {
                error = errno;
            }
        }
        if (error || fresh == 0)
            break;
        for (;;) {
            int waiting = 0;
            for (int i = 0; i < nsent; i++)
                if (!inherited[i] && !has_acked(sent[i]) && is_alive(pid, sent[i]))
                    waiting++;
            if (waiting == 0)
                break;
            if (now_ms() >= deadline) {
                timed_out = 1;
                break;
            }
            struct timespec ts = { 0, 1000000 };
            nanosleep(&ts, NULL);
        }
        if (timed_out)
            break;
    }

    for (int i = 0; i < nsent; i++) {
        if (inherited[i] || has_acked(sent[i]))
            out->threads++;
        else if (is_alive(pid, sent[i]))
            out->unacknowledged++;
    }
    /* Ignoring a signal discards it where it is still pending (a thread that
     * blocks it), so restoring the default action cannot take the process down. */
    struct sigaction ign;
    memset(&ign, 0, sizeof ign);
    ign.sa_handler = SIG_IGN;
    sigaction(sig, &ign, NULL);
    sigaction(sig, &old, NULL);

    out->failed = atomic_load(&failed_count);
    out->first_error = atomic_load(&first_error);
    if (out->first_error == 0)
        out->first_error = error ? error : (out->unacknowledged ? ETIMEDOUT : 0);
    pthread_mutex_unlock(&call_lock);
    return (error || out->unacknowledged || out->failed) ? -1 : 0;
}
