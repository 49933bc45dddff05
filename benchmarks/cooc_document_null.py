"""Extra cost of the document-stratified null (cooc.test: document) over the token-iid binomial, side by side.

    .venv/bin/python benchmarks/cooc_document_null.py [--d-sae 16384] [--docs 2000] [--tokens-per-doc 100] [--l0 32]

Data: cooc.synthetic.document_clustered (latents independent given the document, topic-dependent rates). Both runs
count the same tokens; the document run also streams each latent's count per document (cooc.documents) and each
pair's document support (the documents it co-fires in: CooccurrenceCounter.support_), and scores the same pairs
(count >= 5, latents firing >= 10 times) against the stratified expectation. Prints the times, their ratios, the
per-document and support stores' sizes and the false discoveries each null makes (all are false on this data).
"""

from __future__ import annotations

import argparse
import time


from cooc import CooccurrenceCounter, score_pairs
from cooc.inputs import iter_chunks
from cooc.synthetic import document_clustered


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--d-sae", type=int, default=16384)
    p.add_argument("--docs", type=int, default=2000)
    p.add_argument("--tokens-per-doc", type=int, default=100)
    p.add_argument("--l0", type=float, default=32.0)
    a = p.parse_args()
    d = document_clustered(d_sae=a.d_sae, n_docs=a.docs, tokens_per_doc=a.tokens_per_doc, l0=a.l0, seed=0)
    n = d.acts_TF.shape[0]
    print(f"d_sae {a.d_sae}, {n} tokens in {a.docs} documents, L0 {d.acts_TF.nnz / n:.1f}")
    rows = {}
    for test in ("binomial", "document"):
        counter = CooccurrenceCounter(a.d_sae)
        t0 = time.perf_counter()
        for s, chunk in enumerate(iter_chunks(d.acts_TF, 4096)):
            docs = d.docs_T[s * 4096:(s + 1) * 4096] if test == "document" else None
            counter.update(chunk, docs_T=docs)
        t_count = time.perf_counter() - t0
        t0 = time.perf_counter()
        df = score_pairs(counter, min_occurrences=10, test=test, min_count=5)
        t_score = time.perf_counter() - t0
        store = support = 0
        if counter.docs_ is not None:
            m, _ = counter.docs_.matrix()
            store = m.data.nbytes + m.indices.nbytes + m.indptr.nbytes
            support = counter.support_.nbytes_
        rows[test] = (t_count, t_score, len(df), int((df["p_adj"] < 0.05).sum()), store, counter.nbytes_, support)
    print("| null | count s | score s | pairs scored | false discoveries (p_adj < 0.05) | per-document store MB | "
          "support store MB | pair store MB |")
    print("|---|---|---|---|---|---|---|---|")
    for test, (tc, ts, n_pairs, fd, store, pair_store, support) in rows.items():
        print(f"| {test} | {tc:.2f} | {ts:.2f} | {n_pairs} | {fd} | {store / 1e6:.1f} | {support / 1e6:.1f} | "
              f"{pair_store / 1e6:.1f} |")
    b, dd = rows["binomial"], rows["document"]
    print(f"ratio document / binomial: counting {dd[0] / b[0]:.2f}x, scoring {dd[1] / max(b[1], 1e-9):.2f}x, "
          f"count + score {(dd[0] + dd[1]) / (b[0] + b[1]):.2f}x; per-document store / pair store "
          f"{dd[4] / max(dd[5], 1):.2f}")


if __name__ == "__main__":
    main()
