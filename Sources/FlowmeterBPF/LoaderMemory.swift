import CLibbpf

/// Keeps the loader's transient peak out of the daemon's resident memory.
///
/// Loading parses the kernel's BTF (5.5 MiB here) and uses a 16 MiB verifier
/// log buffer, all freed after the load. With glibc's defaults the first such
/// block freed raises the mmap threshold to its size (the threshold is
/// dynamic), so the next ones come from a thread's arena instead of mmap, and
/// the arena's free top is only given back past a trim threshold that rose to
/// twice that: measured, 11.8 MiB of free heap stayed resident for the
/// daemon's whole life (malloc_stats: arena 12.7 MB, 0.9 MB in use).
/// Fixed thresholds (which also switch the dynamic adjustment off) send large
/// blocks to mmap, so freeing them unmaps them. Call first thing in main.
public func fixMallocThresholds() {
    fm_malloc_fixed_thresholds(256 * 1024, 1024 * 1024)
}

/// Gives back the heap that loading left free. Call once, after everything is
/// loaded and attached.
public func releaseLoaderMemory() {
    KernelBTF.release()
    fm_malloc_trim()
}
