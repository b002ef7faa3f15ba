"""Supply-chain guards for the environment the tests run in.

litellm 1.82.7 and 1.82.8 were compromised releases: a `.pth` file in site-packages ran
their payload at every Python start. These tests fail when an unexpected `.pth` file
appears, when a compromised litellm is installed or locked, when `uv.lock` stops pinning
every registry package to an exact version with hashes, and when the gateway starts
importing litellm (only workers may, DESIGN §1).
"""

from __future__ import annotations

import importlib.metadata
import os
import site
import subprocess
import sys
import sysconfig
import tomllib
from pathlib import Path

from tests.conftest import ROOT

COMPROMISED_LITELLM = {"1.82.7", "1.82.8"}
# Exactly what a clean `uv sync --extra worker` installs: the editable install of relaygate,
# whose .pth lists the project folder once per package (plain paths, no code).
ALLOWED_PTH = {"_editable_impl_relaygate.pth"}


def _site_dirs() -> list[Path]:
    dirs = [*site.getsitepackages(), sysconfig.get_paths()["purelib"]]
    return sorted({Path(d).resolve() for d in dirs if Path(d).is_dir()})


def _first_line(path: Path) -> str:
    lines = path.read_text(errors="replace").splitlines()
    return lines[0][:200] if lines else ""


def test_no_unexpected_pth_files() -> None:
    pth_files = [p for d in _site_dirs() for p in sorted(d.glob("*.pth"))]
    unexpected = [f"{p} (first line: {_first_line(p)!r})" for p in pth_files if p.name not in ALLOWED_PTH]
    assert not unexpected, (
        "unexpected .pth files in site-packages (they can run code at every Python start):\n" + "\n".join(unexpected)
    )
    for p in pth_files:  # the allowed ones only add paths: a line starting with `import` would run code
        code = [line for line in p.read_text().splitlines() if line.lstrip().startswith("import")]
        assert not code, f"{p} runs code: {code[0][:200]!r}"


def test_installed_litellm_is_not_compromised() -> None:
    version = importlib.metadata.version("litellm")
    assert version not in COMPROMISED_LITELLM, f"litellm {version} is a compromised release"


def test_lock_pins_every_package_with_hashes() -> None:
    lock = tomllib.loads((ROOT / "uv.lock").read_text())
    problems = []
    registry_packages = [p for p in lock["package"] if "registry" in p.get("source", {})]
    assert registry_packages, "uv.lock has no registry packages"
    for package in registry_packages:
        name = package["name"]
        if not package.get("version"):
            problems.append(f"{name}: no version")
        artifacts = ([package["sdist"]] if "sdist" in package else []) + package.get("wheels", [])
        if not artifacts:
            problems.append(f"{name}: no sdist or wheels")
        problems += [
            f"{name}: {a.get('url')} has no sha256 hash"
            for a in artifacts
            if not str(a.get("hash", "")).startswith("sha256:")
        ]
    assert not problems, "\n".join(problems)
    locked = {p["version"] for p in registry_packages if p["name"] == "litellm"}
    assert locked and not locked & COMPROMISED_LITELLM, f"locked litellm {locked}"


def test_gateway_does_not_import_litellm() -> None:
    env = {
        k: v
        for k, v in os.environ.items()
        if k not in ("DATABASE_URL", "REDIS_URL") and not k.startswith(("QUEUE_REDIS", "STREAM_REDIS"))
    }
    result = subprocess.run(
        [sys.executable, "-c", "import api.main, sys; print('litellm' in sys.modules)"],
        env=env,
        cwd=ROOT,
        capture_output=True,
        text=True,
        timeout=120,
    )
    assert result.returncode == 0, result.stderr
    assert result.stdout.strip() == "False", result.stdout + result.stderr
