"""Cross-validated probes of one target: does a latent group carry it better than comparators that are not a group?

For a target (labels ``y`` on a set of task tokens) and a group of latents (size k) the arms are (docs/probes.md
has the full table and the question each answers)

* ``group_subspace`` (residual coordinates in the members' orthonormalised decoder span) and ``group_latents``
  (the members' activations), k dims;
* primary comparators, k dims: ``enriched_subspace`` / ``enriched_latents`` (random groups matched member by member
  on firing on the target's tokens and elsewhere, never holding two co-occurring latents:
  :func:`subspaces.enrichment_matched_groups`), ``best_plus_enriched`` / ``best_latent_plus_enriched`` (the best
  member, chosen on each training fold, plus k - 1 enriched directions / latents), ``kbest_latents`` (the k latents
  of all d_sae with the best univariate score on each training fold) and ``ksparse`` (k latents chosen jointly by
  orthogonal matching pursuit on each training fold);
* exploratory comparators: ``best_single_latent`` / ``best_single_direction`` (1 dim), ``matched_latents`` /
  ``matched_subspace`` (size- and firing-frequency-matched groups), ``random_subspace``; ``latent:<id>`` rows;
* per target: ``residual`` (ceiling), ``chance`` (floor), the target's ``baseline:<name>`` arms and
  ``baseline:union``, and ``neighbour_residual`` (topic control).

Every arm is a ridge regression (regression targets) or L2 logistic regression (binary targets, :mod:`probes.linear`)
on features standardised on the training fold, its L2 strength chosen per training fold by inner CV, on the same
document-grouped folds (or folds grouped by a target's ``clusters`` of linked documents); metrics are computed on the
out-of-fold predictions. The univariate score used for choosing latents is the squared
Pearson correlation with the target on the training fold, so no choice sees held-out tokens.

Intervals: document-level bootstrap of the out-of-fold predictions (the same replicates for every arm of a target,
so differences are paired). A control with draws is the mean over its draws, and each replicate takes one random
draw's replicate, so its spread includes the variation between draws. Comparisons (:data:`COMPARISONS`) are one-sided
paired tests of "the group arm is better" (:func:`stats.paired_test`, t with documents - 1 degrees of freedom) on the
primary metric of each target kind (:data:`TESTED_METRIC`: R² for regression, log-loss for classification); other
metrics get intervals only, because for rank metrics the variance from fitting dominates and a test-set bootstrap is
anti-conservative. :func:`finalize` corrects each family (gate, primary, exploratory, task) on its own
(Benjamini–Hochberg) and sets ``win`` (corrected p below alpha, positive, and the group arm beats chance: a
gatekeeper); :func:`verdicts` says per (target, group, unit) whether grouping helps: wins against every primary
comparator (:data:`GROUPING_HELPS`).
"""

from __future__ import annotations

import functools
import logging
import warnings
import zlib
from dataclasses import dataclass, field

import numpy as np
import scipy.sparse as sp
from threadpoolctl import threadpool_limits

from probes.linear import logistic_path, ridge_path
from sources.sae_view import fires
from stats import HIGHER_IS_BETTER, cluster_bootstrap_weights, grouped_folds, metrics_for, paired_test, percentile_ci, r2, score
from subspaces import Subspace, enrichment_matched_groups, frequency_bins, matched_groups, random_subspaces

log = logging.getLogger(__name__)

COLUMNS = ["task", "group_id", "arm", "metric", "estimate", "ci_low", "ci_high", "p_value", "p_adj", "n",
           "n_docs", "group_size", "row_type", "win", "note", "family", "rank_p"]

TESTED_METRIC = {"regression": "r2", "classification": "log_loss"}
"""The one metric per target kind whose comparisons get p-values (proper scoring rules, additive per token)."""

COMPARISONS: list[tuple[str, str, str]] = [
    ("group_subspace", "chance", "gate"),
    ("group_latents", "chance", "gate"),
    ("group_subspace", "enriched_subspace", "primary"),
    ("group_subspace", "best_plus_enriched", "primary"),
    ("group_latents", "enriched_latents", "primary"),
    ("group_latents", "best_latent_plus_enriched", "primary"),
    ("group_latents", "kbest_latents", "primary"),
    ("group_latents", "ksparse", "primary"),
    ("group_subspace", "best_single_direction", "exploratory"),
    ("group_latents", "best_single_latent", "exploratory"),
    ("group_subspace", "matched_subspace", "exploratory"),
    ("group_latents", "matched_latents", "exploratory"),
    ("group_subspace", "random_subspace", "exploratory"),
]
"""(A, B, family): one-sided test that arm A beats arm B; the row's arm is ``A-vs-B``. Each family is corrected on its
own (Benjamini–Hochberg over the run): ``gate`` (the group beats chance), ``primary`` (the pre-specified test of
"grouping helps": the enrichment- and budget-matched comparators, and a target's baselines), ``exploratory``."""

BASELINE_COMPARISONS: list[tuple[str, str, str]] = [
    ("group_subspace", "baseline:union", "primary"),
    ("group_latents", "baseline:union", "primary"),
]
"""Added for targets with baselines (e.g. URL position): a group claims the information only by beating their union."""

TASK_COMPARISONS: list[tuple[str, str, str]] = [("residual", "neighbour_residual", "task")]
"""Per target, without a group, where the target has a topic control: the word's own residual against a neighbouring
token's (if the neighbour reads the label as well, the label is topic, not sense)."""

GROUPING_HELPS: dict[str, tuple[str, ...]] = {
    "group_subspace": ("enriched_subspace", "best_plus_enriched"),
    "group_latents": ("enriched_latents", "best_latent_plus_enriched", "kbest_latents", "ksparse"),
}
"""A unit (the group's subspace, or its latents) helps when it wins against every one of these (and beats chance)."""


@dataclass(frozen=True)
class Settings:
    folds: int = 5
    n_bootstrap: int = 1000
    n_controls: int = 50
    """Draws of the primary controls (enrichment-matched groups, and the best direction plus enriched directions)."""
    n_freq_bins: int = 10
    ci_level: float = 0.95
    regularisation: tuple[float, ...] = (0.1, 1.0, 10.0, 100.0, 1000.0, 10000.0)
    """L2 strengths tried per arm and training fold (ridge alpha; logistic C = 1 / strength)."""
    inner_folds: int = 3
    """Document-grouped inner folds that choose the strength."""
    seed: int = 0
    member_arms: bool = True
    """Report each member latent alone (``latent:<id>`` rows)."""
    n_exploratory_controls: int = 10
    """Draws of the exploratory controls (frequency-matched groups, random subspaces)."""
    enrichment_pool: int = 20
    """Enrichment-matched controls draw each member's replacement among its this many nearest latents."""
    ksparse_screen: int = 256
    """The k-sparse probe's matching pursuit runs over this many latents with the best univariate score."""

    @classmethod
    def from_config(cls, probes_cfg, seed: int) -> "Settings":
        reg = probes_cfg.regularisation
        reg = (float(reg),) if np.isscalar(reg) else tuple(float(a) for a in reg)
        return cls(probes_cfg.folds, probes_cfg.n_bootstrap, probes_cfg.n_controls, probes_cfg.n_freq_bins, probes_cfg.ci_level,
                   reg, probes_cfg.inner_folds, seed, n_exploratory_controls=probes_cfg.n_exploratory_controls)


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
    baselines: dict[str, np.ndarray] = field(default_factory=dict)
    """Baseline features per row (name -> [n_rows, p]), e.g. position in the context; arms ``baseline:<name>``, and
    ``baseline:union`` (all of them) which a group must beat (:data:`BASELINE_COMPARISONS`)."""
    clusters: np.ndarray | None = None
    """Per row, the unit that folds keep together and the bootstrap resamples, when documents are not independent
    (e.g. documents linked by a shared URL template); default: the document."""
    topic_control: bool = False
    """Also probe the residual at a neighbouring token of the same window (arm ``neighbour_residual``, from
    ``evaluate_target``'s ``neighbour_acts_ND``): if it reads the label as well, the label is topic, not the word."""


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


def fit_predict(X, y, folds, kind: str, select=None, regularisation=1.0, inner=None, features=None) -> FoldFits:
    """Out-of-fold predictions (regression: values; classification: P(y = 1)).

    On each training fold: optionally keep some columns (``select``: an int keeps that many with the best
    univariate score; a callable ``(X_train, y_train) -> columns`` chooses them), standardise, pick the L2 strength
    among ``regularisation`` (a number or a list) by inner CV over ``inner`` (from :func:`inner_splits`, one entry
    per fold), fit, predict the held-out fold. ``features`` (a callable ``fold -> X``) gives each fold its own
    feature matrix instead of ``X``.
    """
    y = np.asarray(y, dtype=np.float64)
    strengths = [float(regularisation)] if np.isscalar(regularisation) else [float(a) for a in regularisation]
    pred = np.full(len(y), np.nan)
    columns: list[np.ndarray] = []
    chosen: list[float] = []
    if features is None:
        X = X.tocsr() if sp.issparse(X) else np.asarray(X)
    for f, (tr, te) in enumerate(folds):
        Xf = X if features is None else features(f)
        Xtr, Xte = Xf[tr], Xf[te]
        if select is not None:
            if callable(select):
                cols = np.asarray(select(Xtr, y[tr]), dtype=np.int64)
            else:
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


def matching_pursuit(k: int, screen: int = 256):
    """A column chooser for :func:`fit_predict`: the k-sparse probe's support, chosen jointly on the training fold.

    The ``screen`` columns with the best univariate score are standardised and scikit-learn's
    ``OrthogonalMatchingPursuit`` picks ``k`` of them for the label (0/1 labels as a linear probability model);
    the arm is then fitted on those k columns like every other arm.
    """
    from sklearn.linear_model import OrthogonalMatchingPursuit

    def choose(Xtr, ytr):
        s = univariate_scores(Xtr, ytr)
        pool = np.argsort(-s, kind="stable")[:max(screen, k)]
        pool = pool[s[pool] > 0] if (s[pool] > 0).sum() >= k else pool[:k]
        if len(pool) <= k:
            return pool
        Z = _dense(Xtr[:, pool]).astype(np.float64)
        sd = Z.std(0)
        Z = (Z - Z.mean(0)) / np.where(sd < 1e-12, 1.0, sd)
        with warnings.catch_warnings():
            warnings.simplefilter("ignore")
            omp = OrthogonalMatchingPursuit(n_nonzero_coefs=k, fit_intercept=True).fit(Z, ytr - ytr.mean())
        picked = np.flatnonzero(omp.coef_)
        rest = [c for c in np.argsort(-s[pool], kind="stable") if c not in set(picked)]
        picked = np.concatenate([picked, rest[:k - len(picked)]]).astype(np.int64)  # OMP stops early on an exact fit
        return pool[picked]

    return choose


# --- evaluation of one target ---------------------------------------------------------------------


@dataclass
class ArmScores:
    """Metric estimate and bootstrap replicates of one arm (or the mean over a control family)."""

    est: dict[str, float]
    samples: dict[str, np.ndarray]
    note: str = ""
    draws: dict[str, np.ndarray] | None = None
    """For a control family: each draw's estimate per metric (for the empirical rank p-value)."""


@dataclass
class TargetEvaluator:
    """Everything needed to probe one target: its rows of the dataset, folds and bootstrap weights."""

    target: Target
    acts_ND: np.ndarray
    latents_NF: sp.csr_matrix
    docs_N: np.ndarray
    settings: Settings
    neighbour_acts_ND: np.ndarray | None = None
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
        self.units = self.docs if t.clusters is None else np.asarray(t.clusters)
        """What folds keep together and the bootstrap resamples: documents, or the target's clusters of documents."""
        self.n_units = int(len(np.unique(self.units)))
        s = self.settings
        self.metrics = metrics_for(t.kind)
        self.folds = grouped_folds(self.units, s.folds, s.seed, self.y if t.kind == "classification" else None)
        self.inner = inner_splits(self.units, self.y, t.kind, self.folds, s.inner_folds, s.seed) if len(s.regularisation) > 1 else None
        rng = np.random.default_rng([s.seed, zlib.crc32(t.task.encode())])
        self.W_BN = cluster_bootstrap_weights(self.units, s.n_bootstrap, rng)
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

    def arm(self, X, select=None, features=None) -> FoldFits:
        return fit_predict(X, self.y, self.folds, self.target.kind, select, self.settings.regularisation, self.inner, features)

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
        """The residual-stream ceiling, the chance floor, the target's baselines and its topic control (no group)."""
        fit = self.arm(self.acts)
        self.residual = self.scores(fit.pred, _note(f"full residual stream, {self.acts.shape[1]} dims", fit))
        rows = self.rows_for("residual", self.residual, None, None) + self.rows_for("chance", self.chance, None, None)
        for name, sc in self.baselines.items():
            rows += self.rows_for(name, sc, None, None)
        t = self.target
        if t.topic_control and self.neighbour_acts_ND is not None:
            fit = self.arm(np.asarray(self.neighbour_acts_ND)[np.asarray(t.rows)])
            nb = self.scores(fit.pred, _note("full residual stream at a neighbouring token (topic control)", fit))
            rows += self.rows_for("neighbour_residual", nb, None, None)
            arms = {"residual": self.residual, "neighbour_residual": nb}
            rows += self.comparison_rows(arms, TASK_COMPARISONS, None, None)
        return rows

    @functools.cached_property
    def baselines(self) -> dict[str, ArmScores]:
        """``baseline:<name>`` for each of the target's baselines, and ``baseline:union`` (all together)."""
        out = {}
        b = self.target.baselines
        for name, X in b.items():
            fit = self.arm(np.asarray(X, dtype=np.float64))
            out[f"baseline:{name}"] = self.scores(fit.pred, _note(f"{np.shape(X)[1]} features", fit))
        if b:
            X = np.hstack([np.asarray(v, dtype=np.float64) for v in b.values()])
            fit = self.arm(X)
            out["baseline:union"] = self.scores(fit.pred, _note(f"union of {', '.join(b)}: {X.shape[1]} features", fit))
        return out

    def comparison_rows(self, arms: dict[str, ArmScores], comparisons, group_id, k) -> list[dict]:
        s = self.settings
        tested = TESTED_METRIC[self.target.kind]
        rows = []
        for a, b, family in comparisons:
            if a not in arms or b not in arms:
                continue
            for m in self.metrics:
                if b == "chance" and m != tested:
                    continue
                c = paired_test(arms[a].est[m], arms[a].samples[m], arms[b].est[m], arms[b].samples[m],
                                HIGHER_IS_BETTER[m], s.ci_level, n_clusters=self.n_units)
                if m == tested:
                    p, note = c.p_value, "A-vs-B: difference A - B oriented so that > 0 means A is better; one-sided p"
                else:
                    p, note = np.nan, f"descriptive only (the tested metric is {tested})"
                rank_p = np.nan
                draws = arms[b].draws
                if draws is not None and m == tested and np.isfinite(arms[a].est[m]):
                    sign = 1.0 if HIGHER_IS_BETTER[m] else -1.0
                    d = draws[m][np.isfinite(draws[m])]
                    rank_p = float((1 + np.count_nonzero(sign * d >= sign * arms[a].est[m])) / (1 + len(d)))
                row = _row(self.target.task, group_id, f"{a}-vs-{b}", m, c.estimate, c.ci_low, c.ci_high, p,
                           self.n, self.n_docs, k, "comparison", note)
                row["family"], row["rank_p"] = family, rank_p
                rows.append(row)
        return rows

    def group_rows(self, group_id, members, W_dec_FD: np.ndarray, pools: "ControlPools") -> list[dict]:
        """Every arm and comparison row of one group."""
        s = self.settings
        members = [int(i) for i in members]
        k = len(members)
        arms: dict[str, ArmScores] = {}
        rows: list[dict] = []
        W = np.asarray(W_dec_FD, dtype=np.float64)
        unit = W / np.maximum(np.linalg.norm(W, axis=1, keepdims=True), 1e-12)

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
        best_lat = self.arm(G, select=1)
        arms["best_single_latent"] = self.scores(best_lat.pred, _note(_chosen_note(best_lat.columns, members), best_lat))
        member_coords = acts @ unit[members].T
        best_dir = self.arm(member_coords, select=1)
        arms["best_single_direction"] = self.scores(best_dir.pred, _note(_chosen_note(best_dir.columns, members), best_dir))
        fit = self.arm(self.lat, select=k)
        arms["kbest_latents"] = self.scores(fit.pred, _note(_ksparse_note(fit.columns, members, "best univariate"), fit))
        fit = self.arm(self.lat, select=matching_pursuit(k, s.ksparse_screen))
        arms["ksparse"] = self.scores(fit.pred, _note(_ksparse_note(fit.columns, members, "matching pursuit"), fit))

        # primary controls: enrichment-matched groups (n_controls draws) and the best direction plus k - 1 of theirs
        rng = np.random.default_rng([s.seed, zlib.crc32(str(group_id).encode()), zlib.crc32(self.target.task.encode())])
        enriched = enrichment_matched_groups(members, pools.task_fires_F, pools.other_fires_F, s.n_controls, rng,
                                             linked=pools.linked, pool=s.enrichment_pool)
        e_lat, e_sub, e_best, e_best_lat = [], [], [], []
        chosen = [int(c[0]) for c in best_dir.columns]
        chosen_lat = [int(c[0]) for c in best_lat.columns]
        for c in enriched:
            e_lat.append(self.scores(self.arm(self.lat[:, list(c.latents)]).pred))
            e_sub.append(self.scores(self.arm(Subspace.from_decoder(W, c.latents).coords(acts)).pred))
            per_fold, per_fold_lat = {}, {}
            for j in set(chosen):  # the best member's direction, then the controls of the other k - 1 members
                others = [lat for i, lat in enumerate(c.latents) if i != j]
                per_fold[j] = Subspace.from_decoder(W, [members[j]] + others).coords(acts) if others else member_coords[:, [j]]
            for j in set(chosen_lat):  # the same with activations: the best member latent and k - 1 enriched latents
                per_fold_lat[j] = self.lat[:, [members[j]] + [lat for i, lat in enumerate(c.latents) if i != j]]
            e_best.append(self.scores(self.arm(None, features=lambda f: per_fold[chosen[f]]).pred))
            e_best_lat.append(self.scores(self.arm(None, features=lambda f: per_fold_lat[chosen_lat[f]]).pred))
        n_e = len(enriched)
        arms["enriched_latents"] = _control_scores(e_lat, f"{n_e} enrichment-matched groups (not co-occurring)", rng)
        arms["enriched_subspace"] = _control_scores(e_sub, f"{n_e} enrichment-matched decoder spans", rng)
        arms["best_plus_enriched"] = _control_scores(
            e_best, f"best member direction (per training fold) + {k - 1} enrichment-matched directions, {n_e} draws", rng)
        arms["best_latent_plus_enriched"] = _control_scores(
            e_best_lat, f"best member latent (per training fold) + {k - 1} enrichment-matched latents, {n_e} draws", rng)

        # exploratory controls: frequency-matched groups and random subspaces
        n_x = s.n_exploratory_controls
        controls = matched_groups(members, pools.counts_F, n_x, s.n_freq_bins, rng, bins_F=pools.bins_F)
        m_lat, m_sub = [], []
        for c in controls:
            m_lat.append(self.scores(self.arm(self.lat[:, list(c.latents)]).pred))
            m_sub.append(self.scores(self.arm(Subspace.from_decoder(W, c.latents).coords(acts)).pred))
        arms["matched_latents"] = _control_scores(m_lat, f"{len(controls)} frequency-matched groups", rng)
        arms["matched_subspace"] = _control_scores(m_sub, f"{len(controls)} frequency-matched decoder spans", rng)
        r_sub = [self.scores(self.arm(rs.coords(acts)).pred) for rs in random_subspaces(W.shape[1], sub.dim, n_x, rng)]
        arms["random_subspace"] = _control_scores(r_sub, f"{len(r_sub)} random {sub.dim}-dim subspaces", rng)

        for name, sc in arms.items():
            rows += self.rows_for(name, sc, group_id, k)
        arms["chance"] = self.chance
        comps = list(COMPARISONS)
        if self.target.baselines:
            arms.update(self.baselines)
            comps += BASELINE_COMPARISONS
        return rows + self.comparison_rows(arms, comps, group_id, k)


@dataclass
class ControlPools:
    """What the controls of one target are drawn from."""

    counts_F: np.ndarray
    """Firing counts over the co-occurrence tokens (frequency-matched controls)."""
    task_fires_F: np.ndarray
    """Firings of every latent on the target's tokens (enrichment-matched controls)."""
    other_fires_F: np.ndarray
    """... and on the other tokens of the same probe windows."""
    linked: set = field(default_factory=set)
    """Latent pairs ``(i, j)``, i < j, that co-occur: an enrichment-matched draw never holds both."""
    bins_F: np.ndarray | None = None


def _weighted_nanmean(V_BK: np.ndarray, W_BK: np.ndarray) -> np.ndarray:
    ok = np.isfinite(V_BK) & (W_BK > 0)
    num = np.where(ok, V_BK * W_BK, 0.0).sum(1)
    den = np.where(ok, W_BK, 0.0).sum(1)
    with np.errstate(invalid="ignore", divide="ignore"):
        return np.where(den > 0, num / np.where(den > 0, den, 1.0), np.nan)


def _control_scores(items: list[ArmScores], note: str, rng: np.random.Generator) -> ArmScores:
    """A control family: the estimate is the mean over its draws; each bootstrap replicate takes one random draw's
    replicate, so the paired test's spread holds the variation between draws as well as between documents."""
    metrics = items[0].est.keys()
    draws = {m: np.array([it.est[m] for it in items], dtype=np.float64) for m in metrics}
    est = {m: float(np.nanmean(draws[m])) if np.isfinite(draws[m]).any() else float("nan") for m in metrics}
    B = len(next(iter(items[0].samples.values())))
    pick = rng.integers(0, len(items), B)
    samples = {m: np.stack([it.samples[m] for it in items])[pick, np.arange(B)] for m in metrics}
    return ArmScores(est, samples, f"mean of {note}; replicates resample the draws", draws)


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


def _ksparse_note(chosen: list[np.ndarray], members: list[int], how: str) -> str:
    overlap = [len(set(int(x) for x in c) & set(members)) for c in chosen]
    return f"{how}; members among the chosen latents per fold: {overlap}"


def _row(task, group_id, arm, metric, estimate, lo, hi, p, n, n_docs, group_size, row_type, note) -> dict:
    return {"task": task, "group_id": group_id, "arm": arm, "metric": metric, "estimate": estimate, "ci_low": lo, "ci_high": hi,
            "p_value": p, "p_adj": np.nan, "n": n, "n_docs": n_docs, "group_size": group_size, "row_type": row_type,
            "win": None, "note": note, "family": "", "rank_p": np.nan}


def skipped_row(task: str, reason: str, n: int = 0, n_docs: int = 0) -> dict:
    """A results row saying that a task (or target) was not evaluated, and why."""
    return _row(task, None, "skipped", "", np.nan, np.nan, np.nan, np.nan, n, n_docs, None, "skipped", reason)


def evaluate_target(target: Target, acts_ND, latents_NF, docs_N, groups: dict, W_dec_FD, counts_F,
                    settings: Settings, ceiling: bool = True, other_fires_F=None, linked=None,
                    threshold_F=None, neighbour_acts_ND=None) -> list[dict]:
    """All rows (arms and comparisons, p_adj still empty) of one target for the given groups.

    Enrichment-matched controls are matched on firings on the target's rows (activation above ``threshold_F``,
    default 0) and on ``other_fires_F`` (firings on the other tokens of the same text; default ``counts_F``), and
    never hold two latents of a ``linked`` pair.

    BLAS runs single-threaded here: the many small fits are much faster that way, above all on a
    machine whose cores are shared.
    """
    with threadpool_limits(limits=1, user_api="blas"):
        lat = sp.csr_matrix(latents_NF)[np.asarray(target.rows)]
        task_fires = np.asarray(fires(lat, 0.0 if threshold_F is None else threshold_F).sum(0)).ravel()
        pools = ControlPools(np.asarray(counts_F), task_fires, np.asarray(counts_F if other_fires_F is None else other_fires_F),
                             set() if linked is None else linked, frequency_bins(counts_F, settings.n_freq_bins))
        return _evaluate_target(target, acts_ND, latents_NF, docs_N, groups, W_dec_FD, pools, settings, ceiling, neighbour_acts_ND)


def _evaluate_target(target, acts_ND, latents_NF, docs_N, groups, W_dec_FD, pools, settings, ceiling, neighbour_acts_ND) -> list[dict]:
    try:
        ev = TargetEvaluator(target, acts_ND, latents_NF, docs_N, settings, neighbour_acts_ND)
    except ValueError as exc:  # too few documents for the folds
        return [skipped_row(target.task, str(exc), len(target.rows), int(len(np.unique(np.asarray(docs_N)[target.rows]))))]
    rows = ev.ceiling_rows() if ceiling else []
    for gid, members in groups.items():
        try:
            rows += ev.group_rows(gid, members, W_dec_FD, pools)
        except ValueError as exc:  # e.g. a frequency bin too small for matched controls
            row = skipped_row(target.task, f"group {gid}: {exc}", ev.n, ev.n_docs)
            row["group_id"] = gid
            rows.append(row)
    return rows


def finalize(df, alpha: float):
    """Benjamini–Hochberg within each family of tested comparisons of the run (``gate``, ``primary``,
    ``exploratory``, ``task``), then the ``win`` flag (see the module docstring).

    A comparison of a group arm is won when its corrected p-value is below ``alpha``, the difference is positive and
    the same group arm beats chance in the gate family (gatekeeping). ``df`` is a DataFrame of rows from
    :func:`evaluate_target` (any number of targets and groups); it is modified in place and returned.
    """
    import pandas as pd

    from stats import bh_adjust

    comp = (df["row_type"] == "comparison").to_numpy()
    fam = df["family"].fillna("").astype(str).to_numpy()
    df["p_adj"] = np.nan
    for f in np.unique(fam[comp]):
        m = comp & (fam == f)
        df.loc[m, "p_adj"] = bh_adjust(df.loc[m, "p_value"].to_numpy(np.float64))
    sig = comp & (df["p_adj"] < alpha).to_numpy() & (df["estimate"] > 0).to_numpy()
    arm_a = df["arm"].str.split("-vs-").str[0]
    key = list(zip(df["task"], df["group_id"], arm_a, df["metric"]))
    beats_chance = {k for k, ok, arm in zip(key, sig, df["arm"]) if ok and arm.endswith("-vs-chance")}
    win = pd.Series(pd.NA, index=df.index, dtype="boolean")
    tested = comp & df["p_value"].notna().to_numpy()
    idx = np.flatnonzero(tested)
    win.iloc[idx] = [bool(sig[i] and (fam[i] == "task" or key[i] in beats_chance)) for i in idx]
    df["win"] = win
    return df


VERDICT_COLUMNS = ["task", "group_id", "group_size", "unit", "beats_chance", "grouping_helps", "lost_to", "missing",
                   "beats_baselines", "estimate_min", "p_iut", "p_adj"]


def verdicts(df, alpha: float = 0.05):
    """Per (target, group, unit): does grouping help? From finalised results (:func:`finalize`).

    For each unit (``group_subspace`` or ``group_latents``) the required comparisons are those of
    :data:`GROUPING_HELPS` (the enrichment- and budget-matched comparators, pre-specified). Their intersection-union
    p-value ``p_iut`` is the largest raw one-sided p-value among them; Benjamini–Hochberg over the verdicts of the run
    gives ``p_adj``. ``grouping_helps``: every required comparison was tested (``missing`` lists those without a
    p-value), every difference is positive, the unit beats chance (gate) and ``p_adj < alpha``. ``lost_to`` names the
    comparators with a raw p-value of at least ``alpha`` or a difference of at most 0; ``estimate_min`` is the
    smallest difference. ``beats_baselines`` (targets with baselines only): the unit's comparison with the baselines'
    union is won.
    """
    import pandas as pd

    from stats import bh_adjust

    if not {"row_type", "p_value", "arm", "task", "group_id", "win", "estimate", "p_adj"} <= set(df.columns):
        return pd.DataFrame(columns=VERDICT_COLUMNS)
    c = df[(df["row_type"] == "comparison") & df["p_value"].notna()]
    out = []
    for (task, gid), sub in c[c["group_id"].notna()].groupby(["task", "group_id"], sort=False):
        by_arm = sub.set_index("arm")
        for unit, needed in GROUPING_HELPS.items():
            arms = [f"{unit}-vs-{b}" for b in needed]
            have = [a for a in arms if a in by_arm.index]
            if not have:
                continue
            p = by_arm.loc[have, "p_value"].astype(float)
            est = by_arm.loc[have, "estimate"].astype(float)
            chance, base = f"{unit}-vs-chance", f"{unit}-vs-baseline:union"
            size = sub["group_size"].iloc[0]
            out.append({"task": task, "group_id": gid, "group_size": int(size) if pd.notna(size) else pd.NA, "unit": unit,
                        "beats_chance": bool(by_arm.loc[chance, "win"]) if chance in by_arm.index else False,
                        "complete": len(have) == len(arms), "positive": bool((est > 0).all()),
                        "lost_to": " ".join(a.split("-vs-")[1] for a in have if not (p[a] < alpha and est[a] > 0)),
                        "missing": " ".join(a.split("-vs-")[1] for a in arms if a not in have),
                        "beats_baselines": bool(by_arm.loc[base, "win"]) if base in by_arm.index else pd.NA,
                        "estimate_min": float(est.min()), "p_iut": float(p.max()) if len(have) == len(arms) else np.nan})
    v = pd.DataFrame(out)
    if v.empty:
        return pd.DataFrame(columns=VERDICT_COLUMNS)
    v["p_adj"] = bh_adjust(v["p_iut"].to_numpy(np.float64))
    v["grouping_helps"] = v["complete"] & v["positive"] & v["beats_chance"] & (v["p_adj"] < alpha).to_numpy()
    return v[VERDICT_COLUMNS]
