"""Keep the memory PyTorch frees on the CPU inside the process (glibc's malloc), instead of
handing it back to the kernel after every step.

glibc serves each allocation above its mmap threshold (at most 32 MiB) with a fresh mmap and
unmaps it when freed. A U-Net step at 320 x 320 allocates and frees dozens of activations of
tens of MiB, so every step faulted them in again, page by page, zeroed by the kernel: about
210,000 page faults and a fifth of the CPU time of a tiny-model step (benchmarks/RESULTS.md,
"Freed memory kept in the process"). With mmap off for malloc and a high trim threshold the
blocks stay in the heap and are reused; the peak memory is about the same (+55 MB on the tiny
model), only it is not returned between steps. Linux with glibc only; elsewhere nothing changes.
"""
import ctypes
import ctypes.util
import sys

# mallopt parameters (glibc's malloc.h)
M_TRIM_THRESHOLD = -1
M_MMAP_MAX = -4
NO_MMAP = 0                          # blocks of any size come from the heap
KEEP_BYTES = 1 << 30                 # free memory at the heap's top is given back only past 1 GiB

_kept = None


def keep_freed_memory() -> bool:
    """Tell glibc to keep freed blocks for reuse (once per process); True where it took effect."""
    global _kept
    if _kept is None:
        _kept = _set_malloc_options()
    return _kept


def _set_malloc_options() -> bool:
    if not sys.platform.startswith("linux"):
        return False
    try:
        libc = ctypes.CDLL(ctypes.util.find_library("c") or "libc.so.6")
    except OSError:
        return False
    # The parameter numbers above are glibc's; musl and other libcs have other ones, or no mallopt.
    if not (hasattr(libc, "gnu_get_libc_version") and hasattr(libc, "mallopt")):
        return False
    mallopt = libc.mallopt
    mallopt.argtypes, mallopt.restype = (ctypes.c_int, ctypes.c_int), ctypes.c_int
    return bool(mallopt(M_MMAP_MAX, NO_MMAP)) and bool(mallopt(M_TRIM_THRESHOLD, KEEP_BYTES))
