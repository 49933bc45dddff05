"""Wall time of the default main job, ``python -m experiments.steer``: a first run and a cached rerun.

    .venv/bin/python benchmarks/steer_walltime.py [--out /tmp/steer-bench] [--keep-cache] [-- --set k=v ...]

Runs the job twice in subprocesses with the same ``--out``: first on an empty output folder and (unless
``--keep-cache``) an empty ``COOC_CACHE`` (a fresh temporary folder, so the model files, the activation
cache and everything else are built from scratch), then again unchanged, which should reuse every stage.
Prints both wall times, their ratio and each stage's wall time and share of the first run, read from
``OUT/manifest.json`` (``stages.<name>.wall_s``; the rest of the wall time is start-up, model and SAE
loading and the report). Arguments after ``--`` go to experiments.steer.
"""

from __future__ import annotations

import argparse
import json
import os
import shutil
import subprocess
import sys
import tempfile
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]


def run_steer(out: Path, env: dict, extra: list[str]) -> tuple[float, dict, str]:
    cmd = [sys.executable, "-m", "experiments.steer", "--out", str(out), "--quiet", *extra]
    start = time.perf_counter()
    proc = subprocess.run(cmd, cwd=ROOT, env=env, capture_output=True, text=True)
    wall = time.perf_counter() - start
    if proc.returncode:
        print(proc.stderr[-4000:], file=sys.stderr)
        raise SystemExit(f"{' '.join(cmd)} failed with exit code {proc.returncode}")
    return wall, json.loads((out / "manifest.json").read_text()), proc.stderr


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--out", default=None, help="output folder (default: a fresh temporary folder; emptied first)")
    ap.add_argument("--keep-cache", action="store_true", help="use the existing COOC_CACHE for the first run")
    ap.add_argument("extra", nargs="*", help="arguments for experiments.steer (after --)")
    args = ap.parse_args()
    out = Path(args.out) if args.out else Path(tempfile.mkdtemp(prefix="steer-bench-")) / "out"
    if out.exists():
        shutil.rmtree(out)
    env = dict(os.environ)
    cache = None
    if not args.keep_cache:
        cache = Path(tempfile.mkdtemp(prefix="steer-bench-cache-"))
        env["COOC_CACHE"] = str(cache)
    try:
        first, m1, _ = run_steer(out, env, args.extra)
        again, m2, log2 = run_steer(out, env, args.extra)
    finally:
        if cache is not None:
            shutil.rmtree(cache, ignore_errors=True)
    print(f"python -m experiments.steer {' '.join(args.extra)} --out {out}; "
          f"cache: {'existing COOC_CACHE' if args.keep_cache else 'empty COOC_CACHE'}")
    print("| run | wall s | vs first |")
    print("|---|---|---|")
    print(f"| first (empty output folder) | {first:.1f} | 1.00x |")
    print(f"| rerun (cached) | {again:.1f} | {again / first:.3f}x |")
    stages = m1.get("stages", {})
    print("\n| stage (first run) | wall s | share of first run |")
    print("|---|---|---|")
    accounted = 0.0
    for name, rec in stages.items():
        w = float(rec.get("wall_s", 0.0))
        accounted += w
        print(f"| {name} | {w:.1f} | {100 * w / first:.1f}% |")
    print(f"| other (start-up, model and SAE loading, report) | {first - accounted:.1f} | "
          f"{100 * (first - accounted) / first:.1f}% |")
    reused = [name for name, rec in m2.get("stages", {}).items() if rec == stages.get(name)]
    print(f"\nrerun reused (stage record unchanged): {', '.join(reused) or 'none'}; complete: {m2.get('complete')}")


if __name__ == "__main__":
    main()
