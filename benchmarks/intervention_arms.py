"""Cost of an intervention arm relative to one plain forward pass of the same batch, side by side in one run.

    .venv/bin/python benchmarks/intervention_arms.py [--repeats 3] [--layout 1x16,4x4,8x2,16x1]

The interventions stage evaluates ``A`` arms on ``B`` contexts in one forward pass of ``A·B`` rows
(``interventions.forward.multi_arm_logits``, nnsight; the stage fills its 16-row batch with arms first).
For each layout ``AxB`` on the default model (SmolLM2-135M, float32, edit at layer 15 resid_post) this
times, alternating within each repeat so that machine load hits all alike:

* ``plain``: ``model.hf(tokens_BL)``, a plain transformers forward of the B contexts (no nnsight, no edit);
* ``plain A·B``: the same for the A·B rows (what batching the arms costs without nnsight and edits);
* ``arms``: ``multi_arm_logits`` with A arms, each adding a precomputed SAE-latent ablation delta
  (zeroing 6 latents of the default SAE, as ``interventions.arms`` precomputes it) at the hook;
* ``+ effects``: ``arms`` plus ``token_effects`` (ΔCE and KL per position, what each arm is scored on);
* ``started``: ``multi_arm_logits`` with ``x_BLD`` (the clean activations at the hook, as the stage passes them with
  ``interventions.start_at_hook: true``): the blocks before the hook are skipped (nnsight ``Envoy.skip``).

Ratios: per-arm cost = arms / A / plain (goal <= 1.2x), the same with effects, and the nnsight+edit
overhead = arms / plain A·B; the started path per arm / plain and started / arms (the saving of skipping the
blocks before the hook; its maximum logit difference from the full path is printed too). Deltas are computed once per arm outside the timed region; their cost is
printed separately (one SAE encode of the clean activations per chunk, shared by the arms).
"""

from __future__ import annotations

import argparse
import sys
import time
from pathlib import Path

import numpy as np
import torch

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))


def main() -> None:
    from experiments.cli import DEFAULT_CONFIG, build_config
    from experiments.config import ExperimentConfig
    from interventions.edits import latent_delta
    from interventions.forward import multi_arm_logits, next_token_logprobs, token_effects
    from sources.corpora import iter_contexts
    from sources.sae_view import SAEView
    from sources.stream import hook_activations

    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--layout", default="1x16,4x4,8x2,16x1", help="comma-separated AxB: arms x contexts")
    ap.add_argument("--repeats", type=int, default=3)
    ap.add_argument("--context-len", type=int, default=128)
    ap.add_argument("--latents", type=int, default=6, help="latents zeroed per arm")
    args = ap.parse_args()
    layouts = [tuple(int(v) for v in s.split("x")) for s in args.layout.split(",")]
    cfg = build_config(ExperimentConfig, DEFAULT_CONFIG, [f"data.context_len={args.context_len}",
                                                          f"data.max_tokens={args.context_len * 16}"])
    s = cfg.session(progress=False)
    model, sae, hook = s.model, s.sae, cfg.hook
    contexts = list(iter_contexts(cfg.data, model.tokenizer))[:16]
    tokens_all = torch.from_numpy(np.stack([c.tokens_L for c in contexts]))
    view = SAEView(sae)
    W_eff = view.decoder_FD()
    rng = np.random.default_rng(0)
    d_sae = int(sae.cfg.d_sae)
    print(f"torch threads {torch.get_num_threads()}; {model.name} ({cfg.model.dtype}), edit at layer {hook.layer} "
          f"{hook.site}, contexts of {args.context_len} tokens; each arm zeroes {args.latents} SAE latents; "
          f"best of {args.repeats} repeats")
    print("| arms x contexts | plain fwd s | plain fwd of A·B rows s | arms fwd s | arms + effects s | delta s (all arms) | "
          "per arm / plain | per arm incl. effects / plain | arms / plain A·B | started fwd s | started per arm / plain | "
          "started / arms | max logit diff |")
    print("|---|---|---|---|---|---|---|---|---|---|---|---|---|")
    with torch.no_grad():
        model.hf(tokens_all[:1].to(model.device))  # warm-up
        for A, B in layouts:
            tokens = tokens_all[:B].to(model.device)
            t0 = time.perf_counter()
            x = hook_activations(model, tokens, hook).float()
            f = view.encode(x)
            deltas = [latent_delta(sae, x, rng.choice(d_sae, args.latents, replace=False).tolist(), "zero", f=f,
                                   W_eff=W_eff) for _ in range(A)]
            t_delta = time.perf_counter() - t0
            fns = [(lambda z, d=d: z + d.to(z.dtype)) for d in deltas]
            clean_lp = next_token_logprobs(model.hf(tokens).logits)
            big = tokens.repeat(A, 1)
            best = {k: float("inf") for k in ("plain", "plain_big", "arms", "effects", "started")}
            for _ in range(args.repeats):
                t0 = time.perf_counter()
                model.hf(tokens)
                t1 = time.perf_counter()
                model.hf(big)
                t2 = time.perf_counter()
                multi_arm_logits(model, hook, tokens, fns)
                t3 = time.perf_counter()
                logits, _ = multi_arm_logits(model, hook, tokens, fns)
                token_effects(clean_lp, logits, tokens)
                t4 = time.perf_counter()
                started, _ = multi_arm_logits(model, hook, tokens, fns, x_BLD=x)
                t5 = time.perf_counter()
                diff = float((started - logits).abs().max())
                del logits, started
                for k, v in (("plain", t1 - t0), ("plain_big", t2 - t1), ("arms", t3 - t2), ("effects", t4 - t3),
                             ("started", t5 - t4)):
                    best[k] = min(best[k], v)
            print(f"| {A}x{B} | {best['plain']:.3f} | {best['plain_big']:.3f} | {best['arms']:.3f} | "
                  f"{best['effects']:.3f} | {t_delta:.3f} | {best['arms'] / A / best['plain']:.2f}x | "
                  f"{best['effects'] / A / best['plain']:.2f}x | {best['arms'] / best['plain_big']:.2f}x | "
                  f"{best['started']:.3f} | {best['started'] / A / best['plain']:.2f}x | "
                  f"{best['started'] / best['arms']:.2f}x | {diff:.1e} |", flush=True)


if __name__ == "__main__":
    main()
