"""A CUDA-graph capture that fails leaves the process as it was and the steps run eagerly, on the CPU.

No GPU here: the CUDA runtime calls GraphedStep makes (streams, the graph object, synchronize) are
replaced by a small fake that keeps a "current stream", and torch's own `torch.cuda.graph` context
manager runs on top of it. The capture fails as it does on a GPU when an operation inside it needs
the host: the operation raises, then ending the capture raises too, which makes torch's context
manager skip restoring the stream it made current. benchmarks/gpu_check.sh runs the real capture
(tests/engine/test_cuda.py) and asserts that it succeeds on a GPU.
"""

from __future__ import annotations

import pytest
import torch
import torch.nn.functional as F

from wsncli.engine.nn import subnet
from wsncli.engine.nn.dropout import DropoutDraw
from wsncli.engine.nn.models import ModelConfig, build_model
from wsncli.engine.training.graphed import GraphedStep

CAPTURE_ERROR = "CUDA error: operation not permitted when stream is capturing"


@pytest.fixture(autouse=True)
def _threads():
    before = torch.get_num_threads()
    yield
    torch.set_num_threads(before)


class FakeStream:
    def __init__(self, name: str) -> None:
        self.name = name

    def wait_stream(self, _other) -> None:
        pass

    def __repr__(self) -> str:
        return f"<stream {self.name}>"


class FakeCuda:
    """The part of the CUDA runtime a capture touches: the current stream, graphs, capture state."""

    def __init__(self) -> None:
        self.default = FakeStream("default")
        self.current = self.default
        self.capturing = False
        self.captures = 0
        self.streams = 0

    def install(self, mp: pytest.MonkeyPatch) -> None:
        fake = self

        class Graph:
            def capture_begin(self, *_pool, **_options) -> None:
                fake.capturing, fake.captures = True, fake.captures + 1

            def capture_end(self) -> None:  # an invalidated capture cannot end cleanly
                fake.capturing = False
                raise RuntimeError(f"{CAPTURE_ERROR} (the capture was invalidated)")

            def replay(self) -> None:
                raise AssertionError("a failed capture must never be replayed")

        class StreamContext:
            def __init__(self, stream) -> None:
                self.stream = stream

            def __enter__(self):
                self.previous = fake.current
                fake.current = self.stream

            def __exit__(self, *exc) -> None:
                fake.current = self.previous

        def new_stream(*_a, **_k):
            fake.streams += 1
            return FakeStream(f"side-{fake.streams}")

        mp.setattr(torch.cuda, "CUDAGraph", Graph)
        mp.setattr(torch.cuda, "Stream", new_stream)
        mp.setattr(torch.cuda, "stream", StreamContext)
        mp.setattr(torch.cuda, "current_stream", lambda *_a: fake.current)
        mp.setattr(torch.cuda, "set_stream", lambda s: setattr(fake, "current", s))
        mp.setattr(torch.cuda, "synchronize", lambda *_a: None)
        mp.setattr(torch.cuda, "empty_cache", lambda: None)
        mp.setattr(torch.cuda, "is_current_stream_capturing", lambda: fake.capturing)
        mp.setattr(torch._C, "_host_emptyCache", lambda: None, raising=False)
        selection = subnet.static_topk_mask

        def syncing_selection(values, k):  # what a host read does inside a capture
            if fake.capturing:
                raise RuntimeError(CAPTURE_ERROR)
            return selection(values, k)

        mp.setattr(subnet, "static_topk_mask", syncing_selection)


def _model_and_steps(arch: str = "mlp"):
    torch.set_num_threads(1)  # restored by the autouse fixture below
    torch.manual_seed(0)
    shape = (1, 20, 20) if arch == "conv" else (64,)
    model = build_model(ModelConfig(arch, shape, (32, 32)))
    model.add_task(1, 4)
    model.train_subnet(0.3, None)
    subnet.set_static_selection(model)  # the device path, as on CUDA
    params = [p for l in model.subnet_layers().values() for p in (l.weight, l.scores)]
    params += list(model.heads["1"].parameters())
    opt = torch.optim.Adam(params, lr=1e-2)

    def eager(x, y):
        logits = model(x, 1)
        loss = F.cross_entropy(logits, y)
        opt.zero_grad(set_to_none=True)
        loss.backward()
        opt.step()
        return loss.detach() * x.shape[0], (logits.detach().argmax(1) == y).sum()

    g = torch.Generator().manual_seed(1)
    batches = [(torch.randn(10, *shape, generator=g), torch.randint(0, 4, (10,), generator=g)) for _ in range(8)]
    return model, params, opt, eager, batches


def test_a_failed_capture_restores_the_stream_and_the_steps_run_eagerly_with_the_same_bits(monkeypatch):
    model, params, _opt, eager, batches = _model_and_steps()
    model.train()
    expected = [eager(x, y)[0] for x, y in batches]
    expected_params = [p.detach().clone() for p in params]

    fake = FakeCuda()
    with monkeypatch.context() as mp:
        fake.install(mp)
        model, params, opt, eager, batches = _model_and_steps()
        step = GraphedStep(model, 1, opt, eager, batch_size=10)
        model.train()
        losses = []
        for i, (x, y) in enumerate(batches):
            losses.append(step(x, y)[0])
            if i == 3:  # three warm-up steps, then the capture, which fails
                assert fake.captures == 1 and step.failed is not None and CAPTURE_ERROR in step.failed
                assert fake.current is fake.default, "the stream current before the capture is current again"
                assert not fake.capturing and step.graph is None
    assert fake.captures == 1, "no second attempt: the later steps ran eagerly"
    assert step.failed.startswith("RuntimeError: ")
    assert all(torch.equal(a, b) for a, b in zip(losses, expected))
    assert all(torch.equal(p.detach(), q) for p, q in zip(params, expected_params))


def test_a_failed_capture_hands_the_dropout_draw_a_fresh_generator_that_goes_on_where_it_was(monkeypatch):
    fake = FakeCuda()
    fake.install(monkeypatch)
    model, _params, opt, eager, batches = _model_and_steps()
    draw = DropoutDraw(torch.Generator().manual_seed(5))
    step = GraphedStep(model, 1, opt, eager, batch_size=10, draws=[draw])
    model.train()
    for x, y in batches[:3]:
        step(x, y)
    before = draw.generator
    state = before.get_state()
    step(*batches[3])  # the capture fails
    assert step.failed is not None and fake.current is fake.default
    assert draw.generator is not before and torch.equal(draw.generator.get_state(), state)
    assert draw.total == 10 and draw.start == 0
