"""GrammarCompiler: builds in killable worker processes, loads here; shared builds, LRU cache,
cached failures, cancellation. (The pool's own timeout / starvation / kill semantics are proven
in test_compile_workers.py.)"""

from __future__ import annotations

import json

import pytest

from radixlm.constrained.backends import recipe_for
from radixlm.constrained.base import GrammarSpec
from radixlm.constrained.compile_workers import CompileWorkerPool
from radixlm.constrained.compiler import GrammarCompiler, worker_build, worker_init
from radixlm.constrained.outlines_backend import OutlinesGrammar
from radixlm.errors import GrammarError
from radixlm.tokenizer import load_tokenizer
from tests.unit.constrained_helpers import STORIES_DIR

WAIT = 60.0  # seconds a test waits for something that should take well under a second


def regex(value: str) -> GrammarSpec:
    return GrammarSpec("regex", value)


@pytest.fixture(scope="module")
def recipe():
    tokenizer = load_tokenizer(STORIES_DIR)
    return recipe_for("auto", tokenizer, 512, [tokenizer.eos_token_id])


@pytest.fixture(scope="module")
def pool(recipe):
    p = CompileWorkerPool(worker_init, recipe, worker_build, num_workers=2, timeout_s=WAIT)
    yield p
    p.close()


@pytest.fixture
def compiler(recipe, pool):
    return GrammarCompiler(recipe.build(), pool, cache_size=3, failure_ttl_s=60)


def test_a_worker_build_loads_here_and_identical_specs_share_it(compiler) -> None:
    jobs = [compiler.submit(regex("[0-9]{2}")) for _ in range(3)]
    grammars = {id(job.wait(WAIT)) for job in jobs}
    assert len(grammars) == 1 and compiler.num_compiles == 1  # one build, shared
    assert compiler.num_hits == 2
    grammar = jobs[0].result()
    assert isinstance(grammar, OutlinesGrammar) and grammar.backend_name == "outlines"
    m = grammar.matcher()  # the Index built in the worker came back and works here
    assert not m.is_final()
    again = compiler.submit(regex("[0-9]{2}"))
    assert again.ready() and again.result() is grammar and compiler.num_hits == 3


def test_json_schema_builds_report_what_is_not_enforced(compiler) -> None:
    schema = {"type": "array", "items": {"type": "integer"}, "uniqueItems": True}
    grammar = compiler.submit(GrammarSpec("json_schema", json.dumps(schema))).wait(WAIT)
    assert grammar.backend_name == "llguidance"
    assert [u.to_json() for u in grammar.unenforced] == [
        {"pointer": "", "keyword": "uniqueItems", "reason": ""}
    ]
    assert grammar.check_output("[1,2]") == (True, None)
    valid, error = grammar.check_output("[1,1]")
    assert valid is False and "non-unique" in error


def test_failures_raise_grammar_error_and_are_cached(compiler) -> None:
    with pytest.raises(GrammarError, match="not a valid regex"):
        compiler.submit(regex("(b")).wait(WAIT)
    builds = compiler.num_compiles
    job = compiler.submit(regex("(b"))
    assert job.ready()  # cached failure: no second build
    with pytest.raises(GrammarError, match="not a valid regex"):
        job.result()
    assert compiler.num_compiles == builds


def test_lru_evicts_least_recently_used(compiler) -> None:
    for value in ("a", "b", "c"):
        compiler.submit(regex(value)).wait(WAIT)
    compiler.submit(regex("a")).wait(WAIT)  # a is now the most recent
    compiler.submit(regex("d")).wait(WAIT)  # evicts b
    assert compiler.stats()["cached"] == 3
    builds = compiler.num_compiles
    assert compiler.submit(regex("a")).ready()
    assert not compiler.submit(regex("b")).ready() or compiler.num_compiles == builds + 1


def test_a_cancelled_job_is_not_cached(compiler) -> None:
    job = compiler.submit(regex("[0-9]{3}z"))
    job.cancel()  # the build is dropped (or had already finished)
    try:
        job.wait(WAIT)
    except GrammarError as e:
        assert "cancelled" in str(e)
    again = compiler.submit(regex("[0-9]{3}z"))
    assert again.wait(WAIT).spec.value == "[0-9]{3}z"
