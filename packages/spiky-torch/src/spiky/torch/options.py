"""Per-function options of ``torch.compile(model, backend="nkipy", options={...})``.

The table below (:data:`OPTIONS`) is the single source of truth: validation, defaults,
cache-key membership and the docs (docs/options.md, checked by a test) come from it.
Unknown keys and bad values raise :class:`spiky.errors.SpikyOptionError` naming the key
and what would be valid. :func:`validate_options` merges the given options with the
defaults once per compiled function; nothing else holds a default.

An option enters the compile-cache key (:attr:`OptionSpec.in_cache_key`) only if it
changes the artefact built for a given IR, target and bucket. None of today's options
does: bucket choices, padding and fallback partitions change the IR text or the bucket
sizes, which are key fields of their own, and everything else acts at call time. So a
bucket compiled under one ``buckets`` list is reused under another (a Neuron compile
takes minutes).
"""

from __future__ import annotations

import difflib
import os
from collections.abc import Callable, Mapping
from dataclasses import dataclass
from typing import Any

from spiky.errors import SpikyOptionError


@dataclass(frozen=True)
class OptionSpec:
    name: str
    default: Any
    doc: str
    check: Callable[[Any], str | None]
    """Returns None for a good value, else what a good value looks like."""
    in_cache_key: bool = False
    """Whether the value is part of the compile-cache key (it changes the compiled artefact)."""


def _path_or_none(value: Any) -> str | None:
    if value is None or isinstance(value, str | os.PathLike):
        return None
    return "a directory path (str or os.PathLike) or None"


def _bool(value: Any) -> str | None:
    return None if isinstance(value, bool) else "True or False"


def _host_executor(value: Any) -> str | None:
    from spiky.torch.host_executors import check_host_executor

    return None if value is None else check_host_executor(value)


def _bucket_spec(value: Any) -> str | None:
    """``buckets``: None, a list of sizes (every dynamic symbol), or {symbol: list of sizes}."""
    from spiky.torch.buckets import _bucket_list

    try:
        if isinstance(value, Mapping):
            for symbol, sizes in value.items():
                if not isinstance(symbol, str):
                    return "a dict keyed by symbol names ('s0', 's1', ...)"
                _bucket_list(sizes, f"buckets[{symbol!r}]")
        elif value is not None:
            _bucket_list(value, "buckets")
    except SpikyOptionError as exc:
        return f"None, a list of positive ints, or {{symbol: list}} ({exc})"
    return None


def _positive_int(value: Any) -> str | None:
    return None if isinstance(value, int) and not isinstance(value, bool) and value >= 1 else "an int >= 1"


def _ratio(value: Any) -> str | None:
    ok = isinstance(value, int | float) and not isinstance(value, bool) and 1 < value <= 4
    return None if ok else "a number in (1, 4], e.g. 1.15"


def _one_of(*choices: str) -> Callable[[Any], str | None]:
    def check(value: Any) -> str | None:
        return None if value in choices else "one of " + ", ".join(repr(c) for c in choices)

    return check


DYNAMIC_OPTIONS = (
    OptionSpec("buckets", None, "bucket sizes of dynamic dims: a list (every symbol) or {'s0': [...], 's1': [...]}; "
               "symbols are numbered s0, s1, ... in order of first appearance in the inputs", _bucket_spec),
    OptionSpec("jit", True, "compile a bucket on demand for a size no compiled bucket fits; False: sizes "
               "beyond the largest bucket raise SpikyShapeError", _bool),
    OptionSpec("precompile", False, "compile every bucket of the ladder (or the listed buckets) on the first call; "
               "on neuron the neuronx-cc runs go in parallel (one per core), with progress", _bool),
    OptionSpec("bucket_strategy", "pow2", "default ladder without explicit buckets: 'pow2', 'linear', 'geometric' "
               "(buckets bucket_ratio apart) or 'adaptive' (learned from the sizes seen: mean pad ratio within "
               "bucket_ratio)", _one_of("pow2", "linear", "geometric", "adaptive")),
    OptionSpec("bucket_ratio", 1.15, "'geometric': ratio of consecutive buckets; 'adaptive': the mean pad ratio "
               "it keeps to", _ratio),
    OptionSpec("min_bucket", 1, "smallest bucket of the default ladder", _positive_int),
    OptionSpec("max_bucket_size", 65536, "largest bucket of the default ladder; larger sizes raise", _positive_int),
    OptionSpec("linear_step", 64, "step of the 'linear' ladder", _positive_int),
    OptionSpec("input_layout", "unpadded", "'padded': inputs carrying a real shape (returned by a function "
               "compiled with output_layout='padded') are bucket-sized and are not padded again; inputs without "
               "one are taken at their own size",
               _one_of("unpadded", "padded")),
    OptionSpec("output_layout", "unpadded", "'padded': outputs stay bucket-sized and carry their real shape "
               "(spiky.real_shape(t), spiky.unpad(t))", _one_of("unpadded", "padded")),
)
"""Options of dynamic shapes (issue 7): see spiky.torch.buckets and spiky.torch.dynamic."""


def _exe_indices(value: Any) -> str | None:
    ok = value is None or (
        isinstance(value, list | tuple)
        and all(isinstance(i, int) and not isinstance(i, bool) and i >= 0 for i in value)
    )
    return None if ok else "None (every execution) or a list of execution indices >= 0"


def _ranks(value: Any) -> str | None:
    ok = isinstance(value, list | tuple) and all(isinstance(i, int) and not isinstance(i, bool) and i >= 0
                                                 for i in value)
    return None if ok else "a list of ranks >= 0"


NTFF_OPTIONS = (
    OptionSpec("save_ntff", False, "profile chosen executions: NTFF on neuron (nrt_profile_start/stop), the "
               "runtime timeline trace on host; see spiky.torch.neuron", _bool),
    OptionSpec("save_ntff_dir", None, "directory of the profiles: <dir>/kernel_<hash>/<exe_idx>.ntff next to "
               "kernel_<hash>.neff (default ./spiky_ntff)", _path_or_none),
    OptionSpec("save_ntff_exe_idx", None, "0-based call indices of each compiled graph to profile; None: every call",
               _exe_indices),
    OptionSpec("save_ntff_ranks", (0,), "ranks that write profiles (default rank 0 only)", _ranks),
)
"""Options of NTFF profiling (issue 6): see spiky.torch.neuron.NtffProfiler."""


EXECUTION_OPTIONS = (
    OptionSpec("pipelined", False, "calls go through the runtime's pipelined executor (copy and execute threads): "
               "the upload of one call overlaps the execution of the previous; with keep_outputs_on_device a call "
               "returns once queued. Results are identical to synchronous calls", _bool),
    OptionSpec("pad_on_device", True, "dynamic graphs: True pads inputs to the bucket and unpads outputs in the "
               "runtime, on the device; False pads and unpads on the host around the transfer (same results)",
               _bool),
    OptionSpec("keep_outputs_on_device", False, "outputs are returned as \"nkipy\" tensors in the device's pool "
               "memory (no copy through the host): for calls with \"nkipy\" inputs, and for inference calls "
               "with CPU inputs", _bool),
    OptionSpec("resident_weights", True, "neuron target: parameters and module buffers are uploaded "
               "once and kept in the device pool, uploaded again when the tensor object, storage, shape, "
               "strides, dtype or version (an in-place update) changed; False uploads every input each "
               "call (needed if code writes weights without bumping their version: p.data.mul_, writes "
               "through p.numpy())", _bool),
)
"""Options of how calls run (the seed's pipelined / pad_on_device / keep_outputs_on_device)."""


OPTIONS: dict[str, OptionSpec] = {
    spec.name: spec
    for spec in (
        OptionSpec(
            "dump_ir_dir",
            None,
            "directory where each compiled graph (each bucket of a dynamic one) is written as <kernel>.ir.txt "
            "and <kernel>.kernel.py",
            _path_or_none,
        ),
        *EXECUTION_OPTIONS,
        OptionSpec(
            "host_executor",
            None,
            "host target: 'numpy' (the reference semantics as a prepared plan), 'xla' (XLA:CPU) or 'auto' "
            "(per graph: tiny graphs on numpy, others on XLA when jax is installed unless numpy measured "
            "faster); None: init_nkipy_backend(host_executor=...)",
            _host_executor,
        ),
        OptionSpec(
            "fallback",
            None,
            "'eager': ops spiky-ir cannot lower run eagerly in torch between compiled partitions "
            "(one warning per graph); None: such an op is a LoweringError",
            lambda v: None if v in (None, "eager") else "None or 'eager'",
        ),
        *DYNAMIC_OPTIONS,
        *NTFF_OPTIONS,
    )
}


@dataclass(frozen=True)
class Options:
    """Validated options of one compiled function (every key present)."""

    values: Mapping[str, Any]

    def __getitem__(self, key: str) -> Any:
        return self.values[key]

    def replace(self, **values: Any) -> Options:
        """A copy with some values changed (already-valid values: not checked again)."""
        unknown = sorted(set(values) - set(OPTIONS))
        if unknown:
            raise SpikyOptionError(f"unknown option(s) {unknown}; valid options: {', '.join(sorted(OPTIONS))}")
        return Options({**self.values, **values})

    def cache_key_items(self) -> tuple[tuple[str, str], ...]:
        """``(name, repr(value))`` of the options that enter the compile-cache key, sorted."""
        return tuple(sorted((name, repr(self.values[name])) for name, spec in OPTIONS.items() if spec.in_cache_key))


def validate_options(options: Mapping[str, Any] | None) -> Options:
    """Check ``options`` against :data:`OPTIONS` and fill in defaults."""
    if options is not None and not isinstance(options, Mapping):
        raise SpikyOptionError(f"options must be a dict, got {type(options).__name__}")
    given = dict(options or {})
    for key, value in given.items():
        spec = OPTIONS.get(key)
        if spec is None:
            close = difflib.get_close_matches(str(key), OPTIONS, n=1)
            hint = f"; did you mean {close[0]!r}?" if close else ""
            raise SpikyOptionError(
                f"unknown option {key!r} for torch.compile(backend=\"nkipy\"){hint} "
                f"valid options: {', '.join(sorted(OPTIONS))}"
            )
        problem = spec.check(value)
        if problem is not None:
            raise SpikyOptionError(f"option {key!r} got {value!r}; expected {problem}")
    return Options({name: given.get(name, spec.default) for name, spec in OPTIONS.items()})
