"""The survivor detector: what a task left behind, read straight from /proc.

Used both by the zoo driver (inside the process that ran the tasks, possibly as an
unprivileged user and under Debian's python without third-party packages, so this module
uses the standard library only) and by the pytest side (as root, which can read every
process's environment).

A zoo process carries its token in argv and in ``PARDO_ZOO_TOKEN``; a zombie has neither
(its memory is gone), so zombies are found separately, by parent pid.
"""

from __future__ import annotations

import os
import signal
import time


def _pids():
    for name in os.listdir("/proc"):
        if name.isdigit():
            yield int(name)


def _read(path):
    try:
        with open(path, "rb") as f:
            return f.read()
    except OSError:  # gone, or not ours to read
        return b""


def proc_stat(pid):
    """(state, ppid, comm) of ``pid``, or None if it is gone."""
    raw = _read(f"/proc/{pid}/stat")
    if not raw:
        return None
    # comm may hold spaces and parentheses: the fields after it start at the last ')'.
    close = raw.rfind(b")")
    comm = raw[raw.find(b"(") + 1 : close].decode("utf-8", "replace")
    rest = raw[close + 2 :].split()
    return rest[0].decode(), int(rest[1]), comm


def token_processes(token):
    """Live processes whose argv or environment contains ``token``.

    Returns a list of dicts (pid, state, ppid, comm, where). Processes whose environment
    we may not read are still found by argv, which every zoo process carries.
    """
    tok = token.encode() if isinstance(token, str) else token
    me = os.getpid()
    found = []
    for pid in _pids():
        if pid == me:
            continue
        where = []
        if tok in _read(f"/proc/{pid}/cmdline"):
            where.append("cmdline")
        if tok in _read(f"/proc/{pid}/environ"):
            where.append("environ")
        if not where:
            continue
        st = proc_stat(pid)
        if st is None or st[0] in ("Z", "X"):
            continue
        found.append({"pid": pid, "state": st[0], "ppid": st[1], "comm": st[2], "where": where})
    return found


def wait_for_token_processes(token, n, limit=5.0, comm=None, what=None):
    """Wait until at least ``n`` processes carry ``token`` (only those named ``comm``,
    if given) and return them; fail after ``limit`` seconds, saying ``what`` if given."""
    end = time.monotonic() + limit
    while True:
        found = [q for q in token_processes(token) if comm is None or q["comm"] == comm]
        if len(found) >= n:
            return found
        assert time.monotonic() < end, what or f"fewer than {n} processes with {token}"
        time.sleep(0.01)


def survivors(token, settle=1.0):
    """Token processes still alive after giving the kernel up to ``settle`` seconds to
    finish processes that were already sent SIGKILL (death is not instantaneous)."""
    end = time.monotonic() + settle
    while True:
        found = token_processes(token)
        if not found or time.monotonic() >= end:
            return found
        time.sleep(0.02)


def children(ppid=None):
    """{pid: (state, comm)} of the processes whose parent is ``ppid`` (default: us)."""
    ppid = os.getpid() if ppid is None else ppid
    out = {}
    for pid in _pids():
        st = proc_stat(pid)
        if st is not None and st[1] == ppid:
            out[pid] = (st[0], st[2])
    return out


def zombie_children(ppid=None, settle=1.0):
    """Zombies whose parent is ``ppid`` (default: us), after up to ``settle`` seconds
    for an asynchronous reaper (the supervisor thread) to collect them."""
    end = time.monotonic() + settle
    while True:
        z = {p: c for p, (s, c) in children(ppid).items() if s == "Z"}
        if not z or time.monotonic() >= end:
            return z
        time.sleep(0.02)


def zombies_named(comm, ignore=(), settle=0.0, patient_with=None):
    """Zombies anywhere on the machine whose comm is ``comm``, as {pid: ppid}, leaving out
    the pids in ``ignore``; polls up to ``settle`` seconds for them to be reaped, but not
    for those whose parent is ``patient_with`` (they are returned without waiting).

    Zombies of a killed tree end up with whoever adopts orphans; where that is a PID 1
    that never reaps (some containers and VMs), they would pile up until pids run out.
    """
    end = time.monotonic() + settle
    while True:
        out = {}
        for pid in _pids():
            st = proc_stat(pid)
            if st is not None and st[0] == "Z" and st[2] == comm and pid not in ignore:
                out[pid] = st[1]
        if all(pp == patient_with for pp in out.values()) or time.monotonic() >= end:
            return out
        time.sleep(0.02)


def fd_table():
    """{fd: target} of this process's open file descriptors."""
    out = {}
    for name in os.listdir("/proc/self/fd"):
        try:
            out[int(name)] = os.readlink(f"/proc/self/fd/{name}")
        except OSError:  # the fd listdir itself used, closed by now
            pass
    return out


def cgroup2_mount():
    """Where cgroup v2 is mounted (from /proc/self/mountinfo), or None."""
    for line in _read("/proc/self/mountinfo").decode().splitlines():
        left, _, right = line.partition(" - ")
        if right.split()[:1] == ["cgroup2"]:
            return left.split()[4]
    return None


def seqpacket_sockets():
    """Inodes of this network namespace's connected unix SOCK_SEQPACKET sockets.

    Read from /proc/net/unix (its Type column: 0005 is SOCK_SEQPACKET; St 03: connected).
    """
    inodes = set()
    for line in _read("/proc/net/unix").decode("latin-1").splitlines()[1:]:
        cols = line.split()
        if len(cols) >= 7 and cols[4] == "0005" and cols[5] == "03":
            inodes.add(cols[6])
    return inodes


def fd_leaks(before, after, pooled_cgroups=True, pooled_keepers=True):
    """Descriptors open in ``after`` that were not open (to the same thing) in ``before``.

    With ``pooled_cgroups``, descriptors of cgroup files are not counted: the cgroup rung
    keeps a pool of task leaves open for reuse, which grows with the number of tasks in
    flight at once; that the pool stays bounded is tested on its own.
    With ``pooled_keepers``, connected unix SOCK_SEQPACKET sockets are not counted either:
    the shepherd rung keeps one to each idle kept keeper, as many as tasks ran at once
    (pardo opens no other socket of that type; that the pool stays bounded is tested in
    tests/engine/test_kept_keepers.py).
    """
    mount = cgroup2_mount() if pooled_cgroups else None
    pooled = set()
    if pooled_keepers and any(t.startswith("socket:[") for t in after.values()):
        pooled = {f"socket:[{i}]" for i in seqpacket_sockets()}
    return {
        fd: t for fd, t in after.items()
        if before.get(fd) != t and not (mount and t.startswith(mount + "/")) and t not in pooled
    }


def kill_all(procs):
    """SIGKILL the given processes (dicts from :func:`token_processes`) by pid; they are
    ours, started by this test run and found by their token."""
    for p in procs:
        try:
            os.kill(p["pid"], signal.SIGKILL)
        except ProcessLookupError:
            pass


def vm_hwm():
    """Peak resident set size of this process in bytes (VmHWM)."""
    for line in _read("/proc/self/status").splitlines():
        if line.startswith(b"VmHWM:"):
            return int(line.split()[1]) * 1024
    return 0


def reset_hwm():
    """Reset VmHWM to the current RSS (Linux: write 5 to clear_refs), so that a later
    :func:`vm_hwm` measures the peak of what came after. Returns False if not allowed."""
    try:
        with open("/proc/self/clear_refs", "w") as f:
            f.write("5")
        return True
    except OSError:
        return False
