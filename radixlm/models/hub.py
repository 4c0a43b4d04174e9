"""Model paths that name a Hugging Face Hub repository (``--model-path org/name``).

:func:`resolve_model_path` turns a repo id into a local snapshot directory through
``huggingface_hub.snapshot_download``: files already in the cache are reused (nothing is
fetched when they are all there), ``HF_HUB_OFFLINE=1`` means the cache only, ``revision`` picks
a branch, tag or commit, ``download_dir`` replaces the default cache directory, and downloads
show huggingface_hub's progress bars. Only what loading needs is fetched (configs, safetensors,
tokenizer files), never ``*.bin`` / ``*.pt`` pickles or remote code.

A local directory is returned as is. :func:`repo_id_of` reads the repo id back from a snapshot
path, so the server can name the model as the user did.
"""

from __future__ import annotations

import os
import re

from radixlm.errors import ConfigError

ALLOW_PATTERNS = ["*.json", "*.safetensors", "*.model", "*.txt", "*.jinja", "tokenizer*"]
_REPO_ID = re.compile(r"[A-Za-z0-9][\w.-]*(/[\w.-]+)?")
_SNAPSHOT = re.compile(r"models--([^/]+?)--([^/]+)/snapshots/[^/]+/?$")


def looks_like_repo_id(path: str) -> bool:
    """``org/name`` or ``name``, with no path syntax (``./``, ``/``, ``~``, ``..``)."""
    return bool(_REPO_ID.fullmatch(path)) and ".." not in path and not path.startswith(".")


def resolve_model_path(path: str, revision: str | None, download_dir: str | None) -> str:
    """A local directory for ``path`` (see the module docstring); ConfigError saying why not."""
    if os.path.isdir(path):
        return path
    if not looks_like_repo_id(path):
        raise ConfigError(
            f"model_path {path!r} is not a directory, nor a Hugging Face repo id (org/name); "
            "pass a local checkpoint (config.json + *.safetensors) or a Hub id, or omit it to "
            "use the bundled demo model"
        )
    try:
        import huggingface_hub
        from huggingface_hub.errors import (
            GatedRepoError,
            LocalEntryNotFoundError,
            RepositoryNotFoundError,
            RevisionNotFoundError,
        )
    except ImportError as e:  # a dependency of transformers, so normally present
        raise ConfigError(f"model_path {path!r} is not a directory ({e})") from e
    try:
        return huggingface_hub.snapshot_download(
            path, revision=revision, cache_dir=download_dir, allow_patterns=ALLOW_PATTERNS
        )
    except LocalEntryNotFoundError as e:
        offline = os.environ.get("HF_HUB_OFFLINE", "0") not in ("0", "", "false", "False")
        why = "HF_HUB_OFFLINE is set and it is not in the local cache" if offline else str(e)
        where = download_dir or "the default Hugging Face cache"
        raise ConfigError(
            f"cannot get model {path!r} (revision {revision or 'main'}): {why}; cache: {where}"
        ) from e
    except GatedRepoError as e:
        raise ConfigError(
            f"model {path!r} is gated: accept its terms on the Hub and set HF_TOKEN"
        ) from e
    except RepositoryNotFoundError as e:
        raise ConfigError(
            f"model {path!r} is not on the Hugging Face Hub (or is private: set HF_TOKEN), and "
            "is not a local directory"
        ) from e
    except RevisionNotFoundError as e:
        raise ConfigError(f"model {path!r} has no revision {revision!r}") from e


def repo_id_of(path: str) -> str | None:
    """``org/name`` for a Hub cache snapshot directory (``.../models--org--name/snapshots/x``),
    else None."""
    match = _SNAPSHOT.search(os.path.normpath(path))
    return None if match is None else f"{match.group(1)}/{match.group(2)}"
