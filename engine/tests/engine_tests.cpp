// The engine's own tests, in plain C++: the supervisor on every rung, without Python.
// Usage: engine_tests PATH_TO_PARDO_SHEPHERD
#include <errno.h>
#include <signal.h>
#include <stdio.h>
#include <string.h>
#include <sys/resource.h>
#include <sys/wait.h>
#include <unistd.h>

#include <memory>
#include <string>

#include "proc.hpp"
#include "rungs/rung.hpp"
#include "spawn.hpp"
#include "supervisor.hpp"

using namespace pardo;

static int failures = 0;
#define CHECK(cond)                                                        \
  do {                                                                     \
    if (!(cond)) {                                                         \
      fprintf(stderr, "%s:%d: CHECK failed: %s\n", __FILE__, __LINE__, #cond); \
      ++failures;                                                          \
    }                                                                      \
  } while (0)

static Completion run(Supervisor& s, Request r) {
  auto h = s.submit(std::move(r), nullptr);
  s.wait_done(*h, -1);
  return h->result;
}

static Request cmd(std::initializer_list<std::string> argv) {
  Request r;
  r.argv = argv;
  return r;
}

static void test_exec_candidates() {
  auto c = exec_candidates("ls", "/a:/b::/c");
  CHECK(c.size() == 4);
  CHECK(c[0] == "/a/ls" && c[2] == "./ls" && c[3] == "/c/ls");
  CHECK(exec_candidates("./x", "/a").size() == 1);
}

static void test_rung(const std::string& rung, const std::string& shepherd) {
  Supervisor::Config cfg;
  cfg.isolation = rung;
  cfg.shepherd_path = shepherd;
  std::unique_ptr<Supervisor> s;
  try {
    s.reset(new Supervisor(cfg));
  } catch (const std::exception& e) {
    fprintf(stderr, "rung %s unavailable: %s\n", rung.c_str(), e.what());
    ++failures;
    return;
  }
  CHECK(s->rung_name() == rung);

  Completion c = run(*s, cmd({"sh", "-c", "echo out; echo err >&2; exit 7"}));
  CHECK(c.spawn_stage == 0 && c.exited && c.exit_code == 7);
  CHECK(c.out == "out\n" && c.err == "err\n");

  c = run(*s, cmd({"pardo-engine-test-no-such-program"}));
  CHECK(c.spawn_stage == STAGE_EXEC && c.spawn_errno == ENOENT);

  Request r = cmd({"true"});
  r.cwd = "/nonexistent-dir-for-pardo";
  c = run(*s, std::move(r));
  CHECK(c.spawn_stage == STAGE_CHDIR && c.spawn_errno == ENOENT);

  // A deadline kills a tree that holds stdout open, promptly.
  r = cmd({"sh", "-c", "sleep 30 & sleep 31 & sleep 32"});
  r.timeout_ns = 200000000;
  r.kill_grace_ns = 0;
  int64_t t0 = mono_ns();
  c = run(*s, std::move(r));
  int64_t took = mono_ns() - t0;
  CHECK(c.timed_out);
  CHECK(took < 1500000000LL);

  // The leader exits; the grandchild holding stdout is killed, run() does not hang.
  r = cmd({"sh", "-c", "sleep 30 & echo started"});
  t0 = mono_ns();
  c = run(*s, std::move(r));
  CHECK(c.exited && c.exit_code == 0 && c.out == "started\n");
  CHECK(mono_ns() - t0 < 1500000000LL);

  // Output beyond max_output is dropped and flagged.
  r = cmd({"sh", "-c", "head -c 1000000 /dev/zero"});
  r.max_output = 1000;
  c = run(*s, std::move(r));
  CHECK(c.out.size() == 1000 && c.out_truncated);

  // Input is fed on stdin.
  r = cmd({"cat"});
  r.has_input = true;
  r.input = std::string(300000, 'x');
  c = run(*s, std::move(r));
  CHECK(c.out.size() == 300000);

  // A signal we did not send is reported as such.
  c = run(*s, cmd({"sh", "-c", "kill -SEGV $$"}));
  CHECK(!c.exited && c.term_signal == SIGSEGV && !c.cancelled && !c.timed_out);

  // Kill on request.
  auto h = s->submit(cmd({"sleep", "30"}), nullptr);
  CHECK(s->wait_started(*h, -1) > 0);
  s->command(h->id, Supervisor::OP_KILL);
  s->wait_done(*h, -1);
  CHECK(h->result.cancelled && h->result.term_signal == SIGKILL);

  s->shutdown();
}

static void on_term(int) {}

// hasten_fatal lends priority only to a thread that SIGTERM will end: not to one that
// catches, ignores or blocks it.
static void test_hasten_fatal() {
  enum { DEFAULT, CAUGHT, IGNORED, BLOCKED, N };
  pid_t kids[N];
  for (int k = 0; k < N; ++k) {
    int ready[2];
    CHECK(pipe(ready) == 0);
    kids[k] = fork();
    if (kids[k] == 0) {
      alarm(30);
      if (k == CAUGHT) signal(SIGTERM, on_term);
      if (k == IGNORED) signal(SIGTERM, SIG_IGN);
      if (k == BLOCKED) {
        sigset_t m;
        sigemptyset(&m);
        sigaddset(&m, SIGTERM);
        sigprocmask(SIG_BLOCK, &m, nullptr);
      }
      if (write(ready[1], "r", 1) != 1) _exit(1);
      for (;;) pause();
    }
    char c;
    CHECK(read(ready[0], &c, 1) == 1);
    close(ready[0]);
    close(ready[1]);
  }
  // Whether this process may raise a priority at all (root, CAP_SYS_NICE).
  bool may = setpriority(PRIO_PROCESS, static_cast<id_t>(kids[CAUGHT]), -1) == 0;
  setpriority(PRIO_PROCESS, static_cast<id_t>(kids[CAUGHT]), 0);
  for (int k = 0; k < N; ++k) {
    hasten_fatal(kids[k], SIGTERM);
    errno = 0;
    int nice = getpriority(PRIO_PROCESS, static_cast<id_t>(kids[k]));
    CHECK(errno == 0);
    CHECK(nice == (k == DEFAULT && may ? -20 : 0));
  }
  for (pid_t p : kids) {
    kill(p, SIGKILL);
    waitpid(p, nullptr, 0);
  }
}

int main(int argc, char** argv) {
  if (argc < 2) {
    fprintf(stderr, "usage: engine_tests PATH_TO_PARDO_SHEPHERD\n");
    return 2;
  }
  alarm(120);  // a broken engine must not leave this running
  test_exec_candidates();
  test_hasten_fatal();
  std::string shepherd = argv[1];
  const char* rungs[] = {"cgroup", "shepherd", "pgroup"};
  for (const char* rung : rungs) {
    if (std::string(rung) == "cgroup" && !cgroup_unavailable_reason().empty()) {
      fprintf(stderr, "cgroup rung not available here: %s\n", cgroup_unavailable_reason().c_str());
      continue;
    }
    test_rung(rung, shepherd);
  }
  if (failures) {
    fprintf(stderr, "%d check(s) failed\n", failures);
    return 1;
  }
  printf("engine tests passed\n");
  return 0;
}
