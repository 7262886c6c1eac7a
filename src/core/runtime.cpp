#include "hemexp/core/runtime.hpp"

#include <mutex>
#include <set>
#include <thread>

#include <ATen/Parallel.h>

#include <climits>  // also defines __GLIBC__ on glibc (through <features.h>)

#if defined(__GLIBC__)
#include <malloc.h>
#endif
#ifdef _OPENMP
#include <omp.h>
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
