"""MemoryPool through Device.allocate / Buffer.free: counters, rounding, cache, OOM, threads."""

from __future__ import annotations

import threading

import numpy as np
import pytest

import spiky_runtime as rt

KIB = 1024
MIB = 1024 * 1024

STAT_KEYS = {
    "used_bytes",
    "cached_bytes",
    "total_bytes",
    "allocation_count",
    "reuse_count",
    "cache_hit_count",
    "cache_miss_count",
}


def check_invariants(s: dict[str, int]) -> None:
    assert s["total_bytes"] == s["used_bytes"] + s["cached_bytes"]
    assert s["used_bytes"] >= 0 and s["cached_bytes"] >= 0


@pytest.mark.smoke
def test_memory_stats_keys_exact(dev: rt.Device) -> None:
    assert set(dev.memory_stats()) == STAT_KEYS
    assert set(dev.memory_stats_full()) == STAT_KEYS | {
        "peak_used_bytes",
        "num_ooms",
        "num_alloc_retries",
    }


@pytest.mark.smoke
def test_alloc_free_alloc_hits_cache(dev: rt.Device) -> None:
    a = dev.allocate(1000)
    s = dev.memory_stats()
    assert (s["cache_miss_count"], s["cache_hit_count"], s["reuse_count"]) == (1, 0, 0)
    assert s["allocation_count"] == 1
    a.free()
    s = dev.memory_stats()
    assert (s["used_bytes"], s["cached_bytes"], s["total_bytes"]) == (0, 1024, 1024)
    b = dev.allocate(900)  # same 1024-byte class
    s = dev.memory_stats()
    assert (s["cache_miss_count"], s["cache_hit_count"], s["reuse_count"]) == (1, 1, 1)
    assert s["allocation_count"] == 1
    assert (s["used_bytes"], s["cached_bytes"]) == (1024, 0)
    assert b.nbytes == 900
    b.free()


@pytest.mark.parametrize(
    ("request_bytes", "rounded"),
    [
        (1, 512),
        (512, 512),
        (513, 1024),
        (MIB, MIB),  # 1 MiB is still a small request: multiple of 512
        (MIB + 1, 2 * MIB),
        (3 * MIB, 4 * MIB),
        (4 * MIB, 4 * MIB),
    ],
)
def test_rounding(dev: rt.Device, request_bytes: int, rounded: int) -> None:
    buf = dev.allocate(request_bytes)
    assert dev.memory_stats()["used_bytes"] == rounded
    assert buf.nbytes == request_bytes
    buf.free()
    assert dev.memory_stats()["cached_bytes"] == rounded


def test_used_cached_total_arithmetic(dev: rt.Device) -> None:
    bufs = [dev.allocate(n) for n in (100, 600, 2 * MIB)]  # 512 + 1024 + 2 MiB
    s = dev.memory_stats()
    assert s["used_bytes"] == 512 + 1024 + 2 * MIB
    assert s["cached_bytes"] == 0
    check_invariants(s)
    bufs[1].free()
    s = dev.memory_stats()
    assert (s["used_bytes"], s["cached_bytes"]) == (512 + 2 * MIB, 1024)
    check_invariants(s)
    for b in bufs:
        b.free()  # bufs[1] twice: harmless
    s = dev.memory_stats_full()
    assert (s["used_bytes"], s["cached_bytes"], s["total_bytes"]) == (0, 1536 + 2 * MIB, 1536 + 2 * MIB)
    assert s["peak_used_bytes"] == 1536 + 2 * MIB


def test_best_fit_and_no_oversized_reuse(dev: rt.Device) -> None:
    for n in (1024, 2048, 8 * MIB):
        dev.allocate(n).free()
    assert dev.memory_stats()["cached_bytes"] == 1024 + 2048 + 8 * MIB
    b = dev.allocate(700)  # rounds to 1024: best fit is the 1024 block
    assert dev.memory_stats()["cached_bytes"] == 2048 + 8 * MIB
    c = dev.allocate(600)  # 1024 again: 2048 block is within 2x -> reused
    assert dev.memory_stats()["cached_bytes"] == 8 * MIB
    d = dev.allocate(512)  # the 8 MiB block is far too big to hand to a 512-byte request
    s = dev.memory_stats()
    assert s["cached_bytes"] == 8 * MIB
    assert s["allocation_count"] == 4
    assert s["used_bytes"] == 1024 + 2048 + 512
    for x in (b, c, d):
        x.free()


def test_garbage_collection_returns_block(dev: rt.Device) -> None:
    buf = dev.allocate(4096)
    assert dev.memory_stats()["used_bytes"] == 4096
    del buf
    s = dev.memory_stats()
    assert (s["used_bytes"], s["cached_bytes"]) == (0, 4096)


@pytest.mark.smoke
def test_clear_cache(dev: rt.Device) -> None:
    keep = dev.allocate(512)
    for n in (1024, 4096):
        dev.allocate(n).free()
    assert dev.clear_cache() == 1024 + 4096
    s = dev.memory_stats()
    assert (s["used_bytes"], s["cached_bytes"], s["total_bytes"]) == (512, 0, 512)
    assert dev.clear_cache() == 0
    keep.free()


def test_trim_frees_largest_first(dev: rt.Device) -> None:
    bufs = [dev.allocate(n) for n in (512, 1024, 4096, 2 * MIB)]
    for b in bufs:
        b.free()
    cached = 512 + 1024 + 4096 + 2 * MIB
    assert dev.memory_stats()["cached_bytes"] == cached
    assert dev.trim(10 * MIB) == 0  # already under the target
    # Largest first: the 2 MiB block goes, then 4096; 1536 <= 2000 stops it.
    assert dev.trim(2000) == 2 * MIB + 4096
    assert dev.memory_stats()["cached_bytes"] == 1536
    # The survivors are the small blocks: a 512 request is served from the cache.
    before = dev.memory_stats()["reuse_count"]
    dev.allocate(512).free()
    assert dev.memory_stats()["reuse_count"] == before + 1
    assert dev.trim(0) == 1536
    assert dev.memory_stats()["total_bytes"] == 0


def test_trim_negative_target_rejected(dev: rt.Device) -> None:
    with pytest.raises(rt.InvalidArgumentError, match="target_bytes must be >= 0, got -1"):
        dev.trim(-1)


@pytest.mark.parametrize("nbytes", [0, -5])
def test_allocate_non_positive_rejected(dev: rt.Device, nbytes: int) -> None:
    with pytest.raises(rt.InvalidArgumentError, match=f"nbytes must be > 0, got {nbytes}"):
        dev.allocate(nbytes)


@pytest.mark.smoke
def test_oom_retry_then_error_then_usable(dev: rt.Device) -> None:
    dev = rt.Device("host", 0, capacity_bytes=4 * MIB)
    assert dev.capacity_bytes == 4 * MIB
    dev.allocate(2 * MIB).free()  # 2 MiB sits in the cache
    # 3 MiB rounds to 4 MiB: 2 cached + 4 > 4 -> device OOM -> cache freed -> retry succeeds.
    big = dev.allocate(3 * MIB)
    s = dev.memory_stats_full()
    assert s["num_alloc_retries"] == 1
    assert s["num_ooms"] == 0
    assert (s["used_bytes"], s["cached_bytes"], s["total_bytes"]) == (4 * MIB, 0, 4 * MIB)

    with pytest.raises(rt.OutOfMemoryError) as info:
        dev.allocate(1000)
    msg = str(info.value)
    for fragment in (
        "requested 1000 bytes",
        "rounded to 1024",
        f"used {4 * MIB} bytes",
        "cached 0 bytes",
        f"total {4 * MIB} bytes",
        f"capacity {4 * MIB} bytes",
    ):
        assert fragment in msg, (fragment, msg)
    assert isinstance(info.value, MemoryError)
    assert isinstance(info.value, rt.SpikyRuntimeError)
    s = dev.memory_stats_full()
    assert (s["num_ooms"], s["num_alloc_retries"]) == (1, 2)

    big.free()
    small = dev.allocate(1000)  # the pool is still usable
    small.write(np.arange(250, dtype=np.int32))
    small.free()
    assert dev.memory_stats()["used_bytes"] == 0


def test_env_capacity_only_applies_on_creation(dev: rt.Device, monkeypatch: pytest.MonkeyPatch) -> None:
    # The device already exists (process-wide registry): env is read only when it is created,
    # and capacity_bytes=None keeps the current value.
    monkeypatch.setenv("SPIKY_HOST_CAPACITY_BYTES", "12345")
    rt.Device("host", 0, capacity_bytes=777)
    assert rt.Device("host", 0).capacity_bytes == 777


def test_registry_shares_pool_and_stats(dev: rt.Device) -> None:
    other = rt.Device("host", 0)
    assert other == dev
    assert hash(other) == hash(dev)
    buf = other.allocate(512)
    assert dev.memory_stats()["used_bytes"] == 512
    assert buf.device == dev
    buf.free()


@pytest.mark.smoke
def test_device_errors() -> None:
    assert rt.device_count() == 1
    assert rt.device_count("host") == 1
    with pytest.raises(rt.InvalidArgumentError, match="unknown driver 'cuda'; valid drivers: 'host'"):
        rt.Device("cuda")
    with pytest.raises(rt.InvalidArgumentError, match="unknown driver"):
        rt.device_count("cuda")
    with pytest.raises(rt.InvalidArgumentError, match=r"index 1 is out of range .* 0 <= index < 1"):
        rt.Device("host", 1)
    with pytest.raises(rt.InvalidArgumentError, match="capacity_bytes must be >= 0"):
        rt.Device("host", 0, capacity_bytes=-1)


def test_concurrent_alloc_free_from_8_threads(dev: rt.Device) -> None:
    sizes = [512, 1000, 4096, 70_000, MIB + 3]
    errors: list[BaseException] = []
    barrier = threading.Barrier(8)

    def worker(seed: int) -> None:
        try:
            barrier.wait()
            held: list[rt.Buffer] = []
            for i in range(300):
                buf = dev.allocate(sizes[(seed + i) % len(sizes)])
                held.append(buf)
                if len(held) > 3:
                    held.pop(0).free()
            for buf in held:
                buf.free()
        except BaseException as e:  # surfaced by the assertion below
            errors.append(e)

    threads = [threading.Thread(target=worker, args=(k,)) for k in range(8)]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    assert errors == []
    s = dev.memory_stats()
    assert s["used_bytes"] == 0
    check_invariants(s)
    assert s["cache_hit_count"] + s["cache_miss_count"] == 8 * 300
    assert s["reuse_count"] == s["cache_hit_count"]
    assert s["allocation_count"] == s["cache_miss_count"]
    assert dev.clear_cache() == s["cached_bytes"]
    assert dev.memory_stats()["total_bytes"] == 0
