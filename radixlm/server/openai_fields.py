"""The fields each OpenAI route reads, and SGLang's extensions of them.

``COMPLETION_FIELDS`` / ``CHAT_FIELDS``: what ``openai_protocol`` honours; any other field of a
body is reported as ignored (``X-Ignored-Fields``). ``SGLANG_*_DEFAULT_ONLY``: SGLang's
extensions not built here, accepted at their default only (a 400 naming them otherwise), as on
``/generate``. The typed models in ``api_models`` are drift-tested against these sets.
"""

from __future__ import annotations

from typing import Any

# Native sampling keys accepted under the same name (validated by the engine).
SAME_NAME = ("temperature", "top_p", "presence_penalty", "frequency_penalty", "logit_bias")
SGLANG_EXTRAS = tuple(
    "top_k min_p repetition_penalty stop_token_ids no_stop_trim ignore_eos skip_special_tokens "
    "spaces_between_special_tokens regex json_schema ebnf".split()
)


# The fields each route reads (honours); anything else in a body is reported as ignored.
_COMMON_FIELDS = frozenset(
    "model n stream stream_options rid cache_salt extra_key seed stop max_tokens min_tokens".split()
    + list(SAME_NAME + SGLANG_EXTRAS)
)
COMPLETION_FIELDS = _COMMON_FIELDS | {"prompt", "suffix", "best_of", "echo", "logprobs"}
CHAT_FIELDS = _COMMON_FIELDS | frozenset(
    "messages max_completion_tokens response_format logprobs top_logprobs tools tool_choice "
    "parallel_tool_calls functions function_call chat_template_kwargs continue_final_message "
    "separate_reasoning".split()
)

# SGLang's extensions of the OpenAI requests (release native_request.SGLANG_VERSION) that are
# not built here: accepted at their default value (as on /generate: native_request.at_default),
# a 400 naming the field otherwise. Name -> SGLang's default.
SGLANG_COMPLETION_DEFAULT_ONLY: dict[str, Any] = {
    **dict.fromkeys(
        "bootstrap_host bootstrap_port bootstrap_room routed_dp_rank disagg_prefill_dp_rank "
        "stop_regex lora_path session_id session_params response_format custom_params "
        "custom_logit_processor watermark images_config mm_processor_kwargs data_parallel_rank "
        "priority custom_labels".split()
    ),
    **dict.fromkeys(
        "return_hidden_states return_routed_experts return_cached_tokens_details "
        "return_spec_tokens_details return_token_ids".split(),
        False,
    ),
    "routed_experts_start_len": 0,
}
SGLANG_CHAT_DEFAULT_ONLY: dict[str, Any] = {
    **{
        k: v
        for k, v in SGLANG_COMPLETION_DEFAULT_ONLY.items()
        if k not in ("response_format", "custom_labels")
    },
    **dict.fromkeys(
        "sampling_logprobs_mode thinking task max_dynamic_patch min_dynamic_patch video_config "
        "input_ids".split()
    ),
    **dict.fromkeys(
        "return_prompt_token_ids return_meta_info return_input_ids_in_sglext "
        "return_output_ids_in_sglext return_sampling_mask return_flat_raw_output_top_logprobs "
        "use_audio_in_video".split(),
        False,
    ),
    "return_flat_raw_top_logprobs_b64": True,
    "stream_reasoning": True,
}
