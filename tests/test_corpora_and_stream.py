"""Corpora become fixed-length, document-pure, masked contexts; the stream truncates, batches, caches and resumes."""

import json

import numpy as np
import pytest
import torch

from sources.config import DataSpec, HookSpec, StreamSpec
from sources.corpora import _shuffled, heldout_documents, iter_contexts, iter_documents, iter_sampled_documents
from sources.errors import ConfigError
from sources.stream import cache_dir_for, hook_activations, iter_activation_batches, iter_latents
from sources.sae_view import to_csr
from tiny import tiny_corpus_file, tiny_model, tiny_tokenizer


@pytest.fixture
def corpus(tmp_path):
    return tiny_corpus_file(tmp_path)


@pytest.fixture(autouse=True)
def isolated_cache(tmp_path, monkeypatch):
    monkeypatch.setenv("COOC_CACHE", str(tmp_path / "cache"))


def test_contexts_start_with_bos_never_cross_documents_and_mask_bos_and_pad(corpus):
    tok = tiny_tokenizer()
    spec = DataSpec(source="jsonl", path=str(corpus), context_len=16, max_tokens=10_000, max_doc_share=1)
    contexts = list(iter_contexts(spec, tok))
    docs = dict(iter_documents(spec))
    assert len({c.doc_id for c in contexts}) == len(docs)
    for c in contexts:
        assert c.tokens_L[0] == tok.bos_token_id and not c.mask_L[0]
        pad = c.tokens_L == tok.pad_token_id
        assert not (c.mask_L & pad).any()
        real = c.mask_L
        text = docs[c.doc_id]
        # each unmasked token's span points at its own text in its own document
        decoded = "".join(text[s:e] for s, e in c.spans_L2[real])
        assert decoded.replace(" ", "") == tok.decode(c.tokens_L[real]).replace(" ", "")
    # re-tokenising the concatenated pieces of one document gives the document's tokens back
    first = [c for c in contexts if c.doc_id == "doc0"]
    ids = np.concatenate([c.tokens_L[c.mask_L] for c in first])
    full = tok(docs["doc0"], add_special_tokens=False)["input_ids"]
    assert ids.tolist() == full[: len(ids)]
    assert len(full) - len(ids) < 8  # only a trailing piece shorter than min_tokens is dropped


def test_the_stream_reads_documents_in_a_seeded_order_with_their_corpus_index(tmp_path):
    corpus = tiny_corpus_file(tmp_path, n_docs=40)
    spec = DataSpec(source="jsonl", path=str(corpus), context_len=16, max_tokens=100_000)
    docs = list(iter_documents(spec))
    order = [d for d, _, _ in iter_sampled_documents(spec)]
    assert sorted(order) == list(range(40)) and order != list(range(40))  # every document once, not in file order
    assert order == [d for d, _, _ in iter_sampled_documents(spec)]  # seeded
    assert order != [d for d, _, _ in iter_sampled_documents(spec.model_copy(update={"seed": 1}))]
    assert [d for d, _, _ in iter_sampled_documents(spec.model_copy(update={"order": "corpus"}))] == list(range(40))
    for c in iter_contexts(spec, tiny_tokenizer()):  # a context names its document by the corpus position
        assert docs[c.doc_index][0] == c.doc_id
    rng = np.random.default_rng(3)  # a buffer smaller than the corpus still yields every item once
    assert sorted(_shuffled(iter(range(100)), rng, 7)) == list(range(100))


def test_the_split_is_a_seeded_draw_per_document_and_the_parts_partition_the_corpus(tmp_path):
    corpus = tiny_corpus_file(tmp_path, n_docs=40)
    spec = DataSpec(source="jsonl", path=str(corpus), context_len=16, max_tokens=100_000)
    part = {p: {d for d, _, _ in iter_sampled_documents(spec.model_copy(update={"part": p}))}
            for p in ("all", "discovery", "heldout")}
    assert part["discovery"] | part["heldout"] == part["all"] == set(range(40))
    assert not part["discovery"] & part["heldout"] and 10 <= len(part["heldout"]) <= 30
    assert part["heldout"] == set(np.flatnonzero(heldout_documents(np.arange(40), 0, 0.5)).tolist())
    # the draw of a document depends on its id and the seed only, not on the other documents
    many = heldout_documents(np.arange(20_000), 0, 0.3)
    assert abs(many.mean() - 0.3) < 0.015 and np.array_equal(heldout_documents(np.arange(40), 0, 0.3), many[:40])
    assert not heldout_documents(np.arange(100), 0, 0.0).any()
    off = spec.model_copy(update={"heldout_fraction": 0.0, "part": "heldout"})
    assert not list(iter_sampled_documents(off)) and len(list(iter_sampled_documents(off.model_copy(update={"part": "discovery"})))) == 40


def test_no_document_fills_more_than_its_share_of_the_stream(tmp_path):
    long = tmp_path / "long.jsonl"
    with open(long, "w") as f:
        f.write(json.dumps({"id": "long", "text": " ".join(["word"] * 3000)}) + "\n")
        for i in range(30):
            f.write(json.dumps({"id": f"short{i}", "text": "a few words of text here"}) + "\n")
    spec = DataSpec(source="jsonl", path=str(long), context_len=16, max_tokens=1600, max_doc_share=0.05)
    contexts = list(iter_contexts(spec, tiny_tokenizer()))
    per_doc = {}
    for c in contexts:
        per_doc[c.doc_id] = per_doc.get(c.doc_id, 0) + 1
    assert per_doc["long"] == 5 == int(0.05 * 1600) // 16 and len(per_doc) == 31
    uncapped = list(iter_contexts(spec.model_copy(update={"max_doc_share": 1.0}), tiny_tokenizer()))
    assert sum(c.doc_id == "long" for c in uncapped) > 50


def test_max_tokens_bounds_the_stream(corpus):
    spec = DataSpec(source="jsonl", path=str(corpus), context_len=16, max_tokens=64)
    assert len(list(iter_contexts(spec, tiny_tokenizer()))) == 4


def test_holdout_skips_every_nth_document(corpus):
    spec = DataSpec(source="jsonl", path=str(corpus), context_len=16, max_tokens=10_000, holdout_every=3)
    ids = {c.doc_id for c in iter_contexts(spec, tiny_tokenizer())}
    assert "doc2" not in ids and "doc5" not in ids and "doc0" in ids


def test_an_empty_corpus_is_a_clear_error(tmp_path):
    empty = tmp_path / "empty.txt"
    empty.write_text("  \n")
    with pytest.raises(ConfigError, match="data: the corpus yielded no tokens"):
        list(iter_contexts(DataSpec(source="text", path=str(empty)), tiny_tokenizer()))


def test_a_missing_corpus_file_names_the_path(tmp_path):
    with pytest.raises(ConfigError, match="data.path: .*nope.jsonl matches no file"):
        list(iter_documents(DataSpec(source="jsonl", path=str(tmp_path / "nope.jsonl"))))


def test_jsonl_without_the_text_field_names_the_field(tmp_path):
    f = tmp_path / "x.jsonl"
    f.write_text(json.dumps({"body": "hello"}) + "\n")
    with pytest.raises(ConfigError, match="data.text_field"):
        list(iter_documents(DataSpec(source="jsonl", path=str(f))))


def test_stream_batches_match_a_direct_forward_and_the_cache_reproduces_them(corpus):
    model = tiny_model("llama")
    data = DataSpec(source="jsonl", path=str(corpus), context_len=16, max_tokens=200, max_doc_share=1)
    hook = HookSpec(layer=1)
    stream = StreamSpec(batch_size=4, cache=True, progress=False)
    first = list(iter_activation_batches(model, data, hook, stream))
    assert sum(b.tokens_BL.shape[0] for b in first) == 13  # ceil(200 / 16) contexts
    for b in first:
        direct = hook_activations(model, b.tokens_BL, hook)
        torch.testing.assert_close(b.acts_BLD, direct, rtol=0, atol=0)
    shards = sorted(cache_dir_for(model, hook, data, stream).glob("batch_*.pt"))
    assert len(shards) == len(first)
    # an interrupted run: drop the last two shards, the rerun recomputes them and reuses the rest
    for s in shards[-2:]:
        s.unlink()
    again = list(iter_activation_batches(model, data, hook, stream))
    for a, b in zip(first, again):
        torch.testing.assert_close(a.acts_BLD, b.acts_BLD, rtol=0, atol=0)
    assert len(sorted(cache_dir_for(model, hook, data, stream).glob("batch_*.pt"))) == len(first)


def test_a_different_hook_uses_a_different_cache(corpus):
    model = tiny_model("llama")
    data = DataSpec(source="jsonl", path=str(corpus), context_len=16, max_tokens=64)
    stream = StreamSpec(batch_size=4, cache=True, progress=False)
    assert cache_dir_for(model, HookSpec(layer=1), data, stream) != cache_dir_for(model, HookSpec(layer=2), data, stream)


def test_bfloat16_streaming_stays_close_to_float32(corpus):
    data = DataSpec(source="jsonl", path=str(corpus), context_len=16, max_tokens=64)
    f32 = next(iter_activation_batches(tiny_model("llama"), data, HookSpec(layer=1), StreamSpec(progress=False)))
    bf16 = next(iter_activation_batches(tiny_model("llama", dtype="bfloat16"), data, HookSpec(layer=1), StreamSpec(progress=False)))
    assert bf16.acts_BLD.dtype == torch.bfloat16
    torch.testing.assert_close(bf16.acts_BLD.float(), f32.acts_BLD, rtol=0.05, atol=0.05)


def test_latent_batches_hold_only_unmasked_positions(corpus):
    model = tiny_model("llama")
    data = DataSpec(source="jsonl", path=str(corpus), context_len=16, max_tokens=64)

    class ReluSAE(torch.nn.Module):
        def __init__(self):
            super().__init__()
            torch.manual_seed(0)
            self.W_dec = torch.nn.Parameter(torch.randn(20, model.d_model))

        def encode(self, x):
            return torch.relu(x @ self.W_dec.T)

    sae = ReluSAE()
    batches = list(iter_latents(model, sae, data, HookSpec(layer=1), StreamSpec(batch_size=2, progress=False)))
    acts = list(iter_activation_batches(model, data, HookSpec(layer=1), StreamSpec(batch_size=2, progress=False)))
    for lb, ab in zip(batches, acts):
        expected = torch.relu(ab.masked_acts_ND() @ sae.W_dec.T).detach()
        assert lb.latents.shape == tuple(expected.shape)
        np.testing.assert_allclose(lb.latents.toarray(), expected.numpy(), rtol=1e-6, atol=1e-6)


def test_to_csr_keeps_exactly_the_nonzeros():
    x = torch.tensor([[0.0, 1.5, 0.0], [2.0, 0.0, -1.0]])
    m = to_csr(x)
    assert m.nnz == 3
    np.testing.assert_array_equal(m.toarray(), x.numpy())


def test_pad_batch_right_pads_tokens_and_masks_the_padding():
    from sources.corpora import pad_batch

    tokens, mask = pad_batch([np.array([5, 6, 7]), np.array([8])], [np.array([False, True, True]), np.array([True])], pad=0)
    np.testing.assert_array_equal(tokens, [[5, 6, 7], [8, 0, 0]])
    np.testing.assert_array_equal(mask, [[False, True, True], [True, False, False]])
    assert tokens.dtype == np.int64 and mask.dtype == bool
