"""Co-occurrence stage: ``python -m experiments.cooc [CONFIG.yaml] [--set k=v ...] [--out DIR] [--fresh]``.

Counts which SAE latents fire together (over the activation stream, or a precomputed CSR file with
``activations: {source: file, path: acts.npz}``), tests every pair against chance with FDR control,
finds latent groups and labels their structure (cooc.run_cooc), and saves the :class:`cooc.result.CoocResult`
as ``OUT/cooc/`` (occurrences.npy, counts.npz, jaccard.npz, pairs.parquet, groups.csv, manifest.json). This
module keeps only the run bookkeeping: the stage key, reuse and the atomic stage folder. See docs/cooc.md.

Scale-out: ``torchrun --nproc-per-node N -m experiments.cooc CONFIG.yaml`` (or several nodes) splits the
input into disjoint shards, one per rank, and adds the partial counts on rank 0, which alone scores,
groups and writes; the result is identical to a single process (cooc.distributed, docs/scaling.md).
"""

from __future__ import annotations

import logging
from pathlib import Path

from experiments.cli import build_config, entry_point, exit_process, parser
from experiments.config import ExperimentConfig
from cooc.result import FORMAT_VERSION
from experiments.run import Run
from sources.corpora import check_corpus, data_fingerprint
from sources.files import stable_hash
from sources.fingerprint import file_digest
from sources.models import model_fingerprint
from sources.saes import sae_fingerprint

log = logging.getLogger("experiments.cooc")

STAGE = "cooc"
STREAM_SECTIONS = ("seed", "model", "hook", "sae", "data", "activations", "cooc")
FILE_SECTIONS = ("seed", "activations", "cooc")


def parts(cfg: ExperimentConfig) -> tuple[str, str | None]:
    """(the part groups are found on, the part they are replicated on or None): discovery and heldout when
    data.heldout_fraction > 0, else every document and no replication."""
    find = cfg.data.reading("discovery").part
    return find, ("heldout" if find != "all" and cfg.cooc.replication else None)


def _input(cfg: ExperimentConfig, progress: bool, shard: tuple[int, int] | None = None):
    """(batches, held-out batches or None, d_sae or None, θ_F or None, description, rescan) for the configured
    activation source: the discovery documents and the held-out ones (see :func:`parts`); ``rescan()`` gives the
    discovery batches again (the co-firing pass).

    ``shard=(rank, world_size)``: only that rank's part (a file: a contiguous row range of the first
    cooc.max_tokens rows, cut at document boundaries; the stream: the documents with ordinal % world_size == rank).
    """
    find, replicate = parts(cfg)
    if cfg.activations.source == "file":
        from cooc.inputs import iter_chunks, load_activations, load_documents, split_rows

        path = Path(cfg.activations.path)
        acts_TF = load_activations(path, cfg.cooc.d_sae)
        docs_T = None if cfg.activations.documents is None else load_documents(cfg.activations.documents, acts_TF.shape[0])
        info = {"source": "file", "path": str(path), "shape": list(acts_TF.shape), "nnz": int(acts_TF.nnz),
                "documents": cfg.activations.documents}
        (acts_TF, docs_T), held = split_rows(acts_TF, docs_T, cfg.data.seed, cfg.data.heldout_fraction if find != "all" else 0.0)
        if shard is not None:
            from cooc.distributed import document_row_range

            def cut(a, d):
                n_rows = a.shape[0] if cfg.cooc.max_tokens is None else min(a.shape[0], cfg.cooc.max_tokens)
                start, stop = document_row_range(n_rows, d, *shard)
                return a[start:stop], None if d is None else d[start:stop]
            acts_TF, docs_T = cut(acts_TF, docs_T)
            held = None if held is None else cut(*held)
        heldout = None if held is None or replicate is None else iter_chunks(held[0], cfg.cooc.chunk_tokens, held[1])
        rescan = lambda: iter_chunks(acts_TF, cfg.cooc.chunk_tokens, docs_T)  # noqa: E731
        return iter_chunks(acts_TF, cfg.cooc.chunk_tokens, docs_T), heldout, acts_TF.shape[1], None, info, rescan
    theta_F = cfg.session(progress).theta_F() if cfg.cooc.use_sae_threshold else None
    d_sae = None if theta_F is None else theta_F.shape[0]
    if shard is not None and d_sae is None:
        d_sae = cfg.session(progress).d_sae  # a rank whose shard is empty still needs the width
    heldout = None if replicate is None else _latent_batches(cfg, progress, shard, replicate)
    rescan = lambda: _latent_batches(cfg, False, shard, find)  # noqa: E731 - through the activation cache
    return (_latent_batches(cfg, progress, shard, find), heldout, d_sae, theta_F, {"source": "stream", "part": find},
            rescan)


def _latent_batches(cfg: ExperimentConfig, progress: bool, shard: tuple[int, int] | None, part: str):
    """The session's latents over ``part`` of the documents, opened when the first batch is asked for (inside
    the stage)."""
    yield from cfg.session(progress).latent_batches(progress, shard, part)


def inputs_fingerprint(cfg: ExperimentConfig) -> dict:
    """Content identity of the config's model, SAE and corpus (the stream stage key includes it)."""
    return {"model": model_fingerprint(cfg.model), "sae": sae_fingerprint(cfg.sae), "data": data_fingerprint(cfg.data)}


def stage_key(cfg: ExperimentConfig, run: Run) -> str:
    """Hash of what the stage's result depends on: config sections and the content of its inputs (the
    activation file; or the model weights, SAE files and corpus files, see inputs_fingerprint) and the format
    version of its files (a folder of another version is recomputed, not reused)."""
    if cfg.activations.source == "file":
        path = Path(cfg.activations.path)
        fingerprint = [str(path.resolve()), file_digest(path)] if path.is_file() else None
        docs = cfg.activations.documents
        if docs is not None:
            fingerprint = [fingerprint, str(Path(docs).resolve()), file_digest(Path(docs)) if Path(docs).is_file() else None]
        split = [cfg.data.seed, cfg.data.heldout_fraction]  # a file's documents split as the corpus's are
        return stable_hash({"sections": run.stage_key(*FILE_SECTIONS), "file": fingerprint, "split": split,
                            "format": FORMAT_VERSION})
    return stable_hash({"sections": run.stage_key(*STREAM_SECTIONS), "inputs": inputs_fingerprint(cfg),
                        "format": FORMAT_VERSION})


def cooc_stage(cfg: ExperimentConfig, run: Run, progress: bool = True, force: bool = False) -> Path:
    """Run (or reuse) the co-occurrence stage of ``run``; returns its folder ``run.out / "cooc"``."""
    from cooc.run import run_cooc

    key = stage_key(cfg, run)
    if not force and run.is_done(STAGE, key):
        log.info("cooc: up to date in %s (use --fresh to recompute)", run.out / STAGE)
        return run.out / STAGE
    batches, heldout, d_sae, theta_F, info, rescan = _input(cfg, progress)
    with run.stage(STAGE, key) as folder:
        result = run_cooc(batches, d_sae, cfg.cooc, None, progress=progress, seed=cfg.seed, theta_F=theta_F,
                          extra={"input": info, "cache_key": key}, heldout_batches=heldout, rescan=rescan)
        result.save(folder)
    folder = run.out / STAGE  # where the finished stage now lies
    log.info("cooc: %d tokens, %d tested latents, %d edges, %d groups (%s) -> %s", result.n_tokens,
             result.manifest["n_tested_latents"], result.manifest["n_edges"], len(result.groups), cfg.cooc.method,
             folder)
    return folder


def cooc_stage_distributed(cfg: ExperimentConfig, out: Path, d, fresh: bool = False,
                           progress: bool = True) -> Path | None:
    """One rank of ``torchrun ... -m experiments.cooc``: count this rank's shard, add all counts on rank 0,
    which alone scores, groups and writes ``out / "cooc"`` (returned there; None on other ranks).
    ``d``: the :class:`cooc.distributed.Dist` of this process."""
    import time

    from cooc.distributed import all_gather, broadcast, raise_if_any_failed, reduce_counter
    from cooc.run import analyse, collect_second_pass, count
    from sources.errors import ConfigError

    run = key = reuse = error = None
    if d.is_main:
        try:
            run = Run(out, cfg.model_dump(mode="json"), fresh=fresh)
            key = stage_key(cfg, run)
            reuse = not fresh and run.is_done(STAGE, key)
        except ConfigError as exc:
            error = (exc.field, exc.message)
    key, reuse, error = broadcast((key, reuse, error), d)
    if error is not None:
        raise ConfigError(*error)
    if reuse:
        if d.is_main:
            log.info("cooc: up to date in %s (use --fresh to recompute)", out / STAGE)
        return out / STAGE if d.is_main else None
    if cfg.cooc.max_tokens is not None and cfg.activations.source == "stream" and d.is_main:
        log.warning("cooc: cooc.max_tokens with a sharded stream caps each rank, so the tokens counted differ "
                    "from a single process; bound the stream with data.max_tokens instead")
    start, error, counter, info = time.time(), None, None, {}
    try:
        batches, heldout_batches, d_sae, theta_F, info, rescan = _input(cfg, progress and d.is_main, d.shard)
        counter = count(batches, d_sae, cfg.cooc, theta_F, progress and d.is_main, allow_empty=True)
    except ConfigError as exc:
        error = exc
    raise_if_any_failed(error, d)
    counter = reduce_counter(counter, d)
    heldout = None
    if heldout_batches is not None:
        try:
            width = counter.d_sae if counter is not None else d_sae
            heldout = count(heldout_batches, width, cfg.cooc, theta_F, progress and d.is_main, allow_empty=True)
        except ConfigError as exc:
            error = exc
        raise_if_any_failed(error, d)
        heldout = reduce_counter(heldout, d)
    threshold, theta = (counter.threshold, counter.theta_F) if d.is_main else (None, None)
    threshold, theta = broadcast((threshold, theta), d)

    def collect(hubs, pairs):  # every rank adds its shard's second-pass sums (rank 0 from inside analyse)
        hubs, pairs = broadcast((hubs, pairs), d)
        if hubs is None:
            return None
        mine = collect_second_pass(hubs, pairs, rescan(), threshold, theta, cfg.cooc.max_tokens)
        parts = all_gather(mine, d)
        cof, pair_docs = parts[0]
        for other_cof, other_docs in parts[1:]:
            cof.merge(other_cof)
            if pair_docs is not None:
                pair_docs.merge(other_docs)
        return cof, pair_docs

    if not d.is_main:
        collect(None, None)  # waits for rank 0's groups (None: rank 0 has none, or failed)
        return None
    info = {**info, "world_size": d.world_size, "backend": d.backend}
    asked = []

    def collect_main(hubs, pairs):
        asked.append(True)
        return collect(hubs, pairs)
    try:
        with run.stage(STAGE, key) as folder:
            result = analyse(counter, cfg.cooc, None, seed=cfg.seed, extra={"input": info, "cache_key": key},
                             start=start, heldout=heldout, collect=collect_main)
            result.save(folder)
    finally:
        if not asked:
            broadcast((None, None), d)  # release the other ranks
    folder = out / STAGE
    log.info("cooc: %d tokens on %d ranks, %d tested latents, %d edges, %d groups (%s) -> %s", result.n_tokens,
             d.world_size, result.manifest["n_tested_latents"], result.manifest["n_edges"], len(result.groups),
             cfg.cooc.method, folder)
    return folder


def parse_args(argv: list[str] | None = None):
    """The command line of ``python -m experiments.cooc`` (also what tests check the docs' commands with)."""
    return parser("python -m experiments.cooc", __doc__.splitlines()[0]).parse_args(argv)


@entry_point
def main(argv: list[str] | None = None) -> None:
    args = parse_args(argv)
    cfg = build_config(ExperimentConfig, args.config, args.overrides)
    out = Path(args.out or cfg.out)
    from cooc.distributed import init_from_env, shutdown

    d = init_from_env()
    if d is not None:
        try:
            cooc_stage_distributed(cfg, out, d, fresh=args.fresh, progress=not args.quiet)
        finally:
            shutdown()
        return
    run = Run(out, cfg.model_dump(mode="json"), fresh=args.fresh)
    if cfg.activations.source == "stream":
        check_corpus(cfg.data)  # before the stream starts; the model and SAE are checked as they load
    cooc_stage(cfg, run, progress=not args.quiet, force=args.fresh)


if __name__ == "__main__":
    exit_process(main())
