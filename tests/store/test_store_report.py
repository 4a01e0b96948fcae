"""``pardo report`` in a real browser: Debian's chromium, headless.

The page is driven through the DevTools protocol over a pipe (``--remote-debugging-pipe``:
no port, no websocket library): every request the page makes (Network domain, which sees
only this page's requests, not the browser's own background traffic), every console
message, exception and CSP report (Runtime and Log domains) is collected, and what the
page drew is read from its ``window.__pardo``. The browser's proxy points at a closed
port on loopback, so nothing can leave the machine even if a request slipped through.
Negative controls prove each detector catches what it looks for.
"""

from __future__ import annotations

import fcntl
import json
import os
import select
import shutil
import signal
import subprocess
import sys
import tempfile
import time

from storehelp import make_result

from pardo._store import StoreSink

CHROMIUM = shutil.which("chromium") or shutil.which("chromium-browser")


def _above_9(fd):
    new = fcntl.fcntl(fd, fcntl.F_DUPFD_CLOEXEC, 10)
    os.close(fd)
    return new


class _DevTools:
    """A headless chromium driven over its DevTools pipe (fd 3: commands, fd 4: replies)."""

    def __init__(self):
        assert CHROMIUM, "chromium is needed (.ci/run installs it)"
        self._profile = tempfile.mkdtemp(prefix="pardo-chromium-")
        cmd_r, self._cmd_w = os.pipe()
        self._out_r, out_w = os.pipe()
        # the child's ends must not be 3 or 4 themselves (the redirections below would
        # close them): move them above 9
        cmd_r, out_w = (_above_9(cmd_r), _above_9(out_w))
        args = [CHROMIUM, "--headless", "--disable-gpu", f"--user-data-dir={self._profile}",
                "--remote-debugging-pipe", "--proxy-server=http://127.0.0.1:9",
                "--proxy-bypass-list=<-loopback>", "--no-first-run", "--window-size=1400,1000"]
        if os.geteuid() == 0:
            args.append("--no-sandbox")  # chromium refuses to run as root with its sandbox
        # bash, not sh: dash cannot redirect fds above 9
        shell = f'exec "$@" 3<&{cmd_r} 4>&{out_w} {cmd_r}<&- {out_w}>&-'
        self._p = subprocess.Popen(["bash", "-c", shell, "bash", *args], pass_fds=(cmd_r, out_w),
                                   stdin=subprocess.DEVNULL, stdout=subprocess.DEVNULL,
                                   stderr=subprocess.DEVNULL,
                                   start_new_session=True)
        os.close(cmd_r)
        os.close(out_w)
        self._buf = b""
        self._id = 0
        self.events = []

    def send(self, method, session=None, **params):
        self._id += 1
        msg = {"id": self._id, "method": method, "params": params}
        if session:
            msg["sessionId"] = session
        os.write(self._cmd_w, json.dumps(msg).encode() + b"\0")
        return self.wait(lambda m: m.get("id") == self._id)

    def wait(self, pred, timeout=60):
        """Read messages until one satisfies *pred*; keep events."""
        end = time.monotonic() + timeout
        while True:
            while b"\0" in self._buf:
                raw, self._buf = self._buf.split(b"\0", 1)
                m = json.loads(raw)
                if "method" in m:
                    self.events.append(m)
                if pred(m):
                    if "error" in m:
                        raise RuntimeError(m["error"])
                    return m
            left = end - time.monotonic()
            assert left > 0, "chromium did not answer in time"
            if select.select([self._out_r], [], [], left)[0]:
                chunk = os.read(self._out_r, 1 << 20)
                assert chunk, "chromium exited"
                self._buf += chunk

    def close(self):
        try:
            os.killpg(self._p.pid, signal.SIGKILL)  # the browser, its zygote and renderers
        except ProcessLookupError:
            pass
        self._p.wait()
        os.close(self._cmd_w)
        os.close(self._out_r)
        shutil.rmtree(self._profile, ignore_errors=True)


def load(path, interact=None):
    """Load *path* in headless chromium. Returns (window.__pardo, problems, requests): the
    console errors/warnings, exceptions and log errors; the URLs the page requested besides
    itself. ``interact(send)`` runs after the load (``send(method, **params)`` talks to the
    page) and its result replaces window.__pardo in the answer."""
    url = f"file://{os.path.abspath(path)}"
    b = _DevTools()
    try:
        target = b.send("Target.createTarget", url="about:blank")["result"]["targetId"]
        session = b.send("Target.attachToTarget", targetId=target,
                         flatten=True)["result"]["sessionId"]
        for domain in ("Page", "Network", "Runtime", "Log"):
            b.send(f"{domain}.enable", session)
        b.send("Page.navigate", session, url=url)
        b.wait(lambda m: m.get("method") == "Page.loadEventFired"
               and m.get("sessionId") == session)
        got = b.send("Runtime.evaluate", session, returnByValue=True,
                     expression="JSON.stringify(window.__pardo || null)")
        state = json.loads(got["result"]["result"]["value"])
        if interact is not None:
            state = interact(lambda method, **kw: b.send(method, session, **kw))
        problems, requests = [], []
        for e in b.events:
            m, p = e["method"], e.get("params", {})
            if m == "Runtime.consoleAPICalled" and p["type"] in ("error", "warning", "assert"):
                problems.append(" ".join(str(a.get("value", a.get("description")))
                                         for a in p["args"]))
            elif m == "Runtime.exceptionThrown":
                d = p["exceptionDetails"]
                problems.append(d.get("exception", {}).get("description") or d["text"])
            elif m == "Log.entryAdded" and p["entry"]["level"] in ("error", "warning"):
                problems.append(p["entry"]["text"])
            elif m == "Network.requestWillBeSent" and p["request"]["url"] != url:
                requests.append(p["request"]["url"])
        return state, problems, requests
    finally:
        b.close()


def _store(path, n, slots, *, retries=True):
    sink = StoreSink(path)
    sink.run_started(template="measure {}", rung="cgroup")
    t0 = 1_700_000_000.0
    kinds = [("ok", 0), ("ok", 0), ("ok", 0), ("failed", 2), ("timeout", None), ("ok", 0),
             ("error", None), ("ok", 0), ("signaled", None)]
    attempts = 0
    for seq in range(1, n + 1):
        status, rc = kinds[seq % len(kinds)]
        slot = (seq - 1) % slots + 1
        start = t0 + (seq - 1) // slots * 0.01
        if retries and status == "failed":
            sink.task_done(seq, (str(seq),), f"measure {seq}", 1,
                           make_result("failed", 2, started_at=start, duration=0.004),
                           final=False, slot=slot)
            attempts += 1
            start += 0.005
        r = make_result(status, rc, started_at=start, duration=0.004 + (seq % 7) * 0.0007,
                        signal=9 if status == "signaled" else None,
                        deadline=0.004 if status == "timeout" else None,
                        error="No such file or directory: 'measure'" if status == "error"
                        else None)
        sink.task_done(seq, (str(seq),), f"measure <{seq}> </script>", 2 if retries and
                       status == "failed" else 1, r, slot=slot)
        attempts += 1
    sink.run_ended("completed")
    return attempts


def _report(store, out):
    p = subprocess.run([sys.executable, "-m", "pardo", "report", store, "-o", out],
                       capture_output=True, timeout=300, check=False)
    assert p.returncode == 0, p.stderr
    return os.path.getsize(out)


def test_the_report_renders_one_lane_per_slot_and_a_bar_per_attempt(tmp_path):
    store, out = str(tmp_path / "runs.db"), str(tmp_path / "report.html")
    attempts = _store(store, 600, slots=5)
    _report(store, out)
    state, problems, requests = load(out)
    assert problems == [] and requests == []
    assert state["errors"] == []
    assert state["lanes"] == 5
    assert state["bars"] == state["drawn"] == attempts > 600
    assert state["histBins"] == 40
    with open(out, encoding="utf-8") as f:
        html = f.read()
    assert "http://" not in html and "https://" not in html and "src=" not in html
    assert "Content-Security-Policy" in html


def test_a_100000_task_report_loads_in_under_2_seconds(tmp_path):
    store, out = str(tmp_path / "runs.db"), str(tmp_path / "report.html")
    attempts = _store(store, 100_000, slots=16, retries=False)
    size = _report(store, out)
    assert size < 5_000_000, size  # "a few MB at most"
    state, problems, requests = load(out)
    assert problems == [] and requests == []
    assert state["lanes"] == 16 and state["drawn"] == attempts == 100_000
    # from navigation start to the end of the first full drawing, in the page's own clock
    assert state["renderMs"] < 2000, state


def _eval(send, expr):
    return json.loads(send("Runtime.evaluate", expression=f"JSON.stringify({expr})",
                           returnByValue=True)["result"]["result"]["value"])


def test_hover_shows_the_task_and_dragging_zooms_into_a_time_range(tmp_path):
    store, out = str(tmp_path / "runs.db"), str(tmp_path / "report.html")
    _store(store, 400, slots=4, retries=False)
    _report(store, out)

    def interact(send):
        box = _eval(send, "(() => { const r = document.getElementById('timeline')"
                          ".getBoundingClientRect(); return [r.left, r.top, r.width]; })()")
        left, top, width = box
        mouse = lambda kind, x, y, **kw: send("Input.dispatchMouseEvent", type=kind, x=x, y=y,  # noqa: E731
                                              **kw)
        # the first lane's first bar starts at the time axis' 0, 64 px into the canvas
        mouse("mouseMoved", left + 66, top + 5)
        tip = _eval(send, "[document.getElementById('tip').style.display, "
                          "document.getElementById('tip').textContent]")
        before = _eval(send, "window.__pardo.drawn")
        x0, x1 = left + 64 + (width - 72) * 0.25, left + 64 + (width - 72) * 0.35
        mouse("mousePressed", x0, top + 5, button="left", clickCount=1)
        mouse("mouseMoved", x1, top + 5, button="left")
        mouse("mouseReleased", x1, top + 5, button="left", clickCount=1)
        zoomed = _eval(send, "window.__pardo.drawn")
        send("Runtime.evaluate", expression="document.getElementById('reset').click()")
        return {"tip": tip, "before": before, "zoomed": zoomed,
                "reset": _eval(send, "window.__pardo.drawn")}

    state, problems, requests = load(out, interact)
    assert problems == [] and requests == []
    assert state["tip"][0] == "block" and state["tip"][1].startswith("task 1 "), state["tip"]
    assert "measure <1> </script>" in state["tip"][1]  # the command, unharmed by the page
    # a tenth of the time range holds about a tenth of the bars (plus the ones it cuts)
    assert state["before"] == state["reset"] == 400
    assert 20 <= state["zoomed"] <= 70, state


def test_the_detectors_catch_errors_and_requests(tmp_path):
    # negative controls: a page that warns, throws, breaks its CSP and fetches from outside
    bad = tmp_path / "bad.html"
    bad.write_text(
        "<!doctype html><html><head><meta http-equiv='Content-Security-Policy' "
        "content=\"default-src 'none'; script-src 'unsafe-inline'\"></head><body>"
        "<script>console.error('boom'); new Image().src = 'http://example.invalid/x.png';"
        "setTimeout(() => undefinedFunction(), 0);</script>"
        "<img src='https://blocked.invalid/y.png'></body></html>")
    state, problems, requests = load(str(bad))
    assert state is None
    text = " | ".join(problems)
    assert "boom" in text and "undefinedFunction" in text and "blocked.invalid" in text, text
    bad.write_text("<!doctype html><body><img src='http://example.invalid/x.png'></body>")
    state, problems, requests = load(str(bad))
    assert requests == ["http://example.invalid/x.png"], requests
