"""llama.cpp for ``bench/vs_llamacpp.py``: ``llama-server`` built from source, GGUF conversions.

Both come from the llama.cpp sources vendored in the ``llama-cpp-python`` sdist on PyPI
(``LLAMA_CPP_PYTHON``; 0.3.36 vendors llama.cpp 0c1e570). Nothing is copied into this repo;
everything is cached under ``bench/.cache/llamacpp/`` (gitignored), so a second run reuses it:

    sdist/llama_cpp_python-<v>.tar.gz    pip download --no-binary :all: --no-deps
    <v>/src/                             its vendor/llama.cpp tree (+ LLAMA_CPP_COMMIT)
    <v>/build/bin/llama-server           cmake + ninja, Release, CPU only, target llama-server
    <v>/build.log                        the configure + build output
    <v>/gguf/<model>-<outtype>.gguf      convert_hf_to_gguf.py --outtype f32 | bf16 | q8_0

The build runs under ``nice -n 19`` (about 9 minutes on 2 cores). The converter needs the
``gguf`` package and ``sentencepiece``: the first conversion pip-installs the sdist's own
``gguf-py`` (which pulls ``requests`` etc. from PyPI) and ``sentencepiece`` (as pinned in the
sdist's ``requirements/``) into the running environment.
"""

from __future__ import annotations

import importlib.metadata
import os
import shutil
import subprocess
import sys
import tarfile
import time
from dataclasses import dataclass
from pathlib import Path

from common import CACHE_ROOT

LLAMA_CPP_PYTHON = "0.3.36"
CACHE = CACHE_ROOT / "llamacpp"
OUTTYPES = ("f32", "bf16", "q8_0")
# tarfile's "data" filter (refuses links out of the tree etc.) where this Python has it.
SAFE = {"filter": "data"} if hasattr(tarfile, "data_filter") else {}
# NOTE: GGML_NATIVE tunes for this CPU (as a local llama.cpp build does); the web UI, OpenSSL,
# tests, examples and every GPU backend are off, so the build needs no network.
CMAKE_FLAGS = (
    "-DCMAKE_BUILD_TYPE=Release",
    "-DBUILD_SHARED_LIBS=OFF",
    "-DGGML_NATIVE=ON",
    "-DGGML_CUDA=OFF",
    "-DGGML_VULKAN=OFF",
    "-DGGML_METAL=OFF",
    "-DLLAMA_BUILD_TESTS=OFF",
    "-DLLAMA_BUILD_EXAMPLES=OFF",
    "-DLLAMA_BUILD_SERVER=ON",
    "-DLLAMA_BUILD_UI=OFF",
    "-DLLAMA_USE_PREBUILT_UI=OFF",
    "-DLLAMA_OPENSSL=OFF",
)


@dataclass(frozen=True)
class LlamaCpp:
    version: str  # llama-cpp-python's
    commit: str  # llama.cpp's, from the sdist's submodule HEAD ("" if unknown)
    src: Path
    server: Path

    def gguf_path(self, model_dir: Path, outtype: str) -> Path:
        return CACHE / self.version / "gguf" / f"{model_dir.name}-{outtype}.gguf"


def _run(cmd: list[str], log: Path, cwd: Path | None = None, nice: bool = False) -> None:
    """Run ``cmd``, appending its output to ``log``; exit with the log's tail if it fails."""
    if nice:
        cmd = ["nice", "-n", "19", *cmd]
    with open(log, "a") as out:
        out.write(f"\n$ {' '.join(cmd)}\n")
        out.flush()
        code = subprocess.run(cmd, stdout=out, stderr=subprocess.STDOUT, cwd=cwd).returncode
    if code:
        tail = "\n".join(log.read_text(errors="replace").splitlines()[-30:])
        sys.exit(f"error: {cmd[0] if not nice else cmd[3]} failed ({code}); see {log}\n{tail}")


def fetch_sources(version: str = LLAMA_CPP_PYTHON) -> Path:
    """The sdist's ``vendor/llama.cpp`` tree, downloaded and unpacked once."""
    src = CACHE / version / "src"
    if (src / "CMakeLists.txt").is_file():
        return src
    sdist_dir = CACHE / "sdist"
    sdist = sdist_dir / f"llama_cpp_python-{version}.tar.gz"
    if not sdist.is_file():
        print(f"downloading the llama-cpp-python {version} sdist ...", flush=True)
        sdist_dir.mkdir(parents=True, exist_ok=True)
        cmd = [sys.executable, "-m", "pip", "download", "--no-binary", ":all:", "--no-deps"]
        cmd += ["-d", str(sdist_dir), f"llama-cpp-python=={version}"]
        if subprocess.run(cmd, stdout=subprocess.DEVNULL).returncode or not sdist.is_file():
            sys.exit(f"error: could not download llama-cpp-python=={version} into {sdist_dir}")
    # Unpack into a temporary sibling and rename, so an interrupted unpack is never reused.
    tmp = src.with_name(f".src.tmp-{os.getpid()}")
    shutil.rmtree(tmp, ignore_errors=True)
    top = f"llama_cpp_python-{version}"
    vendored = f"{top}/vendor/llama.cpp/"
    head = f"{top}/.git/modules/vendor/llama.cpp/HEAD"
    with tarfile.open(sdist) as tar:
        commit = ""
        for member in tar:
            if member.name == head and member.isfile():
                commit = tar.extractfile(member).read().decode().strip()  # type: ignore[union-attr]
            elif member.name.startswith(vendored) and (member.isfile() or member.isdir()):
                member.name = member.name[len(vendored) :]
                tar.extract(member, tmp, **SAFE)
    (tmp / "LLAMA_CPP_COMMIT").write_text(commit + "\n")
    src.parent.mkdir(parents=True, exist_ok=True)
    os.replace(tmp, src)
    return src


def build(version: str = LLAMA_CPP_PYTHON, jobs: int | None = None) -> LlamaCpp:
    """``llama-server`` (CPU, Release), built once with cmake + ninja under ``nice -n 19``."""
    src = fetch_sources(version)
    commit = (src / "LLAMA_CPP_COMMIT").read_text().strip()
    build_dir = CACHE / version / "build"
    server = build_dir / "bin" / "llama-server"
    done = CACHE / version / "build.done"
    tool = LlamaCpp(version, commit, src, server)
    if server.is_file() and done.is_file():
        return tool
    for exe in ("cmake", "ninja", "nice"):
        if shutil.which(exe) is None:
            sys.exit(f"error: building llama-server needs {exe!r} on PATH")
    log = CACHE / version / "build.log"
    log.write_text("")
    jobs = jobs or os.cpu_count() or 1
    print(
        f"building llama-server (llama.cpp {commit[:7] or '?'}) with {jobs} jobs under "
        f"nice -n 19; log: {log} (about 9 minutes on 2 cores) ...",
        flush=True,
    )
    t0 = time.perf_counter()
    configure = ["cmake", "-S", str(src), "-B", str(build_dir), "-G", "Ninja", *CMAKE_FLAGS]
    _run(configure, log, nice=True)
    cmd = ["cmake", "--build", str(build_dir), "--target", "llama-server", "-j", str(jobs)]
    _run(cmd, log, nice=True)
    done.write_text(f"{time.perf_counter() - t0:.0f} s\n")
    print(f"built {server} in {time.perf_counter() - t0:.0f} s", flush=True)
    return tool


def ensure_converter_packages(src: Path) -> None:
    """pip-install what ``convert_hf_to_gguf.py`` imports and this environment lacks: the sdist's
    own ``gguf-py`` (unless that version of ``gguf`` is installed) and ``sentencepiece`` (it
    imports it even for a BPE vocabulary), pinned as the sdist's requirements pin it."""
    wanted = ""
    for line in (src / "gguf-py" / "pyproject.toml").read_text().splitlines():
        if line.startswith("version"):
            wanted = line.split("=", 1)[1].strip().strip("\"'")
            break
    reqs = (src / "requirements" / "requirements-convert_legacy_llama.txt").read_text()
    sentencepiece = next(
        (ln.strip() for ln in reqs.splitlines() if ln.startswith("sentencepiece")), "sentencepiece"
    )
    missing = []
    for name, spec in (("gguf", str(src / "gguf-py")), ("sentencepiece", sentencepiece)):
        try:
            version = importlib.metadata.version(name)
            if name == "gguf" and version != wanted:
                missing.append(spec)
        except importlib.metadata.PackageNotFoundError:
            missing.append(spec)
    if not missing:
        return
    print(f"installing {', '.join(missing)} into {sys.prefix} ...", flush=True)
    cmd = [sys.executable, "-m", "pip", "install", "--quiet", *missing]
    if subprocess.run(cmd).returncode:
        sys.exit(f"error: pip could not install {', '.join(missing)}")


def convert(tool: LlamaCpp, model_dir: Path, outtype: str) -> Path:
    """The bench checkpoint as GGUF in ``outtype`` (one of ``OUTTYPES``), converted once."""
    out = tool.gguf_path(model_dir, outtype)
    if out.is_file():
        return out
    ensure_converter_packages(tool.src)
    out.parent.mkdir(parents=True, exist_ok=True)
    tmp = out.with_name(f".{out.name}.tmp-{os.getpid()}")
    log = out.with_suffix(".log")
    log.write_text("")
    print(f"converting {model_dir.name} to GGUF {outtype} ...", flush=True)
    t0 = time.perf_counter()
    cmd = [sys.executable, str(tool.src / "convert_hf_to_gguf.py"), str(model_dir)]
    _run([*cmd, "--outtype", outtype, "--outfile", str(tmp)], log, cwd=tool.src, nice=True)
    os.replace(tmp, out)
    print(f"wrote {out} in {time.perf_counter() - t0:.0f} s", flush=True)
    return out
