"""The allocator: `keep_freed_memory` (training: a step's memory kept for the next),
`return_freed_memory` (what was freed given back before workers fork).
"""
import ctypes

_M_TRIM_THRESHOLD, _M_TOP_PAD, _M_MMAP_MAX = -1, -2, -4  # glibc's mallopt parameters


def keep_freed_memory():
    """Training: let this process's allocator keep freed memory for the next step instead of
    returning it to the system. glibc serves arrays over 32 MB with fresh mmaps, each page
    faulted in again on first use: an X-UMX step spent a third of its time in the kernel
    doing that. Its peak is the same each step, so keeping it costs no memory a step does not
    already take. Elsewhere (not glibc) nothing changes."""
    try:
        libc = ctypes.CDLL(None)
        for parameter, value in ((_M_MMAP_MAX, 0), (_M_TRIM_THRESHOLD, 1 << 30),
                                 (_M_TOP_PAD, 256 << 20)):
            libc.mallopt(parameter, value)
    except (OSError, AttributeError):
        pass


def return_freed_memory():
    """Give the memory freed so far back to the system (glibc keeps freed heap memory for
    later allocations; a forked worker would share those pages in its PSS). Elsewhere (not
    glibc) nothing happens."""
    try:
        ctypes.CDLL(None).malloc_trim(0)
    except (OSError, AttributeError):
        pass
