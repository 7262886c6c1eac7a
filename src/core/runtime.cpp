#include "hemexp/core/runtime.hpp"

#include <atomic>
#include <exception>
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
#include <cstdio>
#include <cstdlib>
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

bool huge_page_heap_allowed() {
#if defined(__GLIBC__) && !defined(__SANITIZE_ADDRESS__)
  if (std::getenv("HEMEXP_SMALL_PAGES")) return false;
  // Where the reservation would count against a limit: ulimit -v or -d, or strict overcommit
  // (vm.overcommit_memory = 2 counts address space taken, touched or not).
  for (int resource : {RLIMIT_AS, RLIMIT_DATA}) {
    rlimit limit{};
    if (getrlimit(resource, &limit) != 0 || limit.rlim_cur != RLIM_INFINITY) return false;
  }
  int overcommit = 0;
  if (FILE* f = std::fopen("/proc/sys/vm/overcommit_memory", "r")) {
    if (std::fscanf(f, "%d", &overcommit) != 1) overcommit = 0;
    std::fclose(f);
  }
  return overcommit != 2;
#else
  return false;
#endif
}

bool use_huge_page_heap() {
#if defined(__GLIBC__)
  if (!huge_page_heap_allowed()) return false;
  mallopt(M_ARENA_MAX, 1);  // every thread's blocks from the one heap
  constexpr size_t kReserve = size_t(3) << 29, kHuge = size_t(1) << 21;  // 1.5 GiB, 2 MiB
  char* const before = static_cast<char*>(sbrk(0));
  if (before == reinterpret_cast<char*>(-1)) return false;
  void* volatile block = std::malloc(kReserve);  // from the heap (no mmap): its top grows
  std::free(block);  // (volatile: the pair must not be optimised away)
  const uintptr_t first = (reinterpret_cast<uintptr_t>(before) + kHuge - 1) & ~uintptr_t(kHuge - 1);
  const uintptr_t last = reinterpret_cast<uintptr_t>(sbrk(0)) & ~uintptr_t(kHuge - 1);
  return last > first && madvise(reinterpret_cast<void*>(first), last - first, MADV_HUGEPAGE) == 0;
#else
  return false;
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

void run_side_by_side(const std::vector<std::function<void()>>& tasks) {
#ifdef _OPENMP
  const bool side_by_side = tasks.size() >= 2 && at::get_num_threads() >= 2 && !at::in_parallel_region();
#else
  const bool side_by_side = false;  // ATen's loop is a plain call in this file: in turn
#endif
  if (!side_by_side) {
    for (const auto& task : tasks) task();
    return;
  }
  std::vector<std::exception_ptr> failed(tasks.size());
  std::atomic<size_t> next{0};
  // Two slots, so that at most two threads take part; however many the team gives (one, under
  // OMP_DYNAMIC or OMP_THREAD_LIMIT), every task is taken.
  at::parallel_for(0, 2, 1, [&](int64_t, int64_t) {
    for (size_t i = next++; i < tasks.size(); i = next++) {
      try {
        tasks[i]();
      } catch (...) {
        failed[i] = std::current_exception();
      }
    }
  });
  for (const std::exception_ptr& e : failed)
    if (e) std::rethrow_exception(e);
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
