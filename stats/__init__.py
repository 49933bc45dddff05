"""Shared statistics: vectorised probe metrics, document-level bootstrap, paired tests, BH correction, grouped CV.

Used by ``cooc`` (BH over pairs), ``probes`` and ``interventions``; nothing here knows about models or SAEs.
"""

from stats.bootstrap import Comparison, Estimate, cluster_bootstrap_weights, estimate_with_ci, paired_test, percentile_ci
from stats.cv import grouped_folds
from stats.metrics import (CLASSIFICATION_METRICS, HIGHER_IS_BETTER, METRICS, REGRESSION_METRICS, accuracy, auroc, log_loss,
                           metrics_for, r2, score, spearman)
from stats.multiple import bh_adjust

__all__ = [
    "CLASSIFICATION_METRICS", "HIGHER_IS_BETTER", "METRICS", "REGRESSION_METRICS", "Comparison", "Estimate", "accuracy", "auroc",
    "bh_adjust", "cluster_bootstrap_weights", "estimate_with_ci", "grouped_folds", "log_loss", "metrics_for", "paired_test",
    "percentile_ci", "r2", "score", "spearman",
]
