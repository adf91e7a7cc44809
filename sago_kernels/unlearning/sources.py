"""What the benchmark needs from a data source: named sets by role, a tokenizer, a template.

A source (the synthetic author world of ``synthetic.py``; TOFU's and WMDP's files; a folder of
them) builds one :class:`BenchmarkData`. The protocol (``protocol.py``) and the evaluation
(``evaluation.py``) read only this, never a source's own types, so every source is run and
scored by the same code:

- **training roles**: what the target model is pre-trained on (``target_train``; ``None`` when
  the target is a given checkpoint), what the retain-only model (the reference of forget quality
  and privacy leakage) is trained on (``retain_model_train``; ``None`` when it is given or
  absent), and the unlearning phase's ``forget`` and ``retain`` pools: question-answer pairs
  (TOFU, the synthetic world) or plain text documents (WMDP's corpora);
- **evaluation roles** (:data:`EVAL_ROLES`), each naming one set or absent: TOFU's forget,
  retain, real-authors and world-facts sets (question-answer pairs with paraphrased and perturbed
  answers), the membership-inference non-members, RWKU-style probes (a prompt and a short answer,
  scored by ROUGE-L recall of a greedy generation) and WMDP/MMLU-style multiple-choice questions
  (choices and the answer's index, scored by the options' log-likelihood); each for forgetting or
  for retention;
- **encoding**: a :class:`Tokenizer` (ids of a text and back, the special ids) and a
  :class:`Template` (how a question becomes a prompt, an answer its continuation, a probe or a
  multiple-choice question its prompt and options; :class:`PlainTemplate` without a chat
  template); the encoders here turn items into the ``{"input_ids", "labels"}`` examples the
  losses and metrics take, scoring only the answer.

Every set's items have an identity (:func:`item_id`) that the results JSON records, so anyone can
check which items each role held and that held-out sets are held out (:meth:`BenchmarkData.
leaks` says where they are not).
"""

from __future__ import annotations

import hashlib
from collections.abc import Sequence
from dataclasses import dataclass, field
from typing import Protocol

from .losses import IGNORE_INDEX

__all__ = [
    "EVAL_ROLES",
    "QA",
    "BenchmarkData",
    "Document",
    "Item",
    "MultipleChoice",
    "PlainTemplate",
    "Probe",
    "SourceError",
    "Template",
    "Tokenizer",
    "encode_choices",
    "encode_document",
    "encode_qa",
    "item_id",
    "lettered_choice_ids",
]


# --------------------------------------------------------------------------- items


@dataclass(frozen=True)
class QA:
    """One question with its answer, as a TOFU row: ``paraphrased_answer`` (the same fact in
    other words) and ``perturbed_answers`` (the paraphrase with wrong values) feed the truth
    ratio; ``author`` groups the questions of one subject; ``kind`` says which fact it asks;
    ``value`` is the fact itself as it appears in the answers (a city, a date, ...);
    ``paraphrased_question`` asks the same in other words (empty when there is none)."""

    author: str
    kind: str
    question: str
    answer: str
    paraphrased_answer: str = ""
    perturbed_answers: tuple[str, ...] = ()
    value: str = ""
    paraphrased_question: str = ""


@dataclass(frozen=True)
class Document:
    """A plain text trained on as a whole (every token scored): WMDP's corpora."""

    text: str


@dataclass(frozen=True)
class Probe:
    """A knowledge probe (RWKU): a prompt and the short answer a greedy generation is scored
    against by ROUGE-L recall. ``style`` is ``"qa"`` (a question, rendered through the template)
    or ``"fill_in"`` (a sentence whose blank is the answer; the prompt is the text before it)."""

    prompt: str
    answer: str
    style: str = "qa"
    author: str = ""


@dataclass(frozen=True)
class MultipleChoice:
    """A multiple-choice question: ``choices`` and the index of the right one. ``style`` says
    how it is asked (:data:`CHOICE_STYLES`): ``"cloze"``, each option scored as the question's
    answer (the synthetic world: a model trained from scratch has never seen lettered options),
    or ``"lettered"``, WMDP's and MMLU's zero-shot prompt with the options' letters scored
    (:func:`lettered_choice_ids`); ``subject`` names the field in that prompt's first line."""

    question: str
    choices: tuple[str, ...]
    answer: int
    author: str = ""
    subject: str = ""
    style: str = "cloze"

    def __post_init__(self) -> None:
        if self.style not in CHOICE_STYLES:
            raise ValueError(f"`style` should be one of {CHOICE_STYLES}. Found {self.style!r}.")


CHOICE_STYLES = ("cloze", "lettered")
"""How a :class:`MultipleChoice` is asked (its ``style``)."""

Item = QA | Document | Probe | MultipleChoice


def item_id(item: Item) -> str:
    """The identity a results JSON records: the question (or prompt) itself, or for a document
    ``sha1:`` and the first 16 hex digits of its text's SHA-1."""
    if isinstance(item, QA | MultipleChoice):
        return item.question
    if isinstance(item, Probe):
        return item.prompt
    return "sha1:" + hashlib.sha1(item.text.encode("utf-8")).hexdigest()[:16]


class SourceError(ValueError):
    """Data or a checkpoint that cannot be had (a missing file or field, a hub id offline): the
    command line prints the message, one line, and exits 2 before anything is trained."""


# --------------------------------------------------------------------------- tokenizing


class Tokenizer(Protocol):
    """What the benchmark asks of a tokenizer: ``corpus.WordTokenizer`` has it; a
    ``transformers`` tokenizer gets it from a small adapter. ``bos_id`` may be None."""

    bos_id: int | None
    eos_id: int
    pad_id: int

    @property
    def vocab_size(self) -> int: ...

    def encode(self, text: str) -> list[int]: ...

    def decode(self, ids: Sequence[int]) -> str: ...


class Template(Protocol):
    """How items become token ids: a question's prompt, an answer's continuation (ending with
    ``<eos>``), both of one pair (``encode``: a chat template renders them together), a probe's
    prompt, a multiple-choice question's prompt and options. :class:`PlainTemplate` is the one
    without a chat template; ``checkpoints.ChatTemplate`` renders the same five through
    ``tokenizer.apply_chat_template``."""

    def prompt_ids(self, tokenizer: Tokenizer, question: str) -> list[int]: ...

    def answer_ids(self, tokenizer: Tokenizer, answer: str) -> list[int]: ...

    def encode(
        self, tokenizer: Tokenizer, question: str, answer: str
    ) -> tuple[list[int], list[int]]: ...

    def probe_ids(self, tokenizer: Tokenizer, probe: Probe) -> list[int]: ...

    def choice_ids(
        self, tokenizer: Tokenizer, item: MultipleChoice
    ) -> tuple[list[int], list[list[int]]]: ...


@dataclass(frozen=True)
class PlainTemplate:
    """A question-answer layout without a chat template: ``[bos] + encode(question_format
    with the question) + encode(answer_prefix + answer) + [eos]``, only the answer and ``<eos>``
    scored. The defaults are the synthetic world's (the question, then the answer)."""

    question_format: str = "{question}"
    answer_prefix: str = ""

    def prompt_ids(self, tokenizer: Tokenizer, question: str) -> list[int]:
        bos = [] if tokenizer.bos_id is None else [tokenizer.bos_id]
        return bos + tokenizer.encode(self.question_format.format(question=question))

    def answer_ids(self, tokenizer: Tokenizer, answer: str) -> list[int]:
        return tokenizer.encode(self.answer_prefix + answer) + [tokenizer.eos_id]

    def encode(
        self, tokenizer: Tokenizer, question: str, answer: str
    ) -> tuple[list[int], list[int]]:
        """(prompt ids, answer ids) of one pair: what :func:`encode_qa` joins."""
        return self.prompt_ids(tokenizer, question), self.answer_ids(tokenizer, answer)

    def probe_ids(self, tokenizer: Tokenizer, probe: Probe) -> list[int]:
        """What a probe's greedy generation continues: a question's prompt, or a fill-in
        sentence's text up to its blank (no template around it)."""
        if probe.style == "qa":
            return self.prompt_ids(tokenizer, probe.prompt)
        bos = [] if tokenizer.bos_id is None else [tokenizer.bos_id]
        return bos + tokenizer.encode(probe.prompt)

    def choice_ids(
        self, tokenizer: Tokenizer, item: MultipleChoice
    ) -> tuple[list[int], list[list[int]]]:
        """(the prompt, each option's ids): for a ``"cloze"`` question the question's prompt
        and each option as its answer would be written, without ``<eos>``, each scored by its
        log-likelihood after the prompt; a ``"lettered"`` one as :func:`lettered_choice_ids`."""
        if item.style == "lettered":
            return lettered_choice_ids(tokenizer, item)
        options = [tokenizer.encode(self.answer_prefix + c) for c in item.choices]
        return self.prompt_ids(tokenizer, item.question), options


def _truncate(example: dict[str, list[int]], max_length: int | None) -> dict[str, list[int]]:
    """The first ``max_length`` tokens (open-unlearning truncates the same way); refused when
    the prompt alone fills them, since nothing would be left to score."""
    if max_length is None or len(example["input_ids"]) <= max_length:
        return example
    labels = example["labels"][:max_length]
    if all(label == IGNORE_INDEX for label in labels[1:]):
        raise SourceError(
            f"--max-length {max_length} leaves no answer token to score: a prompt fills all "
            f"{max_length} tokens; raise --max-length."
        )
    return {"input_ids": example["input_ids"][:max_length], "labels": labels}


def encode_qa(
    tokenizer: Tokenizer,
    template: Template,
    question: str,
    answer: str,
    max_length: int | None = None,
) -> dict[str, list[int]]:
    """``{"input_ids": prompt + answer, "labels": IGNORE_INDEX over the prompt, the answer's ids
    after}``: TOFU scores an answer given its question. Labels are aligned with ``input_ids``;
    ``losses.token_logprobs`` shifts them. ``max_length``: keep the first that many tokens."""
    prompt, answer_ids = template.encode(tokenizer, question, answer)
    labels = [IGNORE_INDEX] * len(prompt) + answer_ids
    return _truncate({"input_ids": prompt + answer_ids, "labels": labels}, max_length)


def encode_document(
    tokenizer: Tokenizer, text: str, max_length: int | None = None
) -> dict[str, list[int]]:
    """A document as one example: ``[bos] + text + [eos]``, every token after the first scored
    (cut to its first ``max_length`` tokens, as the WMDP corpora's passages are for RMU)."""
    bos = [] if tokenizer.bos_id is None else [tokenizer.bos_id]
    ids = bos + tokenizer.encode(text) + [tokenizer.eos_id]
    return _truncate({"input_ids": ids, "labels": [IGNORE_INDEX] * len(bos) + ids[len(bos) :]},
                     max_length)  # fmt: skip


CHOICE_LETTERS = "ABCDEFGHIJ"


def choice_prompt(item: MultipleChoice) -> str:
    """The zero-shot prompt WMDP and MMLU are scored with (lm-evaluation-harness's ``wmdp`` and
    ``mmlu`` tasks, as the WMDP paper evaluates): a first line naming the subject, the question,
    the lettered options, then ``Answer:``."""
    head = (f"The following are multiple choice questions (with answers) about {item.subject}.\n\n"
            if item.subject else "")  # fmt: skip
    options = "".join(f"\n{CHOICE_LETTERS[i]}. {c}" for i, c in enumerate(item.choices))
    return f"{head}{item.question.strip()}{options}\nAnswer:"


def lettered_choice_ids(
    tokenizer: Tokenizer, item: MultipleChoice
) -> tuple[list[int], list[list[int]]]:
    """(``[bos]`` + :func:`choice_prompt`, each option's letter `` A``, `` B``, ...): WMDP's and
    MMLU's zero-shot form, whatever the model's chat template (the harness applies none). As the
    harness does, the whole text ``prompt + " A"`` is tokenized once and the tokens past the
    prompt's are the option's, so a tokenizer that merges across the boundary scores what it
    would generate."""
    count = len(item.choices)
    if not 2 <= count <= len(CHOICE_LETTERS) or not 0 <= item.answer < count:
        raise SourceError(
            f"A multiple-choice question should have 2-{len(CHOICE_LETTERS)} choices and an "
            f"answer index among them; found {len(item.choices)} choices and answer "
            f"{item.answer} for {item.question[:60]!r}."
        )
    bos = [] if tokenizer.bos_id is None else [tokenizer.bos_id]
    prompt = choice_prompt(item)
    context = tokenizer.encode(prompt)
    options = []
    for i in range(len(item.choices)):
        whole = tokenizer.encode(f"{prompt} {CHOICE_LETTERS[i]}")
        options.append(whole[len(context) :] or whole[-1:])
    return bos + context, options


def encode_choices(
    tokenizer: Tokenizer, template: Template, item: MultipleChoice,
    max_length: int | None = None,
) -> list[dict[str, list[int]]]:
    """One example per option (``template.choice_ids``): the prompt unscored, the option
    scored, the input ``metrics.choice_logprobs`` takes; the accuracy is then the argmax of the
    options' summed log-likelihoods (``metrics.choice_accuracy``), lm-evaluation-harness's
    ``acc``. A prompt over ``max_length`` keeps its end (the options), and its ``[bos]``."""
    prompt, options = template.choice_ids(tokenizer, item)
    bos = prompt[:1] if tokenizer.bos_id is not None and prompt[:1] == [tokenizer.bos_id] else []
    out = []
    for option in options:
        ids = prompt + option
        if max_length is not None and len(ids) > max_length:
            keep = max(max_length - len(bos), len(option) + 1)
            ids = bos + ids[len(bos) :][-keep:]
        out.append({"input_ids": ids,
                    "labels": [IGNORE_INDEX] * (len(ids) - len(option)) + option})  # fmt: skip
    return out


# --------------------------------------------------------------------------- the data


EVAL_ROLES = (
    "forget",
    "retain",
    "real_authors",
    "world_facts",
    "holdout",
    "forget_probes",
    "retention_probes",
    "forget_choice",
    "retention_choice",
)
"""Evaluation roles, each a set's name or absent:

- ``forget``: TOFU's forget set (:class:`QA`): forget quality, truth ratio, probability, ROUGE,
  memorisation, the MIA members;
- ``retain``, ``real_authors``, ``world_facts``: TOFU's model-utility sets (:class:`QA`);
- ``holdout``: the MIA non-members (:class:`QA`, never trained on);
- ``forget_probes``, ``retention_probes``: :class:`Probe` sets (RWKU's forget and neighbour
  probes);
- ``forget_choice``, ``retention_choice``: :class:`MultipleChoice` sets (WMDP's questions,
  MMLU)."""


@dataclass
class BenchmarkData:
    """Named sets and the role each plays (see the module docstring).

    ``sets`` maps a name to its items; every role names sets in it. ``target_train`` and
    ``retain_model_train`` list the sets each model is trained on, in order (``None``: no
    training, the model is given); ``forget`` and ``retain`` the unlearning pools; ``evaluation``
    maps each present :data:`EVAL_ROLES` role to one set. ``info`` says how the data was made
    (source, seed, sizes) for the results JSON. ``max_length``: every encoded example is cut to
    its first that many tokens (``--max-length``; None: whole)."""

    sets: dict[str, tuple[Item, ...]]
    forget: tuple[str, ...]
    retain: tuple[str, ...]
    evaluation: dict[str, str]
    tokenizer: Tokenizer
    template: Template = field(default_factory=PlainTemplate)
    target_train: tuple[str, ...] | None = None
    retain_model_train: tuple[str, ...] | None = None
    info: dict = field(default_factory=dict)
    max_length: int | None = None

    def __post_init__(self) -> None:
        named = [*self.forget, *self.retain, *self.evaluation.values()]
        named += [*(self.target_train or ()), *(self.retain_model_train or ())]
        unknown = sorted({n for n in named if n not in self.sets})
        if unknown:
            raise ValueError(f"Roles name sets the data does not have: {unknown}.")
        roles = sorted(set(self.evaluation) - set(EVAL_ROLES))
        if roles:
            raise ValueError(f"Unknown evaluation roles {roles}; expected some of {EVAL_ROLES}.")

    def items(self, names: Sequence[str]) -> list[Item]:
        """The items of the named sets, concatenated in order."""
        return [item for name in names for item in self.sets[name]]

    def eval_set(self, role: str) -> tuple[Item, ...] | None:
        """The items of an evaluation role, or None when the data has none."""
        name = self.evaluation.get(role)
        return None if name is None else self.sets[name]

    def examples(self, names: Sequence[str], field_name: str = "answer") -> list[dict]:
        """The named sets encoded for training or scoring: a :class:`QA` with ``field_name`` as
        its answer (``"answer"`` or ``"paraphrased_answer"``), a :class:`Document` whole."""
        out = []
        for item in self.items(names):
            if isinstance(item, QA):
                out.append(self.encode_qa(item.question, getattr(item, field_name)))
            elif isinstance(item, Document):
                out.append(encode_document(self.tokenizer, item.text, self.max_length))
            else:
                raise TypeError(f"{type(item).__name__} items are evaluated, not trained on.")
        return out

    def encode_qa(self, question: str, answer: str) -> dict[str, list[int]]:
        return encode_qa(self.tokenizer, self.template, question, answer, self.max_length)

    def encode_choices(self, item: MultipleChoice) -> list[dict[str, list[int]]]:
        return encode_choices(self.tokenizer, self.template, item, self.max_length)

    def leaks(self) -> list[str]:
        """Where a held-out set is not held out, by item identity (empty when none is):

        - the ``holdout`` (membership inference's non-members) in a model's training sets;
        - a retention set (``retention_probes``, ``retention_choice``, ``real_authors``,
          ``world_facts``) in an unlearning pool;
        - a forget probe or choice that is a forget pool's question (probes should differ from
          the forget text)."""
        ids = {name: {item_id(i) for i in items} for name, items in self.sets.items()}

        def union(names) -> set[str]:
            return set().union(*(ids[n] for n in names)) if names else set()

        pools = union([*self.forget, *self.retain])
        trained = union([*(self.target_train or ()), *(self.retain_model_train or ())])
        checks = [("holdout", trained, "a model's training sets")]
        checks += [(role, pools, "an unlearning pool") for role in
                   ("retention_probes", "retention_choice", "real_authors",
                    "world_facts")]  # fmt: skip
        checks += [(role, union(self.forget), "the forget pool")
                   for role in ("forget_probes", "forget_choice")]  # fmt: skip
        out = []
        for role, against, where in checks:
            name = self.evaluation.get(role)
            if name is not None and ids[name] & against:
                n = len(ids[name] & against)
                out.append(f"{n} item(s) of {role} ({name!r}) are in {where}")
        return out

    def identities(self) -> dict:
        """Each set's item identities and each role's sets: what the results JSON records."""
        return {
            "sets": {name: [item_id(i) for i in items] for name, items in self.sets.items()},
            "roles": self.roles(),
        }

    def roles(self) -> dict:
        """Which sets each model trains on, the unlearning pools and the evaluation roles."""
        return {
            "target_train": None if self.target_train is None else list(self.target_train),
            "retain_model_train": (
                None if self.retain_model_train is None else list(self.retain_model_train)
            ),
            "forget": list(self.forget),
            "retain": list(self.retain),
            "evaluation": dict(self.evaluation),
        }
