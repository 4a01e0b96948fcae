// The only file that includes pybind11: converts types, releases the GIL around every
// blocking call, and turns C++ errors into the Python exceptions users expect.
#include <fcntl.h>
#include <pthread.h>
#include <unistd.h>

#include <mutex>
#include <optional>
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

// One task's Request: a copy of the options Request (set once from Python, reused for
// many tasks) plus the per-task parts. The copy owns dups of the options' fds: the caller
// may close its own as soon as submit returns, and the options outlive the task.
Request task_request(const Request& opts, std::vector<std::string>&& argv, std::vector<int>&& cpus,
                     std::string&& executable) {
  Request r = opts;
  r.argv = std::move(argv);
  r.cpus = std::move(cpus);
  r.executable = std::move(executable);
  if (r.out.mode == StreamSpec::FD) r.out.fd = dup_cloexec(opts.out.fd);
  if (r.err.mode == StreamSpec::FD) r.err.fd = dup_cloexec(opts.err.fd);
  for (auto& m : r.extra_fds) m.second = dup_cloexec(m.second);
  return r;
}

StreamSpec::Mode stream_mode(int mode) {
  if (mode < StreamSpec::CAPTURE || mode > StreamSpec::TO_STDOUT)
    throw py::value_error("not a stream mode: " + std::to_string(mode));
  return static_cast<StreamSpec::Mode>(mode);
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

  // The options a task runs with, other than its argv, cpus and executable (submit's own
  // arguments). pardo._run.SpawnOptions builds one per spawn() call or per batch and sets
  // only what differs from these defaults; fds here stay the caller's (see task_request).
  py::class_<Request>(m, "Request")
      .def(py::init<>())
      .def_property(
          "env",
          [](const Request& r) -> py::object {
            if (!r.has_env) return py::none();
            py::list out;
            for (auto& e : r.env) out.append(py::bytes(e));
            return std::move(out);
          },
          [](Request& r, std::optional<std::vector<std::string>> env) {
            r.has_env = env.has_value();
            r.env = env ? std::move(*env) : std::vector<std::string>();
          })
      .def_property(
          "cwd", [](const Request& r) { return py::bytes(r.cwd); },
          [](Request& r, std::string cwd) { r.cwd = std::move(cwd); })
      .def_property(
          "input", [](const Request& r) -> py::object { return r.has_input ? py::bytes(r.input) : py::object(py::none()); },
          [](Request& r, std::optional<std::string> input) {
            r.has_input = input.has_value();
            r.input = input ? std::move(*input) : std::string();
          })
      .def_property(
          "out_mode", [](const Request& r) { return static_cast<int>(r.out.mode); },
          [](Request& r, int mode) { r.out.mode = stream_mode(mode); })
      .def_property(
          "out_fd", [](const Request& r) { return r.out.fd; }, [](Request& r, int fd) { r.out.fd = fd; })
      .def_property(
          "err_mode", [](const Request& r) { return static_cast<int>(r.err.mode); },
          [](Request& r, int mode) { r.err.mode = stream_mode(mode); })
      .def_property(
          "err_fd", [](const Request& r) { return r.err.fd; }, [](Request& r, int fd) { r.err.fd = fd; })
      .def_readwrite("max_output", &Request::max_output)
      .def_readwrite("extra_fds", &Request::extra_fds)
      .def_readwrite("timeout_ns", &Request::timeout_ns)
      .def_readwrite("kill_grace_ns", &Request::kill_grace_ns)
      .def_property(
          "nice", [](const Request& r) -> std::optional<int> { return r.has_nice ? std::optional<int>(r.nice) : std::nullopt; },
          [](Request& r, std::optional<int> nice) {
            r.has_nice = nice.has_value();
            r.nice = nice.value_or(0);
          })
      .def_readwrite("memory_limit", &Request::memory_limit)
      .def_readwrite("linger", &Request::linger)
      .def_readwrite("rss_unread", &Request::rss_unread);

  // What became of a task, read by name (pardo._run._make_result). Strings the task wrote
  // are bytes; the object refers into its Handle, which it keeps alive.
  py::class_<Completion>(m, "Completion")
      .def_readonly("pid", &Completion::pid)
      .def_readonly("spawn_stage", &Completion::spawn_stage)
      .def_readonly("spawn_errno", &Completion::spawn_errno)
      .def_readonly("exited", &Completion::exited)
      .def_readonly("exit_code", &Completion::exit_code)
      .def_readonly("term_signal", &Completion::term_signal)
      .def_readonly("timed_out", &Completion::timed_out)
      .def_readonly("cancelled", &Completion::cancelled)
      .def_property_readonly("out", [](const Completion& c) { return py::bytes(c.out); })
      .def_property_readonly("err", [](const Completion& c) { return py::bytes(c.err); })
      .def_readonly("out_truncated", &Completion::out_truncated)
      .def_readonly("err_truncated", &Completion::err_truncated)
      .def_readonly("start_wall_ns", &Completion::start_wall_ns)
      .def_readonly("duration_ns", &Completion::duration_ns)
      .def_readonly("cpu_user_us", &Completion::cpu_user_us)
      .def_readonly("cpu_sys_us", &Completion::cpu_sys_us)
      .def_readonly("max_rss_kb", &Completion::max_rss_kb)
      .def_readonly("watch_seq", &Completion::watch_seq)
      .def_readonly("note", &Completion::note);

  py::class_<Handle, std::shared_ptr<Handle>>(m, "Handle")
      .def_readonly("id", &Handle::id)
      // Final once the task is done (Supervisor.wait_done / a CompletionQueue gave it back).
      .def_readonly("result", &Handle::result);

  // After Handle, so that pop()'s signature names it.
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

  py::class_<Supervisor>(m, "Supervisor")
      .def_property_readonly("rung", &Supervisor::rung_name)
      .def_property_readonly("reason", &Supervisor::rung_reason)
      .def("priority", &Supervisor::priority, release_gil())
      .def("in_flight", &Supervisor::in_flight)
      .def(
          "submit",
          [](Supervisor& s, const Request& options, std::vector<std::string> argv, std::vector<int> cpus,
             std::shared_ptr<CompletionQueue> queue, std::string executable) {
            return s.submit(task_request(options, std::move(argv), std::move(cpus), std::move(executable)),
                            std::move(queue));
          },
          py::arg("options"), py::arg("argv"), py::arg("cpus"), py::arg("queue"),
          py::arg("executable") = std::string())
      .def("kill", [](Supervisor& s, uint64_t id) { s.command(id, Supervisor::OP_KILL); }, py::arg("id"))
      .def("terminate", [](Supervisor& s, uint64_t id) { s.command(id, Supervisor::OP_TERM); }, py::arg("id"))
      .def(
          "watch",
          [](Supervisor& s, uint64_t id, py::buffer buf, int64_t idle_ns) {
            py::buffer_info info = buf.request(true);
            if (info.size * info.itemsize < 16)
              throw py::value_error("a watch record needs at least 16 bytes");
            if (reinterpret_cast<uintptr_t>(info.ptr) % 8 != 0)
              throw py::value_error("a watch record must be 8-byte aligned");
            s.command(id, Supervisor::OP_WATCH, static_cast<const volatile int64_t*>(info.ptr), idle_ns);
          },
          py::arg("id"), py::arg("record"), py::arg("idle_ns"))
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
