"""Summarise the default run's groups beside the reference size-targeted cut on the same counts.

    .venv/bin/python benchmarks/cooc_default_summary.py [runs/default]   # after python -m experiments.steer
"""
import sys
import numpy as np
from collections import Counter
from cooc import CoocResult, GroupFinder
res=CoocResult.load((sys.argv[1] if len(sys.argv) > 1 else 'runs/default') + '/cooc', pairs=True)
m=res.manifest
p=res.pairs; p.attrs['family_size']=m['family_size']
def summ(name, sizes, structs, n_active):
    sizes=np.array(sizes)
    print(f"| {name} | {sizes.sum()/4096:.1%} ({sizes.sum()/n_active:.1%} of {n_active} active) | {len(sizes)} | {(sizes==2).mean():.0%} | {int(np.median(sizes))} | {sizes.max()} | " + ", ".join(f"{k} {v}" for k,v in Counter(structs).most_common()) + " |")
g=res.groups_table; s=g.drop_duplicates('group_id')
print({k:m[k] for k in ['n_tokens','n_active_latents','n_tested_latents','n_edges','n_groups','largest_component']})
print("| method | latents in groups of size ≥ 2 | groups | pairs among groups | median size | largest | structure labels |")
summ('significant (default)', s.group_size, s.structure, m['n_active_latents'])
f=GroupFinder(method="size_target", seed=0).fit(p)
summ('size_target (reference cut)', [len(x.members) for x in f.groups_], [x.structure.structure for x in f.groups_], m['n_active_latents'])
print('cut', getattr(f,'cut_',None))
