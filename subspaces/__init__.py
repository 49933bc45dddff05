"""Subspaces of activation space from latent groups (decoder span, PCA views, probe weights) and their controls."""

from subspaces.controls import MatchedGroup, enrichment_matched_groups, frequency_bins, matched_groups, random_subspaces
from subspaces.subspace import PCA, Subspace, activation_pca, as_numpy, orthonormal_basis, pca, principal_angles, reconstruction_pca

__all__ = [
    "PCA", "MatchedGroup", "Subspace", "activation_pca", "as_numpy", "enrichment_matched_groups", "frequency_bins", "matched_groups", "orthonormal_basis",
    "pca", "principal_angles", "random_subspaces", "reconstruction_pca",
]
