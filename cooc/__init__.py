"""Co-occurrence of SAE latents: exact streaming counts, significance-tested pairs, latent groups.

Library API (see docs/cooc.md)::

    counter = CooccurrenceCounter(d_sae, threshold=0.0, theta_F=None)
    for acts_TF in chunks: counter.update(acts_TF)          # scipy CSR [tokens, d_sae]
    scored = score_pairs(counter, min_occurrences=10)       # DataFrame, BH-adjusted p-values
    groups = GroupFinder(method="significant").fit(scored).groups_
    result = run_cooc(batches, d_sae, CoocConfig())         # all of the above: a CoocResult
    result.save(folder); CoocResult.load(folder)             # OUT/cooc/ files, read back by later stages
"""

from cooc.config import CoocConfig, SizeTargetSpec
from cooc.counting import CooccurrenceCounter, binarise
from cooc.groups import Group, GroupFinder, group_id, groups_frame
from cooc.result import CoocResult
from cooc.run import run_cooc
from cooc.scoring import score_pairs
from cooc.structure import Structure, describe

__all__ = ["CoocConfig", "SizeTargetSpec", "CooccurrenceCounter", "binarise", "Group", "GroupFinder",
           "group_id", "groups_frame", "CoocResult", "run_cooc", "score_pairs", "Structure",
           "describe"]
