"""What ran a stage: interpreter, libraries, hardware and the exact code (git commit and hash)."""

from __future__ import annotations

import os
import platform
import subprocess
from importlib import metadata
from pathlib import Path

from .hashing import sha256_bytes

PACKAGES = ("torch", "numpy", "safetensors", "sentencepiece", "brotli", "typer", "rich", "golf")
_CODE_ROOT = Path(__file__).resolve().parents[2]


def _version(package: str) -> str | None:
    try:
        return metadata.version(package)
    except metadata.PackageNotFoundError:
        return None


def _cpu_name() -> str:
    try:
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            if line.startswith("model name"):
                return line.split(":", 1)[1].strip()
    except OSError:
        pass
    return platform.processor() or platform.machine()


def _git(*args: str) -> str | None:
    try:
        result = subprocess.run(
            ["git", *args], cwd=_CODE_ROOT, capture_output=True, text=True, timeout=10, check=True
        )
    except (OSError, subprocess.SubprocessError):
        return None
    return result.stdout.strip()


def code_hash() -> str:
    """sha256 over every library and CLI source file, in path order: the code that ran."""
    parts = []
    for package in ("stages", "golf_cli"):
        for path in sorted((_CODE_ROOT / package).rglob("*.py")):
            parts.append(str(path.relative_to(_CODE_ROOT)).encode() + b"\0" + path.read_bytes())
    return sha256_bytes(b"\0".join(parts))


def capture() -> dict:
    """A JSON-able description of the machine and code; cheap enough to call once per stage."""
    import torch

    cuda = torch.cuda.is_available()
    status = _git("status", "--porcelain", "--untracked-files=no")
    return {
        "python": platform.python_version(),
        "platform": platform.platform(),
        "cpu": _cpu_name(),
        "cpu_count": os.cpu_count(),
        "torch_threads": torch.get_num_threads(),
        "torch": torch.__version__,
        "cuda": torch.version.cuda if cuda else None,
        "gpus": [torch.cuda.get_device_name(i) for i in range(torch.cuda.device_count())] if cuda else [],
        "packages": {name: _version(name) for name in PACKAGES},
        "git_commit": _git("rev-parse", "HEAD"),
        "git_dirty": None if status is None else bool(status),
        "code_sha256": code_hash(),
    }


def hardware_name(environment: dict) -> str:
    """One line naming the hardware a ledger was measured on."""
    gpus = environment.get("gpus") or []
    if gpus:
        return f"{len(gpus)}x {gpus[0]}"
    return f"CPU ({environment.get('cpu_count')} cores, {environment.get('cpu')})"
