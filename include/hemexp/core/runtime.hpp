#pragma once

#include <chrono>
#include <functional>
#include <vector>

namespace hemexp {

// Keeps freed memory in the process for the next allocation instead of handing it back to the
// kernel (glibc: no mmap for large blocks, no trimming of the heap). Inference allocates and
// frees the same large tensors over and over; on machines where a page fault is expensive
// (17 us per 4 KB page measured on our 2-core development VM) mapping fresh pages for every
// temporary cost more than the arithmetic: a 512 x 512 x 32 case went from 8.3 s to 3.7 s
// (docs/PERFORMANCE.md). The price: the resident set stays at its peak until the process ends.
// This holds for the main thread's heap (where the analysis allocates); other threads' arenas
// (the read-ahead thread) still map blocks over 64 MiB afresh unless use_huge_page_heap() put
// every thread on that heap, and a free heap top of more than 2 GiB is still given back. Call
// once, at the start of a program. A no-op off glibc.
void keep_freed_memory();

// After keep_freed_memory, for programs that do not trim (release_freed_memory would hand the
// marked part back, and the heap's later growth is not marked): every thread allocates from the
// one heap (one malloc arena), and the heap's next 1.5 GiB of address space is taken at once
// (untouched: no memory used) and marked for transparent huge pages (madvise), so that blocks
// map 2 MiB at a time on first touch instead of 4 KiB. With 4 KiB pages a 512 x 512 x 300 case
// still took some 25,000 page faults after the first (the writers' and readers' buffers) and the
// first case some 200,000 (docs/PERFORMANCE.md, session 46). Not done (false) where
// huge_page_heap_allowed() says no. Call before other threads start. True when the heap was
// marked.
bool use_huge_page_heap();

// Whether use_huge_page_heap may reserve: not where HEMEXP_SMALL_PAGES is set (any value), under
// ulimit -v or -d or strict overcommit (vm.overcommit_memory = 2: the reservation would count
// against the limit), under AddressSanitizer, or off glibc.
bool huge_page_heap_allowed();

// Hands the free memory of every malloc arena back to the kernel (glibc malloc_trim; a no-op
// elsewhere). For loops whose work runs on threads of their own (synth's workers): with
// keep_freed_memory their arenas kept what each case freed and grew by about 140 MB per case of
// a 512 x 512 real background (24 GB, killed by the kernel, after 218 cases), while the analysis
// of `hemexp run` stays flat. Call between items of such a loop.
void release_freed_memory();

// How many threads hemexp's own at::parallel_for loops run on when asked for `threads`: at most
// `threads`, and 1 when the core was compiled without OpenMP (ATen's loop is then a plain call).
int parallel_loop_threads(int threads);

// Runs every task, two at a time, on ATen's threads (the calling thread's OpenMP team: the
// analysis's on the main thread), each thread taking the next task until none is left; all of
// them finish, then the first failure in the list's order is rethrown (also where the team gives
// one thread only: it takes them all). A thread started for the purpose would share a core with
// the team's worker, which spins for a while after each parallel loop: on 2 cores that cost a
// case's reading and writing some 15-20 ms (docs/PERFORMANCE.md, session 48). With one thread
// (ATen's count, inside a parallel region, or a core built without OpenMP) the tasks run in order
// on the calling thread, and the first failure stops the rest, as a plain sequence would. Inside
// a task, ATen's own loops run on one thread. More than two at a time would hold more files in
// memory at once (a 512 x 512 x 300 probability map is 315 MB, twice while it is written).
void run_side_by_side(const std::vector<std::function<void()>>& tasks);

// While it lives, the calling thread is told it has one thread: OpenMP's count for this thread,
// which ATen's at::get_num_threads(), oneDNN and OpenBLAS read to choose their algorithm (ATen,
// for one, sends a large 1 x 1 x 1 convolution to oneDNN with two threads and to its own matrix
// product with one, which round differently); the count before is put back after. For work that
// runs on one thread inside a parallel region (the sliding window's concurrent windows), so that
// it computes exactly what a one-thread run computes, not only on one thread. A no-op without
// OpenMP.
class OneThreadScope {
 public:
  OneThreadScope();
  ~OneThreadScope();
  OneThreadScope(const OneThreadScope&) = delete;
  OneThreadScope& operator=(const OneThreadScope&) = delete;

 private:
  int previous_ = 1;
};

using Clock = std::chrono::steady_clock;

// Wall-clock seconds since t0 (the timings_s of result.json, the benchmarks' steps).
inline double seconds_since(Clock::time_point t0) { return std::chrono::duration<double>(Clock::now() - t0).count(); }

}  // namespace hemexp
