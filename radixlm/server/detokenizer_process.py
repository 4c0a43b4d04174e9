"""The detokenizer process: token ids → incremental, stop-trimmed text for every request.

Per request it keeps an :class:`OutputText`, created from the ``DetokInit`` in the request's
first output and dropped when the request finishes; at most ``MAX_STATES`` are kept (LRU), so
a lost finish cannot grow memory without bound. It forwards each output with its text delta.
"""

from __future__ import annotations

import logging
import os
import traceback
from collections import OrderedDict

from radixlm.config import EngineConfig
from radixlm.sampling_params import SamplingParams
from radixlm.server import codec
from radixlm.server.io_struct import BatchOutputs, BatchTextOutputs, DetokenizerReady
from radixlm.server.ipc import (
    IpcNames,
    configure_child_logging,
    exit_when_parent_dies,
    ignore_stop_signals,
    pull_socket,
    push_socket,
)
from radixlm.tokenizer.output_text import OutputText

logger = logging.getLogger(__name__)

MAX_STATES = 65536


def run_detokenizer_process(config: EngineConfig, ipc: IpcNames, parent_pid: int) -> None:
    configure_child_logging(config.log_level, "detokenizer")
    exit_when_parent_dies(parent_pid)
    ignore_stop_signals(parent_pid)
    import zmq

    from radixlm.tokenizer import load_tokenizer

    ctx = zmq.Context()
    recv = pull_socket(ctx, ipc.detokenizer_input)
    to_main = push_socket(ctx, ipc.main_input)
    try:
        tokenizer = None if config.skip_tokenizer_init else load_tokenizer(config.tokenizer_path)
    except Exception as e:
        logger.error("detokenizer failed to load the tokenizer: %s", e)
        os._exit(1)
    to_main.send(codec.encode(DetokenizerReady()))
    states: OrderedDict[str, OutputText] = OrderedDict()
    try:
        while True:
            msg = codec.decode(recv.recv())
            if isinstance(msg, BatchOutputs):
                to_main.send(codec.encode(render(msg, tokenizer, states)))
    except Exception:
        logger.error("detokenizer crashed:\n%s", traceback.format_exc())
        os._exit(1)


def render(msg: BatchOutputs, tokenizer, states: OrderedDict[str, OutputText]) -> BatchTextOutputs:
    deltas = []
    for out in msg.outputs:
        if tokenizer is None:
            deltas.append("")
            continue
        state = states.get(out.rid)
        if state is None:
            init = out.detok_init
            prompt_tail = init.prompt_tail if init is not None else []
            sampling = init.sampling if init is not None else SamplingParams()
            state = states[out.rid] = OutputText(tokenizer, prompt_tail, sampling)
            if len(states) > MAX_STATES:
                states.popitem(last=False)
        else:
            states.move_to_end(out.rid)
        state.add(out.new_token_ids, out.finished_reason)
        deltas.append(state.take_delta())
        if out.finished_reason is not None:
            states.pop(out.rid, None)
    return BatchTextOutputs(msg.outputs, deltas)
