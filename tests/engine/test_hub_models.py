"""``--model-path org/name`` (issue 17, item 6): a Hub id resolves through huggingface_hub's
cache, here one the test builds itself, fully offline (``HF_HUB_OFFLINE``): same outputs as
the local directory, ``--revision`` picks the snapshot, the server names the model by its id,
and a missing model or revision is a clear error."""

from __future__ import annotations

import shutil

import pytest

import radixlm
from radixlm.errors import ConfigError
from radixlm.models.hub import repo_id_of, resolve_model_path
from radixlm.server.options import ServerConfig

MAIN, OTHER = "a" * 40, "b" * 40


@pytest.fixture(scope="module")
def hub_cache(tiny_models, tmp_path_factory):
    """An HF cache holding testorg/tiny at two commits: main (llama) and v2 (qwen2)."""
    cache = tmp_path_factory.mktemp("hf_cache")
    repo = cache / "models--testorg--tiny"
    for commit, arch in ((MAIN, "llama"), (OTHER, "qwen2")):
        shutil.copytree(tiny_models[arch], repo / "snapshots" / commit)
    (repo / "refs").mkdir()
    (repo / "refs" / "main").write_text(MAIN)
    (repo / "refs" / "v2").write_text(OTHER)
    return str(cache)


@pytest.fixture
def offline(monkeypatch):
    import huggingface_hub.constants

    monkeypatch.setenv("HF_HUB_OFFLINE", "1")
    monkeypatch.setattr(huggingface_hub.constants, "HF_HUB_OFFLINE", True)


def test_hub_id_loads_from_the_cache_offline(hub_cache, tiny_models, offline, make_engine):
    path = resolve_model_path("testorg/tiny", None, hub_cache)
    assert path.endswith(MAIN) and repo_id_of(path) == "testorg/tiny"
    assert resolve_model_path("testorg/tiny", "v2", hub_cache).endswith(OTHER)
    ids = [1, 5, 9, 3, 7]
    sp = {"max_new_tokens": 6, "temperature": 0}
    via_hub = make_engine("testorg/tiny", download_dir=hub_cache, num_threads=1)
    local = make_engine(tiny_models["llama"], num_threads=1)
    assert via_hub.config.model_path == path
    assert (
        via_hub.generate(input_ids=ids, sampling_params=sp)["output_ids"]
        == local.generate(input_ids=ids, sampling_params=sp)["output_ids"]
    )
    assert ServerConfig().model_names(path) == ["testorg/tiny"]


def test_missing_hub_model_or_revision_is_a_clear_error(hub_cache, offline):
    with pytest.raises(ConfigError, match="HF_HUB_OFFLINE is set and it is not in the local"):
        radixlm.Engine("testorg/absent", download_dir=hub_cache)
    with pytest.raises(ConfigError, match="revision nope"):
        resolve_model_path("testorg/tiny", "nope", hub_cache)
    with pytest.raises(ConfigError, match="not a directory, nor a Hugging Face repo id"):
        radixlm.Engine("./no/such/dir")


def test_trust_remote_code_is_accepted(tiny_models, make_engine):
    engine = make_engine(tiny_models["llama"], trust_remote_code=True, num_threads=1)
    assert engine.generate(input_ids=[1, 2], sampling_params={"max_new_tokens": 1})
