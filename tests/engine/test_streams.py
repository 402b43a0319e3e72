"""engine.streams.on_stream: the caller's stream waits for the block's stream however the block ends.

CPU builds have no streams, so torch.cuda's stream calls are replaced by recorders here; the
`gpu` test runs the real thing."""
from contextlib import contextmanager, nullcontext

import pytest
import torch

from engine import streams


class FakeStream:
    def __init__(self, name, log):
        self.name, self.log = name, log

    def wait_stream(self, other):
        self.log.append(f"{self.name} waits for {other.name}")


@pytest.fixture
def log(monkeypatch):
    events = []
    caller = FakeStream("caller", events)

    @contextmanager
    def entered(*_):
        yield

    monkeypatch.setattr(torch.cuda, "device", entered)
    monkeypatch.setattr(torch.cuda, "stream", entered)
    monkeypatch.setattr(torch.cuda, "current_stream", lambda device=None: caller)
    return events


@pytest.mark.parametrize("raises", [False, True])
def test_the_caller_waits_even_when_the_block_raises(log, raises):
    own = FakeStream("own", log)
    with pytest.raises(RuntimeError) if raises else nullcontext():
        with streams.on_stream(own, torch.device("cuda")):
            log.append("work")
            if raises:
                raise RuntimeError("boom")
    assert log == ["own waits for caller", "work", "caller waits for own"]


@pytest.mark.gpu
def test_on_a_gpu_the_caller_sees_the_blocks_work():
    """The caller's next kernel (the sum) runs after the block's (the add) although the block raised."""
    own, x = torch.cuda.Stream(), torch.zeros(1 << 20, device="cuda")
    with pytest.raises(RuntimeError):
        with streams.on_stream(own, torch.device("cuda")):
            x.add_(1)
            raise RuntimeError("boom")
    assert x.sum().item() == x.numel()
