"""What CPU this is, in the terms that matter for TensorFlow's oneDNN kernels.

oneDNN picks its kernels by instruction set: AVX-512 machines and AVX2-only machines
run different code and round results differently (docs/BENCHMARKS.md says which kind
each figure was measured on). The test suite prints this line in its header.
"""

import os
import platform


def cpu_flags():
    """The CPU flags of ``/proc/cpuinfo`` (empty where there is none)."""
    try:
        with open("/proc/cpuinfo") as f:
            for line in f:
                if line.startswith("flags"):
                    return set(line.split(":", 1)[1].split())
    except OSError:
        pass
    return set()


def cpu_model():
    try:
        with open("/proc/cpuinfo") as f:
            for line in f:
                if line.startswith("model name"):
                    return line.split(":", 1)[1].strip()
    except OSError:
        pass
    return platform.processor() or platform.machine()


def isa(flags=None):
    """``"AVX-512"`` (with its VNNI / BF16 / AMX extensions), ``"AVX2"`` or ``"pre-AVX2"``."""
    flags = cpu_flags() if flags is None else flags
    if "avx512f" in flags:
        extras = [name for flag, name in (("avx512_vnni", "VNNI"), ("avx512_bf16", "BF16"),
                                          ("amx_tile", "AMX")) if flag in flags]
        return "AVX-512" + (f" ({', '.join(extras)})" if extras else "")
    return "AVX2" if "avx2" in flags else "pre-AVX2"


def cpu_summary():
    """``cpu: AMD EPYC, 2 cores, ISA AVX2; oneDNN on (TF_ENABLE_ONEDNN_OPTS=1)``."""
    onednn = os.environ.get("TF_ENABLE_ONEDNN_OPTS", "unset")
    state = "off" if onednn == "0" else "on"
    limit = os.environ.get("ONEDNN_MAX_CPU_ISA")
    return (f"cpu: {cpu_model()}, {os.cpu_count()} cores, ISA {isa()}; oneDNN {state} "
            f"(TF_ENABLE_ONEDNN_OPTS={onednn}"
            + (f", ONEDNN_MAX_CPU_ISA={limit}" if limit else "") + ")")
