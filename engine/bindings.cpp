// The only file that includes pybind11: converts types, releases the GIL around every
// blocking call, and turns C++ errors into the Python exceptions users expect.
#include <fcntl.h>
#include <pthread.h>
#include <unistd.h>

#include <mutex>
#include <stdexcept>
#include <system_error>

#include <pybind11/pybind11.h>
#include <pybind11/stl.h>

#include "probe.hpp"
#include "proc.hpp"
#include "rungs/rung.hpp"
#include "spawn.hpp"
#include "supervisor.hpp"

namespace py = pybind11;
using namespace pardo;

namespace {

using release_gil = py::call_guard<py::gil_scoped_release>;

// One supervisor per process. After fork() the child has the object but not its thread;
// the child forgets it (leaking it on purpose: destroying it would join a thread that
// does not exist there) and starts a new one on first use.
// g_mu guards g_sup: its creation on first use and its hand-over at shutdown, from any
// Python thread. Not held while the supervisor shuts down (that joins its thread).
Supervisor* g_sup = nullptr;
std::mutex g_mu;

void forget_in_child() { g_sup = nullptr; }

Supervisor* get_supervisor(const std::string& isolation, const std::string& shepherd, int64_t drain_ns) {
  std::lock_guard<std::mutex> lk(g_mu);
  if (!g_sup) {
    Supervisor::Config cfg;
    cfg.isolation = isolation;
    cfg.shepherd_path = shepherd;
    if (drain_ns > 0) cfg.drain_ns = drain_ns;
    g_sup = new Supervisor(cfg);
  }
  return g_sup;
}

void shutdown_supervisor() {
  Supervisor* s;
  {
    std::lock_guard<std::mutex> lk(g_mu);
    s = g_sup;
    g_sup = nullptr;
  }
  if (s) delete s;  // kills every tree, joins the thread
}

int dup_cloexec(int fd) {
  int d = fcntl(fd, F_DUPFD_CLOEXEC, 3);
  if (d < 0) throw std::system_error(errno, std::generic_category(), "dup of fd " + std::to_string(fd));
  return d;
}

// Block in slices with the GIL released, so that Ctrl-C (and any Python signal handler)
// runs within a fraction of a second: a condition variable wait is not interrupted by
// signals. The engine itself is event-driven; only this wait is sliced.
constexpr int64_t kSliceNs = 50000000;

template <class WaitFor>
bool wait_interruptibly(int64_t timeout_ns, WaitFor wait_for) {
  int64_t deadline = timeout_ns < 0 ? -1 : mono_ns() + timeout_ns;
  while (true) {
    int64_t slice = kSliceNs;
    if (deadline >= 0) {
      int64_t left = deadline - mono_ns();
      if (left < slice) slice = left > 0 ? left : 0;
    }
    bool done;
    {
      py::gil_scoped_release nogil;
      done = wait_for(slice);
    }
    if (done) return true;
    if (PyErr_CheckSignals() != 0) throw py::error_already_set();
    if (deadline >= 0 && mono_ns() >= deadline) return false;
  }
}

py::tuple result_tuple(Handle& h) {
  Completion& c = h.result;
  return py::make_tuple(c.pid, c.spawn_stage, c.spawn_errno, c.exited, c.exit_code, c.term_signal,
                        c.timed_out, c.cancelled, py::bytes(c.out), py::bytes(c.err),
                        c.out_truncated || c.err_truncated, c.start_wall_ns, c.duration_ns,
                        c.cpu_user_us, c.cpu_sys_us, c.max_rss_kb, c.watch_seq, c.note);
}

}  // namespace

PYBIND11_MODULE(_engine, m) {
  m.doc() = "pardo's native supervisor (internal; use the pardo package)";
  pthread_atfork(nullptr, nullptr, forget_in_child);

  py::register_exception_translator([](std::exception_ptr p) {
    try {
      if (p) std::rethrow_exception(p);
    } catch (const std::system_error& e) {
      py::object err = py::module_::import("builtins").attr("OSError")(e.code().value(), e.what());
      PyErr_SetObject(PyExc_OSError, err.ptr());
    }
  });

  py::class_<CompletionQueue, std::shared_ptr<CompletionQueue>>(m, "CompletionQueue")
      .def(py::init<int>(), py::arg("max_running") = 0)
      .def("fileno", &CompletionQueue::fd)
      .def("__len__", &CompletionQueue::size)
      .def(
          "pop",
          [](CompletionQueue& q, size_t max, int64_t timeout_ns, size_t min_items, int64_t linger_ns) {
            if (timeout_ns == 0) return q.pop(max, 0);  // a poll: keep the GIL, no wait
            std::vector<std::shared_ptr<Handle>> got;
            bool full = wait_interruptibly(timeout_ns, [&](int64_t slice) {
              got = q.pop(max, slice, min_items, linger_ns);
              return !got.empty();
            });
            if (!full) got = q.pop(max, 0);  // out of time: whatever did come
            return got;
          },
          py::arg("max"), py::arg("timeout_ns"), py::arg("min_items") = 1, py::arg("linger_ns") = -1);

  py::class_<Handle, std::shared_ptr<Handle>>(m, "Handle")
      .def_readonly("id", &Handle::id)
      .def("result", &result_tuple);

  py::class_<Supervisor>(m, "Supervisor")
      .def_property_readonly("rung", &Supervisor::rung_name)
      .def_property_readonly("reason", &Supervisor::rung_reason)
      .def("priority", &Supervisor::priority, release_gil())
      .def("in_flight", &Supervisor::in_flight)
      .def(
          "submit",
          [](Supervisor& s, std::vector<std::string> argv, py::object env, std::string cwd,
             py::object input, int out_mode, int out_fd, int err_mode, int err_fd, size_t max_output,
             std::vector<std::pair<int, int>> extra_fds, int64_t timeout_ns, int64_t grace_ns,
             std::vector<int> cpus, py::object nice, long long memory_limit, bool linger,
             std::shared_ptr<CompletionQueue> queue, std::string executable) {
            Request r;
            r.argv = std::move(argv);
            r.executable = std::move(executable);
            if (!env.is_none()) {
              r.has_env = true;
              r.env = env.cast<std::vector<std::string>>();
            }
            r.cwd = std::move(cwd);
            if (!input.is_none()) {
              r.has_input = true;
              r.input = input.cast<std::string>();
            }
            r.out.mode = static_cast<StreamSpec::Mode>(out_mode);
            r.err.mode = static_cast<StreamSpec::Mode>(err_mode);
            // Our own copies: the caller may close its fds as soon as submit returns.
            if (r.out.mode == StreamSpec::FD) r.out.fd = dup_cloexec(out_fd);
            if (r.err.mode == StreamSpec::FD) r.err.fd = dup_cloexec(err_fd);
            r.max_output = max_output;
            for (auto& m2 : extra_fds) r.extra_fds.push_back({m2.first, dup_cloexec(m2.second)});
            r.timeout_ns = timeout_ns;
            r.kill_grace_ns = grace_ns;
            r.cpus = std::move(cpus);
            if (!nice.is_none()) {
              r.has_nice = true;
              r.nice = nice.cast<int>();
            }
            r.memory_limit = memory_limit;
            r.linger = linger;
            return s.submit(std::move(r), std::move(queue));
          },
          py::arg("argv"), py::arg("env"), py::arg("cwd"), py::arg("input"), py::arg("out_mode"),
          py::arg("out_fd"), py::arg("err_mode"), py::arg("err_fd"), py::arg("max_output"),
          py::arg("extra_fds"), py::arg("timeout_ns"), py::arg("grace_ns"), py::arg("cpus"),
          py::arg("nice"), py::arg("memory_limit"), py::arg("linger"), py::arg("queue"),
          py::arg("executable") = std::string())
      .def("kill", [](Supervisor& s, uint64_t id) { s.command(id, Supervisor::OP_KILL); }, py::arg("id"))
      .def("terminate", [](Supervisor& s, uint64_t id) { s.command(id, Supervisor::OP_TERM); }, py::arg("id"))
      .def(
          "watch",
          [](Supervisor& s, uint64_t id, py::buffer buf, int64_t idle_ns) {
            py::buffer_info info = buf.request(true);
            // `slot` is the worker's watch record (the keyword keeps its old name until the
            // bindings' request types are named).
            if (info.size * info.itemsize < 16)
              throw py::value_error("a watch record needs at least 16 bytes");
            if (reinterpret_cast<uintptr_t>(info.ptr) % 8 != 0)
              throw py::value_error("a watch record must be 8-byte aligned");
            s.command(id, Supervisor::OP_WATCH, static_cast<const volatile int64_t*>(info.ptr), idle_ns);
          },
          py::arg("id"), py::arg("slot"), py::arg("idle_ns"))
      .def("unwatch", [](Supervisor& s, uint64_t id) { s.command(id, Supervisor::OP_UNWATCH); }, py::arg("id"))
      .def("wait_started",
           [](Supervisor& s, std::shared_ptr<Handle> h, int64_t timeout_ns) {
             int pid = -2;
             wait_interruptibly(timeout_ns, [&](int64_t slice) {
               pid = s.wait_started(*h, slice);
               return pid != -2;
             });
             return pid;
           },
           py::arg("handle"), py::arg("timeout_ns"))
      .def("wait_done", [](Supervisor& s, std::shared_ptr<Handle> h, int64_t timeout_ns) {
        if (timeout_ns == 0) return s.wait_done(*h, 0);
        return wait_interruptibly(timeout_ns, [&](int64_t slice) { return s.wait_done(*h, slice); });
      }, py::arg("handle"), py::arg("timeout_ns"));

  m.def("supervisor", &get_supervisor, py::arg("isolation"), py::arg("shepherd"), py::arg("drain_ns") = 0,
        py::return_value_policy::reference, release_gil());
  m.def("shutdown", &shutdown_supervisor, release_gil());
  m.def("forget", &forget_in_child);
  m.def("probe_features", &probe_features);
  m.def("cgroup_unavailable_reason", &cgroup_unavailable_reason);
  m.def("stage_name", &stage_name);
  m.attr("OUT_CAPTURE") = static_cast<int>(StreamSpec::CAPTURE);
  m.attr("OUT_FD") = static_cast<int>(StreamSpec::FD);
  m.attr("OUT_DEVNULL") = static_cast<int>(StreamSpec::DEVNULL);
  m.attr("OUT_INHERIT") = static_cast<int>(StreamSpec::INHERIT);
  m.attr("OUT_TO_STDOUT") = static_cast<int>(StreamSpec::TO_STDOUT);
}
