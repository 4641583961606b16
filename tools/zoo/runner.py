"""Running one zoo case: eager, Inductor and nkipy, compared and timed.

Status of a case (worst first):

- ``WRONG``: nkipy runs but differs from eager beyond the dtype's tolerance (with default
  options, or with ``fallback="eager"`` when the defaults raise);
- ``error``: nkipy raises with default options and with ``fallback="eager"``;
- ``fallback``: correct only with ``options={"fallback": "eager"}``;
- ``ok``: correct with default options.

Training cases are graded against eager's own float32 spread too: eager runs the step twice, with
torch's default CPU kernels and with oneDNN disabled (two valid float32 implementations of the same
step). A ReLU network of any size has inputs within float32 rounding of zero, and the side of the
kink such an input lands on decides whether its gradient passes, so two correct float32 steps can
differ by far more than the tolerance (torchvision resnet18: 2.35e-2 on one BatchNorm bias between
eager's own two kernel sets). An output passes when its error is within the tolerance or within
twice eager's own spread on that output; the row reports the spread (``eager_spread``).

Each backend gets a fresh copy of the same seeded model, a ``torch._dynamo.reset()`` and (for
nkipy) ``spiky.torch.reset_nkipy_backend()``.

``target``: nkipy runs on the ``host`` target, or on ``neuron`` through the fake Neuron stack
(``spiky.testing.fake_neuron``: HLO → fake neuronx-cc → NEFF → fake libnrt, executed on XLA:CPU),
with the compile cache in ``$SPIKY_CACHE`` when set, else a temporary folder.
"""

from __future__ import annotations

import contextlib
import copy
import os
import statistics
import tempfile
import time
import traceback
from collections.abc import Callable, Iterator
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Any

import torch

from zoo.cases import DYNAMIC_LENGTHS, TOLERANCE, Case, _ids

TIMED_CALLS = 5  # calls timed after the first (tests/test_zoo.py times one: it checks status only)
_timed_calls = TIMED_CALLS
STATUSES = ("ok", "fallback", "WRONG", "error")
TARGETS = ("host", "neuron")


@dataclass
class Result:
    name: str
    status: str
    max_err: float | None = None  # worst relative error vs eager (token mismatches for generate)
    eager_ms: float | None = None
    inductor_ms: float | None = None
    inductor_first_s: float | None = None
    nkipy_ms: float | None = None
    nkipy_first_s: float | None = None
    graphs: int | None = None  # nkipy graphs compiled (generate)
    error: str = ""
    inductor_error: str = ""
    eager_spread: float | None = None  # train: worst relative difference between eager's two float32 kernel sets

    def to_json(self) -> dict[str, Any]:
        return asdict(self)


class MismatchError(Exception):
    pass


def _first_line(exc: BaseException) -> str:
    """The first line of the error that matters (Dynamo wraps backend errors)."""
    inner = getattr(exc, "inner_exception", None)
    if isinstance(inner, BaseException):
        exc = inner
    lines = [ln.strip() for ln in f"{type(exc).__name__}: {exc}".splitlines() if ln.strip()]
    lines = [ln for ln in lines if not ln.endswith("raised:")] or [type(exc).__name__]
    return lines[0][:300]


def _tensors(out: Any) -> list[torch.Tensor]:
    """The outputs compared: a tensor, or a library output object's main tensor."""
    if isinstance(out, torch.Tensor):
        return [out]
    for key in ("logits", "logits_per_image", "last_hidden_state", "loss"):
        value = getattr(out, key, None)
        if isinstance(value, torch.Tensor):
            return [value]
    if isinstance(out, (tuple, list)):
        return [t for t in out if isinstance(t, torch.Tensor)]
    raise TypeError(f"cannot find the output tensor of a {type(out).__name__}")


def rel_err(got: torch.Tensor, want: torch.Tensor) -> float:
    if got.shape != want.shape:
        raise MismatchError(f"shape {tuple(got.shape)}, eager {tuple(want.shape)}")
    g, w = got.detach().double(), want.detach().double()
    scale = w.abs().max().item() if w.numel() else 0.0
    return float((g - w).abs().max().item() / max(scale, 1e-12)) if w.numel() else 0.0


def _call(model: Any, inputs: Any) -> Any:
    return model(**inputs) if isinstance(inputs, dict) else model(*inputs)


def _compile(model: torch.nn.Module, backend: str, case: Case, options: dict[str, Any] | None) -> Any:
    kwargs: dict[str, Any] = {"backend": backend}
    if backend == "nkipy" and options:
        kwargs["options"] = options
    if case.dynamic == "dynamic=True":
        kwargs["dynamic"] = True
    return torch.compile(model, **kwargs)


def _reset() -> None:
    import spiky.torch

    torch._dynamo.reset()
    spiky.torch.reset_nkipy_backend()


# -- one mode each: returns (reference-comparable values, per-call seconds, first-call seconds)

Runner = Callable[[Case, Any, Any, str, "dict[str, Any] | None"], tuple[list[torch.Tensor], float, float]]


def _timed(fn: Callable[[], Any]) -> tuple[Any, float, float]:
    t0 = time.perf_counter()
    out = fn()
    first = time.perf_counter() - t0
    times = []
    for _ in range(_timed_calls):
        t0 = time.perf_counter()
        out = fn()
        times.append(time.perf_counter() - t0)
    return out, statistics.median(times), first


def _infer(case: Case, model: Any, inputs: Any, backend: str, options: dict[str, Any] | None) -> Any:
    fn = model if backend == "eager" else _compile(model, backend, case, options)
    with torch.no_grad():
        out, per_call, first = _timed(lambda: _call(fn, inputs))
    return _tensors(out), per_call, first


def _dynamic(case: Case, model: Any, inputs: Any, backend: str, options: dict[str, Any] | None) -> Any:
    fn = model if backend == "eager" else _compile(model, backend, case, options)
    outs, per_call, first = [], [], 0.0
    with torch.no_grad():
        for i, length in enumerate(DYNAMIC_LENGTHS):
            ids = _ids(length)
            if case.dynamic == "mark_dynamic" and backend != "eager":
                torch._dynamo.mark_dynamic(ids, 1)
            out, t, f = _timed(lambda ids=ids: _call(fn, (ids,)))
            outs += _tensors(out)
            per_call.append(t)
            if i == 0:
                first = f
    return outs, statistics.median(per_call), first


def _train(case: Case, model: Any, inputs: Any, backend: str, options: dict[str, Any] | None) -> Any:
    fn = model if backend == "eager" else _compile(model, backend, case, options)
    opt = torch.optim.SGD(model.parameters(), lr=0.1)

    def loss_of() -> torch.Tensor:
        if isinstance(inputs, dict):
            return fn(**inputs).loss  # type: ignore[no-any-return]
        x, target = inputs
        return torch.nn.functional.cross_entropy(fn(x), target)

    t0 = time.perf_counter()
    loss = loss_of()
    loss.backward()
    first = time.perf_counter() - t0
    grads = [p.grad.clone() if p.grad is not None else torch.zeros_like(p) for p in model.parameters()]
    opt.step()
    opt.zero_grad()
    times = []
    for _ in range(max(2, _timed_calls)):  # time training steps (forward + backward) after the first
        t0 = time.perf_counter()
        step_loss = loss_of()
        step_loss.backward()
        times.append(time.perf_counter() - t0)
        if len(times) == 1:
            after = step_loss.detach().clone()
        opt.zero_grad()
    return [loss.detach().reshape(1), *grads, after.reshape(1)], statistics.median(times), first


def _generate(case: Case, model: Any, inputs: Any, backend: str, options: dict[str, Any] | None) -> Any:
    (ids,) = inputs
    kwargs = {"max_new_tokens": case.extra.get("max_new_tokens", 8), "do_sample": False}
    if backend != "eager":
        model.forward = _compile(model.forward, backend, case, options)
    with torch.no_grad():
        out, per_call, first = _timed(lambda: model.generate(ids, **kwargs))
    return [out], per_call, first


MODES: dict[str, Any] = {"infer": _infer, "dynamic": _dynamic, "train": _train, "generate": _generate}


def _compare(case: Case, got: list[torch.Tensor], want: list[torch.Tensor]) -> float:
    if len(got) != len(want):
        raise MismatchError(f"{len(got)} outputs, eager {len(want)}")
    if case.mode == "generate":
        g, w = got[0], want[0]
        if g.shape != w.shape:
            raise MismatchError(f"generated shape {tuple(g.shape)}, eager {tuple(w.shape)}")
        return float((g != w).sum().item())
    return max((rel_err(g, w) for g, w in zip(got, want, strict=True)), default=0.0)


def _within(case: Case, err: float) -> bool:
    return err == 0 if case.mode == "generate" else err <= TOLERANCE[case.dtype]


def _within_spread(case: Case, got: list[torch.Tensor], want: list[torch.Tensor], spread: list[float]) -> bool:
    """Training: each output within the tolerance or within twice eager's own spread on it."""
    tol = TOLERANCE[case.dtype]
    return all(rel_err(g, w) <= max(tol, 2.0 * s) for g, w, s in zip(got, want, spread, strict=True))


def _eager_spread(case: Case, model: Any, inputs: Any, want: list[torch.Tensor]) -> list[float]:
    """Per output: how far eager's step with oneDNN disabled is from its default step."""
    torch._dynamo.reset()
    with torch.backends.mkldnn.flags(enabled=False):
        alt, _, _ = MODES[case.mode](case, model, inputs, "eager", None)
    return [rel_err(a, w) for a, w in zip(alt, want, strict=True)]


@contextlib.contextmanager
def on_target(target: str) -> Iterator[None]:
    """The nkipy backend initialised for ``target`` for the block (see the module doc)."""
    import spiky.torch

    if target == "host":
        spiky.torch.init_nkipy_backend(target="host")
        yield
        return
    if target != "neuron":
        raise ValueError(f"unknown zoo target {target!r}; valid: {', '.join(TARGETS)}")
    from spiky.testing import fake_neuron

    with contextlib.ExitStack() as stack:
        cache = os.environ.get("SPIKY_CACHE") or stack.enter_context(tempfile.TemporaryDirectory(prefix="zoo-neuron-"))
        stack.enter_context(fake_neuron(Path(cache)))
        yield


def run_case(case: Case, inductor: bool = True, timed_calls: int = TIMED_CALLS, target: str = "host") -> Result:
    """Run one case in this process (callers wanting isolation use a subprocess per case), nkipy on
    ``target`` (``host``, or ``neuron`` through the fake Neuron stack)."""
    if target not in TARGETS:
        raise ValueError(f"unknown zoo target {target!r}; valid: {', '.join(TARGETS)}")

    global _timed_calls
    _timed_calls = timed_calls

    run = MODES[case.mode]
    base_model, inputs = case.build()
    res = Result(case.name, "error")

    def fresh() -> Any:
        return copy.deepcopy(base_model)

    torch._dynamo.reset()
    want, res.eager_ms, _ = run(case, fresh(), inputs, "eager", None)
    res.eager_ms *= 1e3
    spread = _eager_spread(case, fresh(), inputs, want) if case.mode == "train" else None
    res.eager_spread = max(spread, default=0.0) if spread is not None else None

    torch._dynamo.reset()
    try:
        if not inductor:
            raise RuntimeError("not run")
        _ind, t, f = run(case, fresh(), inputs, "inductor", None)
        res.inductor_ms, res.inductor_first_s = t * 1e3, f
    except Exception as exc:
        res.inductor_error = _first_line(exc)

    first_error = ""
    for status, options in (("ok", None), ("fallback", {"fallback": "eager"})):
        _reset()
        counter = torch._dynamo.utils.counters
        counter.clear()
        try:
            with on_target(target):
                got, t, f = run(case, fresh(), inputs, "nkipy", options)
        except Exception as exc:
            first_error = first_error or _first_line(exc)
            if status == "ok":
                import logging

                logging.getLogger("spiky.zoo").debug("%s", traceback.format_exc())
            continue
        res.nkipy_ms, res.nkipy_first_s = t * 1e3, f
        res.graphs = int(counter["stats"]["unique_graphs"]) if case.mode == "generate" else None
        try:
            res.max_err = _compare(case, got, want)
        except MismatchError as exc:
            res.status, res.error = "WRONG", str(exc)
            return res
        within = _within(case, res.max_err) or (spread is not None and _within_spread(case, got, want, spread))
        res.status = status if within else "WRONG"
        res.error = first_error if status == "fallback" else ""
        return res
    res.error = first_error
    return res
