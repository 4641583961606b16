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

Each backend gets a fresh copy of the same seeded model; nkipy gets a ``torch._dynamo.reset()`` and
``spiky.torch.reset_nkipy_backend()`` first, and Inductor compiles last (a reset would drop nkipy's
compiled frames). Warm calls (or training steps) are then timed with the backends interleaved, in
rounds of five calls each, and each backend's time is the median of its calls: these VMs drift by
tens of per cent within seconds, and interleaving puts a slow spell on every backend alike.

``target``: nkipy runs on the ``host`` target, or on ``neuron`` through the fake Neuron stack
(``spiky.testing.fake_neuron``: HLO → fake neuronx-cc → NEFF → fake libnrt, executed on XLA:CPU),
with the compile cache in ``$SPIKY_CACHE`` when set, else a temporary folder.
"""

from __future__ import annotations

import contextlib
import copy
import itertools
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


# -- one mode each: returns (reference-comparable values, first-call seconds, one more call)
#
# The warm calls are timed by run_case, interleaved across the backends (see _interleaved).

Again = Callable[[], object]
Ran = tuple[list[torch.Tensor], float, Again]


def _first(fn: Callable[[], Any]) -> tuple[Any, float]:
    t0 = time.perf_counter()
    out = fn()
    return out, time.perf_counter() - t0


def _no_grad(fn: Callable[[], Any]) -> Again:
    def again() -> object:
        with torch.no_grad():
            return fn()
    return again


def _infer(case: Case, model: Any, inputs: Any, backend: str, options: dict[str, Any] | None) -> Ran:
    fn = model if backend == "eager" else _compile(model, backend, case, options)
    call = _no_grad(lambda: _call(fn, inputs))
    out, first = _first(call)
    return _tensors(out), first, call


def _dynamic(case: Case, model: Any, inputs: Any, backend: str, options: dict[str, Any] | None) -> Ran:
    fn = model if backend == "eager" else _compile(model, backend, case, options)
    outs, first, all_ids = [], 0.0, []
    for i, length in enumerate(DYNAMIC_LENGTHS):
        ids = _ids(length)
        if case.dynamic == "mark_dynamic" and backend != "eager":
            torch._dynamo.mark_dynamic(ids, 1)
        out, f = _first(_no_grad(lambda ids=ids: _call(fn, (ids,))))
        outs += _tensors(out)
        all_ids.append(ids)
        if i == 0:
            first = f
    turn = itertools.cycle(all_ids)  # one call per timing, the lengths in turn
    return outs, first, _no_grad(lambda: _call(fn, (next(turn),)))


def _train(case: Case, model: Any, inputs: Any, backend: str, options: dict[str, Any] | None) -> Ran:
    fn = model if backend == "eager" else _compile(model, backend, case, options)
    opt = torch.optim.SGD(model.parameters(), lr=0.1)

    def loss_of() -> torch.Tensor:
        if isinstance(inputs, dict):
            return fn(**inputs).loss  # type: ignore[no-any-return]
        x, target = inputs
        return torch.nn.functional.cross_entropy(fn(x), target)

    def step() -> torch.Tensor:  # forward and backward; the optimizer steps once, after the first
        loss = loss_of()
        loss.backward()
        return loss

    loss, first = _first(step)
    grads = [p.grad.clone() if p.grad is not None else torch.zeros_like(p) for p in model.parameters()]
    opt.step()
    opt.zero_grad()
    after = step().detach().clone()  # the loss after one SGD step
    opt.zero_grad()

    def again() -> object:
        out = step()
        opt.zero_grad()
        return out

    return [loss.detach().reshape(1), *grads, after.reshape(1)], first, again


def _generate(case: Case, model: Any, inputs: Any, backend: str, options: dict[str, Any] | None) -> Ran:
    (ids,) = inputs
    kwargs = {"max_new_tokens": case.extra.get("max_new_tokens", 8), "do_sample": False}
    if backend != "eager":
        model.forward = _compile(model.forward, backend, case, options)
    call = _no_grad(lambda: model.generate(ids, **kwargs))
    out, first = _first(call)
    return [out], first, call


def _interleaved(calls: dict[str, Again], timed: int, block: int = 5, warmup: int = 0) -> dict[str, float]:
    """Median seconds per call of each backend: ``timed`` calls each, in rounds of ``block`` calls per
    backend in turn, so that a slow spell of a shared machine (these VMs drift by tens of per cent
    within seconds) falls on every backend alike instead of on whichever ran then. First ``warmup``
    untimed calls each, in the same turns: the calls right after a compile run on cold caches (and,
    for nkipy's dynamic graphs, settle their routes and input staging), which is not a warm call."""
    for done in range(0, warmup, block):
        for again in calls.values():
            for _ in range(min(block, warmup - done)):
                again()
    times: dict[str, list[float]] = {name: [] for name in calls}
    while any(len(t) < timed for t in times.values()):
        for name, again in calls.items():
            for _ in range(min(block, timed - len(times[name]))):
                t0 = time.perf_counter()
                again()
                times[name].append(time.perf_counter() - t0)
    return {name: statistics.median(t) for name, t in times.items() if t}


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


def run_case(case: Case, inductor: bool = True, timed_calls: int = TIMED_CALLS, target: str = "host",
             warmup_calls: int = 0) -> Result:
    """Run one case in this process (callers wanting isolation use a subprocess per case), nkipy on
    ``target`` (``host``, or ``neuron`` through the fake Neuron stack); ``warmup_calls`` untimed calls per
    backend before the ``timed_calls``."""
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
    want, _, eager_again = run(case, fresh(), inputs, "eager", None)
    calls: dict[str, Again] = {"eager": eager_again}
    spread = _eager_spread(case, fresh(), inputs, want) if case.mode == "train" else None
    res.eager_spread = max(spread, default=0.0) if spread is not None else None

    with contextlib.ExitStack() as keep:  # nkipy's target stays set up while its calls are timed
        first_error = ""
        for status, options in (("ok", None), ("fallback", {"fallback": "eager"})):
            _reset()
            counter = torch._dynamo.utils.counters
            counter.clear()
            attempt = contextlib.ExitStack()
            try:
                attempt.enter_context(on_target(target))
                got, res.nkipy_first_s, calls["nkipy"] = run(case, fresh(), inputs, "nkipy", options)
            except Exception as exc:
                attempt.close()
                first_error = first_error or _first_line(exc)
                if status == "ok":
                    import logging

                    logging.getLogger("spiky.zoo").debug("%s", traceback.format_exc())
                continue
            keep.callback(attempt.close)
            res.graphs = int(counter["stats"]["unique_graphs"]) if case.mode == "generate" else None
            try:
                res.max_err = _compare(case, got, want)
            except MismatchError as exc:
                res.status, res.error = "WRONG", str(exc)
                break
            within = _within(case, res.max_err) or (spread is not None and _within_spread(case, got, want, spread))
            res.status = status if within else "WRONG"
            res.error = first_error if status == "fallback" else ""
            break
        else:
            res.error = first_error

        # Inductor last: torch._dynamo.reset() (before each nkipy attempt) drops every compiled frame.
        try:
            if not inductor:
                raise RuntimeError("not run")
            _ind, res.inductor_first_s, calls["inductor"] = run(case, fresh(), inputs, "inductor", None)
        except Exception as exc:
            res.inductor_error = _first_line(exc)

        per_call = _interleaved(calls, _timed_calls, warmup=warmup_calls)
    res.eager_ms = per_call["eager"] * 1e3
    res.inductor_ms = per_call["inductor"] * 1e3 if "inductor" in per_call else None
    res.nkipy_ms = per_call["nkipy"] * 1e3 if "nkipy" in per_call else None
    return res
