#include "hemexp/core/runtime.hpp"

#include <climits>  // also defines __GLIBC__ on glibc (through <features.h>)

#if defined(__GLIBC__)
#include <malloc.h>
#endif

namespace hemexp {

void keep_freed_memory() {
#if defined(__GLIBC__)
  mallopt(M_MMAP_MAX, 0);                  // every block from the heap, reused after free
  mallopt(M_TRIM_THRESHOLD, INT_MAX);      // never hand the heap's top back (2 GiB free at most)
#endif
}

void release_freed_memory() {
#if defined(__GLIBC__)
  malloc_trim(0);
#endif
}

}  // namespace hemexp
