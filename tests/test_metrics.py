"""Each unlearning metric against a hand computation (sago_kernels/unlearning/metrics.py).

The model of most tests is a lookup table: the logits at t are ``TABLE[input_ids[t]]``, so every
log-probability is known in closed form, and the hand computations below use plain ``math`` on
the table's entries, not the module's torch code.
"""

from __future__ import annotations

import math
import zlib

import pytest
import torch

import sago_kernels.unlearning.metrics as M

V = 6
TABLE = torch.tensor(
    [
        [0.3, 2.0, -1.0, 0.5, 0.0, 1.2],
        [-0.4, 0.1, 1.7, -2.0, 0.9, 0.0],
        [1.1, -0.3, 0.2, 2.2, -1.5, 0.4],
        [0.0, 0.6, -0.7, 0.1, 1.9, -0.2],
        [-1.2, 0.8, 0.3, -0.5, 0.2, 2.4],
        [1.5, 0.0, -0.9, 0.7, -0.3, 0.1],
    ]
)
# argmax of each row: 0->1, 1->2, 2->3, 3->4, 4->5, 5->0 (the chain a -> a+1 mod 6)


class LookupLM(torch.nn.Module):
    """A causal LM whose next-token logits depend on the current token only; returns a tensor."""

    def __init__(self, table: torch.Tensor = TABLE) -> None:
        super().__init__()
        self.table = torch.nn.Parameter(table.clone())
        self.inner = torch.nn.Dropout(0.0)  # a submodule, to check modes are restored

    def forward(self, input_ids, attention_mask=None):
        return self.inner(self.table[input_ids])


def row(a: int) -> list[float]:
    return [float(x) for x in TABLE[a]]


def lp(a: int, b: int) -> float:
    """log p(b | previous token a), by hand."""
    r = row(a)
    return r[b] - math.log(sum(math.exp(x) for x in r))


def answer(ids: list[int], n_prompt: int) -> dict[str, list[int]]:
    return {"input_ids": ids, "labels": [-100] * n_prompt + ids[n_prompt:]}


def hand_token_logps(ex) -> list[float]:
    ids, labels = ex["input_ids"], ex["labels"]
    return [lp(ids[t - 1], ids[t]) for t in range(1, len(ids)) if labels[t] != -100]


EXAMPLES = [
    answer([0, 1, 2, 3], 2),  # scores 2 | 1 and 3 | 2
    answer([4, 5, 1], 1),  # scores 5 | 4 and 1 | 5
    answer([3, 3, 0, 5, 2, 1, 4], 2),  # five scored tokens
]


def close(a, b, tol=1e-6):
    a = torch.as_tensor(a, dtype=torch.float64)
    b = torch.as_tensor(b, dtype=torch.float64)
    torch.testing.assert_close(a, b, rtol=tol, atol=tol)


# --------------------------------------------------------------------------- probabilities


def test_answer_logprobs_and_probability_by_hand():
    model = LookupLM()
    sums, counts = M.answer_logprobs(model, EXAMPLES)
    want = [hand_token_logps(e) for e in EXAMPLES]
    assert sums.dtype == torch.float64 and counts.dtype == torch.int64
    close(sums, [sum(w) for w in want])
    assert counts.tolist() == [2, 2, 5]
    close(M.answer_probability(model, EXAMPLES), [math.exp(sum(w) / len(w)) for w in want])
    lists = M.token_logprob_lists(model, EXAMPLES)
    for got, w in zip(lists, want):
        close(got, w)
    close(M.token_logprob_lists(model, EXAMPLES, drop_last=True)[2], want[2][:-1])


def test_position_zero_is_never_scored():
    model = LookupLM()
    full = {"input_ids": [0, 1, 2], "labels": [0, 1, 2]}
    sums, counts = M.answer_logprobs(model, [full])
    assert counts.tolist() == [2]
    close(sums, [lp(0, 1) + lp(1, 2)])


def test_answer_probability_normalised_by_hand():
    model = LookupLM()
    correct = [answer([0, 1, 2], 1)]
    wrong = [[answer([0, 3, 4], 1), answer([0, 5], 1)]]
    p = lambda e: math.exp(sum(hand_token_logps(e)) / len(hand_token_logps(e)))  # noqa: E731
    pc, pw = p(correct[0]), p(wrong[0][0]) + p(wrong[0][1])
    close(M.answer_probability_normalised(model, correct, wrong), [pc / (pc + pw + 1e-10)])
    # answers the model all but rules out (p ≈ 1e-13): open-unlearning's + 1e-10 then dominates
    table = torch.zeros(V, V)
    table[0, 0] = 30.0
    sure = LookupLM(table)
    pc = math.exp(-30.0) / (math.exp(30.0 - 30.0) + 5 * math.exp(-30.0))
    got = M.answer_probability_normalised(sure, [answer([0, 1], 1)], [[answer([0, 2], 1)]])
    close(got, [pc / (2 * pc + 1e-10)], tol=1e-9)
    assert 1e-4 < float(got) < 1e-3


def _choices(prompt: list[int], options: list[list[int]]) -> list[dict]:
    """One example per option: the prompt unscored, the option scored (``encode_choices``)."""
    return [{"input_ids": [*prompt, *o], "labels": [-100] * len(prompt) + o} for o in options]


def test_choice_logprobs_and_accuracy_by_hand():
    """Multi-token options (the cloze form) and single-letter options after one shared prompt
    (the lettered form, read from one forward of the prompt) alike."""
    model = LookupLM()
    prompts = [[0, 1], [3], [5, 5], [2, 4]]
    options = [[[2], [3, 4], [5]], [[4, 5], [0]], [[0, 1], [0], [2, 2]], [[1], [3], [0], [5]]]
    scores = M.choice_logprobs(model, [_choices(p, o) for p, o in zip(prompts, options)])
    for prompt, opts, got in zip(prompts, options, scores):
        want = []
        for option in opts:
            ids = [*prompt, *option]
            want.append(sum(lp(ids[t - 1], ids[t]) for t in range(len(prompt), len(ids))))
        assert got.dtype == torch.float64
        close(got, want)
    best = [int(s.argmax()) for s in scores]
    # the right answer where it is the likeliest option, a wrong one elsewhere
    answers = [best[0], (best[1] + 1) % 2, best[2], (best[3] + 1) % 4]
    assert M.choice_accuracy(scores, answers) == 0.5
    # a tie goes to the first option, as numpy.argmax in the harness
    assert M.choice_accuracy([torch.tensor([1.0, 1.0])], [0]) == 1.0


def test_lettered_questions_take_one_forward_of_their_prompt():
    """Options that differ only in one scored last token (letters) are read from one forward of
    the shared prompt; any other question's options take a forward each (at batch_size=1)."""

    class Counting(LookupLM):
        def forward(self, input_ids, attention_mask=None):
            self.widths.append(input_ids.shape[1])
            return super().forward(input_ids, attention_mask)

    model = Counting()
    lettered = [_choices([0, 1, 2], [[3], [4], [5], [0]]), _choices([5, 4], [[1], [2]])]
    cloze = [_choices([0, 1], [[2], [3, 4]]), _choices([3], [[2], [2]])[:1] + _choices([4], [[2]])]
    model.widths = []
    fast = M.choice_logprobs(model, lettered, batch_size=1)
    assert model.widths == [3, 2]  # each prompt once, without its letter
    model.widths = []
    M.choice_logprobs(model, lettered, batch_size=2)
    assert model.widths == [3]  # both prompts in one batch
    model.widths = []
    M.choice_logprobs(model, cloze, batch_size=1)
    assert model.widths == [3, 4, 2, 2]  # every option whole
    for scores, question in zip(fast, lettered):  # the same values as option by option
        close(scores, M.answer_logprobs(model, question)[0])


@pytest.mark.parametrize(
    "options, match",
    [
        ([_choices([0], [[1]])], "at least two options"),
        ([_choices([0], [[1], [2]]), _choices([0], [[1]])],
         r"^`options\[1\]` should hold at least two"),
        ([[{"input_ids": [0, 1], "labels": [-100, 1]}, {"input_ids": [0, 1], "labels": [-100]}]],
         r"^`options\[1\]`: `labels` should be aligned"),
        ([[]], "non-empty list of examples"),
        ([_choices([0], [[1], []])], "no scored token|nothing to score|scored"),
    ],
)
def test_choice_logprobs_refuses_bad_input(options, match):
    with pytest.raises(ValueError, match=match):
        M.choice_logprobs(LookupLM(), options)


@pytest.mark.parametrize(
    "scores, answers, match",
    [
        ([torch.zeros(2)], [2], r"answers\[0\]` should be an option index in \[0, 2\)"),
        ([torch.zeros(2)], [True], r"answers\[0\]` should be an option index"),
        ([torch.zeros(2)], [0, 1], "one entry per question"),
        ([], [], "non-empty"),
    ],
)
def test_choice_accuracy_refuses_bad_input(scores, answers, match):
    with pytest.raises(ValueError, match=match):
        M.choice_accuracy(scores, answers)


def test_truth_ratio_by_hand():
    model = LookupLM()
    para = [answer([0, 1, 2], 1), answer([4, 5, 0, 1], 2)]
    pert = [
        [answer([0, 3, 0], 1), answer([0, 2, 2], 1), answer([0, 4], 1)],
        [answer([4, 5, 3, 3], 2)],
    ]

    def mean_lp(e):
        t = hand_token_logps(e)
        return sum(t) / len(t)

    want = []
    for q, alts in zip(para, pert):
        wrong_loss = sum(-mean_lp(a) for a in alts) / len(alts)  # mean of average losses
        want.append(math.exp(-wrong_loss) / math.exp(mean_lp(q)))
    tr = M.truth_ratio(model, para, pert)
    close(tr, want)
    # the first question's true answer follows the table's argmax chain: preferred, tr < 1
    assert tr[0] < 1
    # several paraphrases per question: the mean of their average losses, like the perturbed
    two = M.truth_ratio(model, [[para[0], para[0]], [para[1]]], pert)
    close(two, want)


def test_truth_ratio_aggregates_by_hand():
    tr = torch.tensor([0.5, 2.0, 1.0, 0.25])
    # closer_to_1_better: mean(min(tr, 1/tr)) = (0.5 + 0.5 + 1 + 0.25)/4
    assert M.truth_ratio_score(tr, forget=True) == pytest.approx(2.25 / 4)
    # true_better: mean(max(0, 1 - tr)) = (0.5 + 0 + 0 + 0.75)/4
    assert M.truth_ratio_score(tr, forget=False) == pytest.approx(1.25 / 4)
    assert M.truth_ratio_score([0.0], forget=True) == 0.0
    assert M.truth_ratio_score([0.0], forget=False) == 1.0


# --------------------------------------------------------------------------- membership inference


def test_loss_and_zlib_scores_by_hand():
    model = LookupLM()
    means = [sum(t) / len(t) for t in map(hand_token_logps, EXAMPLES)]
    close(M.mia_scores(model, EXAMPLES, kind="loss"), means)
    texts = ["Paris", "the capital of France is Paris", "x" * 40]
    lengths = [len(zlib.compress(t.encode("utf-8"))) for t in texts]
    close(
        M.mia_scores(model, EXAMPLES, kind="zlib", texts=texts),
        [m / n for m, n in zip(means, lengths)],
    )
    # without texts: the scored ids as int32 little-endian bytes
    id_lengths = []
    for e in EXAMPLES:
        scored = [i for i, y in zip(e["input_ids"], e["labels"]) if y != -100]
        blob = b"".join(i.to_bytes(4, "little", signed=True) for i in scored)
        id_lengths.append(len(zlib.compress(blob)))
    close(M.mia_scores(model, EXAMPLES, kind="zlib"), [m / n for m, n in zip(means, id_lengths)])


def test_min_k_by_hand_on_five_tokens():
    model = LookupLM()
    ex = EXAMPLES[2]
    t = hand_token_logps(ex)
    assert len(t) == 5
    low = sorted(t)
    # k = 0.4: int(5 * 0.4) = 2 lowest; k = 0.1: int(0.5) = 0 -> at least 1; k = 1: all
    close(M.mia_scores(model, [ex], kind="min_k", k=0.4), [(low[0] + low[1]) / 2])
    close(M.mia_scores(model, [ex], kind="min_k", k=0.1), [low[0]])
    close(M.mia_scores(model, [ex], kind="min_k", k=1.0), [sum(t) / 5])
    low4 = sorted(t[:-1])  # drop_last: open-unlearning skips the last scored token
    close(M.mia_scores(model, [ex], kind="min_k", k=0.5, drop_last=True), [(low4[0] + low4[1]) / 2])
    close(M.mia_scores(model, [ex], kind="min_k", k=1.0, drop_last=True), [sum(t[:-1]) / 4])


def test_min_k_plus_plus_by_hand():
    model = LookupLM()
    ex = EXAMPLES[2]
    ids = ex["input_ids"]
    z = []
    for t in range(1, len(ids)):
        if ex["labels"][t] == -100:
            continue
        a = ids[t - 1]
        logps = [lp(a, v) for v in range(V)]
        mu = sum(math.exp(x) * x for x in logps)
        var = sum(math.exp(x) * x * x for x in logps) - mu * mu
        z.append((logps[ids[t]] - mu) / math.sqrt(var))
    close(M.min_k_plus_plus_token_scores(model, [ex])[0], z, tol=1e-5)
    low = sorted(z)
    close(M.mia_scores(model, [ex], kind="min_k_plus_plus", k=0.4), [(low[0] + low[1]) / 2], 1e-5)
    close(M.min_k_plus_plus_token_scores(model, [ex], drop_last=True)[0], z[:-1], tol=1e-5)
    close(M.mia_scores(model, [ex], kind="min_k_plus_plus", k=1.0, drop_last=True),
          [sum(z[:-1]) / 4], 1e-5)  # fmt: skip


def test_mia_auc_is_the_fraction_of_pairs_ranked_right():
    members = [0.9, 0.4, 0.7, 0.2]
    others = [0.4, 0.1, 0.8]
    pairs = [(m > o) + 0.5 * (m == o) for m in members for o in others]
    assert M.mia_auc(members, others) == pytest.approx(sum(pairs) / len(pairs))
    assert M.mia_auc(members, others) == pytest.approx(7.5 / 12)
    assert M.mia_auc([1.0, 2.0], [0.0]) == 1.0
    assert M.mia_auc([0.0], [1.0, 2.0]) == 0.0


def test_mia_auc_sees_a_memorised_forget_set():
    model = LookupLM()
    forget = [answer([0, 1, 2, 3, 4], 1), answer([2, 3, 4, 5], 1)]  # the argmax chain
    holdout = [answer([0, 4, 2, 0, 3], 1), answer([2, 0, 5, 3], 1)]
    for kind in M.MIA_KINDS:
        member = M.mia_scores(model, forget, kind=kind)
        auc = M.mia_auc(member, M.mia_scores(model, holdout, kind=kind))
        assert auc == 1.0, kind


def test_privleak_by_hand():
    # a = 1 - AUC; (a_u - a_r) / a_r * 100
    assert M.privleak(0.9, 0.5) == pytest.approx((0.1 - 0.5) / 0.5 * 100)  # -80: leaks
    assert M.privleak(0.3, 0.5) == pytest.approx((0.7 - 0.5) / 0.5 * 100)  # +40: over-unlearnt
    assert M.privleak(0.6, 0.6) == 0.0
    assert M.privleak(1.0, 0.4) == pytest.approx(-100.0)
    # a retain model with AUC 1 (a_r = 0): open-unlearning's + 1e-10 keeps it finite
    assert M.privleak(0.5, 1.0) == pytest.approx(0.5 / 1e-10 * 100)


# --------------------------------------------------------------------------- aggregates


def test_forget_quality_is_the_ks_p_value():
    from scipy.stats import ks_2samp

    a = [0.2, 0.5, 0.7, 1.1, 1.3, 0.9]
    b = [0.8, 1.4, 1.6, 2.0, 0.95]
    want = ks_2samp(a, b).pvalue
    assert M.forget_quality(a, b) == pytest.approx(want)
    # open-unlearning's utils.py form, on 1/tr: the same p-value (KS is rank-based)
    inv = ks_2samp([1 / (x + 1e-10) for x in a], [1 / (x + 1e-10) for x in b]).pvalue
    assert M.forget_quality(a, b) == pytest.approx(inv)
    assert M.forget_quality(a, a) == pytest.approx(1.0)
    assert M.forget_quality([0.1, 0.2, 0.3], [5.0, 6.0, 7.0]) < 0.2


def test_model_utility_is_the_harmonic_mean():
    assert M.model_utility({"a": 0.5, "b": 0.25, "c": 1.0}) == pytest.approx(3 / (2 + 4 + 1))
    assert M.model_utility({"a": 0.4}) == pytest.approx(0.4)
    assert M.model_utility({"a": 0.5, "b": 0.0}) == 0.0
    from scipy.stats import hmean

    vals = {name: 0.1 * (i + 1) for i, name in enumerate(M.TOFU_MODEL_UTILITY_COMPONENTS)}
    assert M.model_utility(vals) == pytest.approx(hmean(list(vals.values())))


# --------------------------------------------------------------------------- memorisation


CHAIN = answer([0, 1, 3, 4, 5], 1)  # targets 1,3,4,5 after 0,1,3,4: hits 1,0,1,1


def test_exact_memorization_by_hand():
    model = LookupLM()
    close(M.exact_memorization(model, [CHAIN]), [3 / 4])
    close(M.exact_memorization(model, [CHAIN], drop_last=True), [2 / 3])
    close(M.exact_memorization(model, [answer([0, 1, 2, 3], 1)]), [1.0])
    close(M.exact_memorization(model, [answer([0, 0, 0], 1)]), [0.0])


def test_extraction_strength_by_hand():
    model = LookupLM()
    # hits 1,0,1,1: the suffix from answer index 2 is reproduced, k = 2 of n = 4
    close(M.extraction_strength(model, [CHAIN]), [1 - 2 / 4])
    close(M.extraction_strength(model, [CHAIN], drop_last=True), [1 - 2 / 3])
    close(M.extraction_strength(model, [answer([0, 1, 2, 3], 1)]), [1.0])
    close(M.extraction_strength(model, [answer([0, 0, 0], 1)]), [0.0])  # nothing reproduced
    close(M.extraction_strength(model, [answer([0, 0, 1], 1)]), [1 / 2])  # the last token only


def test_extraction_strength_matches_greedy_generation():
    """ES's definition: the shortest answer prefix after which greedy decoding gives the rest."""
    model = LookupLM()
    ids, n_prompt = [2, 3, 0, 0, 1, 2, 3], 2
    ans = ids[n_prompt:]
    ks = [
        k
        for k in range(len(ans) + 1)
        if M.generate_greedy(model, None, [ids[: n_prompt + k]], max_new_tokens=len(ans) - k)
        == [ans[k:]]
    ]
    close(M.extraction_strength(model, [answer(ids, n_prompt)]), [1 - min(ks) / len(ans)])


# --------------------------------------------------------------------------- generation, ROUGE


def test_generate_greedy_follows_the_argmax_and_stops_at_eos():
    model = LookupLM()
    prompts = [[0], [3, 2], [5, 4, 4, 1]]
    out = M.generate_greedy(model, None, prompts, max_new_tokens=10, eos_id=4)
    assert out == [[1, 2, 3], [3], [2, 3]]  # the chain a -> a+1, the EOS (4) left out
    assert M.generate_greedy(model, None, prompts, max_new_tokens=2, eos_id=4) == [
        [1, 2],
        [3],
        [2, 3],
    ]
    assert M.generate_greedy(model, None, [[0]], max_new_tokens=4, eos_id=None) == [[1, 2, 3, 4]]

    class Tok:
        eos_token_id = 3

    assert M.generate_greedy(model, Tok(), [[0]], max_new_tokens=9) == [[1, 2]]
    singles = [M.generate_greedy(model, None, [p], max_new_tokens=10, eos_id=4)[0] for p in prompts]
    assert singles == out


def test_split_prompt_answer():
    prompts, answers = M.split_prompt_answer(EXAMPLES[:2])
    assert prompts == [[0, 1], [4]] and answers == [[2, 3], [5, 1]]


def test_rouge_l_recall_by_hand():
    preds = ["the cat on mat", "Run dog", "nothing here", "The cat sat on the mat."]
    refs = ["the cat sat on the mat", "running dogs", "the cat sat", "the cat sat on the mat"]
    # LCS "the cat on mat" = 4 of 6 reference tokens; stemming: running->run, dogs->dog
    assert M.rouge_l_recall(preds, refs) == pytest.approx([4 / 6, 1.0, 0.0, 1.0])
    assert M.rouge_l_recall(preds[1:2], refs[1:2], use_stemmer=False) == [0.0]


# --------------------------------------------------------------------------- batching, modes


def tiny_gpt2(vocab: int = 20):
    transformers = pytest.importorskip("transformers")
    torch.manual_seed(0)
    cfg = transformers.GPT2Config(
        vocab_size=vocab, n_positions=32, n_embd=16, n_layer=2, n_head=2, resid_pdrop=0.0,
        embd_pdrop=0.0, attn_pdrop=0.0, bos_token_id=0, eos_token_id=0,
    )  # fmt: skip
    return transformers.GPT2LMHeadModel(cfg)


def gpt2_examples(vocab: int = 20):
    g = torch.Generator().manual_seed(1)
    out = []
    for n, n_prompt in [(5, 2), (9, 4), (3, 1), (12, 6), (6, 3)]:
        ids = torch.randint(1, vocab, (n,), generator=g).tolist()
        out.append(answer(ids, n_prompt))
    return out


def all_values(model, examples, **kw):
    paraphrased, perturbed = examples[:2], [examples[2:4], examples[4:]]
    return {
        "logprobs": M.answer_logprobs(model, examples, **kw)[0],
        "prob": M.answer_probability(model, examples, **kw),
        "tr": M.truth_ratio(model, paraphrased, perturbed, **kw),
        **{k: M.mia_scores(model, examples, kind=k, **kw) for k in M.MIA_KINDS},
        "em": M.exact_memorization(model, examples, **kw),
        "es": M.extraction_strength(model, examples, **kw),
    }


@pytest.fixture(scope="module")
def gpt2():
    """A tiny random GPT-2 (from a config, no download), examples and every metric's values."""
    model, examples = tiny_gpt2(), gpt2_examples()
    return model, examples, all_values(model, examples, batch_size=64)


def test_batching_and_padding_do_not_change_values(gpt2):
    model, examples, base = gpt2
    for key, value in all_values(model, examples, batch_size=2, pad_id=7).items():
        close(value, base[key], tol=1e-5)
    # every metric reads one of these three per-token primitives: batch size 1 for them
    lists = M.token_logprob_lists(model, examples, batch_size=1, pad_id=3)
    close([float(v.sum()) for v in lists], base["logprobs"], tol=1e-5)
    zs = M.min_k_plus_plus_token_scores(model, examples, batch_size=64)
    for z, z1 in zip(zs, M.min_k_plus_plus_token_scores(model, examples, batch_size=1)):
        close(z, z1, tol=1e-5)
    close(M.exact_memorization(model, examples, batch_size=1), base["em"])
    # the same example padded to a different width next to a longer one
    short = examples[2]
    long = answer(list(range(1, 20)) + [3] * 10, 5)
    alone = M.answer_logprobs(model, [short])[0]
    padded = M.answer_logprobs(model, [short, long], pad_id=11)[0][:1]
    close(alone, padded, tol=1e-5)
    prompts = [e["input_ids"][:3] for e in examples[:3]]
    assert M.generate_greedy(model, None, prompts, max_new_tokens=4, eos_id=0) == [
        M.generate_greedy(model, None, [p], max_new_tokens=4, eos_id=0)[0] for p in prompts
    ]


def test_modes_are_restored():
    model = LookupLM()
    model.train()
    model.inner.eval()  # a mixed state: each module's own mode comes back
    M.answer_probability(model, EXAMPLES)
    M.generate_greedy(model, None, [[0]], max_new_tokens=2, eos_id=5)
    assert model.training and not model.inner.training
    model.eval()
    M.exact_memorization(model, EXAMPLES)
    assert not model.training
    assert model.table.grad is None


def test_gpt2_smoke(gpt2):
    model, examples, values = gpt2
    n = len(examples)
    assert all(v.shape == (n,) or k == "tr" for k, v in values.items())
    assert ((values["prob"] > 0) & (values["prob"] <= 1)).all()
    assert (values["tr"] > 0).all() and values["tr"].shape == (2,)
    assert ((values["em"] >= 0) & (values["em"] <= 1)).all()
    assert ((values["es"] >= 0) & (values["es"] <= 1)).all()
    prompts, refs = M.split_prompt_answer(examples)
    gens = M.generate_greedy(model, None, prompts, max_new_tokens=4, eos_id=0, batch_size=2)
    assert all(len(g) <= 4 for g in gens)
    texts = [" ".join(map(str, g)) for g in gens]
    scores = M.rouge_l_recall(texts, [" ".join(map(str, r)) for r in refs])
    assert all(0 <= s <= 1 for s in scores)
    fq = M.forget_quality(values["tr"], values["tr"] * 2)
    assert 0 <= fq <= 1
    auc = M.mia_auc(values["loss"][:2], values["loss"][2:])
    assert 0 <= auc <= 1 and math.isfinite(M.privleak(auc, 0.5))
    assert M.truth_ratio_score(values["tr"], forget=True) <= 1


# --------------------------------------------------------------------------- errors


@pytest.mark.parametrize(
    "call, error, match",
    [
        (lambda m: M.answer_probability(m, []), ValueError, "at least one example"),
        (lambda m: M.answer_probability(m, {"input_ids": [1]}), TypeError, "list of examples"),
        (lambda m: M.answer_probability(m, [{"input_ids": [0, 1]}]), TypeError, "`labels`"),
        (
            lambda m: M.answer_probability(m, [{"input_ids": [0, 1], "labels": [-100]}]),
            ValueError,
            "same length",
        ),
        (
            lambda m: M.answer_probability(m, [{"input_ids": [0, 1], "labels": [-100, 2]}]),
            ValueError,
            "should equal `input_ids`",
        ),
        (
            lambda m: M.answer_probability(m, [{"input_ids": [0, 1], "labels": [0, -100]}]),
            ValueError,
            "no scored token",
        ),
        (lambda m: M.answer_probability(m, EXAMPLES, batch_size=0), ValueError, "batch_size"),
        (lambda m: M.mia_scores(m, EXAMPLES, kind="gradnorm"), ValueError, "kind"),
        (lambda m: M.mia_scores(m, EXAMPLES, kind="min_k", k=0.0), ValueError, "`k`"),
        (lambda m: M.mia_scores(m, EXAMPLES, kind="min_k", k=1.5), ValueError, "`k`"),
        *((lambda m, kind=kind: M.mia_scores(m, EXAMPLES, kind=kind, batch_size=0), ValueError,
           "batch_size") for kind in M.MIA_KINDS),
        (lambda m: M.mia_auc([float("nan")], [0.1]), ValueError, "^Parameter `member_scores`"),
        (lambda m: M.mia_auc([0.1], []), ValueError, "^Parameter `nonmember_scores`"),
        (lambda m: M.privleak(0.5, -0.1), ValueError, "^Parameter `auc_retain_model`"),
        (lambda m: M.exact_memorization(m, EXAMPLES, batch_size=0), ValueError, "batch_size"),
        (lambda m: M.extraction_strength(m, EXAMPLES, pad_id=-1), ValueError, "pad_id"),
        (lambda m: M.forget_quality([1.0], [float("inf")]), ValueError,
         "^Parameter `tr_retain_model`"),
        (lambda m: M.truth_ratio(m, EXAMPLES[:1], [EXAMPLES[1:]], batch_size=0), ValueError,
         "batch_size"),
        (lambda m: M.min_k_plus_plus_token_scores(m, EXAMPLES, pad_id=-1), ValueError, "pad_id"),
        (lambda m: M.mia_scores(m, EXAMPLES, kind="zlib", texts=["a"]), ValueError, "texts"),
        (
            lambda m: M.exact_memorization(m, [answer([0, 1], 1)], drop_last=True),
            ValueError,
            "drop_last",
        ),
        (lambda m: M.exact_memorization(m, EXAMPLES, k=3), TypeError, "keyword"),
        (lambda m: M.truth_ratio(m, EXAMPLES, [[EXAMPLES[0]]]), ValueError, "one entry per"),
        (lambda m: M.truth_ratio(m, EXAMPLES[:1], [[]]), ValueError, "non-empty"),
        (lambda m: M.generate_greedy(m, None, [[]], max_new_tokens=2), ValueError, "empty"),
        (lambda m: M.generate_greedy(m, None, [], max_new_tokens=2), ValueError, "non-empty"),
        (lambda m: M.generate_greedy(m, None, [[0]], max_new_tokens=-1), ValueError,
         "^Parameter `max_new_tokens` should be >= 0"),
        (lambda m: M.generate_greedy(m, None, [[0]], max_new_tokens=1, pad_id=-1), ValueError,
         "^Parameter `pad_id`"),
        (lambda m: M.generate_greedy(m, None, iter([[0]]), max_new_tokens=1), ValueError,
         "^Parameter `prompts` should be a non-empty list"),
        (lambda m: M.split_prompt_answer([{"input_ids": [0, 1], "labels": [0]}]), ValueError,
         r"^`examples\[0\]`: `labels` should be aligned"),
        (lambda m: M.rouge_l_recall(["a"], ["a", "b"]), ValueError, "same length"),
        (lambda m: M.rouge_l_recall([], []), ValueError, "not be empty"),
        (lambda m: M.rouge_l_recall("a b", ["a b"]), TypeError, "lists of strings"),
        (lambda m: M.forget_quality([], [1.0]), ValueError, "at least one"),
        (lambda m: M.forget_quality([float("nan")], [1.0]), ValueError, "finite"),
        (lambda m: M.model_utility({}), ValueError, "non-empty"),
        (lambda m: M.model_utility({"a": -0.1}), ValueError, ">= 0"),
        (lambda m: M.model_utility({"a": float("nan")}), ValueError, "finite"),
        (lambda m: M.mia_auc([], [0.1]), ValueError, "at least one"),
        (lambda m: M.privleak(1.2, 0.5), ValueError, r"\[0, 1\]"),
        (lambda m: M.truth_ratio_score([-1.0], forget=True), ValueError, ">= 0"),
        # each error names the argument it is about, as the caller spelled it
        (lambda m: M.answer_logprobs(m, EXAMPLES, pad_id=-1), ValueError, "^Parameter `pad_id`"),
        (lambda m: M.answer_logprobs(m, EXAMPLES, batch_size=True), TypeError,
         "^Parameter `batch_size` should be an int"),
        (lambda m: M.answer_logprobs(m, iter(EXAMPLES)), TypeError,
         r"^Parameter `examples` should be a list of examples.*Found `type\(examples\) = "
         "list_iterator`"),
        (lambda m: M.answer_logprobs(m, EXAMPLES[0]), TypeError, "^Parameter `examples`"),
        (lambda m: M.answer_logprobs(m, [{"labels": [0, 1]}]), TypeError,
         r"^`examples\[0\]` should be a mapping with `input_ids` and `labels`.*keys \['labels'\]"),
        (lambda m: M.answer_probability_normalised(m, EXAMPLES[:2], [[EXAMPLES[0]]]), ValueError,
         "^Parameters `wrong` and `correct` should have one entry per question"),
        (lambda m: M.answer_probability_normalised(m, EXAMPLES[:1], [[]]), ValueError,
         r"^`wrong\[0\]` should be a non-empty list"),
        (lambda m: M.answer_probability_normalised(m, EXAMPLES[:1], [EXAMPLES[1:]], batch_size=0),
         ValueError, "batch_size"),
        (lambda m: M.truth_ratio(m, {"a": 1}, [[EXAMPLES[0]]]), TypeError,
         "^Parameter `paraphrased` should be a list"),
        (lambda m: M.choice_logprobs(m, [[], EXAMPLES[:2]]), ValueError,
         r"^`options\[0\]` should be a non-empty list"),
        *((lambda m, v=v: M.model_utility({"a": v}), ValueError, r"`values\['a'\]` should be")
          for v in (True, "0.5")),
    ],
)
def test_bad_input_is_a_clear_error(call, error, match):
    with pytest.raises(error, match=match):
        call(LookupLM())


def test_greedy_generation_through_the_kv_cache_equals_full_forwards():
    """A transformers model generates through its KV cache (new tokens at each row's own
    position, the padding masked); a wrapper that hides the cache takes full forwards. The same
    tokens come out, for prompts of many lengths in one batch, in batches, and with EOS."""
    model = tiny_gpt2()

    class NoCache(torch.nn.Module):
        def __init__(self, inner):
            super().__init__()
            self.inner = inner

        def forward(self, input_ids, attention_mask=None):
            return self.inner(input_ids=input_ids, attention_mask=attention_mask)

    class PositionsOnly(NoCache):
        def forward(self, input_ids, attention_mask=None, position_ids=None):
            return super().forward(input_ids, attention_mask)

    assert M._takes_a_cache(model) in ("cache", "past_key_values")
    assert M._takes_a_cache(NoCache(model)) is None
    assert M._takes_a_cache(PositionsOnly(model)) is None  # positions but no cache to feed
    g = torch.Generator().manual_seed(3)
    prompts = [torch.randint(1, 20, (int(n),), generator=g).tolist()
               for n in torch.randint(1, 10, (40,), generator=g)]  # fmt: skip
    for eos_id, batch_size in ((None, 64), (5, 64), (7, 6), (11, 1)):
        cached = M.generate_greedy(model, None, prompts, max_new_tokens=12, eos_id=eos_id,
                                   batch_size=batch_size)  # fmt: skip
        full = M.generate_greedy(NoCache(model), None, prompts, max_new_tokens=12,
                                 eos_id=eos_id, batch_size=batch_size)  # fmt: skip
        assert cached == full, (eos_id, batch_size)
        if eos_id is not None:
            assert any(len(c) < 12 for c in cached)  # some rows stopped at EOS
    assert M.generate_greedy(model, None, prompts[:3], max_new_tokens=0) == [[], [], []]
    widths = []  # the cache is used: after the prompts' forward, one new token a step
    model.register_forward_pre_hook(
        lambda module, args, kwargs: widths.append(kwargs["input_ids"].shape[1]), with_kwargs=True
    )
    M.generate_greedy(model, None, [[1, 2, 3], [4]], max_new_tokens=4)
    assert widths == [3, 1, 1, 1]
    model.config.use_cache = False  # a config that turns the cache off: asked for it anyway
    assert M.generate_greedy(model, None, prompts[:5], max_new_tokens=6) == M.generate_greedy(
        NoCache(model), None, prompts[:5], max_new_tokens=6
    )
