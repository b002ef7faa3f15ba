"""A fake OpenAI-compatible provider for the benches: `python bench/fake_provider.py --tokens 200`.

Serves tests/fakes/openai_api.py's server (streamed `chat.completion.chunk`s, a usage trailer, `[DONE]`)
answering every call with a reply of `--tokens` words, and prints `BASE_URL <url>` once it listens.
It runs in its own process, so its CPU is not counted as the worker's.
"""

from __future__ import annotations

import argparse
import signal
import sys
import threading
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

from tests.fakes.openai_api import FakeOpenAI


def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("--tokens", type=int, default=200)
    args = parser.parse_args()
    fake = FakeOpenAI(usage_trailer=True, default=" ".join(f"w{i % 10}" for i in range(args.tokens)))
    fake.start()
    stop = threading.Event()
    signal.signal(signal.SIGTERM, lambda *_: stop.set())
    print(f"BASE_URL {fake.base_url}", flush=True)
    try:
        while not stop.wait(1):
            fake.calls.clear()  # nobody inspects them here; keep memory flat over long runs
    finally:
        fake.stop()


if __name__ == "__main__":
    main()
