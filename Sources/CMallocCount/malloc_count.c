/* Why: flowmeter-bench reports allocations per /metrics render, and a count
 * that sees every allocation (the Swift runtime's, Foundation's, libc's) needs
 * the allocator's entry points, without LD_PRELOAD or valgrind around the run.
 * Linked only into flowmeter-bench: the executable's definitions take
 * precedence over libc's for every library in the process (ELF symbol
 * interposition, which glibc supports for malloc), and each one counts and
 * forwards to glibc's own allocator through its __libc_ entry points. */
#include <errno.h>
#include <stdatomic.h>
#include <stddef.h>
#include "malloc_count.h"

extern void *__libc_malloc(size_t size);
extern void *__libc_calloc(size_t n, size_t size);
extern void *__libc_realloc(void *p, size_t size);
extern void *__libc_memalign(size_t alignment, size_t size);
extern void __libc_free(void *p);

static _Atomic unsigned long long calls;

static inline void count(void) { atomic_fetch_add_explicit(&calls, 1, memory_order_relaxed); }

unsigned long long fm_malloc_calls(void) { return atomic_load_explicit(&calls, memory_order_relaxed); }

void *malloc(size_t size) { count(); return __libc_malloc(size); }
void *calloc(size_t n, size_t size) { count(); return __libc_calloc(n, size); }
void *realloc(void *p, size_t size) { count(); return __libc_realloc(p, size); }
void free(void *p) { __libc_free(p); }
void *memalign(size_t alignment, size_t size) { count(); return __libc_memalign(alignment, size); }
void *aligned_alloc(size_t alignment, size_t size) { count(); return __libc_memalign(alignment, size); }

int posix_memalign(void **out, size_t alignment, size_t size)
{
    /* As glibc checks it: a power of two and a multiple of sizeof(void *). */
    if (alignment % sizeof(void *) != 0 || (alignment & (alignment - 1)) != 0 || alignment == 0)
        return EINVAL;
    count();
    void *p = __libc_memalign(alignment, size);
    if (!p)
        return ENOMEM;
    *out = p;
    return 0;
}
