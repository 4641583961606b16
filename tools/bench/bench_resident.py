"""Steady-state H2D bytes per call of a decoder LM forward on the emulated Neuron stack.

Issue 17 item 5: with resident weights, a call should upload only its activations (goal: at most 1%
of the model's weight bytes per call). This prints, for a small decoder LM (token embedding, causal
self-attention blocks, MLP, tied LM head) compiled with ``torch.compile(backend="nkipy")`` under
``spiky.testing.fake_neuron``: the weight bytes, the H2D bytes of each steady-state call (from
``spiky.get_stats()``, after warm-up calls) and their ratio, with ``resident_weights`` off and on
side by side. Results are checked against eager.

    .venv/bin/python tools/bench/bench_resident.py
"""

from __future__ import annotations

import argparse
import sys
import tempfile
from pathlib import Path

CALLS = 10


def main(argv: list[str]) -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--dim", type=int, default=256, help="model width (default 256)")
    parser.add_argument("--layers", type=int, default=2, help="decoder blocks (default 2)")
    parser.add_argument("--vocab", type=int, default=1024, help="vocabulary size (default 1024)")
    parser.add_argument("--seq", type=int, default=32, help="tokens per call (default 32)")
    args = parser.parse_args(argv)

    import torch
    from torch import nn

    import spiky
    from spiky.testing import fake_neuron

    class Block(nn.Module):
        def __init__(self, dim: int) -> None:
            super().__init__()
            self.ln1 = nn.LayerNorm(dim)
            self.attn = nn.MultiheadAttention(dim, 4, batch_first=True)
            self.ln2 = nn.LayerNorm(dim)
            self.mlp = nn.Sequential(nn.Linear(dim, 4 * dim), nn.GELU(), nn.Linear(4 * dim, dim))

        def forward(self, x: torch.Tensor, mask: torch.Tensor) -> torch.Tensor:
            h = self.ln1(x)
            x = x + self.attn(h, h, h, attn_mask=mask, need_weights=False)[0]
            return x + self.mlp(self.ln2(x))

    class DecoderLM(nn.Module):
        def __init__(self, vocab: int, dim: int, layers: int, seq: int) -> None:
            super().__init__()
            self.embed = nn.Embedding(vocab, dim)
            self.pos = nn.Parameter(torch.randn(seq, dim) * 0.02)
            self.blocks = nn.ModuleList(Block(dim) for _ in range(layers))
            self.ln = nn.LayerNorm(dim)
            self.register_buffer("mask", torch.triu(torch.full((seq, seq), float("-inf")), 1))

        def forward(self, tokens: torch.Tensor) -> torch.Tensor:
            x = self.embed(tokens) + self.pos[: tokens.shape[1]]
            for block in self.blocks:
                x = block(x, self.mask)
            return self.ln(x) @ self.embed.weight.t()

    torch.manual_seed(0)
    model = DecoderLM(args.vocab, args.dim, args.layers, args.seq).eval()
    weight_bytes = sum(p.numel() * p.element_size() for p in model.parameters())
    weight_bytes += sum(b.numel() * b.element_size() for b in model.buffers())
    tokens = [torch.randint(0, args.vocab, (1, args.seq)) for _ in range(CALLS)]
    token_bytes = tokens[0].numel() * tokens[0].element_size()
    print(f"decoder LM: vocab {args.vocab}, dim {args.dim}, {args.layers} blocks, {args.seq} tokens, float32")
    print(f"  weight + buffer bytes          {weight_bytes:>12,}")
    print(f"  token bytes per call           {token_bytes:>12,}")
    print("  resident_weights   H2D bytes per steady call   H2D / weight bytes (goal <= 1%)")
    for resident in (False, True):
        torch._dynamo.reset()
        with tempfile.TemporaryDirectory() as tmp, fake_neuron(Path(tmp) / "cache"), torch.no_grad():
            fn = torch.compile(model, backend="nkipy", options={"resident_weights": resident})
            for t in tokens[:2]:  # compile + warm up
                torch.testing.assert_close(fn(t).cpu(), model(t), rtol=1e-4, atol=1e-4)
            per_call = []
            for t in tokens:
                spiky.reset_stats()
                out = fn(t)
                per_call.append(spiky.get_stats().total_h2d_bytes)
                torch.testing.assert_close(out.cpu(), model(t), rtol=1e-4, atol=1e-4)
        steady = max(per_call)
        print(f"  {resident!s:<18} {steady:>14,} (min {min(per_call):,})   {100 * steady / weight_bytes:>10.3f}%")
    return 0


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
