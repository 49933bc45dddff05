"""Probe labels are derived from text exactly as docs/probes.md describes; bad probe configs name the field."""

import re
from pathlib import Path

import numpy as np
import pandas as pd
import pytest

from experiments.cli import build_config
from experiments.config import ExperimentConfig
from probes.config import ProbesConfig
from probes.dataset import plan_windows
from probes.lexicon import DEFAULT_LEXICON
from probes.selection import enrichment_table, select_groups
from probes.tasks.word_sense import word_sense_targets
from probes.text import find_urls, label_occurrences, token_at_char, url_token_targets
from sources.errors import ConfigError


def test_urls_are_found_without_trailing_punctuation_or_markdown_brackets():
    text = "See https://cloud.google.com/storage/docs. Or [docs](http://a.b/c/d_e?x=1), www.example.org/x; done"
    urls = [u.text for u in find_urls(text)]
    assert urls == ["https://cloud.google.com/storage/docs", "http://a.b/c/d_e?x=1", "www.example.org/x"]
    for u in find_urls(text):
        assert text[u.start:u.end] == u.text


def test_url_position_targets_count_characters_at_each_tokens_end():
    text = "See https://ab.com/xy/z now"
    url = find_urls(text)[0]
    # hand-made tokens: "See", " https", "://", "ab", ".com", "/", "xy", "/z", " now"
    spans = np.array([[0, 3], [3, 9], [9, 12], [12, 14], [14, 18], [18, 19], [19, 21], [21, 23], [23, 27], [-1, -1]])
    t = url_token_targets(spans, url, text)
    assert t.positions.tolist() == [1, 2, 3, 4, 5, 6, 7]
    # the URL starts at char 4; " https" ends at 9 -> 5 characters read
    assert t.since_start.tolist() == [5, 8, 10, 14, 15, 17, 19]
    # before any '/' of the URL the count runs from its start; "://" ends on a slash -> 0
    assert t.since_slash.tolist() == [5, 0, 2, 6, 0, 2, 1]


def test_url_targets_agree_with_a_brute_force_count_on_a_real_tokenizer():
    from tiny import tiny_tokenizer

    tok = tiny_tokenizer()
    text = "the bank see http://www.test.org/a/b?c=1 for details and https://example.com/path/to/page ok"
    enc = tok(text, add_special_tokens=False, return_offsets_mapping=True)
    spans = np.array(enc["offset_mapping"])
    for url in find_urls(text):
        t = url_token_targets(spans, url, text)
        for p, a, b in zip(t.positions, t.since_start, t.since_slash):
            end = min(spans[p][1], url.end)
            read = text[url.start:end]
            assert a == len(read)
            assert b == (len(read) - read.rfind("/") - 1 if "/" in read else len(read))
        # every character of the URL is covered by the selected tokens
        covered = set()
        for p in t.positions:
            covered.update(range(max(spans[p][0], url.start), min(spans[p][1], url.end)))
        assert covered == set(range(url.start, url.end))


LEX = {"bank": {"senses": {"river": ["river", "water"], "finance": ["money", "loan"]}, "exclude": ["west bank"]},
       "how": {"senses": {"degree": ["many"], "manner": ["to"]}, "window_before": 0, "window_after": 1}}


def test_word_sense_labels_use_cues_of_exactly_one_sense_within_the_window():
    text = ("The river bank was steep. "  # cue before -> river, resolved
            "The bank lent money. "  # cue after -> finance, not resolved by the left context
            "A bank near water gave a loan. "  # both senses -> dropped
            "It was closed then. The bank. "  # no cue within three words -> dropped
            "The West Bank is a region with a river.")  # excluded phrase
    occ = label_occurrences(text, LEX, window_words=3)
    assert [(o.sense, o.status) for o in occ] == [("river", "labelled"), ("finance", "labelled"), (None, "both_senses"),
                                                 (None, "no_cue"), (None, "excluded")]
    assert occ[0].resolved() and not occ[1].resolved()
    # "resolved" only counts cues the model can see: not if the window starts after the cue
    assert not occ[0].resolved(visible_from=text.index("bank"))


def _naive_labels(text, lexicon, window_words):
    """Reference implementation over the document's full word list."""
    words = [(m.group(0).lower(), m.start()) for m in re.finditer(r"[A-Za-z]+", text)]
    out = []
    for i, (w, start) in enumerate(words):
        if w not in lexicon:
            continue
        e = lexicon[w]
        b = e.get("window_before", window_words)
        a = e.get("window_after", window_words)
        if any(words[i - t:i - t + len(p.split())] and [x for x, _ in words[i - t:i - t + len(p.split())]] == p.split()
               for p in e.get("exclude", []) for t in range(len(p.split())) if p.split()[t] == w and i - t >= 0):
            out.append((w, start, None))
            continue
        ctx = words[max(0, i - b):i] + words[i + 1:i + 1 + a]
        found = {s for s, cues in e["senses"].items() for x, _ in ctx if x in cues}
        out.append((w, start, found.pop() if len(found) == 1 else None))
    return out


@pytest.mark.parametrize("seed", range(5))
def test_word_sense_labels_equal_a_naive_full_document_implementation(seed):
    rng = np.random.default_rng(seed)
    vocab = ["bank", "river", "water", "money", "loan", "west", "how", "many", "to", "the", "a", "Bank", "x" * 40, "it's"]
    seps = [" ", "  ", ", ", ". ", "\n", "-", "(", ")"]
    text = "".join(rng.choice(vocab) + rng.choice(seps) for _ in range(3000))
    ours = [(o.word, o.start, o.sense) for o in label_occurrences(text, LEX, window_words=4)]
    assert ours == _naive_labels(text, LEX, 4)


def test_how_is_labelled_by_the_next_word_only_and_never_resolved():
    occ = label_occurrences("Learn how to fish. She knew how many there were. Ask how.", LEX, window_words=10)
    assert [o.sense for o in occ] == ["manner", "degree", None]
    assert not any(o.resolved() for o in occ)


def test_cue_windows_count_words_not_characters_and_stay_in_the_document():
    text = "river " + "x " * 5 + "bank"
    assert label_occurrences(text, LEX, window_words=6)[0].sense == "river"
    assert label_occurrences(text, LEX, window_words=5)[0].sense is None


def test_token_at_char_finds_the_token_holding_the_last_letter_of_a_word():
    spans = np.array([[0, 3], [3, 8], [8, 9]])
    assert token_at_char(spans, 7) == 1
    assert token_at_char(spans, 20) is None


@pytest.mark.parametrize("prefix, ctx", [(4, 16), (32, 128), (0, 8), (100, 12)])
def test_probe_windows_fit_the_context_cover_every_task_token_and_give_each_its_prefix(prefix, ctx):
    rng = np.random.default_rng(prefix + ctx)
    positions = sorted(set(rng.integers(0, 400, size=60).tolist()))
    wins = plan_windows(positions, prefix, ctx)
    covered = [p for _, _, c in wins for p in c]
    assert covered == positions
    eff = min(prefix, (ctx - 2) // 2)
    for start, end, c in wins:
        assert end - start + 2 <= ctx  # BOS + tokens start..end
        assert start <= c[0] and c[-1] == end
        assert c[0] - start >= min(eff, c[0])


def test_the_default_lexicon_is_valid_and_documented():
    cfg = ProbesConfig()
    assert set(cfg.word_sense.lexicon) == set(DEFAULT_LEXICON)
    doc = (Path(__file__).resolve().parents[1] / "docs" / "probes.md").read_text()
    for word in DEFAULT_LEXICON:
        assert f"`{word}`" in doc


@pytest.mark.parametrize("text, field, fragment", [
    ("probes:\n  taks: [url_position]\n", "probes.taks", "unknown key"),
    ("probes:\n  tasks: [sentiment]\n", "probes.tasks.0", "url_position"),
    ("probes:\n  groups: some\n", "probes.groups", "auto"),
    ("probes:\n  folds: 1\n", "probes.folds", "greater than or equal to 2"),
    ("probes:\n  alpha: 2\n", "probes.alpha", "less than 1"),
    ("probes:\n  word_sense:\n    lexicon:\n      bank:\n        senses: {river: [river]}\n",
     "probes.word_sense.lexicon.bank.senses", "exactly two senses"),
    ("probes:\n  word_sense:\n    lexicon:\n      bank:\n        senses: {a: [x], b: [x]}\n",
     "probes.word_sense.lexicon.bank.senses", "shared by both senses"),
    ("probes:\n  min_group_size: 9\n  max_group_size: 3\n", "probes", "min_group_size"),
])
def test_bad_probe_configs_name_the_field(tmp_path, text, field, fragment):
    p = tmp_path / "c.yaml"
    p.write_text(text)
    with pytest.raises(ConfigError) as exc:
        build_config(ExperimentConfig, p)
    assert exc.value.field == field
    assert fragment in exc.value.message


def test_enrichment_selection_prefers_groups_firing_on_task_tokens_and_respects_limits():
    table = enrichment_table([1, 2, 3, 4], [3, 3, 40, 2], task_fires_G=[50, 5, 90, 30], other_fires_G=[10, 0, 5, 300],
                             n_task=100, n_other=1000)
    chosen = select_groups(table, n_groups=2, min_count=20, min_size=2, max_size=32)
    # group 2 fires too rarely, group 3 is too large, group 4 fires everywhere
    assert chosen["group_id"].tolist() == [1, 4]
    assert table.loc[table.group_id == 1, "enrichment"].item() == pytest.approx(0.5 / (11 / 1001))


def test_word_sense_targets_skip_honestly_and_balance_resolved_within_each_word():
    rows = []
    for i in range(60):
        rows.append({"doc_index": i, "word": "bank", "sense": "river" if i % 2 else "finance", "resolved": i % 3 == 0})
    for i in range(30):
        rows.append({"doc_index": 100 + i, "word": "how", "sense": "manner", "resolved": False})
    ex = pd.DataFrame(rows)
    targets, skipped = word_sense_targets(ex, LEX, min_per_class=10, n_folds=5, balance_resolved=True,
                                          rng=np.random.default_rng(0))
    names = [t.task for t in targets]
    assert names == ["word_sense/bank/sense", "word_sense/resolved"]
    assert dict(skipped)["word_sense/how/next_word"].startswith("too few examples: 0 degree")
    res = targets[1]
    sub = ex.iloc[res.rows]
    assert (sub["word"] == "bank").all()  # "how" is never resolved, so it cannot be balanced
    assert res.y.sum() == len(res.y) / 2 == 20
    sense = targets[0]
    assert sense.classes == ("river", "finance") and sense.y.tolist() == (ex.iloc[sense.rows]["sense"] == "finance").tolist()


def test_lexicon_cues_are_single_lowercase_words():
    for word, entry in DEFAULT_LEXICON.items():
        for cues in entry["senses"].values():
            assert all(re.fullmatch(r"[a-z]+", c) for c in cues), word


@pytest.mark.parametrize("rescale", [False, True])
def test_group_reconstructions_use_the_decoder_as_the_sae_applies_it(rescale):
    import torch
    from sae_lens import TopKSAE, TopKSAEConfig

    from sources.sae_view import SAEView

    torch.manual_seed(0)
    sae = TopKSAE(TopKSAEConfig(d_in=8, d_sae=16, k=3, rescale_acts_by_decoder_norm=rescale))
    with torch.no_grad():
        sae.W_dec.mul_(torch.rand(16, 1) * 3 + 0.2)  # rows of unequal norm
        sae.b_dec.normal_()
    x = torch.randn(5, 8)
    acts = sae.encode(x)
    members = [1, 4, 9]
    only_group = torch.zeros_like(acts)
    only_group[:, members] = acts[:, members]
    expect = (sae.decode(only_group) - sae.b_dec).detach().numpy()
    W = SAEView(sae).decoder_np()
    np.testing.assert_allclose(acts[:, members].detach().numpy() @ W[members], expect, atol=1e-5)


def test_quoted_spans_are_pairs_of_quotes_on_one_line_that_do_not_touch_words():
    from probes.tasks.quotation import find_quotes

    text = 'He said "hello there" and “curly ones” too; a 12" pipe, a"b, "x", "" and "no\nnewline" or "12 34".'
    spans = [text[q.open:q.close + 1] for q in find_quotes(text)]
    assert spans == ['"hello there"', "“curly ones”"]
    assert [text[q.open:q.close + 1] for q in find_quotes('"' + "a" * 50 + '"', max_chars=40)] == []


def test_outside_examples_never_come_from_text_that_might_be_quoted():
    from probes.tasks.quotation import maybe_quoted

    text = 'ok "a very long quoted bit" then 12" pipe and more\nnext line “curly” end'
    m = maybe_quoted(text)
    assert m[text.index('"a')] and m[text.index("very")] and not m[text.index("ok")]
    assert m[text.index("pipe")]  # after the unpaired third mark: the rest of the line is unsure
    assert not m[text.index("next")] and m[text.index("curly")] and not m[text.index(" end")]


def test_the_uncertainty_target_is_the_entropy_of_a_cross_fitted_later_layer_sense_probe():
    from types import SimpleNamespace

    from probes.comparison import Target
    from probes.config import ProbesConfig
    from probes.tasks.word_sense import uncertainty_target

    rng = np.random.default_rng(0)
    n = 240
    docs = np.repeat(np.arange(48), 5)
    y = rng.integers(0, 2, n).astype(float)
    clear = np.arange(n) < 120  # the later layer separates the senses on these tokens, not on the others
    late = rng.normal(size=(n, 6))
    late[:, 0] += np.where(clear, 6.0, 0.0) * (2 * y - 1)
    late[:, 1] += np.where(clear, 3.0, 0.0)  # lets the probe tell the two kinds of token apart
    data = SimpleNamespace(late_acts_ND=late, doc_N=docs)
    targets = [Target("word_sense/bank/sense", "classification", np.arange(n), y),
               Target("word_sense/how/next_word", "classification", np.arange(n), y)]  # not a sense: not read out
    out, skipped = uncertainty_target(data, targets, ProbesConfig(), seed=0)
    assert not skipped and [t.task for t in out] == ["word_sense/uncertainty"]
    u = out[0]
    assert u.kind == "regression" and u.topic_control and len(u.rows) == n
    assert ((u.y >= 0) & (u.y <= 1)).all()
    assert u.y[clear].mean() < 0.3 < 0.7 < u.y[~clear].mean()
    none, why = uncertainty_target(SimpleNamespace(late_acts_ND=None, doc_N=docs), targets, ProbesConfig(), seed=0)
    assert none == [] and "uncertainty_offset" in why[0][1]
