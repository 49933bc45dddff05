"""Cross-validated probes of one target: a latent group against single latents, sparse probes and controls.

For a target (labels ``y`` on a set of task tokens) and a group of latents (size k) the arms are

==========================  ======================================================================  ==========
arm                         features                                                                 dim
==========================  ======================================================================  ==========
``group_subspace``          coordinates of the residual stream in the orthonormalised span of the    k
                            members' decoder vectors
``group_latents``           the members' SAE activations                                             k
``latent:<id>``             one member's SAE activation                                              1
``best_single_latent``      the member activation with the highest univariate score, chosen on       1
                            each training fold
``best_single_direction``   the residual coordinate along one member's (unit) decoder vector,        1
                            chosen on each training fold
``ksparse``                 the k latents (of all d_sae) with the highest univariate score on each   k
                            training fold
``matched_latents``         activations of a random size- and firing-frequency-matched group         k
``matched_subspace``        residual coordinates in that matched group's decoder span                 k
``random_subspace``         residual coordinates in a Haar-random subspace of the same dimension      k
``residual``                the full residual stream (ceiling; one per target, no group)              d_model
``chance``                  no features: the training folds' mean label (floor; one per target)      0
==========================  ======================================================================  ==========

Controls (``matched_*``, ``random_subspace``) are reported as the mean over ``n_controls`` draws.
Every arm is a ridge regression (regression targets) or L2 logistic regression (binary targets,
:mod:`probes.linear`) on features standardised on the training fold, fitted with the same regularisation, on the same
document-grouped folds; metrics are computed on the pooled out-of-fold predictions. The univariate
score used for choosing latents is the squared Pearson correlation with the target on the training
fold (= in-fold R² of a one-feature least-squares fit; for 0/1 labels the squared point-biserial
correlation), so the choice never sees held-out tokens.

Metrics are computed within each test fold and averaged (weighted by fold size). Intervals:
document-level bootstrap of the out-of-fold predictions (the same replicates for every arm of a
target, so differences are paired). Comparisons (:data:`COMPARISONS`) are one-sided paired tests
of "the group arm is better" (:func:`stats.paired_test`, t with documents - 1 degrees of freedom).
Only the primary metric of each target kind gets a p-value (:data:`TESTED_METRIC`: R² for
regression, log-loss for classification); differences in the other metrics are reported with
intervals but untested, because for rank metrics (Spearman, AUROC) the variance from fitting the
probes dominates and a test-set bootstrap is anti-conservative (tests/test_probes_statistics.py).
The caller corrects all p-values of a run together (Benjamini–Hochberg) and sets ``win``: a
comparison is won when its corrected p-value is below alpha *and* the group arm also beats
``chance`` at that level, so that two useless probes can never produce a win.
"""

from __future__ import annotations

import logging
import warnings
import zlib
from dataclasses import dataclass, field

import numpy as np
import scipy.sparse as sp
from threadpoolctl import threadpool_limits

from probes.linear import logistic_path, ridge_path
from stats import HIGHER_IS_BETTER, cluster_bootstrap_weights, grouped_folds, metrics_for, paired_test, percentile_ci, r2, score
from subspaces import Subspace, frequency_bins, matched_groups, random_subspaces

log = logging.getLogger(__name__)

COLUMNS = ["task", "group_id", "arm", "metric", "estimate", "ci_low", "ci_high", "p_value", "p_adj", "n",
           "n_docs", "group_size", "row_type", "win", "note"]

TESTED_METRIC = {"regression": "r2", "classification": "log_loss"}
"""The one metric per target kind whose comparisons get p-values (proper scoring rules, additive per token)."""

COMPARISONS: list[tuple[str, str]] = [
    ("group_subspace", "chance"),
    ("group_latents", "chance"),
    ("group_subspace", "best_single_direction"),
    ("group_latents", "best_single_latent"),
    ("group_subspace", "matched_subspace"),
    ("group_latents", "matched_latents"),
    ("group_subspace", "random_subspace"),
    ("group_latents", "ksparse"),
]
"""(A, B): one-sided test that arm A beats arm B; the row's arm is ``A-vs-B``."""


@dataclass(frozen=True)
class Settings:
    folds: int = 5
    n_bootstrap: int = 1000
    n_controls: int = 5
    n_freq_bins: int = 10
    ci_level: float = 0.95
    regularisation: tuple[float, ...] = (0.1, 1.0, 10.0, 100.0, 1000.0, 10000.0)
    """L2 strengths tried per arm and training fold (ridge alpha; logistic C = 1 / strength)."""
    inner_folds: int = 3
    """Document-grouped inner folds that choose the strength."""
    seed: int = 0
    member_arms: bool = True
    """Report each member latent alone (``latent:<id>`` rows)."""

    @classmethod
    def from_config(cls, probes_cfg, seed: int) -> "Settings":
        reg = probes_cfg.regularisation
        reg = (float(reg),) if np.isscalar(reg) else tuple(float(a) for a in reg)
        return cls(probes_cfg.folds, probes_cfg.n_bootstrap, probes_cfg.n_controls, probes_cfg.n_freq_bins, probes_cfg.ci_level,
                   reg, probes_cfg.inner_folds, seed)


@dataclass
class Target:
    """Labels for a subset of a dataset's rows."""

    task: str
    kind: str
    """regression | classification (binary, y in {0, 1})"""
    rows: np.ndarray
    y: np.ndarray
    classes: tuple[str, ...] = ()
    """Class names for y = 0, 1."""


# --- fitting -------------------------------------------------------------------------------------


def univariate_scores(X, y) -> np.ndarray:
    """Squared Pearson correlation of every column of ``X`` (dense or sparse) with ``y``; 0 for constant columns."""
    y = np.asarray(y, dtype=np.float64)
    yc = y - y.mean()
    n = len(y)
    if sp.issparse(X):
        X = sp.csr_matrix(X)
        mean = np.asarray(X.mean(0)).ravel()
        sxy = np.asarray(X.T @ yc).ravel()
        sxx = np.asarray(X.multiply(X).sum(0)).ravel() - n * mean ** 2
    else:
        X = np.asarray(X, dtype=np.float64)
        mean = X.mean(0)
        sxy = X.T @ yc
        sxx = ((X - mean) ** 2).sum(0)
    syy = float(yc @ yc)
    ok = (sxx > 1e-12 * np.maximum(1.0, n * mean ** 2)) & (syy > 0)
    out = np.zeros(X.shape[1])
    out[ok] = sxy[ok] ** 2 / (sxx[ok] * syy)
    return out


def _dense(X) -> np.ndarray:
    return X.toarray() if sp.issparse(X) else np.asarray(X)


def _standardise(Xtr: np.ndarray, Xte: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    mu = Xtr.mean(0)
    sd = Xtr.std(0)
    sd[sd < 1e-12] = 1.0
    return (Xtr - mu) / sd, (Xte - mu) / sd


def _predict_path(Xtr, ytr, Xte, kind: str, strengths) -> np.ndarray:
    """Predictions ``[len(strengths), n_te]``: ridge alpha = strength; logistic C = 1 / strength."""
    if kind == "regression":
        return ridge_path(Xtr, ytr, Xte, strengths)
    if len(np.unique(ytr)) < 2:
        return np.full((len(strengths), len(Xte)), float(np.clip(ytr.mean(), 1e-6, 1 - 1e-6)))
    return logistic_path(Xtr, ytr, Xte, [1.0 / a for a in strengths])


def inner_splits(groups, y, kind: str, folds, inner_folds: int, seed: int = 0) -> list[list | None]:
    """For each outer training fold, document-grouped inner splits (indices into that training fold), or None
    when it has too few documents."""
    out = []
    groups = np.asarray(groups)
    for tr, _ in folds:
        try:
            out.append(grouped_folds(groups[tr], inner_folds, seed, y[tr] if kind == "classification" else None))
        except ValueError:
            out.append(None)
    return out


def choose_strength(X: np.ndarray, y: np.ndarray, splits, kind: str, strengths) -> float:
    """The L2 strength with the lowest inner-CV loss (summed squared error / log-loss) over ``splits``.

    Ties go to the stronger penalty. With one candidate, or no splits, the candidates' middle is used.
    """
    strengths = sorted(float(a) for a in strengths)
    if len(strengths) == 1:
        return strengths[0]
    if not splits:
        return strengths[len(strengths) // 2]
    loss = np.zeros(len(strengths))
    for tr, te in splits:
        Xtr, Xte = _standardise(X[tr], X[te])
        P = _predict_path(Xtr, y[tr], Xte, kind, strengths)
        if kind == "regression":
            loss += ((P - y[te]) ** 2).sum(1)
        else:
            P = np.clip(P, 1e-15, 1 - 1e-15)
            loss += -(y[te] * np.log(P) + (1 - y[te]) * np.log1p(-P)).sum(1)
    best = loss.min()
    return max(a for a, l in zip(strengths, loss) if l <= best * (1 + 1e-12) + 1e-300)


@dataclass
class FoldFits:
    """Out-of-fold predictions of one arm and what was chosen on each training fold."""

    pred: np.ndarray
    columns: list[np.ndarray]
    """Columns chosen per fold (empty when the arm does no selection)."""
    strengths: list[float]
    """L2 strength chosen per fold."""


def fit_predict(X, y, folds, kind: str, select: int | None = None, regularisation=1.0, inner=None) -> FoldFits:
    """Out-of-fold predictions (regression: values; classification: P(y = 1)).

    On each training fold: optionally keep the ``select`` columns with the best univariate score,
    standardise, pick the L2 strength among ``regularisation`` (a number or a list) by inner CV over
    ``inner`` (from :func:`inner_splits`, one entry per fold), fit, predict the held-out fold.
    """
    y = np.asarray(y, dtype=np.float64)
    strengths = [float(regularisation)] if np.isscalar(regularisation) else [float(a) for a in regularisation]
    pred = np.full(len(y), np.nan)
    columns: list[np.ndarray] = []
    chosen: list[float] = []
    X = X.tocsr() if sp.issparse(X) else np.asarray(X)
    for f, (tr, te) in enumerate(folds):
        Xtr, Xte = X[tr], X[te]
        if select is not None:
            s = univariate_scores(Xtr, y[tr])
            cols = np.argsort(-s, kind="stable")[:select]
            columns.append(cols)
            Xtr, Xte = Xtr[:, cols], Xte[:, cols]
        Xtr = _dense(Xtr).astype(np.float64)
        Xte = _dense(Xte).astype(np.float64)
        a = choose_strength(Xtr, y[tr], None if inner is None else inner[f], kind, strengths)
        chosen.append(a)
        Xtr, Xte = _standardise(Xtr, Xte)
        pred[te] = _predict_path(Xtr, y[tr], Xte, kind, [a])[0]
    return FoldFits(pred, columns, chosen)


# --- evaluation of one target ---------------------------------------------------------------------


@dataclass
class ArmScores:
    """Metric estimate and bootstrap replicates of one arm (or the mean over a control family)."""

    est: dict[str, float]
    samples: dict[str, np.ndarray]
    note: str = ""


@dataclass
class TargetEvaluator:
    """Everything needed to probe one target: its rows of the dataset, folds and bootstrap weights."""

    target: Target
    acts_ND: np.ndarray
    latents_NF: sp.csr_matrix
    docs_N: np.ndarray
    settings: Settings
    folds: list = field(init=False)
    W_BN: np.ndarray = field(init=False)

    def __post_init__(self):
        t = self.target
        self.y = np.asarray(t.y, dtype=np.float64)
        self.acts = np.asarray(self.acts_ND)[t.rows]
        self.lat = sp.csr_matrix(self.latents_NF)[t.rows]
        self.docs = np.asarray(self.docs_N)[t.rows]
        self.n = len(self.y)
        self.n_docs = int(len(np.unique(self.docs)))
        s = self.settings
        self.metrics = metrics_for(t.kind)
        self.folds = grouped_folds(self.docs, s.folds, s.seed, self.y if t.kind == "classification" else None)
        self.inner = inner_splits(self.docs, self.y, t.kind, self.folds, s.inner_folds, s.seed) if len(s.regularisation) > 1 else None
        rng = np.random.default_rng([s.seed, zlib.crc32(t.task.encode())])
        self.W_BN = cluster_bootstrap_weights(self.docs, s.n_bootstrap, rng)
        self.chance_pred = self.chance_prediction()
        self.chance = self.scores(self.chance_pred, "training folds' mean label")

    # one arm
    def scores(self, pred: np.ndarray, note: str = "") -> ArmScores:
        """Metrics of out-of-fold predictions, with bootstrap replicates (documents re-weighted).

        * R² is out-of-sample R² against the ``chance`` probe, pooled over folds:
          1 - sum (y - pred)² / sum (y - chance)², chance being each training fold's mean label. It is 0 for
          chance, and differences between arms are differences of summed squared errors over a common
          denominator.
        * Spearman and AUROC are computed within each test fold and averaged weighted by fold size (pooling
          would mix the folds' different fitted intercepts into the ranking).
        * Accuracy and log-loss are token averages over all folds (identical pooled or per fold).
        """
        est, samples = {}, {}
        for m in self.metrics:
            if m == "r2":
                est[m] = float(r2(self.y, pred, baseline_N=self.chance_pred))
                samples[m] = np.asarray(r2(self.y, pred, self.W_BN, baseline_N=self.chance_pred), dtype=np.float64)
            elif m in ("spearman", "auroc"):
                vals, wts, rep_vals, rep_wts = [], [], [], []
                for _, te in self.folds:
                    vals.append(float(score(m, self.y[te], pred[te])))
                    wts.append(len(te))
                    rep_vals.append(np.asarray(score(m, self.y[te], pred[te], self.W_BN[:, te]), dtype=np.float64))
                    rep_wts.append(self.W_BN[:, te].sum(1))
                est[m] = float(_weighted_nanmean(np.array(vals)[None, :], np.array(wts, dtype=np.float64)[None, :])[0])
                samples[m] = _weighted_nanmean(np.stack(rep_vals, 1), np.stack(rep_wts, 1))
            else:
                est[m] = float(score(m, self.y, pred))
                samples[m] = np.asarray(score(m, self.y, pred, self.W_BN), dtype=np.float64)
        return ArmScores(est, samples, note)

    def arm(self, X, select: int | None = None) -> FoldFits:
        return fit_predict(X, self.y, self.folds, self.target.kind, select, self.settings.regularisation, self.inner)

    def rows_for(self, arm: str, sc: ArmScores, group_id, group_size) -> list[dict]:
        out = []
        for m in self.metrics:
            lo, hi = percentile_ci(sc.samples[m], self.settings.ci_level)
            out.append(_row(self.target.task, group_id, arm, m, sc.est[m], lo, hi, np.nan, self.n, self.n_docs, group_size, "arm", sc.note))
        return out

    def chance_prediction(self) -> np.ndarray:
        """Out-of-fold prediction without features: the training folds' mean label."""
        pred = np.full(self.n, np.nan)
        for tr, te in self.folds:
            m = float(self.y[tr].mean())
            pred[te] = np.clip(m, 1e-6, 1 - 1e-6) if self.target.kind == "classification" else m
        return pred

    def ceiling_rows(self) -> list[dict]:
        """The residual-stream ceiling and the chance floor (no group)."""
        fit = self.arm(self.acts)
        rows = self.rows_for("residual", self.scores(fit.pred, _note(f"full residual stream, {self.acts.shape[1]} dims", fit)), None, None)
        return rows + self.rows_for("chance", self.chance, None, None)

    def group_rows(self, group_id, members, W_dec_FD: np.ndarray, counts_F: np.ndarray,
                   bins_F: np.ndarray | None = None) -> list[dict]:
        """Every arm and comparison row of one group."""
        s = self.settings
        members = [int(i) for i in members]
        k = len(members)
        arms: dict[str, ArmScores] = {}
        rows: list[dict] = []
        W = np.asarray(W_dec_FD, dtype=np.float64)

        acts = self.acts.astype(np.float64)
        sub = Subspace.from_decoder(W, members, name=f"group{group_id}")
        fit = self.arm(sub.coords(acts))
        arms["group_subspace"] = self.scores(fit.pred, _note(f"decoder span, dim {sub.dim}", fit))
        G = self.lat[:, members]
        fit = self.arm(G)
        arms["group_latents"] = self.scores(fit.pred, _note(f"{k} member activations", fit))
        if s.member_arms:
            for j, lat in enumerate(members):
                fit = self.arm(G[:, [j]])
                rows += self.rows_for(f"latent:{lat}", self.scores(fit.pred, _note("", fit)), group_id, k)
        fit = self.arm(G, select=1)
        arms["best_single_latent"] = self.scores(fit.pred, _note(_chosen_note(fit.columns, members), fit))
        dirs = W[members] / np.maximum(np.linalg.norm(W[members], axis=1, keepdims=True), 1e-12)
        fit = self.arm(acts @ dirs.T, select=1)
        arms["best_single_direction"] = self.scores(fit.pred, _note(_chosen_note(fit.columns, members), fit))
        fit = self.arm(self.lat, select=k)
        arms["ksparse"] = self.scores(fit.pred, _note(_ksparse_note(fit.columns, members), fit))

        ctrl_rng = np.random.default_rng([s.seed, zlib.crc32(str(group_id).encode()), 1])
        controls = matched_groups(members, counts_F, s.n_controls, s.n_freq_bins, ctrl_rng, bins_F=bins_F)
        m_lat, m_sub = [], []
        for c in controls:
            m_lat.append(self.scores(self.arm(self.lat[:, list(c.latents)]).pred))
            m_sub.append(self.scores(self.arm(Subspace.from_decoder(W, c.latents).coords(acts)).pred))
        arms["matched_latents"] = _mean_scores(m_lat, f"mean of {len(controls)} frequency-matched groups")
        arms["matched_subspace"] = _mean_scores(m_sub, f"mean of {len(controls)} frequency-matched decoder spans")
        r_sub = [self.scores(self.arm(rs.coords(acts)).pred) for rs in random_subspaces(W.shape[1], sub.dim, s.n_controls, ctrl_rng)]
        arms["random_subspace"] = _mean_scores(r_sub, f"mean of {len(r_sub)} random {sub.dim}-dim subspaces")

        for name, sc in arms.items():
            rows += self.rows_for(name, sc, group_id, k)
        arms["chance"] = self.chance
        tested = TESTED_METRIC[self.target.kind]
        for a, b in COMPARISONS:
            for m in self.metrics:
                if b == "chance" and m != tested:
                    continue
                c = paired_test(arms[a].est[m], arms[a].samples[m], arms[b].est[m], arms[b].samples[m],
                                HIGHER_IS_BETTER[m], s.ci_level, n_clusters=self.n_docs)
                if m == tested:
                    p, note = c.p_value, "A-vs-B: difference A - B oriented so that > 0 means A is better; one-sided p"
                else:
                    p, note = np.nan, f"descriptive only (the tested metric is {tested})"
                rows.append(_row(self.target.task, group_id, f"{a}-vs-{b}", m, c.estimate, c.ci_low, c.ci_high, p,
                                 self.n, self.n_docs, k, "comparison", note))
        return rows


def _weighted_nanmean(V_BK: np.ndarray, W_BK: np.ndarray) -> np.ndarray:
    ok = np.isfinite(V_BK) & (W_BK > 0)
    num = np.where(ok, V_BK * W_BK, 0.0).sum(1)
    den = np.where(ok, W_BK, 0.0).sum(1)
    with np.errstate(invalid="ignore", divide="ignore"):
        return np.where(den > 0, num / np.where(den > 0, den, 1.0), np.nan)


def _mean_scores(items: list[ArmScores], note: str) -> ArmScores:
    metrics = items[0].est.keys()
    est = {m: float(np.nanmean([it.est[m] for it in items])) if any(np.isfinite(it.est[m]) for it in items) else float("nan")
           for m in metrics}
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", RuntimeWarning)
        samples = {m: np.nanmean(np.stack([it.samples[m] for it in items]), axis=0) for m in metrics}
    return ArmScores(est, samples, note)


def _note(text: str, fit: FoldFits) -> str:
    """``text`` plus the L2 strengths chosen on the training folds (when they were chosen)."""
    vals, counts = np.unique(np.asarray(fit.strengths), return_counts=True)
    if len(fit.strengths) == 0:
        return text
    reg = "L2 " + ", ".join(f"{v:g} ({c}/{len(fit.strengths)})" for v, c in zip(vals, counts))
    return f"{text}; {reg}" if text else reg


def _chosen_note(chosen: list[np.ndarray], members: list[int]) -> str:
    picks = [members[int(c[0])] for c in chosen]
    vals, counts = np.unique(picks, return_counts=True)
    order = np.argsort(-counts, kind="stable")
    return "chosen: " + ", ".join(f"{vals[i]} ({counts[i]}/{len(picks)} folds)" for i in order)


def _ksparse_note(chosen: list[np.ndarray], members: list[int]) -> str:
    overlap = [len(set(int(x) for x in c) & set(members)) for c in chosen]
    return f"members among the chosen latents per fold: {overlap}"


def _row(task, group_id, arm, metric, estimate, lo, hi, p, n, n_docs, group_size, row_type, note) -> dict:
    return {"task": task, "group_id": group_id, "arm": arm, "metric": metric, "estimate": estimate, "ci_low": lo, "ci_high": hi,
            "p_value": p, "p_adj": np.nan, "n": n, "n_docs": n_docs, "group_size": group_size, "row_type": row_type,
            "win": None, "note": note}


def skipped_row(task: str, reason: str, n: int = 0, n_docs: int = 0) -> dict:
    """A results row saying that a task (or target) was not evaluated, and why."""
    return _row(task, None, "skipped", "", np.nan, np.nan, np.nan, np.nan, n, n_docs, None, "skipped", reason)


def evaluate_target(target: Target, acts_ND, latents_NF, docs_N, groups: dict, W_dec_FD, counts_F,
                    settings: Settings, ceiling: bool = True) -> list[dict]:
    """All rows (arms and comparisons, p_adj still empty) of one target for the given groups.

    BLAS runs single-threaded here: the many small fits are much faster that way, above all on a
    machine whose cores are shared.
    """
    with threadpool_limits(limits=1, user_api="blas"):
        return _evaluate_target(target, acts_ND, latents_NF, docs_N, groups, W_dec_FD, counts_F, settings, ceiling)


def _evaluate_target(target, acts_ND, latents_NF, docs_N, groups, W_dec_FD, counts_F, settings, ceiling) -> list[dict]:
    try:
        ev = TargetEvaluator(target, acts_ND, latents_NF, docs_N, settings)
    except ValueError as exc:  # too few documents for the folds
        return [skipped_row(target.task, str(exc), len(target.rows), int(len(np.unique(np.asarray(docs_N)[target.rows]))))]
    bins = frequency_bins(counts_F, settings.n_freq_bins)
    rows = ev.ceiling_rows() if ceiling else []
    for gid, members in groups.items():
        try:
            rows += ev.group_rows(gid, members, W_dec_FD, counts_F, bins)
        except ValueError as exc:  # e.g. a frequency bin too small for matched controls
            row = skipped_row(target.task, f"group {gid}: {exc}", ev.n, ev.n_docs)
            row["group_id"] = gid
            rows.append(row)
    return rows


def finalize(df, alpha: float):
    """Benjamini–Hochberg over every tested comparison of the run, then the ``win`` flag (see the module docstring).

    ``df`` is a DataFrame of rows from :func:`evaluate_target` (any number of targets and groups); it is
    modified in place and returned.
    """
    import pandas as pd

    from stats import bh_adjust

    comp = (df["row_type"] == "comparison").to_numpy()
    df["p_adj"] = np.nan
    df.loc[comp, "p_adj"] = bh_adjust(df.loc[comp, "p_value"].to_numpy(np.float64))
    sig = comp & (df["p_adj"] < alpha).to_numpy() & (df["estimate"] > 0).to_numpy()
    arm_a = df["arm"].str.split("-vs-").str[0]
    key = list(zip(df["task"], df["group_id"], arm_a, df["metric"]))
    beats_chance = {k for k, ok, arm in zip(key, sig, df["arm"]) if ok and arm.endswith("-vs-chance")}
    win = pd.Series(pd.NA, index=df.index, dtype="boolean")
    tested = comp & df["p_value"].notna().to_numpy()
    idx = np.flatnonzero(tested)
    win.iloc[idx] = [bool(sig[i] and key[i] in beats_chance) for i in idx]
    df["win"] = win
    return df
