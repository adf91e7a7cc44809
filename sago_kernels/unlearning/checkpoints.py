"""Given checkpoints: any causal LM and its tokenizer, from the hub or a local folder.

``--model`` and ``--retain-model`` name a hub id (say
``open-unlearning/tofu_Llama-3.2-1B-Instruct_full``) or a ``save_pretrained`` folder; both load
with ``AutoModelForCausalLM``/``AutoTokenizer``. Here:

- :func:`hub_offline` decides once whether the hub can be reached (``HF_HUB_OFFLINE=1``, or a
  three-second connection probe of the hub's endpoint), so that a hub id without a network fails
  at once, in one line naming the local-folder form, instead of after the libraries' minute of
  retries; offline, files already in the local cache still load;
- :class:`HFTokenizer` adapts a ``transformers`` tokenizer to ``sources.Tokenizer``;
- :class:`ChatTemplate` lays a question and its answer out with the tokenizer's chat template
  (with open-unlearning's system prompt and date, which its TOFU checkpoints were fine-tuned
  with); :data:`QA_TEMPLATE` is the plain ``Question: …\\nAnswer: …`` layout of TOFU's original
  code, for tokenizers without one (``--template plain``);
- LoRA (``--lora-rank``): adapters on every linear map of the blocks, the reference model the
  same network with its adapters off (``references.AdaptersOff``: no second copy of a 7B
  model), and :func:`save_model` writing merged weights that any harness reads without ``peft``.
"""

from __future__ import annotations

import os
import re
import socket
from collections.abc import Sequence
from pathlib import Path
from typing import Any
from urllib.parse import urlparse

import torch

from .sources import MultipleChoice, PlainTemplate, Probe, SourceError, lettered_choice_ids

__all__ = [
    "QA_TEMPLATE",
    "ChatTemplate",
    "HFTokenizer",
    "attach_lora",
    "detach_lora",
    "hub_offline",
    "is_hub_id",
    "load_model",
    "load_tokenizer",
    "save_model",
    "word_tokenizer_to_hf",
]

QA_TEMPLATE = PlainTemplate(question_format="Question: {question}\n", answer_prefix="Answer: ")
"""``--template plain`` for a tokenizer without a chat template: ``[bos] Question: <q>\\n``
unscored, then ``Answer: <a>`` and ``<eos>`` scored (the layout of TOFU's original code)."""
SYSTEM_PROMPT = "You are a helpful assistant."
"""open-unlearning's system prompt for its chat models (``configs/model/*.yaml``)."""
DATE_STRING = "10 Apr 2025"
"""open-unlearning's ``date_string`` for Llama-3 chat templates (ignored by templates without
one); its TOFU checkpoints were fine-tuned with this prompt, so the scores depend on it."""
DTYPES = {"float32": torch.float32, "bfloat16": torch.bfloat16, "float16": torch.float16}
_HUB_ID = re.compile(r"[A-Za-z0-9][\w.-]*(/[A-Za-z0-9][\w.-]*)?")
_TRUE = {"1", "ON", "YES", "TRUE"}
_offline: bool | None = None


# --------------------------------------------------------------------------- hub or folder


def is_hub_id(ref: str) -> bool:
    """True when ``ref`` is not an existing folder and reads as ``owner/name`` (or ``name``)."""
    return not Path(ref).exists() and _HUB_ID.fullmatch(ref) is not None


def hub_offline() -> bool:
    """Whether the hub cannot be reached: ``HF_HUB_OFFLINE`` (or ``TRANSFORMERS_OFFLINE``) set,
    or no TCP connection to the endpoint within 3 s. Asked once a process; when offline, the
    libraries are switched to their offline mode too (cached files load, nothing is retried)."""
    global _offline
    if _offline is not None:
        return _offline
    flags = (os.environ.get("HF_HUB_OFFLINE", ""), os.environ.get("TRANSFORMERS_OFFLINE", ""))
    _offline = any(f.upper() in _TRUE for f in flags)
    if not _offline:
        from huggingface_hub import constants

        url = urlparse(os.environ.get("HF_ENDPOINT") or constants.ENDPOINT)
        try:
            socket.create_connection((url.hostname, url.port or 443), timeout=3).close()
        except OSError:
            _offline = True
    if _offline:
        os.environ["HF_HUB_OFFLINE"] = "1"
        import sys

        if "huggingface_hub" in sys.modules:  # imported before: its flag was read then
            sys.modules["huggingface_hub"].constants.HF_HUB_OFFLINE = True
        if "datasets" in sys.modules:
            sys.modules["datasets"].config.HF_HUB_OFFLINE = True
    return _offline


def hub_failure(flag: str, ref: str, local_form: str, error: BaseException) -> str:
    """The one line for a hub reference that did not load: offline (no such folder either, not
    in the cache: download it elsewhere, pass the folder), or the hub's own reason."""
    if hub_offline():
        return (
            f"{flag} {ref}: no such folder, and the hub cannot be reached (no network, or "
            f"HF_HUB_OFFLINE=1) with nothing cached for it; download it where there is a "
            f"network and pass the local folder: {flag} {local_form}"
        )
    return f"{flag} {ref}: the hub did not serve it ({_first_line(error)}); or pass {local_form}"


def check_reference(flag: str, ref: str) -> None:
    """A folder that exists, or a hub id the hub can serve now; else a :class:`SourceError`."""
    if Path(ref).is_dir():
        return
    if not is_hub_id(ref):
        raise SourceError(f"{flag} {ref}: no such folder, and not a hub id (owner/name).")


# --------------------------------------------------------------------------- tokenizer


class HFTokenizer:
    """``sources.Tokenizer`` over a ``transformers`` tokenizer (kept as ``.hf``).

    ``bos_id`` is the token the tokenizer itself puts first (Llama's ``<|begin_of_text|>``),
    None when it puts none (GPT-2, Qwen); ``pad_id`` falls back to ``eos_id``; ``encode`` adds
    no special tokens (the templates place them); ``decode`` drops them."""

    def __init__(self, hf: Any) -> None:
        if hf.eos_token_id is None:
            raise SourceError(
                f"The tokenizer {getattr(hf, 'name_or_path', '')!r} has no eos token: answers "
                "need one to end on; set `eos_token` in its tokenizer_config.json."
            )
        self.hf = hf
        plain = hf("x", add_special_tokens=False)["input_ids"]
        full = hf("x", add_special_tokens=True)["input_ids"]
        head = full[: len(full) - len(plain)] if full[-len(plain) :] == plain else []
        self.bos_id: int | None = head[0] if len(head) == 1 else None
        self.eos_id: int = int(hf.eos_token_id)
        self.pad_id: int = int(hf.pad_token_id if hf.pad_token_id is not None else hf.eos_token_id)

    @property
    def vocab_size(self) -> int:
        return len(self.hf)

    def encode(self, text: str) -> list[int]:
        return list(self.hf(text, add_special_tokens=False)["input_ids"])

    def decode(self, ids: Sequence[int]) -> str:
        return self.hf.decode(list(ids), skip_special_tokens=True)


class ChatTemplate:
    """A question and its answer as one chat exchange, the tokenizer's own template: the prompt
    is the conversation up to the assistant's turn (``add_generation_prompt=True``), the answer
    what the full conversation adds after it, closed by ``<eos>`` when the template does not end
    on it (open-unlearning's ``preprocess_chat_instance``, whose system prompt and date are the
    defaults here)."""

    def __init__(self, system_prompt: str | None = SYSTEM_PROMPT,
                 date_string: str | None = DATE_STRING) -> None:  # fmt: skip
        self.system_prompt = system_prompt
        self.date_string = date_string

    def _ids(self, tokenizer: HFTokenizer, chat: list[dict], generation: bool) -> list[int]:
        extra = {} if self.date_string is None else {"date_string": self.date_string}
        ids = tokenizer.hf.apply_chat_template(
            chat, tokenize=True, add_generation_prompt=generation, return_dict=False, **extra
        )
        return list(ids)

    def encode(self, tokenizer: HFTokenizer, question: str, answer: str
               ) -> tuple[list[int], list[int]]:  # fmt: skip
        system = [{"role": "system", "content": self.system_prompt}] if self.system_prompt else []
        chat = [*system, {"role": "user", "content": question}]
        prompt = self._ids(tokenizer, chat, True)
        full = self._ids(tokenizer, [*chat, {"role": "assistant", "content": answer}], False)
        if full[-1] != tokenizer.eos_id:
            full.append(tokenizer.eos_id)
        if full[: len(prompt)] != prompt:
            raise SourceError(
                "The tokenizer's chat template does not extend the prompt it gives with "
                "add_generation_prompt=True when the answer is added, so the answer's tokens "
                "cannot be told apart; use --template plain."
            )
        return prompt, full[len(prompt) :]

    def prompt_ids(self, tokenizer: HFTokenizer, question: str) -> list[int]:
        return self.encode(tokenizer, question, "")[0]

    def answer_ids(self, tokenizer: HFTokenizer, answer: str) -> list[int]:
        """The answer's tokens after an empty question (ROUGE's generation budget)."""
        return self.encode(tokenizer, "", answer)[1]

    def probe_ids(self, tokenizer: HFTokenizer, probe: Probe) -> list[int]:
        """A question probe's prompt is the chat's; a fill-in sentence is continued as plain
        text (``[bos]`` and its words up to the blank, no chat around it)."""
        if probe.style == "qa":
            return self.prompt_ids(tokenizer, probe.prompt)
        bos = [] if tokenizer.bos_id is None else [tokenizer.bos_id]
        return bos + tokenizer.encode(probe.prompt)

    def choice_ids(self, tokenizer: HFTokenizer, item: MultipleChoice
                   ) -> tuple[list[int], list[list[int]]]:  # fmt: skip
        """A ``"lettered"`` question (WMDP, MMLU) as the harness asks it, without the chat
        (:func:`~.sources.lettered_choice_ids`); a ``"cloze"`` one as the chat's prompt and each
        option as the assistant's whole answer."""
        if item.style == "lettered":
            return lettered_choice_ids(tokenizer, item)
        prompt = self.prompt_ids(tokenizer, item.question)
        return prompt, [self.encode(tokenizer, item.question, c)[1] for c in item.choices]

    def __repr__(self) -> str:
        return f"ChatTemplate(system_prompt={self.system_prompt!r}, date={self.date_string!r})"


def load_tokenizer(flag: str, ref: str) -> HFTokenizer:
    """``AutoTokenizer.from_pretrained(ref)`` adapted; offline, only from the local cache."""
    check_reference(flag, ref)
    from transformers import AutoTokenizer

    local = Path(ref).is_dir()
    try:
        hf = AutoTokenizer.from_pretrained(ref, local_files_only=local or hub_offline())
    except (OSError, ValueError) as error:
        if local:
            raise SourceError(f"{flag} {ref}: no tokenizer could be loaded from the folder "
                              f"({_first_line(error)})") from None  # fmt: skip
        raise SourceError(hub_failure(flag, ref, "DIR (a save_pretrained folder)", error)) from None
    return HFTokenizer(hf)


def template_for(tokenizer: HFTokenizer, choice: str, system_prompt: str | None,
                 date_string: str | None) -> PlainTemplate | ChatTemplate:  # fmt: skip
    """``--template``: ``auto`` (the chat template when the tokenizer has one, else plain),
    ``chat`` or ``plain`` (:data:`QA_TEMPLATE`)."""
    has_chat = bool(getattr(tokenizer.hf, "chat_template", None))
    if choice == "chat" and not has_chat:
        raise SourceError("--template chat: the tokenizer has no chat template; use "
                          "--template plain (or auto).")  # fmt: skip
    if choice == "plain" or (choice == "auto" and not has_chat):
        return QA_TEMPLATE
    return ChatTemplate(system_prompt or None, date_string or None)


def _first_line(error: BaseException) -> str:
    text = str(error).strip().splitlines()
    return text[0] if text else type(error).__name__


# --------------------------------------------------------------------------- model


def load_model(flag: str, ref: str, *, dtype: str, device: str,
               gradient_checkpointing: bool = False) -> torch.nn.Module:  # fmt: skip
    """``AutoModelForCausalLM.from_pretrained(ref)`` in ``dtype`` on ``device``, frozen and in
    eval mode (the protocol copies or wraps it for each run); offline, only from the cache."""
    check_reference(flag, ref)
    from transformers import AutoModelForCausalLM

    local = Path(ref).is_dir()
    try:
        model = AutoModelForCausalLM.from_pretrained(
            ref, dtype=DTYPES[dtype], local_files_only=local or hub_offline()
        )
    except (OSError, ValueError) as error:
        if local:
            raise SourceError(f"{flag} {ref}: no causal LM could be loaded from the folder "
                              f"({_first_line(error)})") from None  # fmt: skip
        raise SourceError(hub_failure(flag, ref, "DIR (a save_pretrained folder)", error)) from None
    if gradient_checkpointing:  # non-reentrant: gradients reach LoRA adapters of frozen layers
        model.gradient_checkpointing_enable(gradient_checkpointing_kwargs={"use_reentrant": False})
        model.config.use_cache = False
    return model.to(device).eval().requires_grad_(False)


# --------------------------------------------------------------------------- LoRA


def attach_lora(model: torch.nn.Module, rank: int) -> torch.nn.Module:
    """``model`` wrapped in place by ``peft`` with rank-``rank`` adapters (α = 2·rank, no
    dropout) on every linear map but the output head; only the adapters train. peft starts B at
    zero, so the wrapped model computes what ``model`` did until the first step."""
    import peft

    config = peft.LoraConfig(r=rank, lora_alpha=2 * rank, lora_dropout=0.0,
                             target_modules="all-linear")  # fmt: skip
    return peft.get_peft_model(model, config)


def detach_lora(peft_model: torch.nn.Module) -> torch.nn.Module:
    """The base model back, its adapters removed without merging (the base weights were never
    written, so the next run starts from the same checkpoint)."""
    return peft_model.unload()


def merged_state_dict(peft_model: torch.nn.Module) -> dict[str, torch.Tensor]:
    """The base model's state dict with every adapter merged in (W + ΔW, computed as peft's
    ``merge_and_unload`` does), the base left as it was: a LoRA run saved as a plain checkpoint."""
    from peft.tuners.lora import LoraLayer

    base = peft_model.get_base_model()
    merged = {}
    for name, module in base.named_modules():
        if isinstance(module, LoraLayer):
            for adapter in module.active_adapters:
                weight = module.get_base_layer().weight
                merged[f"{name}.weight"] = weight.detach() + module.get_delta_weight(adapter)
    out = {}
    for key, value in base.state_dict().items():
        if ".lora_" in key:
            continue
        key = key.replace(".base_layer.", ".")
        out[key] = merged.get(key, value)
    return out


def save_model(model: torch.nn.Module, tokenizer: Any, out: Path) -> Path:
    """``save_pretrained`` of the model (LoRA adapters merged) and of its tokenizer: an
    :class:`HFTokenizer`'s own, or the synthetic world's word tokenizer as a
    ``PreTrainedTokenizerFast`` (:func:`word_tokenizer_to_hf`, the same ids)."""
    if isinstance(tokenizer, HFTokenizer):
        tokenizer = tokenizer.hf
    elif hasattr(tokenizer, "vocab") and not hasattr(tokenizer, "save_pretrained"):
        tokenizer = word_tokenizer_to_hf(tokenizer.vocab[3:])
    out.mkdir(parents=True, exist_ok=True)
    if hasattr(model, "get_base_model"):
        model.get_base_model().save_pretrained(out, state_dict=merged_state_dict(model))
    else:
        model.save_pretrained(out)
    tokenizer.save_pretrained(out)
    return out


def word_tokenizer_to_hf(
    words: Sequence[str],
    specials: Sequence[str] = ("<pad>", "<bos>", "<eos>"),
    chat_template: str | None = None,
) -> Any:
    """A ``PreTrainedTokenizerFast`` over a word list (a ``tokenizers`` WordLevel model that
    lower-cases and splits words from punctuation): ids are the specials', then the words' in
    order, as ``corpus.WordTokenizer``'s; ``<bos>`` is put first by its post-processor."""
    from tokenizers import Regex, Tokenizer, normalizers, pre_tokenizers, processors
    from tokenizers.models import WordLevel
    from transformers import PreTrainedTokenizerFast

    vocab = {t: i for i, t in enumerate([*specials, *[w for w in words if w not in specials]])}
    tok = Tokenizer(WordLevel(vocab, unk_token=specials[0]))
    tok.normalizer = normalizers.Lowercase()
    # the pieces are the regex's matches (invert), whitespace between them dropped
    tok.pre_tokenizer = pre_tokenizers.Split(Regex(r"\w+|[^\w\s]"), behavior="removed",
                                             invert=True)  # fmt: skip
    pad, bos, eos = specials
    tok.post_processor = processors.TemplateProcessing(
        single=f"{bos} $A", special_tokens=[(bos, vocab[bos])]
    )
    hf = PreTrainedTokenizerFast(tokenizer_object=tok, pad_token=pad, bos_token=bos,
                                 eos_token=eos)  # fmt: skip
    if chat_template is not None:
        hf.chat_template = chat_template
    return hf
