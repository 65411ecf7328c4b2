#ifndef FLOWMETER_MALLOC_COUNT_H
#define FLOWMETER_MALLOC_COUNT_H
/* Calls into the allocator since the process started (malloc, calloc,
 * realloc, memalign and its kin, from every library in the process),
 * for flowmeter-bench's allocations per scrape. */
unsigned long long fm_malloc_calls(void);
#endif
