"""``BatchResult``: staged device tensors become host lists only when ``host()`` is called."""

from __future__ import annotations

import pytest
import torch

from radixlm.engine.transfer import to_device, to_host
from radixlm.scheduler.executor import BatchResult, HostOutputs

needs_cuda = pytest.mark.skipif(not torch.cuda.is_available(), reason="needs CUDA")


def staged(device: torch.device) -> BatchResult:
    res = BatchResult(device)
    res.stage("next_ids", torch.tensor([5, 7, 11], device=device))
    res.stage("logprobs", torch.tensor([-0.5, -1.0, -2.0], device=device))
    res.stage("top_ids", torch.tensor([[5, 1], [7, 2], [3, 11]], device=device))
    res.seal(wall_seconds=0.25, cpu_seconds=0.125)
    return res


def test_cpu_result_materialises_once_with_wall_time() -> None:
    res = staged(torch.device("cpu"))
    out = res.host()
    assert isinstance(out, HostOutputs) and res.host() is out
    assert out.next_ids == [5, 7, 11] and out.logprobs == [-0.5, -1.0, -2.0]
    assert out.top_ids == [[5, 1], [7, 2], [3, 11]] and out.top_logprobs is None
    assert out.input_logprobs == []
    assert res.forward_seconds == 0.25 and res.forward_cpu_seconds == 0.125


def test_transfers_are_plain_on_cpu() -> None:
    t = to_device([1, 2, 3], torch.int64, torch.device("cpu"))
    assert t.tolist() == [1, 2, 3] and t.dtype == torch.int64
    assert to_host(t) is t


@pytest.mark.gpu
@needs_cuda
def test_gpu_staging_does_not_sync_and_host_waits_for_the_copies() -> None:
    cuda = torch.device("cuda")
    big = torch.randn(4096, 4096, device=cuda)
    torch.cuda.synchronize()
    torch.cuda.set_sync_debug_mode("error")
    try:
        res = BatchResult(cuda)
        ids = to_device([3, 1, 2], torch.int64, cuda)
        for _ in range(4):  # keep the device busy so the copies are still queued
            big = big @ big / 64
        res.stage("next_ids", ids + big[0, :3].isnan().long())
        res.seal(wall_seconds=0.0, cpu_seconds=0.0)
    finally:
        torch.cuda.set_sync_debug_mode(0)
    assert res.host().next_ids == [3, 1, 2]
    assert res.forward_seconds > 0
