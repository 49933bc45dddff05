"""Tiny in-process models, tokenizers and corpora for fast tests (no downloads, no files).

Each family the framework claims (llama/SmolLM2, gemma3, gpt2) has a randomly initialised model of a
few thousand parameters built from its real transformers config class, so module paths are real.
"""

from __future__ import annotations

import functools

import torch

WORDS = (
    "the bank of the river was steep and the bank in town lent money to people who visit https://example.com/path/to/page "
    "a bat flew out of the cave while the player swung his bat at the ball see http://www.test.org/a/b?c=1 for details "
    "sparse autoencoders decompose activations into latents that fire together more than chance in language models"
)

VOCAB = 300


@functools.lru_cache(maxsize=1)
def tiny_tokenizer():
    from tokenizers import Tokenizer, models, pre_tokenizers, trainers, decoders
    from transformers import PreTrainedTokenizerFast

    tok = Tokenizer(models.BPE(unk_token="<unk>"))
    tok.pre_tokenizer = pre_tokenizers.ByteLevel(add_prefix_space=False)
    tok.decoder = decoders.ByteLevel()
    trainer = trainers.BpeTrainer(vocab_size=VOCAB, special_tokens=["<unk>", "<bos>", "<eos>", "<pad>"],
                                  initial_alphabet=pre_tokenizers.ByteLevel.alphabet(), show_progress=False)
    tok.train_from_iterator([WORDS] * 20, trainer=trainer)
    fast = PreTrainedTokenizerFast(tokenizer_object=tok, bos_token="<bos>", eos_token="<eos>", pad_token="<pad>", unk_token="<unk>")
    return fast


def tiny_hf_model(family: str = "llama", n_layers: int = 3, d_model: int = 32, seed: int = 0):
    import transformers as tf

    torch.manual_seed(seed)
    vocab = len(tiny_tokenizer())
    if family == "llama":
        cfg = tf.LlamaConfig(vocab_size=vocab, hidden_size=d_model, intermediate_size=2 * d_model, num_hidden_layers=n_layers,
                             num_attention_heads=4, num_key_value_heads=2, max_position_embeddings=256, tie_word_embeddings=True)
        model = tf.LlamaForCausalLM(cfg)
    elif family == "gemma3":
        cfg = tf.Gemma3TextConfig(vocab_size=vocab, hidden_size=d_model, intermediate_size=2 * d_model, num_hidden_layers=n_layers,
                                  num_attention_heads=4, num_key_value_heads=2, head_dim=8, max_position_embeddings=256,
                                  sliding_window=16)
        model = tf.Gemma3ForCausalLM(cfg)
    elif family == "gpt2":
        cfg = tf.GPT2Config(vocab_size=vocab, n_embd=d_model, n_layer=n_layers, n_head=4, n_positions=256, bos_token_id=1, eos_token_id=2)
        model = tf.GPT2LMHeadModel(cfg)
    else:
        raise ValueError(family)
    return model.eval()


def tiny_model(family: str = "llama", dtype: str = "float32", **kw):
    """A LoadedModel (nnsight-wrapped) around a tiny random model of ``family``."""
    from sources.config import ModelSpec
    from sources.models import wrap_model

    return wrap_model(tiny_hf_model(family, **kw), tiny_tokenizer(), ModelSpec(name=f"tiny-{family}", dtype=dtype, device="cpu"),
                      name=f"tiny-{family}", identity={"tiny": family, **kw})


def tiny_corpus_file(tmp_path, n_docs: int = 12):
    """A JSONL corpus of ``n_docs`` short documents; returns its path."""
    import json
    import random

    rng = random.Random(0)
    words = WORDS.split()
    path = tmp_path / "corpus.jsonl"
    with open(path, "w") as f:
        for i in range(n_docs):
            text = " ".join(rng.choice(words) for _ in range(rng.randint(40, 120)))
            f.write(json.dumps({"id": f"doc{i}", "text": text}) + "\n")
    return path


def save_cooc_standin(folder, groups: dict[str, list[int]], d_sae: int = 64, structure: str = "clique") -> None:
    """Stand in for a finished cooc stage in ``folder``: these groups and random firing counts, saved as a
    :class:`cooc.result.CoocResult` (the files every later stage reads)."""
    import numpy as np
    import pandas as pd

    from cooc.result import CoocResult

    rows = [(m, g, len(ms), structure) for g, ms in groups.items() for m in ms]
    table = pd.DataFrame(rows, columns=["latent", "group_id", "group_size", "structure"])
    occ = np.random.default_rng(0).integers(0, 1000, d_sae)
    CoocResult(occ, table, {"n_tokens": 1000}).save(folder)
