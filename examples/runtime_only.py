"""spiky-runtime on its own (numpy only): device buffers, a host model, a bucketed bundle, stats."""

from __future__ import annotations

import numpy as np

import spiky_runtime as rt


def main() -> None:
    dev = rt.Device("host")
    buf = dev.allocate(64)
    buf.write(np.arange(16, dtype=np.float32))
    print(f"buffer round trip: {buf.read(np.float32, (4,), offset=16).tolist()}")
    buf.free()

    def row_sums(arrays: list[np.ndarray]) -> list[np.ndarray]:
        return [arrays[0].sum(axis=1, keepdims=True)]

    models = {
        n: dev.load_host_model(row_sums, [rt.TensorSpec((n, 3), "float32")], [rt.TensorSpec((n, 1), "float32")],
                               f"row_sums_{n}")
        for n in (4, 8)
    }
    bundle = rt.Bundle(models, input_dims=[{0: "s0"}], output_dims=[{0: "s0"}])
    out = bundle.run([np.ones((5, 3), np.float32)])[0]  # padded to the 8-row bucket on device
    print(f"5 rows through bucket 8: shape {out.shape}, values {out.ravel().tolist()}")
    stats = dev.stats()
    print(f"executions {stats.total_executions}, bucket hits {stats.bucket_hits}, pad ratio {stats.pad_ratio:.2f}")
    print(f"memory: {dev.memory_stats()}")


if __name__ == "__main__":
    main()
