// CompletionQueue: finished tasks handed from the supervisor thread to their consumers,
// and the limiter that bounds how many of a queue's tasks run at once.
#pragma once

#include <chrono>
#include <condition_variable>
#include <cstddef>
#include <cstdint>
#include <deque>
#include <memory>
#include <mutex>
#include <set>
#include <utility>
#include <vector>

#include "request.hpp"

namespace pardo {

// Finished handles, in completion order, for consumers that run many tasks at once.
//
// With max_running > 0 the queue is also a limiter with max_running run permits: a task
// of the queue holds one from its start until its tree is gone, and one submitted while
// none is free is held back. The supervisor thread starts the next held task itself the
// moment a permit comes back, so a batch runs at full speed without a round trip through
// Python per task.
class CompletionQueue {
 public:
  explicit CompletionQueue(int max_running = 0);
  ~CompletionQueue();
  int max_running() const { return max_running_; }
  int fd();  // readable while the queue is non-empty (made on first use)
  void push(std::shared_ptr<Handle> h);
  // Up to max handles; waits up to timeout_ns (-1: forever) until at least min_items are
  // there, or (linger_ns >= 0) until the oldest of those there has waited linger_ns.
  // Returns nothing if neither happened in time.
  std::vector<std::shared_ptr<Handle>> pop(size_t max, int64_t timeout_ns, size_t min_items = 1,
                                           int64_t linger_ns = -1);
  size_t size();

 private:
  // mu_ guards items_, waiting_, lingering_, first_at_ and efd_ (its creation, and the
  // readiness it signals: set by push, reset by pop); push (the supervisor thread) and
  // pop/fd/size (consumers) meet here. cv_ wakes the threads waiting in pop. The
  // supervisor's own mutex is never taken while this one is held, nor the reverse.
  std::mutex mu_;
  std::condition_variable cv_;
  std::deque<std::shared_ptr<Handle>> items_;
  // min_items of each thread waiting in pop(): a push wakes them only once the smallest
  // is met, so a consumer that asked for a batch sleeps through the tasks before it.
  std::multiset<size_t> waiting_;
  int lingering_ = 0;  // waiters with a linger: the first item of a batch wakes them too
  std::chrono::steady_clock::time_point first_at_;  // when the oldest item came
  int efd_ = -1;
  const int max_running_;

  // Supervisor thread only, no lock: how many of this queue's permits are held (its tasks
  // that run), and the tasks waiting for one.
  friend class Supervisor;
  int running_ = 0;
  std::deque<std::pair<std::shared_ptr<Handle>, Request>> held_;
  // Under the supervisor's mutex: tasks submitted and not yet done with their permit. While
  // it exceeds max_running, a submit need not wake the supervisor: the new task could only
  // wait, and the next permit to come back makes the supervisor take it (see refill).
  int unsettled_ = 0;
};

}  // namespace pardo
