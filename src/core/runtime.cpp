#include "hemexp/core/runtime.hpp"

#include <mutex>
#include <set>
#include <thread>

#include <ATen/Parallel.h>

#include <climits>  // also defines __GLIBC__ on glibc (through <features.h>)

#if defined(__GLIBC__)
#include <malloc.h>
#include <sys/mman.h>
#include <sys/resource.h>
#include <unistd.h>

#include <cstdint>
#include <cstdlib>
#endif
#ifdef _OPENMP
#include <omp.h>
#endif

namespace hemexp {

#if defined(__GLIBC__)
namespace {

// Takes the heap's next kReserve bytes of address space at once (nothing is touched, so no memory
// is used yet) and hands them back to the heap's free top, then marks them for transparent huge
// pages: blocks carved from them later map 2 MiB at a time on first touch instead of 4 KiB.
// Skipped where an address-space or data limit is set (ulimit -v, -d: the reservation would
// count against it) and under AddressSanitizer (its own allocator).
void reserve_huge_page_heap() {
#if !defined(__SANITIZE_ADDRESS__)
  constexpr size_t kReserve = size_t(3) << 29, kHuge = size_t(1) << 21;  // 1.5 GiB, 2 MiB
  for (int resource : {RLIMIT_AS, RLIMIT_DATA}) {
    rlimit limit{};
    if (getrlimit(resource, &limit) != 0 || limit.rlim_cur != RLIM_INFINITY) return;
  }
  char* const before = static_cast<char*>(sbrk(0));
  if (before == reinterpret_cast<char*>(-1)) return;
  void* volatile block = std::malloc(kReserve);  // from the heap (no mmap): its top grows
  std::free(block);  // (volatile: the pair must not be optimised away)
  const uintptr_t first = (reinterpret_cast<uintptr_t>(before) + kHuge - 1) & ~uintptr_t(kHuge - 1);
  const uintptr_t last = reinterpret_cast<uintptr_t>(sbrk(0)) & ~uintptr_t(kHuge - 1);
  if (last > first) madvise(reinterpret_cast<void*>(first), last - first, MADV_HUGEPAGE);
#endif
}

}  // namespace
#endif

void keep_freed_memory() {
#if defined(__GLIBC__)
  mallopt(M_MMAP_MAX, 0);                  // every block from the heap, reused after free
  mallopt(M_TRIM_THRESHOLD, INT_MAX);      // never hand the heap's top back (2 GiB free at most)
  if (std::getenv("HEMEXP_SMALL_PAGES")) return;
  mallopt(M_ARENA_MAX, 1);                 // every thread's blocks from that one heap
  reserve_huge_page_heap();
#endif
}

void release_freed_memory() {
#if defined(__GLIBC__)
  malloc_trim(0);
#endif
}

OneThreadScope::OneThreadScope() {
#ifdef _OPENMP
  // ATen sets a thread's OpenMP count to its own on the thread's first use: done first, so that
  // it cannot undo the one below.
  previous_ = at::get_num_threads();
  omp_set_num_threads(1);
#endif
}

OneThreadScope::~OneThreadScope() {
#ifdef _OPENMP
  omp_set_num_threads(previous_);
#endif
}

int parallel_loop_threads(int threads) {
  const int before = at::get_num_threads();
  at::set_num_threads(threads);
  std::mutex m;
  std::set<std::thread::id> seen;
  at::parallel_for(0, int64_t(threads) * 64, 1, [&](int64_t, int64_t) {
    std::lock_guard<std::mutex> lock(m);
    seen.insert(std::this_thread::get_id());
  });
  at::set_num_threads(before);
  return int(seen.size());
}

}  // namespace hemexp
