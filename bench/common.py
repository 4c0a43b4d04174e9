"""Helpers shared by the benchmarks in ``bench/``: the random-weight model, prompts, subprocesses.

Every benchmark measures one random-weight Llama of realistic shape (``ModelShape``), built once
with a fixed seed and cached in ``bench/.cache/``, with the GPT-2 tokenizer; each system runs in
its own freshly spawned subprocess (``in_subprocess``). Scripts import this module as ``common``
(``python bench/<script>.py`` puts ``bench/`` on ``sys.path``, and spawned workers inherit it).
"""

from __future__ import annotations

import json
import logging
import os
import platform
import shlex
import shutil
import subprocess
import sys
from concurrent.futures import ProcessPoolExecutor
from dataclasses import asdict, dataclass
from datetime import datetime
from multiprocessing import get_context
from pathlib import Path
from typing import Any

REPO_ROOT = Path(__file__).resolve().parent.parent
DEFAULT_TOKENIZER = "../shared/tokenizers/gpt2"
DEFAULT_SHAREGPT = "../shared/data/sharegpt_mlenergy/ShareGPT_V3_filtered_1000.json"
CACHE_ROOT = REPO_ROOT / "bench" / ".cache"
MODEL_SEED = 0
MB = 2**20


@dataclass(frozen=True)
class ModelShape:
    hidden: int = 768
    layers: int = 12
    heads: int = 12
    kv_heads: int = 4
    intermediate: int = 2048
    max_positions: int = 2048
    tied: bool = True  # LM head shares the embedding (False: its own random weights)

    def key(self, vocab: int) -> str:
        return (
            f"llama-h{self.hidden}-l{self.layers}-a{self.heads}-kv{self.kv_heads}"
            f"-f{self.intermediate}-v{vocab}-ctx{self.max_positions}"
            f"-{'tied' if self.tied else 'untied'}-seed{MODEL_SEED}"
        )


# ---- setup (parent process) -----------------------------------------------------------------
def repo_path(p: str) -> Path:
    """Relative paths are resolved against the repo root, so the script runs from anywhere."""
    path = Path(p)
    return path if path.is_absolute() else (REPO_ROOT / path).resolve()


def ensure_model(shape: ModelShape, tokenizer_dir: Path, model_dir: Path | None) -> Path:
    """Return a checkpoint dir (weights + tokenizer), building and caching it if missing."""
    from transformers import AutoTokenizer

    tok = AutoTokenizer.from_pretrained(tokenizer_dir, local_files_only=True)
    if model_dir is None:
        model_dir = CACHE_ROOT / shape.key(len(tok))
    if (model_dir / "bench_model.json").is_file():
        return model_dir
    # Build into a temporary sibling and rename, so an interrupted build is never reused.
    tmp = model_dir.with_name(f".{model_dir.name}.tmp-{os.getpid()}")
    shutil.rmtree(tmp, ignore_errors=True)
    num_params = _build_random_llama(shape, tok, tmp)
    (tmp / "bench_model.json").write_text(
        json.dumps({"shape": asdict(shape), "seed": MODEL_SEED, "num_params": num_params})
    )
    model_dir.parent.mkdir(parents=True, exist_ok=True)
    shutil.rmtree(model_dir, ignore_errors=True)
    os.replace(tmp, model_dir)
    print(f"built {num_params / 1e6:.1f}M-param random Llama in {model_dir}", flush=True)
    return model_dir


def _build_random_llama(shape: ModelShape, tok: Any, out_dir: Path) -> int:
    import torch
    import transformers
    from transformers import LlamaConfig, LlamaForCausalLM

    transformers.logging.disable_progress_bar()

    config = LlamaConfig(
        vocab_size=len(tok),
        hidden_size=shape.hidden,
        num_hidden_layers=shape.layers,
        num_attention_heads=shape.heads,
        num_key_value_heads=shape.kv_heads,
        intermediate_size=shape.intermediate,
        max_position_embeddings=shape.max_positions,
        tie_word_embeddings=shape.tied,
        bos_token_id=tok.bos_token_id,
        eos_token_id=tok.eos_token_id,
    )
    torch.manual_seed(MODEL_SEED)
    model = LlamaForCausalLM(config)
    model.save_pretrained(out_dir)
    tok.save_pretrained(out_dir)
    return sum(p.numel() for p in model.parameters())


def load_prompts(
    dataset: Path, tokenizer_dir: Path, n: int, max_len: int, flag: str = "--num-prompts"
) -> list[list[int]]:
    """First human turn of the first ``n`` ShareGPT conversations that have one, tokenized +
    truncated to ``max_len`` tokens. ``flag`` names the option that set ``n`` (for the error)."""
    from transformers import AutoTokenizer

    tok = AutoTokenizer.from_pretrained(tokenizer_dir, local_files_only=True)
    with open(dataset) as f:
        conversations = json.load(f)
    prompts = []
    for conv in conversations:
        text = next((t["value"] for t in conv["conversations"] if t["from"] == "human"), "")
        ids = tok.encode(text)[:max_len]
        if ids:
            prompts.append(ids)
        if len(prompts) == n:
            return prompts
    sys.exit(f"error: {dataset} has only {len(prompts)} usable prompts, {flag} is {n}")


# ---- workers (each runs in a fresh subprocess) ----------------------------------------------
def check_args(
    parser: Any, args: Any, lists: dict[str, tuple[str, ...]], positive: tuple[str, ...] = ()
) -> None:
    """Validate comma-separated list options (each becomes a list in ``lists``' canonical
    order) and options that must be >= 1; errors go through ``parser.error``."""
    for name, valid in lists.items():
        chosen = [x.strip() for x in getattr(args, name).split(",") if x.strip()]
        bad = [x for x in chosen if x not in valid]
        if bad or not chosen:
            parser.error(f"--{name}: unknown {bad}; choose from {', '.join(valid)}")
        setattr(args, name, [x for x in valid if x in chosen])
    for name in positive:
        if getattr(args, name) < 1:
            parser.error(f"--{name.replace('_', '-')} must be >= 1")


def worker_setup(threads: int, log_level: str) -> None:
    import torch

    logging.basicConfig(level=log_level.upper(), format="%(levelname)s %(name)s: %(message)s")
    torch.set_num_threads(threads)


def in_subprocess(fn: Any, *args: Any) -> dict[str, Any]:
    """Run ``fn(*args)`` in a fresh spawned process, so its peak RSS and timing are its own."""
    with ProcessPoolExecutor(max_workers=1, mp_context=get_context("spawn")) as pool:
        return pool.submit(fn, *args).result()


# ---- reporting ------------------------------------------------------------------------------
def hf_greedy(model: Any, rows: list[list[int]], new_tokens: int) -> list[list[int]]:
    """transformers ``generate`` on one static batch: left padding (every row's last prompt
    token in the same column), greedy, exactly ``new_tokens`` new tokens per row."""
    import torch

    pad_id = model.config.eos_token_id
    width = max(len(p) for p in rows)
    ids = torch.full((len(rows), width), pad_id, dtype=torch.long)
    mask = torch.zeros((len(rows), width), dtype=torch.long)
    for i, p in enumerate(rows):
        ids[i, width - len(p) :] = torch.tensor(p)
        mask[i, width - len(p) :] = 1
    # NOTE: eos_token_id=None is transformers' "ignore EOS": it never stops early and, unlike
    # min_new_tokens with an EOS id, does not mask EOS out of the greedy argmax.
    out = model.generate(
        ids,
        attention_mask=mask,
        do_sample=False,
        max_new_tokens=new_tokens,
        min_new_tokens=new_tokens,
        eos_token_id=None,
        pad_token_id=pad_id,
    )
    return out[:, width:].tolist()


def agreement(ours: list[list[int]], ref: list[list[int]]) -> dict[str, Any]:
    """Exact-match count and mean length of the common prefix of paired greedy outputs."""
    prefixes = []
    for a, b in zip(ours, ref):
        n = 0
        while n < min(len(a), len(b)) and a[n] == b[n]:
            n += 1
        prefixes.append(n)
    return {
        "equal": sum(a == b for a, b in zip(ours, ref)),
        "total": len(ref),
        "mean_common_prefix": sum(prefixes) / max(1, len(prefixes)),
    }


def print_header(env: dict[str, Any], threads: int) -> None:
    """The first lines of every result file: exact command, date, commit, machine."""
    print(
        f"# command: {env['command']}\n# date: {env['date']}, commit {env['git_commit'][:7]}"
        f"{' (dirty)' if env['git_dirty'] else ''}, CPU: {env['cpu']}, {threads} threads, "
        f"torch {env['torch']}, transformers {env['transformers']}",
        flush=True,
    )


def environment(threads: int) -> dict[str, Any]:
    import torch
    import transformers

    cpu = platform.processor() or platform.machine()
    try:
        with open("/proc/cpuinfo") as f:
            cpu = next(ln.split(":", 1)[1].strip() for ln in f if ln.startswith("model name"))
    except (OSError, StopIteration):
        pass

    def git(*cmd: str) -> str:
        try:
            return subprocess.run(
                ["git", *cmd], cwd=REPO_ROOT, capture_output=True, text=True, check=True
            ).stdout.strip()
        except (OSError, subprocess.CalledProcessError):
            return ""

    return {
        "command": shlex.join(["python", *sys.argv]),
        "date": datetime.now().astimezone().isoformat(timespec="seconds"),
        "git_commit": git("rev-parse", "HEAD"),
        "git_dirty": bool(git("status", "--porcelain", "--untracked-files=no")),
        "python": platform.python_version(),
        "torch": torch.__version__,
        "transformers": transformers.__version__,
        "cpu": cpu,
        "cpu_count": os.cpu_count(),
        "threads": threads,
    }


class Tee:
    """Write to the terminal and keep a copy for the text report."""

    def __init__(self, stream: Any) -> None:
        self.stream, self.parts = stream, []

    def write(self, s: str) -> int:
        self.parts.append(s)
        return self.stream.write(s)

    def flush(self) -> None:
        self.stream.flush()


def progress(total: int, desc: str) -> Any:
    """A tqdm bar on stderr for a long benchmark loop. Shown on a terminal only, so logs and
    the committed text results stay as they are; ``update(n)`` and ``close()`` as tqdm's."""
    from tqdm import tqdm

    return tqdm(
        total=total, desc=desc, file=sys.stderr, disable=not sys.stderr.isatty(),
        leave=False, mininterval=1.0,
    )  # fmt: skip
