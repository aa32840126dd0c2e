"""`selective-copy` and `mqar`: the generated tasks that separate the recurrent families proposed
since the classic ones, the same data for the same seed (drawn like `adding` and `copy`,
harness.tasks.synthetic: train and test from separate seeded streams, validation carved from
train).

Both are many-to-many with a label only where the answer is due (-100 elsewhere, which the loss
and `accuracy` skip), so the metric is the share of answers right and chance is 1 / the number
of possible answers. Each reports the cross-entropy of the input-blind predictor (the training
answers' frequencies at each step) as `Task.baseline`.
"""

from __future__ import annotations

import numpy as np
import torch
import torch.nn.functional as F

from harness.errors import HarnessError
from harness.tasks import Task, cross_entropy, positive_int, register_task
from harness.tasks.synthetic import _splits

IGNORE = -100


def answer_baseline(y_train: torch.Tensor, y_val: torch.Tensor, n_classes: int) -> float:
    """Cross-entropy on validation of the memoryless predictor: at each step, the training
    answers' class frequencies there (uniform where a step has no answer)."""
    labelled = y_train != IGNORE
    counts = F.one_hot(y_train.clamp_min(0), n_classes).float() * labelled.unsqueeze(-1)
    freq = (counts.sum(0) + 1e-6) / (counts.sum(0).sum(-1, keepdim=True) + 1e-6 * n_classes)
    return cross_entropy(freq.log().expand(len(y_val), -1, -1), y_val).item()


def selective_copy_data(n: int, seq_len: int, n_tokens: int, vocab: int, rng: np.random.Generator):
    """x (n, seq_len + n_tokens, vocab + 2) one-hot: `n_tokens` symbols (1..vocab) at random
    positions, in order, among noise (0) over `seq_len` steps, then `n_tokens` markers
    (vocab + 1); y: the symbols in order at the markers, IGNORE elsewhere."""
    positions = np.sort(np.argsort(rng.random((n, seq_len)), 1)[:, :n_tokens], 1)
    symbols = rng.integers(1, vocab + 1, (n, n_tokens))
    seq = np.zeros((n, seq_len + n_tokens), dtype=np.int64)
    np.put_along_axis(seq, positions, symbols, 1)
    seq[:, seq_len:] = vocab + 1
    target = np.full(seq.shape, IGNORE, dtype=np.int64)
    target[:, seq_len:] = symbols - 1  # classes 0..vocab-1
    return F.one_hot(torch.from_numpy(seq), vocab + 2).float(), torch.from_numpy(target)


@register_task
def selective_copy(
    seq_len: int = 200, n_tokens: int = 16, vocab: int = 8, train_size: int = 10_000, test_size: int = 1_000,
    val_size: float | int = 0.1, data_seed: int = 0, split_seed: int = 0,
) -> Task:
    """Selective copying, many-to-many: 216 steps × 10 → 8 classes at the last 16 (steps: seq_len + n_tokens), cross-entropy.

    Gu & Dao (2023, Mamba, §3.1 and §4.1.1; the set-up of Feng et al. 2024): `n_tokens` symbols
    of `vocab` scattered at random positions among noise over `seq_len` steps, then `n_tokens`
    markers at which the model must output the symbols in the order they came. Unlike `copy`,
    where they sit at fixed steps, the spacing varies: a model must select by content what to
    keep, the ability input-dependent (selective) recurrences were proposed for. Chance: 1/vocab.
    """
    positive_int("seq_len", seq_len, 2)
    positive_int("n_tokens", n_tokens)
    positive_int("vocab", vocab, 2)
    if n_tokens > seq_len:
        raise HarnessError(f"task.n_tokens: {n_tokens} symbols cannot be scattered over seq_len = {seq_len} steps; "
                           "lower n_tokens or raise seq_len")
    d = _splits(lambda n, rng: selective_copy_data(n, seq_len, n_tokens, vocab, rng), train_size, test_size, val_size,
                data_seed, split_seed)
    return Task(name="selective-copy", io="many-to-many", **d, input_size=vocab + 2, output_size=vocab,
                seq_len=seq_len + n_tokens, loss="cross_entropy", metric="accuracy",
                baseline=answer_baseline(d["y_train"], d["y_val"], vocab))


def mqar_data(n: int, n_pairs: int, n_queries: int, gap: int, n_keys: int, n_values: int, rng: np.random.Generator):
    """x (n, 2·n_pairs + gap + n_queries, 1 + n_keys + n_values) one-hot: the pairs k v (distinct
    keys 1..n_keys, values after them), `gap` noise steps (0), then `n_queries` of the keys, each
    asked once; y: each queried key's value (class 0..n_values-1) at its query, IGNORE elsewhere."""
    keys = np.argsort(rng.random((n, n_keys)), 1)[:, :n_pairs] + 1
    values = rng.integers(0, n_values, (n, n_pairs))
    asked = np.argsort(rng.random((n, n_pairs)), 1)[:, :n_queries]  # which pairs, in a random order
    steps = 2 * n_pairs + gap + n_queries
    seq = np.zeros((n, steps), dtype=np.int64)
    seq[:, 0 : 2 * n_pairs : 2] = keys
    seq[:, 1 : 2 * n_pairs : 2] = values + 1 + n_keys
    seq[:, steps - n_queries :] = np.take_along_axis(keys, asked, 1)
    target = np.full(seq.shape, IGNORE, dtype=np.int64)
    target[:, steps - n_queries :] = np.take_along_axis(values, asked, 1)
    return F.one_hot(torch.from_numpy(seq), 1 + n_keys + n_values).float(), torch.from_numpy(target)


@register_task
def mqar(
    n_pairs: int = 8, n_queries: int = 8, gap: int = 0, n_keys: int = 32, n_values: int = 32,
    train_size: int = 10_000, test_size: int = 1_000, val_size: float | int = 0.1, data_seed: int = 0,
    split_seed: int = 0,
) -> Task:
    """Multi-query associative recall, many-to-many: 24 steps × 65 → 32 classes at the last 8 (steps: 2·n_pairs + gap + n_queries), cross-entropy.

    Arora et al. (2023, "Zoology"): `n_pairs` key-value pairs (distinct keys of `n_keys`, values
    of `n_values`), `gap` noise steps, then `n_queries` of the keys in a random order; at each the
    model must output the value that key was paired with. A fixed-size state must hold every
    pair, so recall falls as n_pairs grows past what the state can store: the gap between gated
    attention-free models and attention that Zoology measures. Chance: 1/n_values.
    """
    positive_int("n_pairs", n_pairs)
    positive_int("n_queries", n_queries)
    positive_int("gap", gap, 0)
    positive_int("n_keys", n_keys, 2)
    positive_int("n_values", n_values, 2)
    if n_pairs > n_keys:
        raise HarnessError(f"task.n_pairs: {n_pairs} pairs need as many distinct keys, but n_keys = {n_keys}; raise n_keys")
    if n_queries > n_pairs:
        raise HarnessError(f"task.n_queries: each query asks a different pair, so at most n_pairs = {n_pairs}, got {n_queries}")
    d = _splits(lambda n, rng: mqar_data(n, n_pairs, n_queries, gap, n_keys, n_values, rng), train_size, test_size,
                val_size, data_seed, split_seed)
    return Task(name="mqar", io="many-to-many", **d, input_size=1 + n_keys + n_values, output_size=n_values,
                seq_len=2 * n_pairs + gap + n_queries, loss="cross_entropy", metric="accuracy",
                baseline=answer_baseline(d["y_train"], d["y_val"], n_values))
