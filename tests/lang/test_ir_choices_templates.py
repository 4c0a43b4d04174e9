"""Pure pieces: IR construction, sampling params conversion (dtype → regex), the three select
methods against hand computations, chat templates, and a torch-free import."""

from __future__ import annotations

import subprocess
import sys

import pytest

import radixlm_lang as sgl
from radixlm_lang.backend.mock import MockBackend
from radixlm_lang.chat_template import get_chat_template, get_chat_template_by_model_path
from radixlm_lang.choices import heal_and_normalize, normalized_logprob
from radixlm_lang.ir import (
    REGEX_FLOAT,
    REGEX_INT,
    ConstantText,
    ExprList,
    Gen,
    RoleBegin,
    RoleEnd,
    SamplingParams,
    Select,
)


def test_import_does_not_load_torch() -> None:
    code = "import sys, radixlm_lang; assert 'torch' not in sys.modules, 'torch imported'"
    subprocess.run([sys.executable, "-c", code], check=True, timeout=30)


def test_expression_concatenation_builds_flat_exprlist() -> None:
    expr = "a" + sgl.gen("x") + "b" + (sgl.gen("y") + "c")
    assert isinstance(expr, ExprList)
    kinds = [type(e).__name__ for e in expr.exprs]
    assert kinds == ["ConstantText", "Gen", "ConstantText", "Gen", "ConstantText"]
    assert expr.exprs[0] == ConstantText("a")
    assert sgl.user("hi") == ExprList((RoleBegin("user"), ConstantText("hi"), RoleEnd("user")))
    assert sgl.assistant_begin() == RoleBegin("assistant")


def test_gen_constructor() -> None:
    g = sgl.gen("x", max_tokens=5, stop="\n", temperature=0, stop_token_ids=[7])
    assert isinstance(g, Gen)
    p = g.resolve(SamplingParams(temperature=0.7, top_p=0.9))
    assert (p.max_new_tokens, p.stop, p.temperature, p.top_p, p.stop_token_ids) == (
        5,
        ("\n",),
        0,
        0.9,
        (7,),
    )
    sel = sgl.gen("c", choices=["a", "b"])
    assert isinstance(sel, Select) and sel.temperature == 0.0
    assert sel.choices_method is sgl.token_length_normalized
    with pytest.raises(ValueError, match="invalid regex"):
        sgl.gen("r", regex="(")
    assert dict(sgl.gen_int("n").overrides)["dtype"] == "int"
    assert dict(sgl.gen("b", dtype=bool).overrides)["dtype"] == "bool"
    assert dict(sgl.gen_string("s").overrides)["dtype"] == "str"
    with pytest.raises(ValueError):
        sgl.gen("z", dtype=list)
    schema = dict(sgl.gen("j", json_schema={"type": "object"}).overrides)["json_schema"]
    assert schema == '{"type": "object"}'
    with pytest.raises(ValueError):
        sgl.select("c", [])


def test_to_native_only_meaningful_fields() -> None:
    native = SamplingParams().to_native()
    assert native == {
        "max_new_tokens": 128,
        "min_new_tokens": 0,
        "n": 1,
        "temperature": 1.0,
        "top_p": 1.0,
        "top_k": -1,
        "min_p": 0.0,
        "frequency_penalty": 0.0,
        "presence_penalty": 0.0,
        "ignore_eos": False,
    }
    p = SamplingParams(stop="x", stop_token_ids=[3], regex="a+", json_schema="{}", top_k=5)
    native = p.to_native()
    assert native["stop"] == ["x"] and native["stop_token_ids"] == [3]
    assert native["regex"] == "a+" and native["json_schema"] == "{}" and native["top_k"] == 5
    assert SamplingParams(return_logprob=True, top_logprobs_num=2).logprob_kwargs() == {
        "return_logprob": True,
        "top_logprobs_num": 2,
    }


@pytest.mark.parametrize(
    "dtype, regex, stops",
    [
        (int, r"[-+]?[0-9]+[ \n]*", ["<e>", " ", "\n"]),
        ("float", r"[-+]?[0-9]*\.?[0-9]+[ \n]*", ["<e>", " ", "\n"]),
        (str, r'"[\w\d\s]*"', ["<e>"]),
        (bool, r"(True|False)", ["<e>"]),
    ],
)
def test_dtype_to_regex(dtype, regex, stops) -> None:
    native = SamplingParams(dtype=dtype, stop=("<e>",), regex="ignored").to_native()
    assert native["regex"] == regex
    assert native["stop"] == stops
    assert REGEX_INT == r"[-+]?[0-9]+[ \n]*" and REGEX_FLOAT.endswith(r"[0-9]+[ \n]*")


def test_gen_int_through_interpreter_sends_regex() -> None:
    backend = MockBackend(["42"])

    @sgl.function
    def prog(s):
        s += "n=" + sgl.gen_int("n")

    assert prog.run(backend=backend)["n"] == "42"
    native = backend.calls[0].params.to_native()
    assert native["regex"] == REGEX_INT and native["stop"] == [" ", "\n"]


def test_to_openai() -> None:
    assert SamplingParams(max_new_tokens=9, stop=("a",), top_k=3).to_openai() == {
        "max_tokens": 9,
        "stop": ["a"],
        "n": 1,
        "temperature": 1.0,
        "top_p": 1.0,
        "frequency_penalty": 0.0,
        "presence_penalty": 0.0,
    }
    assert SamplingParams().to_openai()["stop"] is None


# ---- select math -------------------------------------------------------------------------
CHOICES = ["yes", "no", "maybe"]
# per choice, after healing: [[logprob, token_id, text], ...]
LOGPROBS = [
    [[-1.0, 10, "y"], [-3.0, 11, "es"]],  # mean -2.0; position 0 best (-1.0) tied with "no"
    [[-1.0, 20, "no"]],  # mean -1.0 (padded with -1.0)
    [[-2.0, 30, "may"], [-0.5, 31, "be"], [-0.1, 32, "!"]],  # mean -0.8667
]


def _call(method, uncond=None):
    return method(
        choices=CHOICES,
        normalized_prompt_logprobs=[normalized_logprob(e) for e in LOGPROBS],
        input_token_logprobs=LOGPROBS,
        output_token_logprobs=[[], [], []],
        unconditional_token_logprobs=uncond,
    )


def test_token_length_normalized_matches_hand_computation() -> None:
    means = [(-1.0 - 3.0) / 2, -1.0, (-2.0 - 0.5 - 0.1) / 3]
    decision = _call(sgl.token_length_normalized)
    assert decision.meta_info["normalized_prompt_logprobs"] == pytest.approx(means)
    assert decision.decision == CHOICES[means.index(max(means))] == "maybe"


def test_greedy_token_selection_matches_hand_computation() -> None:
    # position 0: yes -1.0, no -1.0, maybe -2.0 → keep {yes, no}
    # position 1: yes -3.0, no -1.0 (its mean as padding) → "no"
    decision = _call(sgl.greedy_token_selection)
    assert decision.decision == "no"
    assert decision.meta_info["greedy_logprob_matrix"][1] == [-1.0, -1.0, -1.0]


def test_unconditional_likelihood_normalized_matches_hand_computation() -> None:
    uncond = [
        [[None, 10, "y"], [-0.5, 11, "es"]],  # diffs: -1-0, -3+0.5 → mean -1.75
        [[None, 20, "no"]],  # diffs: -1-0 → -1.0
        [[None, 30, "may"], [-4.0, 31, "be"], [-5.0, 32, "!"]],  # -2, 3.5, 4.9 → 2.1333
    ]
    decision = _call(sgl.unconditional_likelihood_normalized, uncond)
    scores = decision.meta_info["normalized_unconditional_prompt_logprobs"]
    assert scores == pytest.approx([-1.75, -1.0, (-2.0 + 3.5 + 4.9) / 3])
    assert decision.decision == "maybe"
    with pytest.raises(ValueError):
        _call(sgl.unconditional_likelihood_normalized)


def test_ties_go_to_the_first_choice() -> None:
    tied = [[[-1.0, 1, "a"]], [[-1.0, 2, "b"]]]
    for method in (sgl.token_length_normalized, sgl.greedy_token_selection):
        d = method(
            choices=["a", "b"],
            normalized_prompt_logprobs=[-1.0, -1.0],
            input_token_logprobs=tied,
            output_token_logprobs=[[], []],
        )
        assert d.decision == "a"


def test_heal_and_normalize() -> None:
    prefix = "Answer:"
    raw = [
        [[-0.2, 5, ":"], [-1.0, 6, " yes"]],  # ":" still ends the prefix → dropped
        [[None, 7, "r:"], [-3.0, 8, " no"]],  # dropped; SGLang scales by the full length (null too)
        [[-0.4, 9, ": n"], [-2.0, 10, "ope"]],  # healed token ": n" is kept
    ]
    kept, means = heal_and_normalize(prefix, raw)
    assert kept[0] == [[-1.0, 6, " yes"]] and means[0] == pytest.approx((-0.6 * 2 + 0.2) / 1)
    assert kept[1] == [[-3.0, 8, " no"]] and means[1] == pytest.approx(-3.0 * 2 / 1)
    assert kept[2] == raw[2] and means[2] == pytest.approx(-1.2)
    assert normalized_logprob([[None, 1, "a"], [0.0, 2, "b"], [-2.0, 3, "c"]]) == -2.0


def test_select_via_mock_uses_real_math() -> None:
    backend = MockBackend(
        select_logprobs=lambda p, ch: LOGPROBS,
        unconditional_logprobs=lambda ch: [[[None, 0, "x"]] * len(e) for e in LOGPROBS],
    )

    @sgl.function
    def prog(s):
        s += sgl.select("a", CHOICES) + sgl.select("b", CHOICES, 0.0, sgl.greedy_token_selection)
        s += sgl.select("c", CHOICES, choices_method=sgl.unconditional_likelihood_normalized)

    st = prog.run(backend=backend)
    assert (st["a"], st["b"], st["c"]) == ("maybe", "no", "maybe")


# ---- chat templates ----------------------------------------------------------------------
def test_llama2_merges_system_into_first_inst() -> None:
    backend = MockBackend(["Hi!"], chat_template="llama-2-chat")

    @sgl.function
    def prog(s):
        s += sgl.system("Be kind.") + sgl.user("Hello") + sgl.assistant(sgl.gen("a"))

    text = prog.run(backend=backend).text()
    assert text == "[INST] <<SYS>>\nBe kind.\n<</SYS>>\n\nHello [/INST]Hi! </s><s>"


def test_template_registry_and_model_path_matching() -> None:
    cases = {
        "meta-llama/Llama-2-7b-chat-hf": "llama-2-chat",
        "meta-llama/Meta-Llama-3-8B-Instruct": "llama-3-instruct",
        "Qwen/Qwen2.5-0.5B-Instruct": "qwen",
        "Qwen/Qwen2-VL-7B-Instruct": "qwen2-vl",
        "mistralai/Mistral-7B-Instruct-v0.3": "mistral",
        "lmsys/vicuna-7b-v1.5": "vicuna_v1.1",
        "google/gemma-2-2b-it": "gemma-it",
        "/models/stories260K": "default",
    }
    for path, name in cases.items():
        assert get_chat_template_by_model_path(path).name == name, path
    assert get_chat_template("chatml").stop_str == ("<|im_end|>",)
    assert get_chat_template("llama-3-instruct").stop_str == ("<|eot_id|>",)
    with pytest.raises(ValueError, match="known"):
        get_chat_template("nope")


def test_image_node_and_messages(tmp_path) -> None:
    path = tmp_path / "x.jpg"
    path.write_bytes(b"\xff\xd8jpeg")
    backend = MockBackend(["a cat"], chat_template="chatml")

    @sgl.function
    def prog(s):
        s += sgl.user(sgl.image(str(path)) + "What is it?")
        s += sgl.assistant(sgl.gen("a"))

    st = prog.run(backend=backend)
    content = st.messages()[0]["content"]
    assert content[0] == {"type": "text", "text": "<image>What is it?"}
    assert content[1]["image_url"]["url"] == "data:image/jpeg;base64,/9hqcGVn"
    assert backend.calls[0].prompt.images == ["/9hqcGVn"]
    assert sgl.image(b"\xff\xd8jpeg") == sgl.image(path)


def test_image_data_url_names_the_real_format() -> None:
    """A PNG (e.g. a PIL image, saved as PNG) is not labelled JPEG in chat messages."""
    png = b"\x89PNG\r\n\x1a\n" + b"\0" * 8
    assert sgl.image(png).data_url.startswith("data:image/png;base64,")
    assert sgl.image(b"GIF89a...").mime == "image/gif"
    assert sgl.image(b"RIFF\0\0\0\0WEBPVP8 ").mime == "image/webp"
    assert sgl.image(b"\xff\xd8\xff\xe0").mime == "image/jpeg"
