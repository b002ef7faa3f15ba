"""CPU per streamed token of the worker's model layer: `python bench/worker_cpu.py [--clients 200] [--runs 3]`.

Starts the fake OpenAI-compatible provider (bench/fake_provider.py) in its own process, then in this
process streams `--clients` concurrent replies of `--tokens` tokens through `workers.model.stream_reply`
on each path (`lean`: LLM_FAST_PATH=auto; `litellm`: LLM_FAST_PATH=off; `offline`: the built-in model at
full speed) and prints this process's CPU-µs per token (user + system, from `time.process_time`), which
holds up on a shared machine far better than throughput does. Only the model layer runs here: the
flusher, stream appends and Postgres of a whole worker are measured by `bench/e2e.py --cases rg-openai`.
"""

from __future__ import annotations

import argparse
import asyncio
import statistics
import subprocess
import sys
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))

from common.platform.settings import Settings  # noqa: E402
from workers import model  # noqa: E402

MODEL = "openai/bench-model"


async def one_run(settings: Settings, name: str, clients: int) -> tuple[float, int, float]:
    """(CPU-µs per token, tokens, seconds) for `clients` concurrent replies of `name`."""
    tokens = 0

    async def one(n: int) -> None:
        nonlocal tokens
        async for _ in model.stream_reply(settings, name, [{"role": "user", "content": f"hi {n}"}], {}):
            tokens += 1

    cpu, wall = time.process_time(), time.monotonic()
    await asyncio.gather(*(one(n) for n in range(clients)))
    used, seconds = time.process_time() - cpu, time.monotonic() - wall
    return used / max(tokens, 1) * 1e6, tokens, seconds


async def measure(base_url: str, args: argparse.Namespace) -> None:
    model.configure()
    await model.litellm_module()  # loaded before any window: its import is not a cost per token
    common = {
        "llm_api_base": base_url,
        "llm_api_key": "sk-bench",
        "offline_model_tokens": args.tokens,
        "offline_model_tokens_per_second": 0,
    }
    paths = {
        "lean": (Settings(llm_fast_path="auto", **common), MODEL),  # type: ignore[arg-type]
        "litellm": (Settings(llm_fast_path="off", **common), MODEL),  # type: ignore[arg-type]
        "offline": (Settings(**common), model.OFFLINE_MODEL),
    }  # type: ignore[arg-type]
    for path in args.paths.split(","):
        settings, name = paths[path]
        await one_run(settings, name, min(args.clients, 20))  # warm-up: connections, caches, first-call imports
        figures = []
        for n in range(args.runs):
            us, tokens, seconds = await one_run(settings, name, args.clients)
            figures.append(us)
            print(f"{path} run {n + 1}: {us:.1f} CPU-µs per token ({tokens} tokens in {seconds:.2f} s)", flush=True)
        print(f"{path}: median {statistics.median(figures):.1f} CPU-µs per token over {args.runs} runs", flush=True)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--clients", type=int, default=200)
    parser.add_argument("--tokens", type=int, default=200)
    parser.add_argument("--runs", type=int, default=3)
    parser.add_argument("--paths", default="lean,litellm,offline")
    args = parser.parse_args()
    provider = subprocess.Popen(
        [sys.executable, str(ROOT / "bench" / "fake_provider.py"), "--tokens", str(args.tokens)],
        stdout=subprocess.PIPE,
        text=True,
    )
    try:
        assert provider.stdout is not None
        line = provider.stdout.readline()
        if not line.startswith("BASE_URL "):
            raise SystemExit(f"fake provider did not start: {line!r}")
        asyncio.run(measure(line.split()[1], args))
    finally:
        provider.terminate()
        provider.wait(10)


if __name__ == "__main__":
    main()
