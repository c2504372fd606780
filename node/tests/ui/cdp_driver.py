#!/usr/bin/env python3
"""Drive a headless Chromium through the Chrome DevTools Protocol, for node/tests/ui.rs.

Standard library only: Chromium is started with --remote-debugging-pipe, so CDP
messages (JSON, NUL-terminated) travel over file descriptors 3 (to the browser) and
4 (from it); no WebSocket client is needed.

Usage: cdp_driver.py CHROMIUM PROFILE_DIR

Reads one JSON command per line on stdin, answers one JSON line on stdout:
  {"op": "goto", "url": U}             -> {"ok": true}
  {"op": "eval", "expr": JS}           -> {"ok": true, "value": V}  (promises awaited)
  {"op": "screenshot", "path": P}      -> {"ok": true, "path": P}
  {"op": "logs"}                       -> {"ok": true, "value": [console lines and exceptions]}
  {"op": "quit"}                       -> {"ok": true}, then exits
Errors answer {"ok": false, "error": "..."}. Every CDP call is bounded by a timeout.
"""

import base64
import json
import os
import subprocess
import sys
import threading
import time

CALL_TIMEOUT_S = 30


class Browser:
    def __init__(self, chromium, profile):
        to_r, to_w = os.pipe()  # we write commands, Chromium reads fd 3
        from_r, from_w = os.pipe()  # Chromium writes fd 4, we read

        def child_fds():
            # Copy out of the way first: the pipes may themselves be fds 3 or 4
            # (and dup2 onto the same number would leave close-on-exec set).
            t, f = os.dup(to_r), os.dup(from_w)
            os.dup2(t, 3)
            os.dup2(f, 4)

        args = [
            chromium,
            "--headless=new",
            "--no-sandbox",
            "--disable-gpu",
            "--disable-dev-shm-usage",
            "--no-first-run",
            "--no-default-browser-check",
            "--disable-extensions",
            "--disable-background-networking",
            "--disable-component-update",
            "--disable-sync",
            "--metrics-recording-only",
            "--remote-debugging-pipe",
            "--user-data-dir=" + profile,
            "--window-size=1400,1800",
            "about:blank",
        ]
        self.proc = subprocess.Popen(
            args,
            stdin=subprocess.DEVNULL,
            stdout=subprocess.DEVNULL,
            stderr=open(os.path.join(profile, "chromium.log"), "wb"),
            preexec_fn=child_fds,
            close_fds=False,
        )
        os.close(to_r)
        os.close(from_w)
        self.out = os.fdopen(to_w, "wb", buffering=0)
        self.inp = os.fdopen(from_r, "rb", buffering=0)
        self.next_id = 0
        self.lock = threading.Lock()
        self.cond = threading.Condition(self.lock)
        self.replies = {}
        self.logs = []
        self.closed = False
        threading.Thread(target=self._reader, daemon=True).start()
        self.session = None
        target = self.call("Target.createTarget", {"url": "about:blank"})["targetId"]
        self.session = self.call("Target.attachToTarget", {"targetId": target, "flatten": True})["sessionId"]
        self.call("Runtime.enable", {}, session=True)
        self.call("Page.enable", {}, session=True)

    def _reader(self):
        buf = b""
        while True:
            chunk = self.inp.read(65536)
            if not chunk:
                break
            buf += chunk
            while b"\0" in buf:
                raw, buf = buf.split(b"\0", 1)
                msg = json.loads(raw)
                with self.cond:
                    if "id" in msg:
                        self.replies[msg["id"]] = msg
                    elif msg.get("method") == "Runtime.consoleAPICalled":
                        p = msg["params"]
                        text = " ".join(str(a.get("value", a.get("description", ""))) for a in p.get("args", []))
                        self.logs.append("console." + p.get("type", "log") + ": " + text)
                    elif msg.get("method") == "Runtime.exceptionThrown":
                        d = msg["params"]["exceptionDetails"]
                        self.logs.append("exception: " + d.get("exception", {}).get("description", d.get("text", "")))
                    elif msg.get("method") == "Log.entryAdded":
                        self.logs.append("log: " + msg["params"]["entry"].get("text", ""))
                    self.cond.notify_all()
        with self.cond:
            self.closed = True
            self.cond.notify_all()

    def call(self, method, params, session=False, timeout=CALL_TIMEOUT_S):
        with self.cond:
            self.next_id += 1
            mid = self.next_id
        msg = {"id": mid, "method": method, "params": params}
        if session:
            msg["sessionId"] = self.session
        self.out.write(json.dumps(msg).encode() + b"\0")
        with self.cond:
            ok = self.cond.wait_for(lambda: mid in self.replies or self.closed, timeout=timeout)
            if not ok:
                raise RuntimeError("%s: no answer from Chromium within %ss" % (method, timeout))
            if mid not in self.replies:
                raise RuntimeError("%s: Chromium closed the pipe (see chromium.log in the profile dir)" % method)
            reply = self.replies.pop(mid)
        if "error" in reply:
            raise RuntimeError("%s: %s" % (method, reply["error"].get("message")))
        return reply.get("result", {})

    def quit(self):
        try:
            self.call("Browser.close", {}, timeout=5)
        except Exception:
            pass
        try:
            self.proc.wait(timeout=10)
        except subprocess.TimeoutExpired:
            self.proc.kill()
            self.proc.wait(timeout=10)


def handle(b, cmd):
    op = cmd.get("op")
    if op == "goto":
        r = b.call("Page.navigate", {"url": cmd["url"]}, session=True)
        if r.get("errorText"):
            raise RuntimeError("navigate %s: %s" % (cmd["url"], r["errorText"]))
        # Wait (bounded) until the new document has loaded.
        deadline = time.monotonic() + CALL_TIMEOUT_S
        while time.monotonic() < deadline:
            e = b.call("Runtime.evaluate", {"expression": "location.href + ' ' + document.readyState", "returnByValue": True}, session=True)
            href, _, ready = e.get("result", {}).get("value", "").rpartition(" ")
            if ready == "complete" and href != "about:blank":
                return {}
            time.sleep(0.05)
        raise RuntimeError("navigate %s: not loaded within %ss" % (cmd["url"], CALL_TIMEOUT_S))
    if op == "eval":
        r = b.call(
            "Runtime.evaluate",
            {"expression": cmd["expr"], "returnByValue": True, "awaitPromise": True, "timeout": CALL_TIMEOUT_S * 1000},
            session=True,
        )
        if "exceptionDetails" in r:
            d = r["exceptionDetails"]
            raise RuntimeError("eval: " + d.get("exception", {}).get("description", d.get("text", "exception")))
        return {"value": r.get("result", {}).get("value")}
    if op == "screenshot":
        r = b.call("Page.captureScreenshot", {"format": "png", "captureBeyondViewport": True}, session=True)
        with open(cmd["path"], "wb") as f:
            f.write(base64.b64decode(r["data"]))
        return {"path": cmd["path"]}
    if op == "logs":
        with b.cond:
            logs, b.logs = b.logs, []
        return {"value": logs}
    raise RuntimeError("unknown op %r" % op)


def main():
    chromium, profile = sys.argv[1], sys.argv[2]
    try:
        b = Browser(chromium, profile)
    except Exception as e:  # report, so the test can say why
        print(json.dumps({"ok": False, "error": "starting Chromium: %s" % e}), flush=True)
        return 1
    print(json.dumps({"ok": True, "ready": True}), flush=True)
    try:
        for line in sys.stdin:
            line = line.strip()
            if not line:
                continue
            cmd = json.loads(line)
            if cmd.get("op") == "quit":
                print(json.dumps({"ok": True}), flush=True)
                break
            try:
                res = handle(b, cmd)
                res["ok"] = True
            except Exception as e:
                res = {"ok": False, "error": str(e)}
            print(json.dumps(res), flush=True)
    finally:
        b.quit()
    return 0


if __name__ == "__main__":
    sys.exit(main())
