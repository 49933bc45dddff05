"""Sweeps: ``python -m experiments.sweep SWEEP.yaml [--set k=v ...] [--out DIR] [--fresh] [--quiet]``.

A sweep file declares a grid over any experiment config keys; every point of the grid is an ordinary run folder
(``OUT/points/<name>/``, the same files and manifest as ``python -m experiments.steer`` writes), and the sweep adds a
comparison across the points (``OUT/points.csv``, ``group_sizes.csv``, ``matches.csv``, ``fates.csv``,
``report.html``)::

    base: default.yaml            # the config every point starts from: a file (next to this one, or in
                                  # experiments/configs/) or an inline mapping
    set:                          # dotted keys applied to every point
      sae.train.architecture: relu
    grid:                         # key -> values: their product; or a list of such mappings: the union of products
      - {sae.train.d_sae: [576, 1152, 2304]}
      - {sae.train.d_sae: [2304], sae.train.l1_coefficient: [1, 2, 10]}
    until: cooc                   # the stages each point runs: cooc | probes | interventions | all (with the report)
    match: {series: sae.train.d_sae, min_cosine: 0.7}   # follow groups across this key's values (narrow -> wide)
    size_capped: {min_size: 150, max_size: 200}         # the reference method's cut, mined beside ours per point
    out: runs/sweep

``--set`` applies to every point (after ``set:``). Points share what they can: one process loads each model once,
activations are streamed once per model, hook and corpus (the activation cache under ``$COOC_CACHE``), an SAE
given by ``sae.train`` is trained once and cached, and a point reuses each of its finished stages. A killed sweep
resumes point by point from the same command. Every point's config is validated before anything is written: a bad
grid ends with exit code 2 and one line.
"""

from __future__ import annotations

import copy
import itertools
import logging
import re
import time
from pathlib import Path
from typing import Any, Literal

import pandas as pd
from pydantic import Field, ValidationError, field_validator

from experiments.cli import CONFIG_DIR, build_config, entry_point, exit_process, parser, read_yaml, set_key
from cooc.config import SizeTargetSpec
from experiments.config import ExperimentConfig
from experiments.run import lock_folder, release_locks
from sources.config import Section
from sources.errors import ConfigError, format_validation_error
from sources.files import package_versions, stable_hash, write_json, write_text

log = logging.getLogger("experiments.sweep")

FORMAT_VERSION = 1
UNTIL = ("cooc", "probes", "interventions", "all")


class MatchSpec(Section):
    """Follow groups across the values of one grid key (normally the SAE width), narrower SAE to wider."""

    series: str
    """The grid key whose values order the points (e.g. sae.train.d_sae); points that agree on every other grid key
    form one series and each is matched to the next."""
    min_cosine: float = Field(0.7, gt=0, le=1)
    """A latent of the wider SAE has a parent in the narrower one when their decoder directions' cosine is >= this."""
    min_share: float = Field(0.5, gt=0, le=1)
    """A group descends from a narrower group that holds at least this share of its members' parents."""


class SweepConfig(Section):
    base: str | dict = "default.yaml"
    """The experiment config every point starts from: a YAML file (relative to the sweep file, else in
    experiments/configs/) or an inline mapping."""
    set: dict[str, Any] = Field(default_factory=dict)
    """Dotted keys applied to every point before its grid values."""
    grid: dict[str, list] | list[dict[str, list]]
    """Grid key -> list of values (their product), or a list of such mappings (the union of their products)."""
    until: Literal["cooc", "probes", "interventions", "all"] = "cooc"
    """The last stage each point runs (all: the whole pipeline and the point's own report)."""
    match: MatchSpec | None = None
    size_capped: SizeTargetSpec = SizeTargetSpec()
    """The reference method's size-capped cut, mined per point beside the configured method."""
    out: str = "runs/sweep"
    title: str | None = None

    @field_validator("grid")
    @classmethod
    def _grid(cls, grid):
        grids = grid if isinstance(grid, list) else [grid]
        if not grids:
            raise ValueError("give at least one mapping of key: [values]")
        for g in grids:
            if not g:
                raise ValueError("a grid mapping is empty; give key: [values]")
            for key, values in g.items():
                if not values:
                    raise ValueError(f"{key} has no values; give a non-empty list")
        return grid

    def grids(self) -> list[dict[str, list]]:
        return self.grid if isinstance(self.grid, list) else [self.grid]

    def keys(self) -> list[str]:
        return list(dict.fromkeys(k for g in self.grids() for k in g))


class Point:
    """One grid point: its name, its grid values and its validated experiment config."""

    def __init__(self, name: str, values: dict[str, Any], cfg: ExperimentConfig):
        self.name, self.values, self.cfg = name, values, cfg

    def series(self, key: str | None) -> str:
        """The point's values on every grid key but ``key`` (its series label; '' when it has no other, and for
        every point when no series key is given)."""
        if key is None:
            return ""
        return ", ".join(f"{k}={v}" for k, v in self.values.items() if k != key)


def _slug(value: Any) -> str:
    return re.sub(r"[^A-Za-z0-9._-]+", "-", str(value)).strip("-") or "x"


def point_name(values: dict[str, Any], keys: list[str]) -> str:
    """``d_sae=576__l1_coefficient=2``: the last part of each key, or the whole key where two keys share it."""
    last = [k.rsplit(".", 1)[-1] for k in keys]
    short = {k: (k.rsplit(".", 1)[-1] if last.count(k.rsplit(".", 1)[-1]) == 1 else k) for k in keys}
    return "__".join(f"{short[k]}={_slug(v)}" for k, v in values.items())


def _base_data(sweep: SweepConfig, folder: Path) -> dict:
    if isinstance(sweep.base, dict):
        return copy.deepcopy(sweep.base)
    for candidate in (folder / sweep.base, CONFIG_DIR / sweep.base):
        if candidate.is_file():
            data = read_yaml(candidate)
            return data
    raise ConfigError("base", f"{sweep.base} is neither next to the sweep file ({folder}) nor in {CONFIG_DIR}; give "
                              "an existing experiment config (e.g. default.yaml)")


def expand(sweep: SweepConfig, folder: Path, overrides: list[str] | None = None, out: Path | None = None) -> list[Point]:
    """Every point of the sweep with its validated config (grid order; duplicates dropped). ConfigError naming the
    grid key and the point for any value the experiment config refuses, before anything runs."""
    from experiments.cli import apply_override

    base = _base_data(sweep, folder)
    for where, keys_ in (("set", list(sweep.set)), ("grid", sweep.keys())):
        if "out" in keys_:
            raise ConfigError(f"{where}.out", "each point's folder is OUT/points/<name>; set the sweep's own out: "
                                              "(or --out) instead")
    for key, value in sweep.set.items():
        set_key(base, key, value, f"set.{key}")
    for assignment in overrides or []:
        apply_override(base, assignment)
    keys = sweep.keys()
    out = Path(out or sweep.out)
    points, seen, names = [], set(), set()
    for g in sweep.grids():
        for combo in itertools.product(*g.values()):
            values = dict(zip(g.keys(), combo))
            data = copy.deepcopy(base)
            for key, value in values.items():
                set_key(data, key, value, f"grid.{key}")
            name = point_name(values, keys)
            try:
                cfg = ExperimentConfig.model_validate(data)
            except ValidationError as exc:
                err = format_validation_error(exc)
                raise ConfigError(f"point {name}: {err.field}",
                                  f"{err.message}; fix the sweep's base, set or grid values") from None
            ident = stable_hash(cfg.model_dump(mode="json", exclude={"out"}))
            if ident in seen:  # the same config reached twice (two mappings, or a grid value equal to the base's)
                continue
            seen.add(ident)
            if name in names:
                name = f"{name}__{ident[:6]}"
            names.add(name)
            cfg.out = str(out / "points" / name)
            points.append(Point(name, values, cfg))
    if sweep.match is not None and sweep.match.series not in keys:
        raise ConfigError("match.series", f"{sweep.match.series} is not a grid key; choose one of {', '.join(keys)}")
    return points


# ------------------------------------------------------------------------------------------------ running

def preflight(points: list[Point], progress: bool = True) -> None:
    """Open every input the points name before any point runs (what ``experiments.preflight.check_inputs`` checks
    per run): each distinct corpus, model and hook, and each SAE (a ``sae.train`` spec is checked, not trained)."""
    from sources.corpora import check_corpus
    from sources.sae_training import check_train_spec
    from sources.session import shared_model

    seen: set[str] = set()
    for p in points:
        cfg = p.cfg
        checks = [("data", cfg.data.model_dump(), lambda: check_corpus(cfg.data) if cfg.activations.source == "stream" else None)]
        if cfg.sae.train is not None:
            checks.append(("model", [cfg.model.model_dump(), cfg.hook.model_dump()],
                           lambda: shared_model(cfg.model, progress).site(cfg.hook.layer, cfg.hook.site)))
            checks.append(("train", cfg.sae.train.model_dump(), lambda: check_train_spec(cfg.sae.train)))
        else:
            checks.append(("session", [cfg.model.model_dump(), cfg.sae.model_dump(), cfg.hook.model_dump()],
                           lambda: cfg.session(progress)))
        for kind, spec, check in checks:
            key = stable_hash([kind, spec])
            if key not in seen:
                try:
                    check()
                except ConfigError as exc:
                    raise ConfigError(f"point {p.name}: {exc.field}", exc.message) from None
                seen.add(key)


def run_point(point: Point, fresh: bool, until: str, progress: bool) -> dict:
    """Run (or reuse) one point's stages up to ``until`` in its own run folder; returns its stage wall times."""
    from experiments.cooc import cooc_stage
    from experiments.interventions import interventions_stage
    from experiments.preflight import check_inputs
    from experiments.probe import probe_stage
    from experiments.run import Run

    if until == "all":
        from experiments.steer import run_pipeline

        run = run_pipeline(point.cfg, Path(point.cfg.out), fresh=fresh, progress=progress)
        return {k: v.get("wall_s") for k, v in run.manifest["stages"].items()}
    stages = list(UNTIL[:UNTIL.index(until) + 1])
    run = Run(Path(point.cfg.out), point.cfg.model_dump(mode="json"), fresh=fresh)
    try:
        check_inputs(point.cfg, run, progress)
        cooc_stage(point.cfg, run, progress=progress, force=fresh)
        if "probes" in stages:
            probe_stage(point.cfg, run, progress=progress, force=fresh)
        if "interventions" in stages:
            interventions_stage(point.cfg, run, progress=progress, force=fresh)
        run.finish([s for s in stages if s != "interventions" or point.cfg.interventions.enabled])
    finally:
        run.close()
    return {k: v.get("wall_s") for k, v in run.manifest["stages"].items() if k in stages}


def run_sweep(sweep: SweepConfig, points: list[Point], out: Path, fresh: bool = False, progress: bool = True) -> dict:
    """Run every point (reusing finished stages), then write the comparison tables and report into ``out``.
    Returns the sweep record (also ``out/sweep.json``)."""
    out = Path(out)
    preflight(points, progress)  # nothing is written before every point's inputs open
    took = lock_folder(out)
    try:
        record = {"format_version": FORMAT_VERSION, "sweep": sweep.model_dump(mode="json"), "versions": package_versions(),
                  "points": {p.name: {"values": p.values, "folder": str(Path(p.cfg.out))} for p in points}}
        t_all = time.perf_counter()
        for k, p in enumerate(points, 1):
            log.info("sweep: point %d of %d: %s", k, len(points), p.name)
            t0 = time.perf_counter()
            stages = run_point(p, fresh, sweep.until, progress)
            record["points"][p.name].update({"stages_wall_s": stages, "wall_s": round(time.perf_counter() - t0, 2)})
        t0 = time.perf_counter()
        tables = summarise(sweep, points)
        for name, frame in tables.items():
            write_text(out / f"{name}.csv", frame.to_csv(index=False))
        from reports.sweep import write_sweep_report

        notes = [f"{len(points)} points, each a run folder under {out / 'points'}; stages per point: up to "
                 f"{sweep.until}. Base config: {sweep.base if isinstance(sweep.base, str) else 'inline'}."]
        notes += [f"Not matched: {r.point_a} and {r.point_b} ({r.reason})."
                  for r in tables["skipped_matches"].itertuples(index=False)]
        write_sweep_report(out, tables["points"], tables["group_sizes"], tables["fate_counts"],
                           sweep.title or f"Sweep over {', '.join(sweep.keys())}", notes)
        record.update({"summary_wall_s": round(time.perf_counter() - t0, 2),
                       "wall_s": round(time.perf_counter() - t_all, 2)})
        write_json(out / "sweep.json", record)
        log.info("sweep: %d points done in %.0f s -> %s/report.html, %s/points.csv", len(points),
                 time.perf_counter() - t_all, out, out)
        return record
    finally:
        if took:
            release_locks([out])


# ------------------------------------------------------------------------------------------------ summary

def _quality(point: Point, s) -> dict:
    """The held-out quality recorded with the point's SAE (``s``: the point's open session), or empty values."""
    from reports.explore import read_quality
    from sources.saes import sae_folder

    q = read_quality(sae_folder(point.cfg.sae, s.model, point.cfg.hook, point.cfg.data)) or {}
    keep = ("explained_variance", "l0", "dead_fraction", "ce_loss_recovered")
    return {f"sae_{k}" if k == "l0" else k: q.get(k) for k in keep}


def summarise(sweep: SweepConfig, points: list[Point]) -> dict[str, pd.DataFrame]:
    """The comparison tables: ``points`` (one row per point and mining method), ``group_sizes``, ``matches``,
    ``fates`` (one row per group followed) and ``fate_counts``."""
    from cooc.population import populations
    from cooc.result import CoocResult

    rows, sizes, pops, decoders = [], [], {}, {}
    series_key = sweep.match.series if sweep.match is not None else None
    for p in points:
        s = p.cfg.session(progress=False)
        result = CoocResult.load(Path(p.cfg.out) / "cooc", counts=True)
        cap = sweep.size_capped
        pops[p.name] = populations(result, cap.min_size, cap.max_size, cap.iterations)
        decoders[p.name] = s.sae.W_dec.detach()
        arch = p.cfg.sae.train.architecture if p.cfg.sae.train is not None else type(s.sae).__name__
        d_in = int(s.sae.W_dec.shape[1])
        meta = {"point": p.name, **{k: p.values.get(k) for k in sweep.keys()}, "series": p.series(series_key),
                "architecture": arch, "d_in": d_in, "expansion": s.d_sae / d_in,
                "n_tokens": result.n_tokens, **_quality(p, s)}
        for method, pop in pops[p.name].items():
            rows.append({**meta, **pop.row()})
            sizes.append(pop.size_distribution().assign(point=p.name))
    links, fates, skipped = _follow(sweep, points, pops, decoders)
    counts = (fates.groupby(["method", "point_a", "point_b", "fate"], sort=False).size().rename("n_groups").reset_index()
              if not fates.empty else pd.DataFrame(columns=["method", "point_a", "point_b", "fate", "n_groups"]))
    sizes_df = pd.concat(sizes, ignore_index=True)[["point", "method", "size_bin", "n_groups", "n_latents"]]
    return {"points": pd.DataFrame(rows), "group_sizes": sizes_df, "matches": links, "fates": fates,
            "fate_counts": counts, "skipped_matches": skipped}


def _follow(sweep: SweepConfig, points: list[Point], pops, decoders) -> tuple[pd.DataFrame, pd.DataFrame, pd.DataFrame]:
    """Groups matched from each point to the next wider one of its series (ordered by the SAEs' widths), for both
    mining methods; plus the consecutive pairs that could not be matched (same width, or decoders of other
    widths d_in) and why."""
    from subspaces.matching import FATE_COLUMNS, LINK_COLUMNS, match_groups

    tag_cols = ["method", "point_a", "point_b"]
    link_cols, fate_cols = tag_cols + LINK_COLUMNS, tag_cols + FATE_COLUMNS
    skipped = []
    links, fates = [], []
    if sweep.match is not None:
        key = sweep.match.series
        series: dict[str, list[Point]] = {}
        for p in points:
            if key in p.values:
                series.setdefault(p.series(key), []).append(p)
        for members in series.values():
            ordered = sorted(members, key=lambda p: (decoders[p.name].shape[0], p.name))
            for a, b in zip(ordered, ordered[1:]):
                da, db = decoders[a.name], decoders[b.name]
                why = ("the same width" if da.shape[0] >= db.shape[0] else
                       "decoders of different widths d_in" if da.shape[1] != db.shape[1] else None)
                if why is not None:
                    skipped.append({"point_a": a.name, "point_b": b.name, "reason": why})
                    log.warning("sweep: %s and %s not matched: %s", a.name, b.name, why)
                    continue
                for method in pops[a.name]:
                    ga = {g.group_id: g.members for g in pops[a.name][method].groups}
                    gb = {g.group_id: g.members for g in pops[b.name][method].groups}
                    lk, ft = match_groups(da, ga, db, gb, sweep.match.min_cosine, sweep.match.min_share)
                    tag = {"method": method, "point_a": a.name, "point_b": b.name}
                    links.append(lk.assign(**tag))
                    fates.append(ft.assign(**tag))
    link_df = pd.concat(links, ignore_index=True)[link_cols] if links else pd.DataFrame(columns=link_cols)
    fate_df = pd.concat(fates, ignore_index=True)[fate_cols] if fates else pd.DataFrame(columns=fate_cols)
    return link_df, fate_df, pd.DataFrame(skipped, columns=["point_a", "point_b", "reason"])


# ------------------------------------------------------------------------------------------------ CLI

def load_sweep(path: str | Path) -> SweepConfig:
    """The sweep file as a validated :class:`SweepConfig` (ConfigError naming the bad field)."""
    return build_config(SweepConfig, path)


def parse_args(argv: list[str] | None = None):
    """The command line of ``python -m experiments.sweep`` (also what tests check the docs' commands with)."""
    p = parser("python -m experiments.sweep", __doc__.splitlines()[0], config_default=None)
    return p.parse_args(argv)


@entry_point
def main(argv: list[str] | None = None) -> None:
    args = parse_args(argv)
    if args.config is None:
        raise ConfigError("arguments", "give a sweep file, e.g. python -m experiments.sweep "
                                       "experiments/configs/sweep_widths.yaml")
    sweep = load_sweep(args.config)
    out = Path(args.out or sweep.out)
    points = expand(sweep, Path(args.config).resolve().parent, args.overrides, out)
    log.info("sweep: %d points -> %s", len(points), out)
    run_sweep(sweep, points, out, fresh=args.fresh, progress=not args.quiet)


if __name__ == "__main__":
    exit_process(main())
