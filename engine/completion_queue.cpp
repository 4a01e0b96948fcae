#include "completion_queue.hpp"

#include <errno.h>
#include <sys/eventfd.h>
#include <unistd.h>

#include <chrono>
#include <system_error>

namespace pardo {

CompletionQueue::CompletionQueue(int max_running) : max_running_(max_running > 0 ? max_running : 0) {}

// The readiness fd costs two system calls per task, so it exists only for consumers that
// ask for it (selectors, asyncio); plain waiters use the condition variable.
int CompletionQueue::fd() {
  std::lock_guard<std::mutex> lk(mu_);
  if (efd_ < 0) {
    efd_ = eventfd(items_.empty() ? 0 : 1, EFD_NONBLOCK | EFD_CLOEXEC);
    if (efd_ < 0) throw std::system_error(errno, std::generic_category(), "eventfd");
  }
  return efd_;
}

CompletionQueue::~CompletionQueue() {
  if (efd_ >= 0) close(efd_);
}

void CompletionQueue::push(std::shared_ptr<Handle> h) {
  std::lock_guard<std::mutex> lk(mu_);
  bool was_empty = items_.empty();
  items_.push_back(std::move(h));
  if (was_empty) {
    first_at_ = std::chrono::steady_clock::now();
    if (efd_ >= 0) {
      // Unchecked: an eventfd write fails only past a count of 2^64-2, and this one is
      // written once per empty-to-non-empty change and reset by pop().
      uint64_t one = 1;
      ssize_t r = write(efd_, &one, sizeof one);
      (void)r;
    }
  }
  if (!waiting_.empty() && (items_.size() >= *waiting_.begin() || (was_empty && lingering_ > 0)))
    cv_.notify_all();
}

std::vector<std::shared_ptr<Handle>> CompletionQueue::pop(size_t max, int64_t timeout_ns,
                                                           size_t min_items, int64_t linger_ns) {
  std::unique_lock<std::mutex> lk(mu_);
  std::vector<std::shared_ptr<Handle>> out;
  if (min_items < 1) min_items = 1;
  // With a linger, a batch also ends once its oldest item has waited linger_ns.
  using clock = std::chrono::steady_clock;
  const bool lingers = linger_ns >= 0 && min_items > 1;
  const auto end = timeout_ns < 0 ? clock::time_point::max()
                                  : clock::now() + std::chrono::nanoseconds(timeout_ns);
  auto me = waiting_.insert(min_items);
  if (lingers) ++lingering_;
  bool ok;
  while (true) {
    if (items_.size() >= min_items) {
      ok = true;
      break;
    }
    auto now = clock::now();
    auto until = end;
    if (lingers && !items_.empty()) {
      auto due = first_at_ + std::chrono::nanoseconds(linger_ns);
      if (now >= due) {
        ok = true;
        break;
      }
      if (due < until) until = due;
    }
    if (now >= end) {
      ok = false;
      break;
    }
    if (until == clock::time_point::max())
      cv_.wait(lk);
    else
      cv_.wait_until(lk, until);
  }
  if (lingers) --lingering_;
  waiting_.erase(me);
  if (!ok) return out;
  while (!items_.empty() && out.size() < max) {
    out.push_back(std::move(items_.front()));
    items_.pop_front();
  }
  if (items_.empty() && efd_ >= 0) {
    uint64_t v;
    ssize_t r = read(efd_, &v, sizeof v);  // reset readiness (EAGAIN: it was not set)
    (void)r;
  }
  return out;
}

size_t CompletionQueue::size() {
  std::lock_guard<std::mutex> lk(mu_);
  return items_.size();
}

}  // namespace pardo
