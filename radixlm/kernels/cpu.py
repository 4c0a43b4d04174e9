"""Build, cache and load the native CPU kernels in ``csrc/cpu`` (the ``radixlm_cpu`` module).

The sources are compiled once per machine with ``torch.utils.cpp_extension`` (ninja, g++ with
OpenMP and ``-march=native``) into torch's extension cache (``$TORCH_EXTENSIONS_DIR``, by default
``~/.cache/torch_extensions``); later loads reuse the build unless a source changed. The build
is named by a hash of the source path, the sources and the flags (``radixlm_cpu_<hash>``), so
checkouts and versions never rebuild over each other: each builds once.
Concurrent loads (test workers, server processes) wait on torch's build lock instead of
building twice.

:func:`load_cpu_kernels` returns the module, or ``None`` after one warning naming the reason
(no compiler, no AVX-512, sources missing, a build error) when ``required`` is false, so the
engine falls back to the torch path. With ``required`` true the reason is a :class:`ConfigError`.
"""

from __future__ import annotations

import functools
import hashlib
import logging
import os
import shutil
import time
from pathlib import Path
from types import ModuleType

from radixlm.errors import ConfigError

logger = logging.getLogger(__name__)

SOURCES = (
    "bindings.cpp",
    "linear.cpp",
    "attention.cpp",
    "extend_attention.cpp",
    "elementwise.cpp",
    "decoder.cpp",
)
# NOTE: -ffp-contract=off keeps each product rounded where the torch reference rounds it (RoPE),
# so fp32 results agree bit for bit; the GEMM uses explicit FMA intrinsics regardless.
CFLAGS = ("-O3", "-march=native", "-fopenmp", "-ffp-contract=off", "-std=c++17")


def source_dir() -> Path:
    """``csrc/cpu`` of this checkout (the repository root is the package's parent)."""
    return Path(__file__).resolve().parents[2] / "csrc" / "cpu"


def build_name(src: Path) -> str:
    """``radixlm_cpu_<12 hex>``: a digest of the source directory's path, every source and
    header, and the compiler flags. NOTE: the path is part of it because torch's builder
    rebuilds a build whose sources moved, so two checkouts sharing one name would rebuild
    over each other on every alternate load."""
    digest = hashlib.sha256(" ".join(CFLAGS).encode() + b"\0" + str(src.resolve()).encode())
    for path in sorted(src.glob("*.[ch]*")):
        digest.update(path.name.encode() + b"\0" + path.read_bytes())
    return f"radixlm_cpu_{digest.hexdigest()[:12]}"


def _cpu_has_avx512() -> bool:
    try:
        flags = Path("/proc/cpuinfo").read_text()
    except OSError:
        return False
    return all(f in flags for f in ("avx512f", "avx512bw", "avx512vl"))


class KernelsUnavailable(RuntimeError):
    """Why the native kernels cannot be used on this machine."""


def _build() -> ModuleType:
    src = source_dir()
    missing = [s for s in SOURCES if not (src / s).is_file()]
    if missing:
        raise KernelsUnavailable(f"sources not found in {src} ({', '.join(missing)})")
    if not _cpu_has_avx512():
        raise KernelsUnavailable("this CPU has no AVX-512 (avx512f/bw/vl)")
    cxx = os.environ.get("CXX", "c++")
    if shutil.which(cxx) is None:
        raise KernelsUnavailable(f"no C++ compiler ({cxx!r} is not on PATH)")
    if shutil.which("ninja") is None:
        # The ninja wheel (a dependency) installs the binary in the environment's bin dir,
        # which is not on PATH when the interpreter is run without activating the venv.
        try:
            import ninja
        except ImportError as e:
            raise KernelsUnavailable("ninja is not installed (pip install ninja)") from e
        os.environ["PATH"] = ninja.BIN_DIR + os.pathsep + os.environ.get("PATH", "")
    from torch.utils.cpp_extension import load

    start = time.perf_counter()
    try:
        module = load(
            name=build_name(src),
            sources=[str(src / s) for s in SOURCES],
            extra_cflags=list(CFLAGS),
            extra_ldflags=["-fopenmp"],
            verbose=False,
        )
    except Exception as e:  # a build error: report it, fall back
        raise KernelsUnavailable(f"build failed: {str(e).strip().splitlines()[-1][:300]}") from e
    if not module.avx512:
        raise KernelsUnavailable("the build has no AVX-512 code (compiler flags?)")
    logger.info(
        "native CPU kernels loaded in %.1f s (avx512_bf16=%s)",
        time.perf_counter() - start,
        module.avx512_bf16,
    )
    return module


@functools.lru_cache(maxsize=1)
def _load() -> ModuleType | KernelsUnavailable:
    # NOTE: memoised per process (the result cannot change while it runs); the failure is kept
    # too, so the warning is given once and the build is not retried on every engine.
    try:
        return _build()
    except KernelsUnavailable as e:
        logger.warning("native CPU kernels unavailable (%s); using the torch path", e)
        return e


def load_cpu_kernels(required: bool) -> ModuleType | None:
    """The ``radixlm_cpu`` module, building it on first use (about a minute on 2 cores)."""
    result = _load()
    if isinstance(result, ModuleType):
        return result
    if required:
        raise ConfigError(
            f"the native CPU kernels are unavailable: {result} (cpu_kernels=native and "
            "quantization=w8a16 need them; cpu_kernels=torch runs without them)"
        )
    return None
