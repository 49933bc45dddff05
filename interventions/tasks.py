"""Task effects: how much an intervention degrades what a later layer says about a probe task.

The probes stage (``probes/``) builds task examples from the corpus and writes them to
``OUT/probes/examples.csv``: URL tokens with their position inside the URL (``url_position``: characters since
the URL started and since the last ``/``, regression) and occurrences of ambiguous words with their sense
(``word_sense``: one binary target per word with enough examples). Each example sits in a *probe window*: BOS,
then the document's tokens from ``window_start`` up to the window's last task token.

For every target this module

1. takes the probes stage's windows and targets (:func:`load_task_data` with ``ProbesResult.window_lookup()`` and
   ``ProbesResult.targets``; without them it rebuilds the windows from the examples and the corpus and recomputes
   the targets, which gives the same);
2. runs them clean up to ``read_layer`` and fits a linear **readout** of the target on the clean residual
   stream (resid_post) there, **cross-fitted by document**: the documents are split into ``folds``
   document-grouped folds (``stats.grouped_folds``, the probes stage's fold rule) and every task token is read by the readout
   fitted on the other folds, so no evaluation token was used to fit the readout that reads it
   (:func:`fit_readout`; standardised features, ``Ridge`` / ``LogisticRegression`` with the L2 strength chosen
   per fold by an inner document-grouped CV);
3. for each evaluated group, runs every arm of the group's plan on the windows where the group fires on a
   task token (one window per document, up to ``tasks.max_docs`` documents), reads the edited
   residual at ``read_layer`` with the same fold readouts, and records per task token the **readout loss
   increase** ``loss(edited) - loss(clean)`` (paired per token) with the arm's edit norm there
   (:func:`evaluate_task`).

Readout loss per token: regression ``(prediction - y)^2 / Var(y)`` (so the mean clean loss is ``1 - R^2`` of
the cross-fitted readout and the mean increase is the drop in R^2), classification ``-log p(correct sense)``
(nats). An arm whose edit is exactly zero on a batch is not run: its readout equals the clean one, so its
effect is exactly 0.
"""

from __future__ import annotations

import logging
import math
from dataclasses import dataclass, field

import numpy as np
import pandas as pd
import torch

from interventions.arms import (Chunk, Evaluator, Plan, arm_batching, documents_first, fires_any, run_arms,
                              suffix_edits)
from interventions.forward import clean_pass, multi_arm_logits, multi_arm_read, pad_front
from interventions.effects import doc_sums
from probes.dataset import window_tokens
from probes.documents import iter_probe_documents
from probes.tasks import TASKS
from sources.config import DataSpec, HookSpec
from stats import grouped_folds
from sources.corpora import pad_batch, special_ids
from sources.errors import ConfigError
from sources.models import LoadedModel
from sources.progress import progress_bar
from sources.sae_view import as_view, fires

log = logging.getLogger(__name__)

FAMILIES = tuple(TASKS)
INNER_FOLDS = 3


def effect_name(target: str, per_norm: bool = False, amnesic: bool = False, logit: bool = False) -> str:
    """The ``effect`` column of a task effect: ``probe:<target>`` or ``probe_per_norm:<target>`` (the fixed clean
    readout), ``probe_amnesic:<target>`` or ``probe_amnesic_per_norm:<target>`` (a readout refitted after the edit),
    ``probe_logit:<target>`` or ``probe_logit_per_norm:<target>`` (the logit-level contrast, :class:`LogitContrast`)."""
    kind = "_amnesic" if amnesic else "_logit" if logit else ""
    return f"probe{kind}{'_per_norm' if per_norm else ''}:{target}"


# ----------------------------------------------------------------------------------- data

@dataclass(frozen=True)
class TaskTarget:
    name: str
    """The probe stage's task name, e.g. ``url_position/since_start`` or ``word_sense/rock/sense``."""
    kind: str
    """regression | classification"""
    rows: np.ndarray
    """Example rows (into TaskData.examples) of the target."""
    y: np.ndarray


@dataclass
class TaskWindow:
    doc_index: int
    doc_id: str
    tokens_L: np.ndarray
    mask_L: np.ndarray
    pos: np.ndarray
    """Window positions of the task tokens."""
    rows: np.ndarray
    """Their example rows."""


@dataclass
class TaskData:
    """One task family's examples, windows and targets (and, once fitted, readouts)."""

    family: str
    examples: pd.DataFrame
    windows: list[TaskWindow]
    targets: list[TaskTarget]
    readouts: dict = field(default_factory=dict)
    """target name -> :class:`Readout`."""
    fires_NF: np.ndarray | None = None
    """Which latents fire at each example's token (clean), bool [n_examples, d_sae]."""
    quality: dict = field(default_factory=dict)
    """target name -> clean cross-fitted readout quality."""
    contrasts: dict = field(default_factory=dict)
    """target name -> :class:`LogitContrast` (the logit-level task effect), once chosen."""

    @property
    def doc_N(self) -> np.ndarray:
        return self.examples["doc_index"].to_numpy()


def _task_windows(examples: pd.DataFrame, window_of) -> list[TaskWindow]:
    """One :class:`TaskWindow` per (document, window start) of ``examples``; ``window_of(doc_index, start, rows)``
    gives its tokens and content mask."""
    out = []
    for (di, start), sub in examples.groupby(["doc_index", "window_start"], sort=True):
        tokens, mask = window_of(int(di), int(start), sub)
        out.append(TaskWindow(int(di), str(sub["doc_id"].iloc[0]), tokens, mask,
                              (sub["token_index"].to_numpy(np.int64) - int(start) + 1), sub.index.to_numpy(np.int64)))
    return out


def windows_from_examples(examples: pd.DataFrame, doc_tokens: dict[int, np.ndarray], tokenizer) -> list[TaskWindow]:
    """Probe windows rebuilt as the probes stage built them (``probes.dataset.window_tokens``): BOS + document tokens
    ``window_start .. last task token``."""
    bos, _, masked = special_ids(tokenizer)

    def rebuild(di, start, sub):
        ids = doc_tokens[di]
        end = int(sub["token_index"].max())
        if end >= len(ids):
            raise ConfigError("interventions.tasks", f"probe example at token {end} of document {di} lies beyond its "
                                                     f"{len(ids)} tokens; OUT/probes/examples.csv was made with another "
                                                     "tokenizer or corpus: rerun the probes stage")
        return window_tokens(ids, start, end, bos, masked)

    return _task_windows(examples, rebuild)


def saved_windows(examples: pd.DataFrame, family: str, windows: dict, source: str) -> list[TaskWindow]:
    """The probes stage's own windows of ``family`` (``probes.dataset.load_windows``) for the examples' rows."""

    def saved(di, start, sub):
        key = (family, di, start)
        if key not in windows:
            raise ConfigError("interventions.tasks", f"{source} names a {family} window (document {di}, start {start}) that "
                                                     "the probes stage's windows.npz lacks; the files come from different "
                                                     "runs: rerun the probes stage")
        tokens, mask = windows[key]
        return tokens.astype(np.int64), mask.astype(bool)

    return _task_windows(examples, saved)


def task_targets(family: str, examples: pd.DataFrame, probes_cfg=None, seed: int = 0) -> list[TaskTarget]:
    """The probe stage's targets of ``family`` that the task effects read out (``Task.readout_targets``; e.g. the
    word-sense task leaves out ``word_sense/resolved``: it is about the window, not about what the model reads)."""
    if family not in TASKS:
        raise ConfigError("interventions.tasks.tasks", f"unknown task {family!r}; allowed: {', '.join(FAMILIES)}")
    targets = TASKS[family].readout_targets(examples, probes_cfg, seed)
    return [TaskTarget(t.task, t.kind, np.asarray(t.rows, dtype=np.int64), np.asarray(t.y, dtype=np.float64))
            for t in targets]


def saved_targets(targets: pd.DataFrame, family: str) -> list[TaskTarget]:
    """The targets of ``family`` that the task effects read out (``Task.reads_out``; e.g. the word-sense task leaves
    out ``word_sense/resolved``), from the probes stage's saved targets (``ProbesResult.targets``), in their order."""
    task = TASKS[family]
    t = targets[targets["task"] == family]
    return [TaskTarget(str(name), str(sub["kind"].iloc[0]), sub["row"].to_numpy(np.int64), sub["y"].to_numpy(np.float64))
            for name, sub in t.groupby("target", sort=False) if task.reads_out(str(name))]


def load_task_data(examples: pd.DataFrame, data: DataSpec, tokenizer, probes_cfg, seed: int = 0,
                   families: list[str] | None = None, source: str = "OUT/probes/examples.csv", windows: dict | None = None,
                   targets: pd.DataFrame | None = None) -> list[TaskData]:
    """Task data of every family in ``examples`` (the probes stage's examples), or of ``families`` (each must have
    examples). ``windows`` and ``targets``: the probes stage's saved windows (``ProbesResult.window_lookup()``) and
    targets (``ProbesResult.targets``), used as they are (the interventions stage passes both). Without them the
    windows are rebuilt from the corpus (documents re-read and re-tokenised, checked by id) and the targets
    recomputed from the examples with the probes stage's code, which gives the same (tested)."""
    have = list(dict.fromkeys(examples["task"].astype(str))) if len(examples) and "task" in examples else []
    unknown = [f for f in have if f not in FAMILIES]
    if unknown:
        raise ConfigError("interventions.tasks", f"{source} has an unknown task {unknown[0]!r}; allowed: {', '.join(FAMILIES)}")
    if families is not None:
        missing = [f for f in families if f not in have]
        if missing:
            raise ConfigError("interventions.tasks.tasks", f"task {missing[0]!r} has no examples in {source} (it has: "
                                                           f"{', '.join(have) or 'none'}); add it to probes.tasks and rerun "
                                                           "the probes stage, or drop it here")
    want = [f for f in have if families is None or f in families]
    if not want:
        return []

    def targets_of(family: str, ex: pd.DataFrame) -> list[TaskTarget]:
        return saved_targets(targets, family) if targets is not None else task_targets(family, ex, probes_cfg, seed)

    if windows is not None:
        out = []
        for family in want:
            ex = examples[examples["task"] == family].reset_index(drop=True)
            out.append(TaskData(family, ex, saved_windows(ex, family, windows, source), targets_of(family, ex)))
        return out
    need = set(int(d) for d in examples.loc[examples["task"].isin(want), "doc_index"])
    texts: dict[int, tuple[str, str]] = {}
    for di, did, text in iter_probe_documents(data.model_copy(update={"part": "all", "order": "corpus"})):
        if di in need:
            texts[di] = (did, text)
            if len(texts) == len(need):
                break
    doc_tokens = {}
    for family in want:
        ex = examples[examples["task"] == family].reset_index(drop=True)
        for di, did in ex.groupby("doc_index")["doc_id"].first().items():
            if int(di) not in texts or texts[int(di)][0] != str(did):
                raise ConfigError("interventions.tasks", f"document {di} ({did}) of {source} is not in the corpus any more; "
                                                         "the probes stage ran on another corpus: rerun it")
            if int(di) not in doc_tokens:
                enc = tokenizer(texts[int(di)][1], add_special_tokens=False)
                doc_tokens[int(di)] = np.asarray(enc["input_ids"], dtype=np.int64)
    out = []
    for family in want:
        ex = examples[examples["task"] == family].reset_index(drop=True)
        out.append(TaskData(family, ex, windows_from_examples(ex, doc_tokens, tokenizer), targets_of(family, ex)))
    return out


# ----------------------------------------------------------------------------------- readouts

def row_positions(rows: np.ndarray, rows_T: np.ndarray) -> np.ndarray:
    """Positions in ``rows`` (a target's example rows) of the example rows ``rows_T``."""
    where = {int(r): i for i, r in enumerate(rows)}
    return np.array([where[int(r)] for r in rows_T], dtype=np.int64)


class _Prior:
    """A readout for a training fold holding one class only: predicts that class's frequency."""

    classes_ = np.array([0.0, 1.0])

    def __init__(self, y):
        self.p = float(np.mean(y))

    def predict_proba(self, X):
        return np.tile([1.0 - self.p, self.p], (len(X), 1))


def _estimator(kind: str, l2: float):
    from sklearn.linear_model import LogisticRegression, Ridge
    from sklearn.pipeline import make_pipeline
    from sklearn.preprocessing import StandardScaler

    if kind == "regression":
        return make_pipeline(StandardScaler(), Ridge(alpha=l2))
    return make_pipeline(StandardScaler(), LogisticRegression(C=1.0 / l2, max_iter=2000))


def _loss(kind: str, model, X: np.ndarray, y: np.ndarray, scale: float) -> np.ndarray:
    if kind == "regression":
        return (model.predict(X) - y) ** 2 / scale
    proba = model.predict_proba(X)
    col = list(np.asarray(model.classes_, dtype=np.float64))
    p1 = proba[:, col.index(1.0)] if 1.0 in col else np.zeros(len(X))
    p = np.where(y == 1, p1, 1.0 - p1)
    return -np.log(np.clip(p, 1e-12, 1.0))


def _fit_one(kind: str, X: np.ndarray, y: np.ndarray, groups: np.ndarray, l2: list[float], scale: float, seed: int = 0):
    if kind == "classification" and len(np.unique(y)) < 2:
        return _Prior(y), float("nan")
    best = l2[0] if len(l2) == 1 else l2[len(l2) // 2]
    k = min(INNER_FOLDS, len(np.unique(groups)))
    if len(l2) > 1 and k >= 2:
        scores = []
        for a in l2:
            losses = []
            for tr, te in grouped_folds(groups, k, seed, y if kind == "classification" else None):
                if kind == "classification" and len(np.unique(y[tr])) < 2:
                    continue
                losses.append(_loss(kind, _estimator(kind, a).fit(X[tr], y[tr]), X[te], y[te], scale).mean())
            scores.append(np.mean(losses) if losses else np.inf)
        if np.isfinite(scores).any():
            best = l2[int(np.argmin(scores))]
    return _estimator(kind, best).fit(X, y), best


@dataclass
class Readout:
    """A cross-fitted linear readout of one target: fold ``k``'s model reads the tokens of fold ``k``'s documents."""

    name: str
    kind: str
    rows: np.ndarray
    y: np.ndarray
    fold: np.ndarray
    """Fold of each row."""
    models: list
    l2: list
    scale: float
    """Var(y) for regression (loss in units of the target's variance), 1 for classification."""
    clean_loss: np.ndarray
    """Cross-fitted loss of each row on the clean residual the readout was fitted on."""

    def index(self, rows_T: np.ndarray) -> np.ndarray:
        """Positions in ``self.rows`` (and ``self.y``, ``self.fold``) of the example rows ``rows_T``."""
        return row_positions(self.rows, rows_T)

    def loss(self, X_TD: np.ndarray, rows_T: np.ndarray) -> np.ndarray:
        """Per-token readout loss of residuals ``X_TD`` at example rows ``rows_T`` (each read by its own fold's model)."""
        idx = self.index(rows_T)
        out = np.empty(len(idx))
        X_TD = np.asarray(X_TD, dtype=np.float64)
        for k, m in enumerate(self.models):
            sel = self.fold[idx] == k
            if sel.any():
                out[sel] = _loss(self.kind, m, X_TD[sel], self.y[idx[sel]], self.scale)
        return out


def readout_folds(target: TaskTarget, doc_N: np.ndarray, folds: int, seed: int = 0) -> np.ndarray | None:
    """The fold of each of ``target``'s rows: ``folds`` document-grouped folds (``stats.grouped_folds``, the probes
    stage's fold rule: shuffled with ``seed``, stratified by class for a classification; fewer when the target has
    fewer documents); None when it has fewer than 2 documents."""
    docs = np.asarray(doc_N)
    k = min(folds, len(np.unique(docs)))
    if k < 2:
        return None
    fold = np.empty(len(target.y), dtype=np.int64)
    for f, (_, te) in enumerate(grouped_folds(docs, k, seed, target.y if target.kind == "classification" else None)):
        fold[te] = f
    return fold


def fit_readout(target: TaskTarget, X_ND: np.ndarray, doc_N: np.ndarray, folds: int, l2: list[float],
                seed: int = 0) -> Readout | None:
    """Cross-fit a readout of ``target`` on ``X_ND`` (the clean residual at the example rows ``target.rows``, in that
    order) with document-grouped folds (``stats.grouped_folds``, the probes stage's fold rule: shuffled with ``seed``,
    stratified by class for a classification; the same folds as the probes' when ``folds`` and ``seed`` are the same);
    None when the target has fewer than 2 documents."""
    X = np.asarray(X_ND, dtype=np.float64)
    y = target.y
    docs = np.asarray(doc_N)
    fold = readout_folds(target, docs, folds, seed)
    if fold is None:
        return None
    scale = float(np.var(y)) if target.kind == "regression" else 1.0
    scale = scale if scale > 0 else 1.0
    models, chosen = [], []
    for f in range(int(fold.max()) + 1):
        tr = np.flatnonzero(fold != f)
        m, a = _fit_one(target.kind, X[tr], y[tr], docs[tr], l2, scale, seed)
        models.append(m)
        chosen.append(a)
    r = Readout(target.name, target.kind, target.rows, y, fold, models, chosen, scale, np.zeros(0))
    r.clean_loss = r.loss(X, target.rows)
    return r


def crossfit_loss(kind: str, X: np.ndarray, y: np.ndarray, fold: np.ndarray, l2: float, scale: float) -> np.ndarray:
    """Per-row loss of a readout refitted on ``X`` and cross-fitted over ``fold`` (each row read by the model fitted on
    the other folds; a training fold with one class predicts that class's frequency)."""
    out = np.zeros(len(y))
    for k in np.unique(fold):
        te, tr = fold == k, fold != k
        if kind == "classification" and len(np.unique(y[tr])) < 2:
            m = _Prior(y[tr])
        else:
            m = _estimator(kind, l2).fit(X[tr], y[tr])
        out[te] = _loss(kind, m, X[te], y[te], scale)
    return out


def amnesic_effects(ro: "Readout", X_clean: np.ndarray, rows: np.ndarray, docs: np.ndarray, edited: dict,
                    folds: int, seed: int = 0) -> dict:
    """The amnesic readout's loss increase per task token for every arm: a readout of the target refitted on the
    *edited* residuals of the evaluated windows' task tokens (cross-fitted by document, the clean readout's median L2
    strength), minus the same refit on their clean residuals (paired per token). A fixed readout can fail after an
    edit that only moves the information; a refitted one fails only when the information is gone (amnesic probing).
    ``edited``: arm key -> edited residuals [T, D] (None: the arm changed nothing, effect 0). The refit's own clean
    loss is under :data:`AMNESIC_BASELINE`. The document bootstrap of these effects does not refit, so their intervals
    leave out the refit's own variability: they are descriptive."""
    y = ro.y[ro.index(rows)]
    k = min(folds, len(np.unique(docs)))
    if ro.kind == "classification":
        # no more folds than the rarer class has tokens, so every fold can hold both classes (sklearn's
        # StratifiedGroupKFold raises when every class has fewer tokens than folds, and warns when one has)
        k = min(k, int(np.bincount(y.astype(np.int64), minlength=2).min()))
    if k < 2:  # one document, or a class seen once or never: nothing to cross-fit over
        out = {key: np.full(len(rows), np.nan) for key in edited}
        out[AMNESIC_BASELINE] = np.full(len(rows), np.nan)
        return out
    fold = np.empty(len(rows), dtype=np.int64)
    for f, (_, te) in enumerate(grouped_folds(docs, k, seed, y if ro.kind == "classification" else None)):
        fold[te] = f
    finite = [a for a in ro.l2 if a is not None and math.isfinite(a)]
    l2 = float(np.median(finite)) if finite else 1.0
    base = crossfit_loss(ro.kind, X_clean, y, fold, l2, ro.scale)
    out = {key: (np.zeros(len(rows)) if X is None else crossfit_loss(ro.kind, X, y, fold, l2, ro.scale) - base)
           for key, X in edited.items()}
    out[AMNESIC_BASELINE] = base
    return out


AMNESIC_BASELINE = "__clean_refit__"
"""Key of :func:`amnesic_effects`'s result holding the refit's per-token loss on the clean residuals (its quality on
the evaluated windows: 1 - mean is the refit's R^2 for a regression)."""


def signed_target(kind: str, y: np.ndarray) -> np.ndarray:
    """The sign the logit-level effect gives each task token: +1 / -1 for the classes of a classification, the
    standardised target ``(y - mean) / sd`` for a regression (0 for a constant target)."""
    y = np.asarray(y, dtype=np.float64)
    if kind == "classification":
        return np.where(y == 1, 1.0, -1.0)
    sd = float(np.std(y))
    return (y - float(np.mean(y))) / sd if sd > 0 else np.zeros(len(y))


@dataclass
class LogitContrast:
    """The logit-level readout of one target: which continuations does the model predict at a task token?

    For each fold ``k`` of the target's readout, ``ids_K2m[k]`` holds the ``m`` vocabulary tokens whose clean
    next-token logit at the task tokens correlates most with the signed target (:func:`signed_target`) over the
    *other* folds' documents, then the ``m`` that correlate least (for a word sense: the continuations favoured by
    one sense, then those of the other; for a URL position: those that come more, then less, likely deeper into the
    URL). A position's score is ``mean logit(first m) - mean logit(last m)``: a logit difference between two sets of
    continuations of the same size, equal to the difference of their mean log-probabilities. A task token is scored
    with its own fold's sets, so no token helped choose the tokens that score it. The effect of an edit at a task
    token is ``z * (score_clean - score_edit)``, the drop of the signed margin ``z * score``: for a word sense, of the
    logit difference between the continuations of the token's own sense and those of the other (the logit-difference
    metric of circuit analyses, with continuation sets instead of one token each); for a URL position, the same
    weighted by how far the token's position is from the mean. Its mean over a set of tokens is the mean drop of
    that margin there: where the tokens' targets are unbalanced (a group firing mostly on one sense), a shift of
    the score that is the same at every token counts too, as it does for the readout's loss, since it does lower
    those tokens' margins; the controls at the same tokens are what separate a group-specific shift from a generic
    one."""

    name: str
    ids_K2m: np.ndarray
    rows: np.ndarray
    """The readout's example rows (:attr:`Readout.rows`)."""
    z: np.ndarray
    """Signed target of each row."""
    fold: np.ndarray
    """Fold of each row (the readout's)."""
    clean_corr: float = float("nan")
    """Correlation between the clean score (each token's own fold) and ``z`` over every task token: how much of the
    target the model's next-token prediction carries, measured out of fold."""

    @property
    def m(self) -> int:
        return self.ids_K2m.shape[1] // 2

    def scores(self, logits_V: torch.Tensor) -> torch.Tensor:
        """Every fold's score ``[..., K]`` at every position of ``logits_V`` (``[..., V]``)."""
        K, m = self.ids_K2m.shape[0], self.m
        ids = torch.as_tensor(self.ids_K2m.reshape(-1), device=logits_V.device)
        lg = logits_V.index_select(-1, ids).float().reshape(*logits_V.shape[:-1], K, 2 * m)
        return lg[..., :m].mean(-1) - lg[..., m:].mean(-1)

    def index(self, rows_T: np.ndarray) -> np.ndarray:
        """Positions in ``self.rows`` (and ``self.z``, ``self.fold``) of the example rows ``rows_T``."""
        return row_positions(self.rows, rows_T)


def choose_contrast(name: str, rows: np.ndarray, z: np.ndarray, fold: np.ndarray, sum_l_KV: np.ndarray,
                    sum_zl_KV: np.ndarray, sum_ll_KV: np.ndarray, n_K: np.ndarray, sum_z_K: np.ndarray, m: int,
                    exclude: set[int] = frozenset(), n_vocab: int | None = None) -> LogitContrast:
    """:class:`LogitContrast` from per-fold sums over the task tokens of each fold: of the clean logits
    (``sum_l_KV``), of ``z`` times them (``sum_zl_KV``), of their squares (``sum_ll_KV``), the token counts and the
    sums of ``z``. Fold ``k``'s sets are the ``m`` largest and ``m`` smallest correlations with ``z`` over the other
    folds, ranked by ``cov(z, l) / sd(l)`` (the correlation up to the constant ``sd(z)``; a logit that never varies
    is never chosen; ties broken by token id). The ids in ``exclude`` (e.g. the special tokens) and those from
    ``n_vocab`` on (logits of padded vocabulary rows the tokenizer has no token for) are never chosen."""
    K, V = sum_l_KV.shape
    keep = np.ones(V, dtype=bool)
    keep[[i for i in exclude if 0 <= i < V]] = False
    if n_vocab is not None:
        keep[n_vocab:] = False
    m = max(1, min(m, int(keep.sum()) // 2))
    ids = np.zeros((K, 2 * m), dtype=np.int64)
    for k in range(K):
        n = n_K.sum() - n_K[k]
        if n <= 0:
            raise ValueError(f"{name}: fold {k} holds every task token; nothing to choose its continuations on")
        mean_l = (sum_l_KV.sum(0) - sum_l_KV[k]) / n
        cov = (sum_zl_KV.sum(0) - sum_zl_KV[k]) / n - (sum_z_K.sum() - sum_z_K[k]) / n * mean_l
        var = np.maximum((sum_ll_KV.sum(0) - sum_ll_KV[k]) / n - mean_l ** 2, 0.0)
        ok = keep & (var > 1e-12 * max(1.0, float(np.max(var))))
        cand = np.flatnonzero(ok)
        if len(cand) < 2 * m:
            raise ConfigError("interventions.tasks.logit_tokens",
                              f"{name}: only {len(cand)} vocabulary logits vary over the task tokens outside fold {k}, "
                              f"fewer than {2 * m} ({m} per side); lower logit_tokens or set interventions.tasks.logit: false")
        c = cov[cand] / np.sqrt(var[cand])
        hi = cand[np.lexsort((cand, -c))[:m]]
        lo = cand[np.lexsort((cand, c))[:m]]
        ids[k] = np.concatenate([hi, lo])
    return LogitContrast(name, ids, np.asarray(rows), np.asarray(z, dtype=np.float64), np.asarray(fold))


@torch.no_grad()
def _batches(windows: list[TaskWindow], idx: list[int], size: int, pad: int):
    for b0 in range(0, len(idx), size):
        ws = [windows[i] for i in idx[b0:b0 + size]]
        tokens, mask = pad_batch([w.tokens_L for w in ws], [w.mask_L for w in ws], pad)
        yield ws, torch.from_numpy(tokens), torch.from_numpy(mask)


@torch.no_grad()
def fit_task_readouts(model: LoadedModel, sae, hook: HookSpec, td: TaskData, read_layer: int, threshold_F: np.ndarray,
                      folds: int, l2: list[float], batch_size: int = 16, seed: int = 0,
                      logit_tokens: int | None = None) -> TaskData:
    """One clean pass over every window of ``td``: the firing latents at each task token and the cross-fitted
    readout of every target. With ``logit_tokens`` the pass goes on to the logits and also chooses every target's
    :class:`LogitContrast` (``logit_tokens`` continuations per side, on the readout's folds), and a second clean
    pass measures the contrast's out-of-fold correlation with the target (``clean_logit_corr`` in the quality);
    without it the pass stops at ``read_layer``."""
    _, pad, special = special_ids(model.tokenizer)
    n = len(td.examples)
    X = None
    fired_NF = None
    thr = torch.as_tensor(threshold_F, dtype=torch.float32)
    view = as_view(sae)
    doc = td.doc_N
    order = sorted(range(len(td.windows)), key=lambda i: -len(td.windows[i].tokens_L))
    logit = logit_tokens is not None
    fold_of = {t.name: readout_folds(t, doc[t.rows], folds, seed) for t in td.targets}
    live = [t for t in td.targets if fold_of[t.name] is not None] if logit else []
    z_of = {t.name: signed_target(t.kind, t.y) for t in live}
    at_of = {t.name: {int(r): i for i, r in enumerate(t.rows)} for t in live}
    sums: dict[str, list] = {}

    def hits(t, w):
        """(window positions, indices into t.rows) of the task tokens of target ``t`` in window ``w``."""
        idx = at_of[t.name]
        sel = [j for j, r in enumerate(w.rows.tolist()) if r in idx]
        return w.pos[sel], np.array([idx[int(w.rows[j])] for j in sel], dtype=np.int64)

    for ws, tokens, _ in _batches(td.windows, order, batch_size, pad):
        x, read, logits, _ = clean_pass(model, hook, tokens, read_layer, logits=logit)
        for i, w in enumerate(ws):
            pos = torch.as_tensor(w.pos)
            r = read[i, pos].cpu().numpy()
            f = view.encode(x[i, pos].float()).cpu()
            if X is None:
                X = np.zeros((n, r.shape[1]), dtype=np.float32)
                fired_NF = np.zeros((n, f.shape[1]), dtype=bool)
            X[w.rows] = r
            fired_NF[w.rows] = fires(f, thr).numpy()
            for t in live:
                p_, j_ = hits(t, w)
                if not len(j_):
                    continue
                lg = logits[i, torch.as_tensor(p_)].double().cpu().numpy()
                K = int(fold_of[t.name].max()) + 1
                acc = sums.setdefault(t.name, [np.zeros((K, lg.shape[1])) for _ in range(3)] + [np.zeros(K), np.zeros(K)])
                z, k_ = z_of[t.name][j_], fold_of[t.name][j_]
                np.add.at(acc[0], k_, lg)
                np.add.at(acc[1], k_, z[:, None] * lg)
                np.add.at(acc[2], k_, lg * lg)
                np.add.at(acc[3], k_, 1.0)
                np.add.at(acc[4], k_, z)
        del logits
    td.fires_NF = fired_NF
    for t in td.targets:
        ro = fit_readout(t, X[t.rows], doc[t.rows], folds, l2, seed)
        if ro is None:
            log.info("task %s: fewer than 2 documents; no readout", t.name)
            continue
        td.readouts[t.name] = ro
        q = {"kind": t.kind, "n": int(len(t.rows)), "n_docs": int(len(np.unique(doc[t.rows]))), "folds": int(ro.fold.max() + 1),
             "l2": [None if not math.isfinite(a) else a for a in ro.l2], "clean_loss": float(ro.clean_loss.mean())}
        if t.kind == "regression":
            q["clean_r2"] = 1.0 - q["clean_loss"]
        else:
            q["clean_accuracy"] = float(np.mean(np.exp(-ro.clean_loss) > 0.5))
        td.quality[t.name] = q
        if t.name in sums:
            td.contrasts[t.name] = choose_contrast(t.name, t.rows, z_of[t.name], ro.fold, *sums[t.name], m=logit_tokens,
                                                   exclude=special, n_vocab=len(model.tokenizer))
    if td.contrasts:
        target_of = {t.name: t for t in live}
        score = {name: np.full(len(c.rows), np.nan) for name, c in td.contrasts.items()}
        for ws, tokens, _ in _batches(td.windows, order, batch_size, pad):
            _, _, logits, _ = clean_pass(model, hook, tokens, read_layer, logits=True)
            for name, c in td.contrasts.items():
                t = target_of[name]
                for i, w in enumerate(ws):
                    p_, j_ = hits(t, w)
                    if len(j_):
                        S = c.scores(logits[i, torch.as_tensor(p_)]).cpu().numpy()
                        score[name][j_] = S[np.arange(len(j_)), c.fold[j_]]
        for name, c in td.contrasts.items():
            ok = np.isfinite(score[name])
            sd = np.std(score[name][ok]) * np.std(c.z[ok]) if ok.sum() > 1 else 0.0
            c.clean_corr = float(np.corrcoef(score[name][ok], c.z[ok])[0, 1]) if sd > 0 else float("nan")
            td.quality[name]["clean_logit_corr"] = c.clean_corr
            td.quality[name]["logit_continuations"] = [
                {"up": model.tokenizer.convert_ids_to_tokens([int(v) for v in row[:c.m]]),
                 "down": model.tokenizer.convert_ids_to_tokens([int(v) for v in row[c.m:]])} for row in c.ids_K2m]
    return td


# ----------------------------------------------------------------------------------- evaluation

@dataclass
class TaskEval:
    family: str
    n_docs: int
    doc_ids: list[str]
    n_windows: int
    n_tokens: int
    """Task tokens of the evaluated windows (any target)."""
    n_tokens_fires: int
    """... of which the group fires on."""
    sums: dict
    """target name -> {(arm name, mode, alpha) -> DocSums with ``probe:<target>``}."""
    windows: list[int] = field(default_factory=list)
    """Indices (into TaskData.windows) of the evaluated windows."""
    best_single: dict = field(default_factory=dict)
    """``target|mode`` -> the cross-fitted best single member(s) (``a|b`` when the halves differ), filled by
    interventions.pipeline.task_rows."""
    amnesic_quality: dict = field(default_factory=dict)
    """target -> tokens, documents and the clean loss of the amnesic refit on the evaluated windows (its power)."""
    best_single_effects: dict = field(default_factory=dict)
    """``(mode, effect)`` -> the best single member(s) chosen for that task effect (filled by task_rows)."""


def choose_windows(td: TaskData, members: tuple[int, ...], max_docs: int, rng: np.random.Generator) -> list[int]:
    """Windows where the group fires on a task token of a target with a readout: one per document (a seeded random one
    of the document's such windows), for at most ``max_docs`` documents in seeded random order; longest first."""
    if td.fires_NF is None:
        return []
    rows_ok = np.zeros(len(td.examples), dtype=bool)
    for name, ro in td.readouts.items():
        rows_ok[ro.rows] = True
    hit_N = td.fires_NF[:, list(members)].any(1) & rows_ok
    cand = [i for i, w in enumerate(td.windows) if hit_N[w.rows].any()]
    if not cand:
        return []
    order = documents_first(np.array(cand), lambda i: td.windows[i].doc_index, rng)
    chosen, seen = [], set()
    for i in order.tolist():
        d = td.windows[i].doc_index
        if d in seen:
            break  # documents_first puts every document's first window before any second one
        seen.add(d)
        chosen.append(i)
        if len(chosen) >= max_docs:
            break
    return sorted(chosen, key=lambda i: (-len(td.windows[i].tokens_L), i))


@torch.no_grad()
def evaluate_task(model: LoadedModel, hook: HookSpec, plan: Plan, td: TaskData, ev: Evaluator, read_layer: int,
                  max_docs: int, rng: np.random.Generator, steering: bool = True, progress: bool = True) -> TaskEval | None:
    """Run the plan's arms on the task windows where the group fires and record the per-token readout loss
    increase of every target (None when the group fires on no task token)."""
    chosen = choose_windows(td, plan.group.members, max_docs, rng)
    if not chosen:
        return None
    _, pad, _ = special_ids(model.tokenizer)
    arms = [a for a in plan.arms if steering or a.kind not in ("steer", "steer_random")]
    doc_keys = sorted({td.windows[i].doc_index for i in chosen})
    doc_of = {d: k for k, d in enumerate(doc_keys)}
    doc_ids = {td.windows[i].doc_index: td.windows[i].doc_id for i in chosen}
    per_fwd, cb = arm_batching(len(arms), len(chosen), ev.icfg.batch_size)
    readouts = td.readouts
    rec = {t: {(a.name, a.mode, a.alpha): {"doc": [], "target": [], "collateral": [], "eff": [], "norm": []} for a in arms} for t in readouts}
    amnesic = ev.icfg.tasks.amnesic
    contrasts = {t: c for t, c in td.contrasts.items() if t in readouts} if ev.icfg.tasks.logit else {}
    amn_arms = {(a.name, a.mode, a.alpha) for a in arms if a.kind not in ("steer", "steer_random")}
    clean_X = {t: [] for t in readouts}
    """target -> per chunk: clean residuals, example rows and documents of its task tokens (the amnesic refit)."""
    edit_X = {t: {k: [] for k in amn_arms} for t in readouts}
    gi = torch.as_tensor(plan.group.members)
    n_tok = n_fires = 0
    bar = progress_bar(total=math.ceil(len(chosen) / cb) * len(arms), desc=f"task {td.family} {plan.group.group_id}",
                       unit="arm", progress=progress, mininterval=2.0)

    def chunks():
        nonlocal n_tok, n_fires
        for ws, tokens, mask in _batches(td.windows, chosen, cb, pad):
            content = mask.to(model.device)
            x, read, logits, kv = clean_pass(model, hook, tokens, read_layer, logits=bool(contrasts),
                                             keep_cache=ev.reuse_prefix)
            x = x.float()
            f = ev.sae.encode(x)
            gf = fires_any(f[..., gi.to(f.device)], ev.thr[gi.to(ev.thr.device)]) & content
            docs = np.array([doc_of[w.doc_index] for w in ws])
            ch = Chunk(tokens, x, f, content, gf, None, read, docs, doc_index=[w.doc_index for w in ws],
                       row_keys=[("window", td.family, int(w.rows[0])) for w in ws], kv=kv)
            ch.extra["S"] = {t: c.scores(logits) for t, c in contrasts.items()}  # clean scores [B, L, K]
            del logits
            # task tokens of each target in this chunk: (batch row, position, example row) and the clean loss
            at = {}
            for t, ro in readouts.items():
                keep = set(ro.rows.tolist())
                b_, p_, r_ = [], [], []
                for b, w in enumerate(ws):
                    for p, r in zip(w.pos.tolist(), w.rows.tolist()):
                        if r in keep:
                            b_.append(b), p_.append(p), r_.append(r)
                if not b_:
                    continue
                b_, p_, r_ = (torch.as_tensor(v) for v in (b_, p_, r_))
                at[t] = (b_, p_, r_.numpy(), ro.loss(read[b_, p_].cpu().numpy(), r_.numpy()))
                if t in contrasts:
                    j_ = contrasts[t].index(r_.numpy())
                    k_ = torch.as_tensor(contrasts[t].fold[j_])
                    ch.extra.setdefault("logit_at", {})[t] = (k_, contrasts[t].z[j_], ch.extra["S"][t][b_, p_, k_].cpu().numpy())
                if amnesic:
                    clean_X[t].append((read[b_, p_].cpu().numpy(), r_.numpy(), docs[b_.numpy()]))
            ch.extra["at"] = at
            rows_here = {r for w in ws for r in w.rows.tolist()}
            n_tok += len(rows_here)
            n_fires += len({int(r) for w_i, w in enumerate(ws) for p, r in zip(w.pos.tolist(), w.rows.tolist())
                            if bool(gf[w_i, p])})
            yield ch

    def forward(ch, deltas):  # run_arms passes only arms that change something (the others read the clean stream)
        p, fns, prefix = suffix_edits(ch, deltas)  # positions before p are the clean pass's
        x0 = ch.x if ev.icfg.start_at_hook else None
        if contrasts:
            logits, R = multi_arm_logits(model, hook, ch.tokens, fns, read_layer, x_BLD=x0, prefix=prefix)
            S = {t: pad_front(c.scores(logits), p, -2, fill=ch.extra["S"][t]) for t, c in contrasts.items()}
            del logits
        else:
            R, S = multi_arm_read(model, hook, ch.tokens, fns, read_layer, x_BLD=x0, prefix=prefix), {}
        return {"read": pad_front(R, p, -2, fill=ch.clean_read), "logit": S}

    def record(ch, i, arm, d, edited):
        tgt = ev.target(arm, ch)
        norm = d.norm(dim=-1)
        coll = ev.collateral(arm, ch, d)  # the other scope: unedited task tokens from the window's first edit on
        for t, (b_, p_, r_, clean) in ch.extra["at"].items():
            r = rec[t][(arm.name, arm.mode, arm.alpha)]
            r["doc"].append(ch.docs[b_.numpy()])
            r["target"].append(tgt[b_, p_].cpu().numpy())
            r["collateral"].append(coll[b_, p_].cpu().numpy())
            r["norm"].append(norm[b_, p_].cpu().numpy())
            live = edited is not None
            if live:
                r["eff"].append(readouts[t].loss(edited["read"][i][b_, p_].cpu().numpy(), r_) - clean)
            else:
                r["eff"].append(np.zeros(len(r_)))
            if t in contrasts:
                k_, z, s_clean = ch.extra["logit_at"][t]
                r.setdefault("logit", []).append(
                    z * (s_clean - edited["logit"][t][i][b_, p_, k_].cpu().numpy()) if live else np.zeros(len(r_)))
            key = (arm.name, arm.mode, arm.alpha)
            if amnesic and key in amn_arms:
                edit_X[t][key].append(edited["read"][i][b_, p_].cpu().numpy() if live else None)

    run_arms(chunks(), arms, ev, forward, record, bar)
    bar.close()
    n_docs = len(doc_keys)
    cat = lambda xs: np.concatenate(xs) if xs else np.zeros(0)  # noqa: E731
    sums: dict[str, dict] = {}
    amnesic_quality: dict[str, dict] = {}
    for t, per_arm in rec.items():
        if not any(len(v["doc"]) for v in per_arm.values()):
            continue
        amn = {}
        if amnesic and clean_X[t]:
            Xc = np.concatenate([c[0] for c in clean_X[t]]).astype(np.float64)
            rows = np.concatenate([c[1] for c in clean_X[t]])
            docs = np.concatenate([c[2] for c in clean_X[t]])
            edited_T = {}
            for k, parts in edit_X[t].items():
                if all(p is None for p in parts):
                    edited_T[k] = None
                else:
                    edited_T[k] = np.concatenate([c[0] if p is None else p for p, c in zip(parts, clean_X[t])]).astype(np.float64)
            amn = amnesic_effects(readouts[t], Xc, rows, docs, edited_T, ev.icfg.tasks.folds, ev.icfg.seed or 0)
            base = amn.pop(AMNESIC_BASELINE)
            amnesic_quality[t] = {"n_tokens": int(len(rows)), "n_docs": int(len(np.unique(docs))),
                                  "clean_refit_loss": float(np.mean(base)) if np.isfinite(base).all() else None}
        sums[t] = {}
        for k, v in per_arm.items():
            eff = {effect_name(t): cat(v["eff"])}
            if "logit" in v:
                eff[effect_name(t, logit=True)] = cat(v["logit"]).astype(np.float64)
            if k in amn:
                eff[effect_name(t, amnesic=True)] = amn[k]
            sums[t][k] = doc_sums(cat(v["doc"]).astype(np.int64), n_docs, cat(v["target"]).astype(bool), eff,
                                  cat(v["norm"]), cat(v["collateral"]).astype(bool))
    te = TaskEval(td.family, n_docs, [doc_ids[d] for d in doc_keys], len(chosen), n_tok, n_fires, sums, list(chosen))
    te.amnesic_quality = amnesic_quality
    return te

