"""Smoke client for compose/smoke.sh (stdlib only): stream N replies through the gateway,
kill the busiest worker container mid-reply, and check every reply still completes."""

from __future__ import annotations

import http.client
import json
import subprocess
import sys
import threading
import time
from dataclasses import dataclass, field


@dataclass
class Reply:
    tokens: int = 0
    status: str = ""
    retried: bool = False
    retried_at: float = 0.0
    events: list[str] = field(default_factory=list)
    error: str = ""
    done_at: float = 0.0


def stream(host: str, port: int, token: str, n: int, reply: Reply, started: threading.Event) -> None:
    """POST one CLI request with Accept: text/event-stream and read its events until `done`."""
    body = json.dumps({"content": f"smoke request {n}", "new_session": True})
    conn = http.client.HTTPConnection(host, port, timeout=300)
    try:
        conn.request(
            "POST",
            "/api/v1/requests/cli",
            body=body,
            headers={
                "Authorization": f"Bearer {token}",
                "Content-Type": "application/json",
                "Accept": "text/event-stream",
            },
        )
        response = conn.getresponse()
        if response.status >= 400:
            reply.error = f"HTTP {response.status} {response.read()[:200]!r}"
            return
        event = ""
        for raw in response:
            line = raw.decode().rstrip("\r\n")
            if line.startswith("event:"):
                event = line[6:].strip()
            elif line.startswith("data:") and event:
                reply.events.append(event)
                if event == "token":
                    reply.tokens += 1
                    started.set()
                elif event == "run.retrying":
                    reply.retried, reply.retried_at = True, time.monotonic()
                elif event == "done":
                    reply.status = json.loads(line[5:]).get("data", {}).get("status", "")
                    reply.done_at = time.monotonic()
                    return
            elif not line:
                event = ""
    except Exception as exc:
        reply.error = f"{type(exc).__name__}: {exc}"
    finally:
        conn.close()


def active_runs(container: str) -> float:
    """relaygate_worker_active_runs of one worker container, read from its metrics port."""
    code = (
        "import os,urllib.request;print(urllib.request.urlopen('http://127.0.0.1:%s/metrics'"
        " % os.environ['WORKER_METRICS_PORT']).read().decode())"
    )
    argv = ["podman", "exec", container, "python3", "-c", code]
    out = subprocess.run(argv, capture_output=True, text=True, check=False).stdout
    for line in out.splitlines():
        if line.startswith("relaygate_worker_active_runs "):
            return float(line.split()[1])
    return 0.0


def main() -> int:
    host, port, token, count = sys.argv[1], int(sys.argv[2]), sys.argv[3], int(sys.argv[4])
    workers = sys.argv[5:]
    replies = [Reply() for _ in range(count)]
    flags = [threading.Event() for _ in range(count)]
    threads = [
        threading.Thread(target=stream, args=(host, port, token, i, replies[i], flags[i]), daemon=True)
        for i in range(count)
    ]
    begin = time.monotonic()
    for t in threads:
        t.start()
    for f in flags:
        f.wait(timeout=120)
    busy = max(workers, key=active_runs)
    busy_runs = active_runs(busy)
    killed_at = time.monotonic()
    subprocess.run(["podman", "kill", "--signal", "KILL", busy], check=True, capture_output=True)  # noqa: S607
    print(
        f"killed worker {busy} mid-reply ({busy_runs:.0f} replies running on it), "
        f"{killed_at - begin:.1f}s after the first request",
        flush=True,
    )
    for t in threads:
        t.join(timeout=300)
    completed = [r for r in replies if r.status == "completed"]
    retried = [r for r in replies if r.retried]
    last = max((r.done_at for r in replies if r.done_at), default=killed_at)
    print(f"requests sent: {count}")
    print(f"requests completed: {len(completed)}")
    print(f"requests retried after the kill: {len(retried)}")
    if retried:
        print(f"time from the kill to the first retry: {min(r.retried_at for r in retried) - killed_at:.1f}s")
    print(f"time to complete every reply after the kill: {last - killed_at:.1f}s")
    for i, r in enumerate(replies):
        if r.status != "completed":
            print(f"  request {i}: status={r.status!r} error={r.error!r} events={r.events[-5:]}")
    return 0 if len(completed) == count and busy_runs > 0 else 1


if __name__ == "__main__":
    sys.exit(main())
