#ifndef FM_PRIVILEGES_H
#define FM_PRIVILEGES_H

#include <stdint.h>

/* Capabilities, the bounding and ambient sets and no_new_privs belong to a
 * thread, not to the process: capset(2) and prctl(2) change only the calling
 * thread. fm_priv_restrict_all_threads changes every thread of the process. */

struct fm_priv_result {
    int threads;         /* threads that applied the change, the caller included */
    int unacknowledged;  /* threads still alive that did not apply it in time */
    int failed;          /* threads where a capset/prctl call failed */
    int first_error;     /* errno of the first failure, 0 if none */
    int signal;          /* the signal used to reach the other threads (0: none) */
};

/* Every thread: drop every capability not in `keep` from the bounding set
 * (only when drop_bounding is set: that needs CAP_SETPCAP), clear the ambient
 * set, set no_new_privs, then set permitted = effective = keep and
 * inheritable = empty. `keep` must be a subset of the permitted set.
 * Returns 0 when every live thread applied it, else -1 (see *out). */
int fm_priv_restrict_all_threads(uint64_t keep, int last_cap, int drop_bounding,
                                 int timeout_ms, struct fm_priv_result *out);

#endif
