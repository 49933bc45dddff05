"""Activation-streaming throughput: the project's nnsight path vs a plain transformers forward hook.

Both paths stop the forward pass right after the hooked layer, see the same batches of the built-in
corpus and use the same dtype; they alternate batch by batch so machine load affects both alike.

    .venv/bin/python benchmarks/stream_throughput.py [--tokens 16384] [--batch-size 16] [--layer 15]
"""

from __future__ import annotations

import argparse
import time

import numpy as np
import torch

from sources.config import DataSpec, HookSpec, ModelSpec
from sources.corpora import iter_contexts
from sources.models import load_model
from sources.stream import batched, hook_activations


class _Stop(Exception):
    pass


def plain_hook_activations(hf, block: torch.nn.Module, tokens_BL: torch.Tensor) -> torch.Tensor:
    got = {}

    def hook(_module, _inputs, output):
        got["h"] = output[0] if isinstance(output, tuple) else output
        raise _Stop

    handle = block.register_forward_hook(hook)
    try:
        with torch.no_grad():
            hf(tokens_BL)
    except _Stop:
        pass
    finally:
        handle.remove()
    return got["h"]


def main() -> None:
    p = argparse.ArgumentParser()
    p.add_argument("--model", default="smollm2-135m")
    p.add_argument("--tokens", type=int, default=16384)
    p.add_argument("--batch-size", type=int, default=16)
    p.add_argument("--context-len", type=int, default=128)
    p.add_argument("--layer", type=int, default=15)
    p.add_argument("--dtypes", default="float32,bfloat16")
    args = p.parse_args()
    torch.manual_seed(0)
    print(f"torch threads: {torch.get_num_threads()}; {args.tokens} tokens per path, batch {args.batch_size}x{args.context_len}, layer {args.layer} resid_post")
    print(f"{'dtype':<10}{'nnsight tok/s':>15}{'plain hook tok/s':>18}{'ratio':>8}")
    for dtype in args.dtypes.split(","):
        model = load_model(ModelSpec(name=args.model, dtype=dtype, device="auto"))
        hook = HookSpec(layer=args.layer, site="resid_post")
        block = model.hf.get_submodule(model.site(hook.layer, hook.site).block)
        data = DataSpec(context_len=args.context_len, max_tokens=args.tokens)
        batches = [torch.from_numpy(np.stack([c.tokens_L for c in chunk])).to(model.device)
                   for chunk in batched(iter_contexts(data, model.tokenizer), args.batch_size)]
        # warm-up both paths once
        hook_activations(model, batches[0], hook)
        plain_hook_activations(model.hf, block, batches[0])
        t_nn = t_plain = 0.0
        n = 0
        for tokens in batches:
            t0 = time.perf_counter()
            a = hook_activations(model, tokens, hook)
            t1 = time.perf_counter()
            b = plain_hook_activations(model.hf, block, tokens)
            t2 = time.perf_counter()
            assert torch.equal(a, b), "the two paths disagree"
            t_nn += t1 - t0
            t_plain += t2 - t1
            n += tokens.numel()
        print(f"{dtype:<10}{n / t_nn:>15.0f}{n / t_plain:>18.0f}{(n / t_nn) / (n / t_plain):>8.2f}")


if __name__ == "__main__":
    main()
