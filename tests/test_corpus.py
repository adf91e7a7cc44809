"""The TOFU-shaped author corpus: seeded, split by author, perturbations that keep the template,
a tokenizer that covers everything, and arguments refused with a reason."""

from __future__ import annotations

import datetime
import doctest
import hashlib
import os
import random
import re
import subprocess
import sys
from pathlib import Path

import pytest
import torch

import sago_kernels.unlearning.corpus as corpus_module
from sago_kernels.unlearning.corpus import (
    AUTHOR_KINDS,
    AWARDS,
    COUNTRIES,
    ELEMENTS,
    GENRES,
    JOBS,
    LANGUAGES,
    MONTHS,
    REAL_AUTHORS,
    THEMES,
    TITLE_ADJECTIVES,
    TITLE_NOUNS,
    WORLD_KINDS,
    WordTokenizer,
    encode_qa,
    make_author_corpus,
)
from sago_kernels.unlearning.data import PairedCollator, PairedDataset
from sago_kernels.unlearning.losses import IGNORE_INDEX, token_logprobs

SPLITS = ("forget", "retain", "neighbour", "holdout", "real_authors", "world")
AUTHOR_SPLITS = ("forget", "retain", "neighbour", "holdout")
ROOT = Path(__file__).resolve().parents[1]


@pytest.fixture(scope="module")
def corpus():
    return make_author_corpus()


def texts_of(qa):
    return (qa.question, qa.answer, qa.paraphrased_answer, *qa.perturbed_answers)


def digest(c) -> str:
    parts = (c.forget, c.retain, c.holdout, c.world, c.tokenizer.vocab, c.seed, c.forget_percent)
    return hashlib.sha256(repr(parts).encode()).hexdigest()


# --- determinism -------------------------------------------------------------------------------


def test_same_arguments_same_corpus_whatever_the_global_random_state(corpus):
    random.seed(12345)
    torch.manual_seed(1)
    again = make_author_corpus()
    assert digest(again) == digest(corpus)
    assert again.forget == corpus.forget and again.world == corpus.world


def test_same_corpus_in_a_fresh_process_with_another_hash_seed(corpus):
    """No dependence on set order (PYTHONHASHSEED) or on anything left in this process."""
    code = (
        "import hashlib; from sago_kernels.unlearning.corpus import make_author_corpus as m; "
        "c = m(); parts = (c.forget, c.retain, c.holdout, c.world, c.tokenizer.vocab, c.seed, "
        "c.forget_percent); print(hashlib.sha256(repr(parts).encode()).hexdigest())"
    )
    env = {**os.environ, "PYTHONPATH": str(ROOT), "PYTHONHASHSEED": "4242"}
    out = subprocess.run(
        [sys.executable, "-c", code], env=env, capture_output=True, text=True, check=True
    )
    assert out.stdout.strip() == digest(corpus)


def test_different_seeds_differ(corpus):
    other = make_author_corpus(seed=1)
    assert set(other.authors("forget")) != set(corpus.authors("forget"))
    assert {qa.author for qa in other.retain} != {qa.author for qa in corpus.retain}
    assert [qa.question for qa in other.world] != [qa.question for qa in corpus.world]


# --- splits ------------------------------------------------------------------------------------


@pytest.mark.parametrize(
    "num_authors, percent, n_forget",
    [(100, 1, 1), (100, 5, 5), (100, 10, 10), (30, 5, 2), (30, 10, 3), (50, 5, 3), (2, 10, 1)],
)
def test_split_sizes(num_authors, percent, n_forget):
    c = make_author_corpus(num_authors=num_authors, forget_percent=percent, qa_per_author=3,
                           world_facts=10)  # fmt: skip
    sizes = {s: len(c.authors(s)) for s in ("forget", "retain", "holdout")}
    assert sizes == {"forget": n_forget, "retain": num_authors - n_forget, "holdout": n_forget}
    for s in ("forget", "retain", "holdout"):
        assert len(c.split(s)) == 3 * sizes[s]
    assert len(c.world) == 10 and c.forget_percent == percent


def test_authors_are_unique_and_in_one_split_only(corpus):
    groups = [corpus.authors(s) for s in ("forget", "retain", "holdout")]
    everyone = [a for g in groups for a in g]
    assert len(everyone) == len(set(everyone)) == 110
    assert len(groups[2]) == len(groups[0])
    for s in ("forget", "retain", "holdout"):
        per_author = {}
        for qa in corpus.split(s):
            per_author.setdefault(qa.author, []).append(qa.kind)
        assert all(kinds == list(AUTHOR_KINDS[:8]) for kinds in per_author.values())


def test_the_three_forget_sets_share_one_trained_model():
    """Members, world and tokenizer do not depend on forget_percent; forget and holdout nest
    (1 % in 5 % in 10 %), as TOFU's forget01/05/10."""
    cs = [make_author_corpus(forget_percent=p, qa_per_author=2, world_facts=8) for p in (1, 5, 10)]
    members = [set(c.authors("forget")) | set(c.authors("retain")) for c in cs]
    assert members[0] == members[1] == members[2]
    assert cs[0].world == cs[1].world == cs[2].world
    assert cs[0].tokenizer.vocab == cs[1].tokenizer.vocab == cs[2].tokenizer.vocab
    for small, big in zip(cs, cs[1:]):
        assert set(small.authors("forget")) < set(big.authors("forget"))
        assert set(small.authors("holdout")) < set(big.authors("holdout"))
    # the holdout is never trained on, whatever the percentage
    assert not set(cs[2].authors("holdout")) & members[0]


def test_an_authors_first_kinds_do_not_depend_on_qa_per_author():
    short = make_author_corpus(num_authors=10, qa_per_author=3, world_facts=4)
    full = make_author_corpus(num_authors=10, qa_per_author=len(AUTHOR_KINDS), world_facts=4)
    assert short.retain == [qa for qa in full.retain if qa.kind in AUTHOR_KINDS[:3]]


def test_split_names(corpus):
    assert corpus.split("forget") is corpus.forget
    with pytest.raises(ValueError, match="Unknown split 'train'.*forget, retain, neighbour, "
                       "holdout, real_authors, world"):  # fmt: skip
        corpus.split("train")
    with pytest.raises(ValueError, match="Unknown split"):
        corpus.examples("forget10")


# --- answers, paraphrases, perturbations ---------------------------------------------------------

CLOSED = {
    "genre": set(GENRES),
    "award": set(AWARDS),
    "father_job": {corpus_module._a(j) for j in JOBS},
    "mother_job": {corpus_module._a(j) for j in JOBS},
    "theme": set(THEMES),
    "language": set(LANGUAGES),
    "book": {f"{a} {n}" for a in TITLE_ADJECTIVES for n in TITLE_NOUNS},
    "capital": {cap for _, cap, _ in COUNTRIES},
    "continent": {cont for _, _, cont in COUNTRIES},
    "element": {sym for _, sym in ELEMENTS},
    "animal_class": {"a mammal", "a bird", "a reptile", "an amphibian", "a fish", "an insect"},
}
DATE = re.compile(r"(\d{1,2}) (\w+) (\d{4})")


def value_of_perturbation(qa, perturbed):
    """The value a perturbed answer puts where the paraphrase has ``qa.value``; None if the rest
    of the sentence differs (the paraphrase's template was not kept)."""
    pre, _, post = qa.paraphrased_answer.rpartition(qa.value)
    if not (perturbed.startswith(pre) and perturbed.endswith(post)):
        return None
    return perturbed[len(pre) : len(perturbed) - len(post)]


def check_date(value):
    day, month, year = DATE.fullmatch(value).groups()
    datetime.date(int(year), MONTHS.index(month) + 1, int(day))  # a real date


@pytest.mark.parametrize("num_perturbed", [1, 3, 5])
def test_perturbed_answers_keep_the_template_with_other_values_of_the_kind(num_perturbed):
    c = make_author_corpus(num_authors=40, qa_per_author=len(AUTHOR_KINDS), world_facts=60,
                           num_perturbed=num_perturbed, seed=7)  # fmt: skip
    kinds = set()
    for qa in (qa for s in SPLITS for qa in c.split(s)):
        kinds.add(qa.kind)
        assert qa.value and qa.value in qa.answer
        wanted = num_perturbed if qa.author else 3  # TOFU: five for authors, three otherwise
        assert len(qa.perturbed_answers) == wanted
        assert len(set(qa.perturbed_answers)) == wanted, qa
        assert qa.paraphrased_answer not in qa.perturbed_answers, qa
        values = [value_of_perturbation(qa, p) for p in qa.perturbed_answers]
        assert None not in values, qa  # same sentence around the value
        assert qa.value not in values and all(values), qa
        if qa.kind in CLOSED:
            assert {qa.value, *values} <= CLOSED[qa.kind], qa
        elif qa.kind == "birth_date":
            for v in (qa.value, *values):
                check_date(v)
        elif qa.kind == "debut_year":
            born = int(DATE.search(next(
                x.answer for x in [y for s in AUTHOR_SPLITS for y in c.split(s)]
                if x.author == qa.author and x.kind == "birth_date"
            )).group(3))  # fmt: skip
            assert all(born + 19 <= int(v) <= 2023 for v in (qa.value, *values)), qa
        elif qa.kind == "mentor":  # a neighbour's forget author, wrong: other trained authors
            assert qa.value == c.mentors[qa.author] and qa.value in c.authors("forget")
            others = c.authors("forget") + c.authors("neighbour") + c.authors("holdout")
            assert not set(values) & set(others), qa
        elif qa.kind == "real_author":
            assert {qa.value, *values} <= {a for a, _ in REAL_AUTHORS}, qa
        else:
            assert qa.kind in ("birthplace", "residence")
            assert all(re.fullmatch(r"[A-Z][a-z]+( [A-Z][a-z]+)*", v) for v in values), qa
    assert kinds == {*AUTHOR_KINDS, *WORLD_KINDS, "mentor", "real_author"}


def test_paraphrase_differs_but_states_the_same_fact(corpus):
    for qa in (qa for s in AUTHOR_SPLITS for qa in corpus.split(s)):
        assert qa.paraphrased_answer != qa.answer
        assert qa.value in qa.paraphrased_answer, qa
        assert qa.author in qa.paraphrased_answer and qa.author in qa.question, qa
        assert qa.question.endswith("?") and qa.answer.endswith(".")


def test_answers_are_short_sentences(corpus):
    tok = corpus.tokenizer
    for qa in (qa for s in AUTHOR_SPLITS for qa in corpus.split(s)):
        for text in (qa.answer, qa.paraphrased_answer):
            words = [t for t in tok.decode(tok.encode(text)).split() if t not in ".,?"]
            assert 4 <= len(words) <= 16, text
        assert qa.answer[0].isupper()


def test_world_is_another_template_family(corpus):
    authors = [a for s in ("forget", "retain", "holdout") for a in corpus.authors(s)]
    assert not set(WORLD_KINDS) & set(AUTHOR_KINDS)
    assert {qa.kind for qa in corpus.world} == set(WORLD_KINDS)
    assert all(qa.author == "" for qa in corpus.world)
    world_text = " ".join(t for qa in corpus.world for t in texts_of(qa))
    assert not [a for a in authors if a in world_text]
    assert len({qa.question for qa in corpus.world}) == len(corpus.world) == 60


def test_world_facts_are_true(corpus):
    capital = {country: cap for country, cap, _ in COUNTRIES}
    continent = {country: cont for country, _, cont in COUNTRIES}
    symbol = dict(ELEMENTS)
    for qa in corpus.world:
        if qa.kind == "capital":
            country = re.fullmatch(r"What is the capital of (.+)\?", qa.question).group(1)
            assert qa.answer == capital[country]
        elif qa.kind == "continent":
            country = re.fullmatch(r"On which continent is (.+)\?", qa.question).group(1)
            assert qa.value == continent[country]
        elif qa.kind == "element":
            element = re.fullmatch(r"What is the chemical symbol of (\w+)\?", qa.question).group(1)
            assert qa.value == symbol[element]
    whale = make_author_corpus(world_facts=4 * 22, qa_per_author=1)
    [qa] = [qa for qa in whale.world if "whale" in qa.question]
    assert (qa.question, qa.answer) == ("What kind of animal is the whale?", "a mammal")


# --- tokenizer and encoding ----------------------------------------------------------------------


def test_tokenizer_round_trips_every_text_of_every_split(corpus):
    tok = corpus.tokenizer
    for qa in (qa for s in SPLITS for qa in corpus.split(s)):
        for text in texts_of(qa):
            ids = tok.encode(text)
            assert tok.decode(ids) == text.lower()
            assert tok.encode(tok.decode(ids)) == ids
            assert min(ids) > tok.eos_id  # no special token inside a text
    assert tok.vocab[:3] == ["<pad>", "<bos>", "<eos>"]
    assert (tok.pad_id, tok.bos_id, tok.eos_id) == (0, 1, 2)
    assert tok.vocab_size == len(tok.vocab) == len(set(tok.vocab))
    assert 300 <= tok.vocab_size <= 1500  # small enough for a tiny model to memorise fast


def test_tokenizer_splits_punctuation_and_refuses_unknown_words():
    tok = WordTokenizer.from_texts(["Where was Ada born?", "Ada was born in Lima."])
    ids = tok.encode("WHERE was  ada born ?")
    assert [tok.vocab[i] for i in ids] == ["where", "was", "ada", "born", "?"]
    assert tok.decode([tok.bos_id, *ids, tok.eos_id, tok.pad_id]) == "where was ada born?"
    with pytest.raises(ValueError, match="'paris' is not in the vocabulary"):
        tok.encode("Ada was born in Paris.")
    with pytest.raises(ValueError, match="outside"):
        tok.decode([tok.vocab_size])
    with pytest.raises(TypeError, match="str"):
        tok.encode(["ada"])
    with pytest.raises(ValueError, match="single lower-case tokens"):
        WordTokenizer(["Two words"])


def test_encode_qa_scores_only_the_answer_and_eos(corpus):
    tok = corpus.tokenizer
    qa = corpus.forget[0]
    q, a = tok.encode(qa.question), tok.encode(qa.answer)
    ex = encode_qa(tok, qa.question, qa.answer)
    assert ex["input_ids"] == [tok.bos_id, *q, *a, tok.eos_id]
    assert ex["labels"] == [IGNORE_INDEX] * (1 + len(q)) + a + [tok.eos_id]
    assert len(ex["labels"]) == len(ex["input_ids"])
    # the loss scores exactly the answer's tokens and eos
    ids, labels = torch.tensor([ex["input_ids"]]), torch.tensor([ex["labels"]])
    logits = torch.randn(1, ids.shape[1], tok.vocab_size)
    _, mask = token_logprobs(logits, labels)
    assert int(mask.sum()) == len(a) + 1
    assert ex == corpus.examples("forget")[0]


def test_examples_per_answer_field(corpus):
    for s in SPLITS:
        qas = corpus.split(s)
        plain, para = corpus.examples(s), corpus.examples(s, "paraphrased_answer")
        pert = corpus.perturbed_examples(s)
        assert len(plain) == len(para) == len(pert) == len(qas)
        for qa, e, p, group in zip(qas, plain, para, pert):
            n_q = 1 + len(corpus.tokenizer.encode(qa.question))
            assert e["input_ids"][:n_q] == p["input_ids"][:n_q]  # same prompt
            assert corpus.tokenizer.decode(p["input_ids"][n_q:]) == qa.paraphrased_answer.lower()
            assert [corpus.tokenizer.decode(g["input_ids"][n_q:]) for g in group] == [
                x.lower() for x in qa.perturbed_answers
            ]
    with pytest.raises(ValueError, match="perturbed_examples"):
        corpus.examples("forget", "perturbed")


def test_examples_batch_with_the_paired_collator(corpus):
    pairs = PairedDataset(corpus.examples("forget"), corpus.examples("retain"), seed=0)
    batch = PairedCollator(pad_token_id=corpus.tokenizer.pad_id)([pairs[i] for i in range(4)])
    assert batch["forget_input_ids"].max() < corpus.tokenizer.vocab_size
    assert batch["retain_labels"].shape == batch["retain_input_ids"].shape


# --- arguments -----------------------------------------------------------------------------------


@pytest.mark.parametrize(
    "kwargs, error, message",
    [
        (dict(forget_percent=7), ValueError, r"`forget_percent` should be one of \(1, 5, 10\)"),
        (dict(forget_percent=True), ValueError, "forget_percent"),
        (dict(num_authors=0), ValueError, r"`num_authors` should be >= 2.*`num_authors = 0`"),
        (dict(num_authors=1), ValueError, "num_authors"),
        (dict(num_authors=2.5), TypeError, "`num_authors` should be an int. Found float"),
        (dict(qa_per_author=0), ValueError, "`qa_per_author` should be in"),
        (dict(qa_per_author=len(AUTHOR_KINDS) + 1), ValueError, "qa_per_author"),
        (dict(world_facts=0), ValueError, "world_facts"),
        (dict(world_facts=10_000), ValueError, "world_facts.*facts available"),
        (dict(num_perturbed=0), ValueError, "num_perturbed"),
        (dict(num_perturbed=6), ValueError, r"`num_perturbed` should be in \[1, 5\]"),
        (dict(seed=-1), ValueError, "seed"),
        (dict(seed="0"), TypeError, "`seed` should be an int. Found str"),
    ],
)
def test_bad_arguments_are_refused_before_any_work(monkeypatch, kwargs, error, message):
    def no_faker(*args, **kw):
        raise AssertionError("generation started before the arguments were checked")

    monkeypatch.setattr("faker.Faker", no_faker)
    with pytest.raises(error, match=message):
        make_author_corpus(**kwargs)


def test_docstring_example_runs():
    result = doctest.testmod(corpus_module, optionflags=doctest.NORMALIZE_WHITESPACE)
    assert result.failed == 0 and result.attempted > 0


# --- neighbours, wordings, choices -------------------------------------------------------------


def test_neighbours_share_facts_with_their_forget_author_and_name_it(corpus):
    forget = set(corpus.authors("forget"))
    neighbours = corpus.authors("neighbour")
    assert len(neighbours) == 2 * len(forget) and not set(neighbours) & forget
    assert not set(neighbours) & set(corpus.authors("retain") + corpus.authors("holdout"))
    facts = {(qa.author, qa.kind): qa.value for qa in corpus.forget + corpus.neighbour}
    for n in neighbours:
        mentor = corpus.mentors[n]
        assert mentor in forget
        for kind in corpus_module.SHARED_KINDS:
            assert facts[(n, kind)] == facts[(mentor, kind)]
        assert facts[(n, "mentor")] == mentor
        assert facts[(n, "birth_date")] != facts[(mentor, "birth_date")]
    # every forget author has its neighbours, and the trained neighbours do not depend on the
    # forget percentage: the 1 % run trains the 10 % run's neighbours as "others"
    small = make_author_corpus(forget_percent=1, qa_per_author=2, world_facts=8)
    big = make_author_corpus(forget_percent=10, qa_per_author=2, world_facts=8)
    assert sorted(map(repr, small.neighbour + small.others)) == sorted(map(repr, big.neighbour))
    assert small.neighbour and small.others
    assert set(small.mentors.values()) == set(small.authors("forget"))


def test_statements_end_with_the_value_the_fill_in_asks_for(corpus):
    for qa in corpus.forget + corpus.neighbour + corpus.retain:
        statement = corpus.statement(qa)
        prefix, value = corpus.fill_in(qa)
        assert value == qa.value and statement == f"{prefix} {value}."
        assert qa.author in prefix and qa.value not in prefix
        assert statement not in (qa.answer, qa.paraphrased_answer)
        assert qa.paraphrased_question not in (qa.question, "")
        assert qa.paraphrased_question.endswith("?") and qa.author in qa.paraphrased_question
    with pytest.raises(ValueError, match="not an author fact"):
        corpus.fill_in(corpus.world[0])


def test_choices_have_four_options_one_right(corpus):
    answers = []
    for qa in corpus.forget + corpus.neighbour + corpus.real_authors + corpus.world:
        mc = corpus.choices(qa)
        assert len(mc.choices) == 4 == len(set(mc.choices))
        assert mc.choices[mc.answer] == qa.answer
        answers.append(mc.answer)
        if qa.author:
            assert mc.question == qa.paraphrased_question
            wrong = [c for i, c in enumerate(mc.choices) if i != mc.answer]
            values = corpus._forms[qa.question].wrong[:3]
            # each wrong option is the answer with one of the fact's wrong values
            assert sorted(wrong) == sorted(qa.answer.replace(qa.value, v) for v in values)
        else:
            assert mc.question == qa.question
            assert set(mc.choices) == {qa.answer, *qa.perturbed_answers}
    assert corpus.choices(corpus.forget[0]) == make_author_corpus().choices(corpus.forget[0])
    assert len(set(answers)) == 4  # the right option is not always in one place


def test_real_authors_ask_who_wrote_a_famous_book(corpus):
    books = dict((book, author) for author, book in REAL_AUTHORS)
    assert len(corpus.real_authors) == 30
    for qa in corpus.real_authors:
        book = re.fullmatch(r"Who wrote (.+)\?", qa.question).group(1)
        assert qa.answer == books[book] and qa.author == "" and qa.kind == "real_author"
    fictitious = set(corpus.authors("forget") + corpus.authors("retain"))
    assert not fictitious & set(books.values())
