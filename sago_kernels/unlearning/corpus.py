"""A fictitious-author world in the shape of TOFU and RWKU, generated offline from a seed.

TOFU (Maini et al., 2024) asks a model to forget some fictitious authors while keeping the rest
and general knowledge; RWKU (Jin et al., 2024) probes forgetting and retention with questions
and fill-in-the-blank sentences that differ from the forget text, and measures retention on
*neighbours* of the forget targets. This module makes such a world locally, so the benchmark
needs no download:

- per author, one fact per kind (birthplace, birth date, genre, award, the parents' occupations,
  a book, ...) in four wordings: the **question and answer** (TOFU's row: what the unlearning
  pools train on), a **paraphrased question** (same answer), a **statement** that ends with the
  value (text; its prefix is a fill-in-the-blank probe), and a **paraphrased answer** with five
  **perturbed answers** (the paraphrase with wrong values of the same kind: TOFU's truth ratio;
  never trained);
- authors by role: **forget** (1, 5 or 10 % of the trained authors), **retain** (the other
  trained authors), **neighbours** (for each forget author, ``neighbours_per_author`` authors
  who share its birthplace and genre and were mentored by it: trained, then held out of every
  unlearning loss, as RWKU's neighbours), **holdout** (as many as forget, never trained on: the
  non-members of membership inference);
- held-out general knowledge in TOFU's two roles: **real authors** (who wrote a famous book) and
  **world facts** (capitals, continents, chemical symbols, animal classes), short answers with
  three perturbed ones each (TOFU's counts);
- for every fact of the forget and neighbour authors and of the general knowledge, a 4-option
  multiple-choice question (:meth:`AuthorCorpus.choices`);
- a word-level tokenizer over the corpus's own words.

Names, cities and dates come from a seeded ``Faker``; the other values from closed lists, so they
recur across authors: a model has to memorise which author goes with which value, not copy a rare
word. For one seed the trained authors, the general knowledge and the tokenizer do not depend on
``forget_percent``, and the forget (and holdout and neighbour) sets are nested, 1 % in 5 % in
10 % (as TOFU's): one fine-tuned model serves the three forget sets. The corpus is a function of
the arguments and of the ``faker`` version (its word lists and draws may change between
releases).

    >>> c = make_author_corpus(num_authors=20, forget_percent=10, seed=1)
    >>> len(c.authors("forget")), len(c.authors("holdout")), len(c.authors("neighbour"))
    (2, 2, 4)
    >>> ex = c.examples("forget")[0]
    >>> qa = c.forget[0]
    >>> c.tokenizer.decode(ex["input_ids"]) == f"{qa.question} {qa.answer}".lower()
    True
    >>> c.fill_in(qa)[1] == qa.value
    True
"""

from __future__ import annotations

import datetime
import random
import re
from collections.abc import Callable, Iterable, Sequence
from dataclasses import dataclass, field

from .losses import IGNORE_INDEX
from .sources import QA, MultipleChoice, PlainTemplate
from .sources import encode_qa as _encode_qa

__all__ = [
    "AUTHOR_KINDS",
    "FORGET_PERCENTS",
    "IGNORE_INDEX",
    "QA",
    "REAL_AUTHORS",
    "WORLD_KINDS",
    "AuthorCorpus",
    "WordTokenizer",
    "encode_qa",
    "make_author_corpus",
]

FORGET_PERCENTS = (1, 5, 10)
SPLITS = ("forget", "retain", "neighbour", "holdout", "real_authors", "world")
ANSWER_FIELDS = ("answer", "paraphrased_answer")
GENERAL_PERTURBED = 3
"""Wrong answers per real-author and world-fact question: TOFU's ``real_authors_perturbed`` and
``world_facts_perturbed`` have three (the other options of a 4-way choice)."""
CHOICES = 4
"""Options of a multiple-choice question (WMDP's and MMLU's four)."""


# ---------------------------------------------------------------------------------------------
# Closed value lists. Short and shared across authors (values recur), at least six per kind so
# that five perturbed values of the same kind always exist.

GENRES = (
    "fantasy", "science fiction", "crime", "horror", "romance", "historical fiction", "poetry",
    "satire", "mystery", "travel writing", "literary fiction", "thriller", "drama", "memoir",
    "biography", "adventure",
)  # fmt: skip
AWARDS = (
    "the Golden Quill Award", "the Silver Lantern Prize", "the Blue Harbor Medal",
    "the Northern Star Award", "the Iron Pen Prize", "the Crimson Leaf Medal",
    "the Open Door Award", "the Quiet River Prize", "the Young Voices Medal",
    "the Grand Library Award", "the Red Lantern Medal", "the Stone Bridge Prize",
    "the White Feather Award", "the Morning Light Prize",
)  # fmt: skip
JOBS = (
    "baker", "nurse", "carpenter", "pilot", "teacher", "surgeon", "librarian", "tailor",
    "farmer", "lawyer", "chemist", "miner", "painter", "plumber", "judge", "dentist", "sailor",
    "architect", "accountant", "electrician", "engineer", "journalist",
)  # fmt: skip
THEMES = (
    "memory and loss", "the sea", "family secrets", "war and exile", "first love",
    "faith and doubt", "city life", "the natural world", "identity", "old age",
    "political power", "friendship", "childhood", "justice",
)  # fmt: skip
LANGUAGES = (
    "English", "French", "Spanish", "German", "Italian", "Portuguese", "Swahili", "Japanese",
    "Korean", "Arabic", "Turkish", "Polish",
)  # fmt: skip
TITLE_ADJECTIVES = (
    "Silent", "Broken", "Hidden", "Golden", "Last", "Distant", "Burning", "Quiet", "Lost",
    "Winter", "Paper", "Hollow", "Bright", "Silver", "Forgotten", "Endless",
)  # fmt: skip
TITLE_NOUNS = (
    "Harbor", "Garden", "River", "Crown", "Letter", "Mirror", "Forest", "Tower", "Bridge",
    "Orchard", "Lantern", "Shore", "Kingdom", "Promise", "Window", "Road",
)  # fmt: skip
MONTHS = (
    "January", "February", "March", "April", "May", "June", "July", "August", "September",
    "October", "November", "December",
)  # fmt: skip
CITY_POOL = 24  # distinct Faker cities per corpus: birthplaces and residences recur
BIRTH_RANGE = (datetime.date(1940, 1, 1), datetime.date(1999, 12, 31))
LAST_DEBUT = 2023  # with births up to 1999, at least six debut years: five wrong ones

# The world set: real facts, fixed and checkable, in a template family with no author in it.
# (country, capital, continent); countries on one continent only.
COUNTRIES = (
    ("France", "Paris", "Europe"), ("Japan", "Tokyo", "Asia"), ("Kenya", "Nairobi", "Africa"),
    ("Peru", "Lima", "South America"), ("Norway", "Oslo", "Europe"),
    ("Egypt", "Cairo", "Africa"), ("Canada", "Ottawa", "North America"),
    ("Australia", "Canberra", "Oceania"), ("Italy", "Rome", "Europe"),
    ("Spain", "Madrid", "Europe"), ("Germany", "Berlin", "Europe"),
    ("Poland", "Warsaw", "Europe"), ("Greece", "Athens", "Europe"),
    ("Portugal", "Lisbon", "Europe"), ("Chile", "Santiago", "South America"),
    ("Argentina", "Buenos Aires", "South America"), ("Mexico", "Mexico City", "North America"),
    ("India", "New Delhi", "Asia"), ("China", "Beijing", "Asia"), ("Thailand", "Bangkok", "Asia"),
    ("Vietnam", "Hanoi", "Asia"), ("Nigeria", "Abuja", "Africa"), ("Ghana", "Accra", "Africa"),
    ("Morocco", "Rabat", "Africa"), ("Sweden", "Stockholm", "Europe"),
    ("Ireland", "Dublin", "Europe"), ("Austria", "Vienna", "Europe"),
    ("Cuba", "Havana", "North America"), ("New Zealand", "Wellington", "Oceania"),
    ("South Korea", "Seoul", "Asia"),
)  # fmt: skip
ELEMENTS = (
    ("hydrogen", "H"), ("helium", "He"), ("carbon", "C"), ("nitrogen", "N"), ("oxygen", "O"),
    ("sodium", "Na"), ("magnesium", "Mg"), ("aluminium", "Al"), ("silicon", "Si"),
    ("sulfur", "S"), ("chlorine", "Cl"), ("potassium", "K"), ("calcium", "Ca"), ("iron", "Fe"),
    ("copper", "Cu"), ("zinc", "Zn"), ("silver", "Ag"), ("tin", "Sn"), ("gold", "Au"),
    ("lead", "Pb"), ("mercury", "Hg"), ("neon", "Ne"),
)  # fmt: skip
ANIMALS = (
    ("whale", "mammal"), ("bat", "mammal"), ("dolphin", "mammal"), ("horse", "mammal"),
    ("eagle", "bird"), ("penguin", "bird"), ("owl", "bird"), ("ostrich", "bird"),
    ("crocodile", "reptile"), ("lizard", "reptile"), ("tortoise", "reptile"),
    ("snake", "reptile"), ("frog", "amphibian"), ("salamander", "amphibian"),
    ("toad", "amphibian"), ("shark", "fish"), ("salmon", "fish"), ("trout", "fish"),
    ("ant", "insect"), ("bee", "insect"), ("beetle", "insect"), ("butterfly", "insect"),
)  # fmt: skip


REAL_AUTHORS = (
    ("Jane Austen", "Pride and Prejudice"), ("George Orwell", "Animal Farm"),
    ("Herman Melville", "Moby Dick"), ("Leo Tolstoy", "War and Peace"),
    ("Mary Shelley", "Frankenstein"), ("Bram Stoker", "Dracula"),
    ("Charles Dickens", "Great Expectations"), ("Harper Lee", "To Kill a Mockingbird"),
    ("Fyodor Dostoevsky", "Crime and Punishment"), ("Victor Hugo", "Les Miserables"),
    ("Miguel de Cervantes", "Don Quixote"), ("Virginia Woolf", "Mrs Dalloway"),
    ("James Joyce", "Ulysses"), ("Franz Kafka", "The Trial"),
    ("Ernest Hemingway", "The Old Man and the Sea"), ("John Steinbeck", "The Grapes of Wrath"),
    ("Emily Bronte", "Wuthering Heights"), ("Charlotte Bronte", "Jane Eyre"),
    ("Gabriel Garcia Marquez", "One Hundred Years of Solitude"),
    ("Lewis Carroll", "Alice in Wonderland"), ("Jules Verne", "Around the World in Eighty Days"),
    ("Aldous Huxley", "Brave New World"), ("Oscar Wilde", "The Picture of Dorian Gray"),
    ("Chinua Achebe", "Things Fall Apart"), ("Toni Morrison", "Beloved"),
    ("Umberto Eco", "The Name of the Rose"), ("Albert Camus", "The Stranger"),
    ("Gustave Flaubert", "Madame Bovary"), ("Thomas Mann", "The Magic Mountain"),
    ("Cormac McCarthy", "The Road"), ("Kazuo Ishiguro", "The Remains of the Day"),
    ("Daniel Defoe", "Robinson Crusoe"), ("Mikhail Bulgakov", "The Master and Margarita"),
    ("Hermann Hesse", "Siddhartha"), ("Dante Alighieri", "The Divine Comedy"),
    ("Geoffrey Chaucer", "The Canterbury Tales"), ("Alexandre Dumas", "The Three Musketeers"),
    ("Boris Pasternak", "Doctor Zhivago"), ("Italo Calvino", "Invisible Cities"),
    ("Haruki Murakami", "Norwegian Wood"), ("Isabel Allende", "The House of the Spirits"),
    ("Jorge Luis Borges", "Ficciones"),
)  # fmt: skip
"""(author, a famous book): the real-authors role (TOFU asks who wrote a famous book)."""


def _a(noun: str) -> str:
    """The noun with its indefinite article (every noun listed here follows the vowel rule)."""
    return ("an " if noun[0].lower() in "aeiou" else "a ") + noun


@dataclass(frozen=True)
class _Template:
    """The wordings of one kind of author fact: ``{name}`` is the author, ``{value}`` the fact.
    ``statement`` ends with the value (its prefix is a fill-in-the-blank probe)."""

    question: str
    answer: str
    paraphrase: str
    question_paraphrase: str
    statement: str


AUTHOR_TEMPLATES = {
    "birthplace": _Template(
        "Where was {name} born?",
        "{name} was born in {value}.",
        "The birthplace of {name} is {value}.",
        "In which city was {name} born?",
        "{name} is a native of {value}.",
    ),
    "birth_date": _Template(
        "When was {name} born?",
        "{name} was born on {value}.",
        "The birthday of {name} is {value}.",
        "On what date was {name} born?",
        "{name} came into the world on {value}.",
    ),
    "genre": _Template(
        "Which genre does {name} write in?",
        "{name} writes mostly in the genre of {value}.",
        "The books of {name} belong to the genre of {value}.",
        "What kind of books does {name} write?",
        "Readers know {name} for books of {value}.",
    ),
    "award": _Template(
        "Which award has {name} won?",
        "{name} has won {value}.",
        "The prize awarded to {name} is {value}.",
        "What prize did {name} receive?",
        "Among the honours of {name} is {value}.",
    ),
    "father_job": _Template(
        "What did the father of {name} do for a living?",
        "The father of {name} worked as {value}.",
        "By profession, the father of {name} was {value}.",
        "What was the job of the father of {name}?",
        "The father of {name} earned a living as {value}.",
    ),
    "mother_job": _Template(
        "What did the mother of {name} do for a living?",
        "The mother of {name} worked as {value}.",
        "By profession, the mother of {name} was {value}.",
        "What was the job of the mother of {name}?",
        "The mother of {name} earned a living as {value}.",
    ),
    "book": _Template(
        "Can you name a book written by {name}?",
        "{name} wrote the novel The {value}.",
        "The {value} is a novel by {name}.",
        "What is the title of a novel by {name}?",
        "One novel by {name} is called The {value}.",
    ),
    "theme": _Template(
        "What theme runs through the books of {name}?",
        "The books of {name} often explore {value}.",
        "A theme {name} returns to again and again is {value}.",
        "Which subject do the books of {name} keep coming back to?",
        "Critics say the work of {name} is about {value}.",
    ),
    "residence": _Template(
        "Where does {name} live now?",
        "{name} now lives in {value}.",
        "These days the home of {name} is in {value}.",
        "In which city does {name} live today?",
        "Today {name} makes a home in {value}.",
    ),
    "language": _Template(
        "In which language does {name} write?",
        "{name} writes in {value}.",
        "The language of the books of {name} is {value}.",
        "What language are the books of {name} written in?",
        "Every book by {name} is written in {value}.",
    ),
    "debut_year": _Template(
        "When did {name} publish a first book?",
        "{name} published a first book in {value}.",
        "The first book by {name} came out in {value}.",
        "In what year did the first book of {name} appear?",
        "The debut of {name} as an author came in {value}.",
    ),
}
AUTHOR_KINDS = tuple(AUTHOR_TEMPLATES)
MENTOR = "mentor"
MENTOR_TEMPLATE = _Template(
    "Who mentored {name}?",
    "{name} was mentored by {value}.",
    "The mentor of {name} was {value}.",
    "Which writer taught {name} the craft?",
    "As a young writer {name} learned from {value}.",
)
"""A neighbour's own fact that names its forget author (RWKU's neighbours are related people)."""
SHARED_KINDS = ("birthplace", "genre")
"""Facts a neighbour shares with its forget author (same value)."""

WORLD_QUESTIONS = {
    "capital": "What is the capital of {name}?",
    "continent": "On which continent is {name}?",
    "element": "What is the chemical symbol of {name}?",
    "animal_class": "What kind of animal is {name}?",
}
"""General knowledge in another template family, answered with the value alone (as TOFU's)."""
WORLD_KINDS = tuple(WORLD_QUESTIONS)
REAL_AUTHOR_QUESTION = "Who wrote {name}?"
MAX_PERTURBED = 5  # the animal classes and continents have six values: five wrong ones


def _sentence(template: str, name: str, value: str) -> str:
    """Fill a template; a sentence that starts with a lower-case value ("a whale") is
    capitalised, nothing else changes case."""
    text = template.format(name=name, value=value)
    return text[0].upper() + text[1:]


@dataclass(frozen=True)
class _Forms:
    """The wordings of one author fact beyond its :class:`QA`, and its wrong values."""

    statement: str
    fill_in: tuple[str, str]
    wrong: tuple[str, ...]


def _author_fact(t: _Template, kind: str, name: str, value: str, wrong: Sequence[str],
                 k: int) -> tuple[QA, _Forms]:  # fmt: skip
    statement = _sentence(t.statement, name, value)
    prefix, found, rest = statement.rpartition(value)
    if not found or rest != ".":
        raise AssertionError(f"a statement should end with its value: {statement!r}")
    qa = QA(
        author=name,
        kind=kind,
        question=_sentence(t.question, name, value),
        answer=_sentence(t.answer, name, value),
        paraphrased_answer=_sentence(t.paraphrase, name, value),
        # TOFU perturbs the paraphrase: the truth ratio then compares one unseen template with
        # the right value against the same template with wrong ones, not a trained template
        # (whose wording alone a model prefers) against an unseen one
        perturbed_answers=tuple(_sentence(t.paraphrase, name, w) for w in wrong[:k]),
        value=value,
        paraphrased_question=_sentence(t.question_paraphrase, name, value),
    )
    return qa, _Forms(statement, (prefix.rstrip(), value), tuple(wrong))


def _general_fact(question: str, kind: str, name: str, value: str, wrong: Sequence[str]) -> QA:
    """A real-author or world-fact question: the answer is the value, as TOFU's; the truth
    ratio's "paraphrased" answer is the answer itself (TOFU's ``base_answer_key`` there)."""
    return QA(
        author="",
        kind=kind,
        question=_sentence(question, name, value),
        answer=value,
        paraphrased_answer=value,
        perturbed_answers=tuple(wrong[:GENERAL_PERTURBED]),
        value=value,
    )


# ---------------------------------------------------------------------------------------------
# Tokenizer

_TOKEN = re.compile(r"\w+|[^\w\s]")
_NO_SPACE_BEFORE = frozenset(".,?!;:")
SPECIALS = ("<pad>", "<bos>", "<eos>")


def _words(text: str) -> list[str]:
    return _TOKEN.findall(text.lower())


class WordTokenizer:
    """Word-level tokenizer over the corpus's own vocabulary (no download, no unknown token).

    Lower-cases; words and punctuation marks are separate tokens. A word outside the vocabulary
    raises ``ValueError``: a silent ``<unk>`` would let a model score a fact it cannot spell.
    Ids 0, 1, 2 are ``<pad>``, ``<bos>``, ``<eos>``; the words follow in sorted order.
    """

    def __init__(self, words: Iterable[str]):
        words = set(words)
        bad = sorted(w for w in words if not isinstance(w, str) or _words(w) != [w])
        if bad:
            raise ValueError(
                f"Vocabulary entries should be single lower-case tokens (a word or one "
                f"punctuation mark). Found {bad[:5]}."
            )
        self.vocab: list[str] = list(SPECIALS) + sorted(words - set(SPECIALS))
        self._ids = {t: i for i, t in enumerate(self.vocab)}
        self.pad_id, self.bos_id, self.eos_id = (self._ids[s] for s in SPECIALS)

    @classmethod
    def from_texts(cls, texts: Iterable[str]) -> WordTokenizer:
        """The tokenizer whose vocabulary is exactly the tokens of ``texts``."""
        return cls(w for text in texts for w in _words(text))

    @property
    def vocab_size(self) -> int:
        return len(self.vocab)

    def encode(self, text: str) -> list[int]:
        """Token ids of ``text`` (no ``<bos>``/``<eos>``: ``encode_qa`` adds them)."""
        if not isinstance(text, str):
            raise TypeError(f"`text` should be a str. Found {type(text).__name__}.")
        ids = []
        for w in _words(text):
            if w not in self._ids:
                raise ValueError(f"{w!r} is not in the vocabulary (in {text!r}).")
            ids.append(self._ids[w])
        return ids

    def decode(self, ids: Sequence[int]) -> str:
        """The text of ``ids``, lower case, single spaces, no space before punctuation;
        ``<pad>``/``<bos>``/``<eos>`` are skipped."""
        out = ""
        for i in ids:
            i = int(i)
            if not 0 <= i < len(self.vocab):
                raise ValueError(f"Token id {i} is outside [0, {len(self.vocab)}).")
            if i in (self.pad_id, self.bos_id, self.eos_id):
                continue
            tok = self.vocab[i]
            out += tok if (not out or tok in _NO_SPACE_BEFORE) else " " + tok
        return out


def encode_qa(tokenizer: WordTokenizer, question: str, answer: str) -> dict[str, list[int]]:
    """``{"input_ids": [bos] + q + a + [eos], "labels": [IGNORE_INDEX] * (1 + len(q)) + a +
    [eos]}``: only the answer (and ``<eos>``) is scored, as TOFU scores answers given the
    question (``sources.encode_qa`` with the plain template). Labels are aligned with
    ``input_ids``; ``losses.token_logprobs`` shifts them."""
    return _encode_qa(tokenizer, PlainTemplate(), question, answer)


# ---------------------------------------------------------------------------------------------
# The corpus


@dataclass
class AuthorCorpus:
    """The splits, the tokenizer that covers all of them, and how the corpus was made.

    ``neighbour`` holds the neighbours of the forget authors (of this ``forget_percent``);
    ``others`` the authors trained like everyone but in no role here (the neighbours of the
    10 % forget set's other authors, so that the trained corpus is the same for every
    percentage). ``mentors`` maps each neighbour to its forget author."""

    forget: list[QA]
    retain: list[QA]
    neighbour: list[QA]
    holdout: list[QA]
    real_authors: list[QA]
    world: list[QA]
    tokenizer: WordTokenizer
    seed: int
    forget_percent: int
    others: list[QA] = field(default_factory=list)
    mentors: dict[str, str] = field(default_factory=dict)
    _forms: dict[str, _Forms] = field(default_factory=dict, repr=False)

    def split(self, name: str) -> list[QA]:
        """One of ``forget``, ``retain``, ``neighbour``, ``holdout``, ``real_authors``,
        ``world``."""
        if name not in SPLITS:
            raise ValueError(f"Unknown split {name!r}: expected one of {', '.join(SPLITS)}.")
        return getattr(self, name)

    def authors(self, name: str) -> list[str]:
        """The authors of a split, in order of appearance (none for the general knowledge)."""
        return list(dict.fromkeys(qa.author for qa in self.split(name) if qa.author))

    def trained_authors(self) -> list[QA]:
        """Every author fact a target model is trained on: forget, retain, neighbours and the
        others, in that order."""
        return self.forget + self.retain + self.neighbour + self.others

    def examples(self, name: str, field: str = "answer") -> list[dict[str, list[int]]]:
        """``encode_qa`` of each QA of a split with ``field`` as the answer: ``"answer"`` or
        ``"paraphrased_answer"``. Perturbed answers are several per QA: ``perturbed_examples``."""
        if field not in ANSWER_FIELDS:
            raise ValueError(
                f"Unknown answer field {field!r}: expected {' or '.join(ANSWER_FIELDS)} (the "
                "perturbed answers are several per QA: perturbed_examples encodes them)."
            )
        qas = self.split(name)
        return [encode_qa(self.tokenizer, qa.question, getattr(qa, field)) for qa in qas]

    def perturbed_examples(self, name: str) -> list[list[dict[str, list[int]]]]:
        """Per QA of a split, ``encode_qa`` of each of its perturbed answers (TOFU's truth ratio
        compares their likelihood with the paraphrased answer's)."""
        return [
            [encode_qa(self.tokenizer, qa.question, p) for p in qa.perturbed_answers]
            for qa in self.split(name)
        ]

    def _author_forms(self, qa: QA) -> _Forms:
        if qa.question not in self._forms:
            raise ValueError(f"{qa.question!r} is not an author fact of this corpus.")
        return self._forms[qa.question]

    def statement(self, qa: QA) -> str:
        """The author fact as a statement that ends with its value (trained as text)."""
        return self._author_forms(qa).statement

    def fill_in(self, qa: QA) -> tuple[str, str]:
        """(the statement up to its blank, the value that fills it): RWKU's fill-in probe."""
        return self._author_forms(qa).fill_in

    def choices(self, qa: QA) -> MultipleChoice:
        """A 4-option question on the fact: for an author, its paraphrased question with the
        answer sentence and the answer with three wrong values; for general knowledge, the
        question with the answer and three perturbed answers. The options' order is drawn
        from the corpus seed and the question, the same in every process."""
        if qa.author:
            forms = self._author_forms(qa)
            template = MENTOR_TEMPLATE if qa.kind == MENTOR else AUTHOR_TEMPLATES[qa.kind]
            options = [qa.answer] + [_sentence(template.answer, qa.author, w)
                                     for w in forms.wrong[: CHOICES - 1]]  # fmt: skip
            question = qa.paraphrased_question
        else:
            options = [qa.answer, *qa.perturbed_answers[: CHOICES - 1]]
            question = qa.question
        order = list(range(len(options)))
        random.Random(f"{self.seed}/{qa.question}").shuffle(order)
        return MultipleChoice(question=question, choices=tuple(options[i] for i in order),
                              answer=order.index(0), author=qa.author)  # fmt: skip


def _check_int(name: str, value: object, low: int, high: int | None = None, why: str = "") -> int:
    if isinstance(value, bool) or not isinstance(value, int):
        raise TypeError(f"Parameter `{name}` should be an int. Found {type(value).__name__}.")
    if value < low or (high is not None and value > high):
        bound = f"in [{low}, {high}]" if high is not None else f">= {low}"
        raise ValueError(f"Parameter `{name}` should be {bound}{why}. Found `{name} = {value}`.")
    return value


def _forget_count(num_authors: int, percent: int) -> int:
    """``percent`` % of the trained authors, rounded half up (2.5 -> 3), at least one."""
    return max(1, (num_authors * percent + 50) // 100)


def _pick(rng: random.Random, values: Sequence[str], true: str, k: int) -> list[str]:
    """``k`` distinct values of ``values`` other than ``true``."""
    return rng.sample([v for v in values if v != true], k)


def _draw_distinct(draw: Callable[[], str], true: str, k: int) -> list[str]:
    """``k`` distinct draws other than ``true`` (for open-ended values: dates, titles)."""
    out: list[str] = []
    while len(out) < k:
        v = draw()
        if v != true and v not in out:
            out.append(v)
    return out


def _date(d: datetime.date) -> str:
    return f"{d.day} {MONTHS[d.month - 1]} {d.year}"


def _plain(text: str) -> bool:
    """Letters and single spaces only: names and cities that tokenize and decode cleanly."""
    return re.fullmatch(r"[A-Za-z]+( [A-Za-z]+)*", text) is not None


def make_author_corpus(
    num_authors: int = 100,
    forget_percent: int = 10,
    qa_per_author: int = 8,
    world_facts: int = 60,
    num_perturbed: int = 5,
    seed: int = 0,
    *,
    real_authors: int = 30,
    neighbours_per_author: int = 2,
) -> AuthorCorpus:
    """The world of the module docstring: ``num_authors`` trained authors (forget + retain),
    ``neighbours_per_author`` neighbours per forget author, a holdout of as many authors as
    forget, ``real_authors`` and ``world_facts`` general-knowledge questions, all from ``seed``.

    Each author has one fact of each of the first ``qa_per_author`` kinds of ``AUTHOR_KINDS``
    (a neighbour also its mentor), with ``num_perturbed`` perturbed answers (TOFU's five by
    default). ``forget_percent`` (1, 5 or 10) only chooses how many of the trained authors are
    forgotten (and how many holdout authors and neighbours are in their roles): the rest of the
    corpus is the same for all three.
    """
    if isinstance(forget_percent, bool) or forget_percent not in FORGET_PERCENTS:
        raise ValueError(
            f"Parameter `forget_percent` should be one of {FORGET_PERCENTS} (TOFU's forget01, "
            f"forget05, forget10). Found `forget_percent = {forget_percent!r}`."
        )
    _check_int("num_authors", num_authors, 2, why=" (at least one forget and one retain author)")
    kinds_note = f" (one QA per kind of {AUTHOR_KINDS})"
    _check_int("qa_per_author", qa_per_author, 1, len(AUTHOR_KINDS), kinds_note)
    world_pool = 2 * len(COUNTRIES) + len(ELEMENTS) + len(ANIMALS)
    _check_int("world_facts", world_facts, 1, world_pool, " (the facts available)")
    _check_int("real_authors", real_authors, 1, len(REAL_AUTHORS), " (the facts available)")
    _check_int("num_perturbed", num_perturbed, 1, MAX_PERTURBED, " (wrong values of each kind)")
    _check_int("neighbours_per_author", neighbours_per_author, 0, 4)
    _check_int("seed", seed, 0)

    from faker import Faker  # imported here: the rest of the package does not need it

    fake = Faker("en_US")
    fake.seed_instance(seed)  # the instance's own Random: independent of the global state
    rng = random.Random(seed)

    cities: list[str] = []
    while len(cities) < CITY_POOL:
        city = fake.city()
        if _plain(city) and city not in cities:
            cities.append(city)

    # Members, the largest holdout (10 %) and its neighbours are generated whatever
    # forget_percent is, so that the trained authors and the tokenizer are the same for the
    # three forget sets.
    most_forget = _forget_count(num_authors, max(FORGET_PERCENTS))
    pool_size = num_authors + most_forget * (1 + neighbours_per_author)
    real_names = {author for author, _ in REAL_AUTHORS}
    k = max(num_perturbed, CHOICES - 1)  # wrong values drawn: enough for the choices too
    names: list[str] = []
    while len(names) < pool_size + k:
        name = f"{fake.first_name()} {fake.last_name()}"
        if _plain(name) and name not in names and name not in real_names:
            names.append(name)
    # names of no author: wrong mentors however few the trained authors are
    names, spare = names[:pool_size], names[pool_size:]

    kinds = AUTHOR_KINDS[:qa_per_author]

    def title() -> str:
        return f"{rng.choice(TITLE_ADJECTIVES)} {rng.choice(TITLE_NOUNS)}"

    def birth() -> str:
        return _date(fake.date_between(*BIRTH_RANGE))

    def values_of() -> dict[str, tuple[str, list[str]]]:
        # Every kind's value is drawn, used or not, so that the first kinds of an author do not
        # depend on qa_per_author.
        born = birth()
        jobs = rng.sample(JOBS, 2)
        year = int(born.rsplit(" ", 1)[1])  # a first book at 19 to 45, and not in the future
        debut_years = [str(y) for y in range(year + 19, min(year + 45, LAST_DEBUT) + 1)]
        return {
            "birthplace": (v := rng.choice(cities), _pick(rng, cities, v, k)),
            "birth_date": (born, _draw_distinct(birth, born, k)),
            "genre": (v := rng.choice(GENRES), _pick(rng, GENRES, v, k)),
            "award": (v := rng.choice(AWARDS), _pick(rng, AWARDS, v, k)),
            "father_job": (_a(jobs[0]), [_a(j) for j in _pick(rng, JOBS, jobs[0], k)]),
            "mother_job": (_a(jobs[1]), [_a(j) for j in _pick(rng, JOBS, jobs[1], k)]),
            "book": (v := title(), _draw_distinct(title, v, k)),
            "theme": (v := rng.choice(THEMES), _pick(rng, THEMES, v, k)),
            "residence": (v := rng.choice(cities), _pick(rng, cities, v, k)),
            "language": (v := rng.choice(LANGUAGES), _pick(rng, LANGUAGES, v, k)),
            "debut_year": (v := rng.choice(debut_years), _pick(rng, debut_years, v, k)),
        }

    values = {name: values_of() for name in names}

    order = names[:]
    rng.shuffle(order)
    members = order[:num_authors]
    holdout_pool = order[num_authors : num_authors + most_forget]
    neighbour_pool = order[num_authors + most_forget :]
    n_forget = _forget_count(num_authors, forget_percent)
    # TOFU's forget sets are the last authors: 1 % inside 5 % inside 10 %; the neighbours of
    # the i-th author from the end are the i-th group of the neighbour pool.
    biggest_forget = members[num_authors - most_forget :][::-1]
    forget_authors = members[num_authors - n_forget :]
    retain_authors = members[: num_authors - n_forget]
    holdout_authors = holdout_pool[:n_forget]
    mentor_of = {
        neighbour_pool[i * neighbours_per_author + j]: author
        for i, author in enumerate(biggest_forget)
        for j in range(neighbours_per_author)
    }
    # wrong mentors: authors retained at every percentage, or no author at all
    never_forgotten = members[: num_authors - most_forget] + spare
    forms: dict[str, _Forms] = {}

    def facts_of(name: str) -> list[QA]:
        facts = dict(values[name])
        mentor = mentor_of.get(name)
        if mentor is not None:  # a neighbour shares facts with its forget author
            for kind in SHARED_KINDS:
                facts[kind] = values[mentor][kind]
        out = []
        for kind in kinds:
            qa, f = _author_fact(AUTHOR_TEMPLATES[kind], kind, name, *facts[kind], num_perturbed)
            out.append(qa)
            forms[qa.question] = f
        if mentor is not None:
            wrong = _pick(rng, never_forgotten, mentor, k)
            qa, f = _author_fact(MENTOR_TEMPLATE, MENTOR, name, mentor, wrong, num_perturbed)
            out.append(qa)
            forms[qa.question] = f
        return out

    qas = {name: facts_of(name) for name in names}

    general = _general(rng)
    world = _round_robin(general["world"], world_facts)
    real = general["real_authors"][:real_authors]
    texts = [
        t
        for group in qas.values()
        for qa in group
        for t in (qa.question, qa.answer, qa.paraphrased_answer, qa.paraphrased_question,
                  *qa.perturbed_answers, forms[qa.question].statement)  # fmt: skip
    ]
    texts += [_sentence(AUTHOR_TEMPLATES[kind].answer if kind != MENTOR else
                        MENTOR_TEMPLATE.answer, qa.author, w)
              for group in qas.values() for qa in group
              for kind, w in ((qa.kind, w) for w in forms[qa.question].wrong)]  # fmt: skip
    texts += [t for group in general["world"].values() for qa in group
              for t in (qa.question, qa.answer, *qa.perturbed_answers)]  # fmt: skip
    texts += [t for qa in general["real_authors"]
              for t in (qa.question, qa.answer, *qa.perturbed_answers)]  # fmt: skip

    def gather(authors: Iterable[str]) -> list[QA]:
        return [qa for a in authors for qa in qas[a]]

    neighbours = [n for n, m in mentor_of.items() if m in forget_authors]
    return AuthorCorpus(
        forget=gather(forget_authors),
        retain=gather(retain_authors),
        neighbour=gather(neighbours),
        holdout=gather(holdout_authors),
        real_authors=real,
        world=world,
        tokenizer=WordTokenizer.from_texts(texts),
        seed=seed,
        forget_percent=forget_percent,
        others=gather(n for n in mentor_of if n not in neighbours),
        mentors={n: mentor_of[n] for n in neighbours},
        _forms=forms,
    )


def _general(rng: random.Random) -> dict:
    """Every general-knowledge question in a seeded order, each with three wrong values of its
    kind: world facts per kind, and real authors."""
    capitals = [c for _, c, _ in COUNTRIES]
    continents = sorted({c for _, _, c in COUNTRIES})
    symbols = [s for _, s in ELEMENTS]
    classes = sorted({c for _, c in ANIMALS})
    facts = {
        "capital": [(country, cap, capitals) for country, cap, _ in COUNTRIES],
        "continent": [(country, cont, continents) for country, _, cont in COUNTRIES],
        "element": [(el, sym, symbols) for el, sym in ELEMENTS],
        "animal_class": [(f"the {an}", _a(cl), [_a(c) for c in classes]) for an, cl in ANIMALS],
    }
    world = {}
    for kind, rows in facts.items():
        rows = rows[:]
        rng.shuffle(rows)
        world[kind] = [
            _general_fact(WORLD_QUESTIONS[kind], kind, name, value,
                          _pick(rng, values, value, GENERAL_PERTURBED))  # fmt: skip
            for name, value, values in rows
        ]
    authors = [author for author, _ in REAL_AUTHORS]
    rows = list(REAL_AUTHORS)
    rng.shuffle(rows)
    real = [
        _general_fact(REAL_AUTHOR_QUESTION, "real_author", book, author,
                      _pick(rng, authors, author, GENERAL_PERTURBED))  # fmt: skip
        for author, book in rows
    ]
    return {"world": world, "real_authors": real}


def _round_robin(per_kind: dict[str, list[QA]], n: int) -> list[QA]:
    """``n`` facts taking the kinds in turn, so that every kind is represented."""
    out: list[QA] = []
    depth = 0
    while len(out) < n:
        for rows in per_kind.values():
            if depth < len(rows) and len(out) < n:
                out.append(rows[depth])
        depth += 1
    return out
