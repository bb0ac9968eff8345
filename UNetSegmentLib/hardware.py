"""What the CPU can do, found without importing torch.

Speed depends on the instruction set far more than on the clock: the same
3D U-Net runs about three times faster on a CPU with AVX-512 than on one with
AVX2 only, and bfloat16 helps only where the CPU has native bf16 instructions
(AVX-512 BF16 or AMX); elsewhere it is emulated and many times slower. Every
benchmark and ``unetsegment info`` reports :func:`cpu_summary`.

The flags come from numpy's own run-time CPU dispatch table (the same on
Linux, macOS and Windows); the model name from ``/proc/cpuinfo``, ``sysctl``
or :mod:`platform`.
"""

from __future__ import annotations

import functools
import os
import platform
import subprocess
from dataclasses import dataclass
from typing import Dict, Optional


@dataclass(frozen=True)
class CpuInfo:
    """The CPU's model name, its widest vector instruction set, and native bf16 support."""

    model: str
    isa: str  #: "AVX-512 + AMX", "AVX-512 BF16", "AVX-512", "AVX2", "AVX", "SSE", "ARM NEON", ...
    native_bf16: bool
    cores: int

    def describe(self) -> str:
        bf16 = "native bf16" if self.native_bf16 else "no native bf16"
        return f"{self.model} ({self.isa}, {bf16}, {self.cores} cores)"


def _numpy_features() -> Dict[str, bool]:
    try:
        from numpy._core._multiarray_umath import __cpu_features__  # numpy >= 2
    except ImportError:  # pragma: no cover - numpy 1.x
        try:
            from numpy.core._multiarray_umath import __cpu_features__
        except ImportError:
            return {}
    return dict(__cpu_features__)


def _linux_cpuinfo() -> Dict[str, str]:
    try:
        with open("/proc/cpuinfo", encoding="utf-8", errors="replace") as f:
            text = f.read()
    except OSError:
        return {}
    out: Dict[str, str] = {}
    for line in text.splitlines():
        key, sep, value = line.partition(":")
        key = key.strip()
        if sep and key in ("model name", "flags", "Features", "CPU implementer") and key not in out:
            out[key] = value.strip()
        if not line.strip() and out:
            break  # the first processor is enough
    return out


def _model_name(cpuinfo: Dict[str, str]) -> str:
    if cpuinfo.get("model name"):
        return cpuinfo["model name"]
    if platform.system() == "Darwin":
        try:
            out = subprocess.run(
                ["sysctl", "-n", "machdep.cpu.brand_string"], capture_output=True, text=True, timeout=5, check=False
            )
            if out.stdout.strip():
                return out.stdout.strip()
        except (OSError, subprocess.SubprocessError):
            pass
    return platform.processor() or platform.machine() or "unknown CPU"


@functools.lru_cache(maxsize=1)
def cpu_info() -> CpuInfo:
    """The CPU this process runs on (computed once)."""
    features = _numpy_features()
    cpuinfo = _linux_cpuinfo()
    flags = set(cpuinfo.get("flags", "").split())
    machine = platform.machine().lower()
    amx = "amx_bf16" in flags
    bf16 = bool(features.get("AVX512BF16")) or "avx512_bf16" in flags or amx
    if machine in ("arm64", "aarch64") or features.get("ASIMD") or features.get("NEON"):
        arm_bf16 = bool(features.get("ASIMDBF16")) or "bf16" in cpuinfo.get("Features", "").split()
        isa = "ARM NEON" + (" + BF16" if arm_bf16 else "")
        bf16 = arm_bf16
    elif features.get("AVX512F") or "avx512f" in flags:
        isa = "AVX-512 + AMX" if amx else "AVX-512 BF16" if bf16 else "AVX-512"
    elif features.get("AVX2") or "avx2" in flags:
        isa = "AVX2"
    elif features.get("AVX") or "avx" in flags:
        isa = "AVX"
    else:
        isa = "SSE" if features.get("SSE2") else machine or "unknown"
    return CpuInfo(model=_model_name(cpuinfo), isa=isa, native_bf16=bf16, cores=os.cpu_count() or 1)


def cpu_summary() -> Dict[str, object]:
    """:func:`cpu_info` as a JSON-ready dict (benchmarks record it with every result)."""
    info = cpu_info()
    return {"model": info.model, "isa": info.isa, "native_bf16": info.native_bf16, "cores": info.cores}


def default_threads(requested: Optional[int] = None) -> int:
    """Threads for inference: ``requested``, else the CPUs this process may use (its affinity set)."""
    if requested:
        return int(requested)
    try:
        return max(1, len(os.sched_getaffinity(0)))
    except (AttributeError, OSError):
        return max(1, os.cpu_count() or 1)
