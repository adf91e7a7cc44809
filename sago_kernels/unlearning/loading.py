"""The benchmark's data and model flags: which source, which checkpoints, how to fit them.

``add_arguments`` adds the flags to the command line; ``check_arguments`` checks their values
(no file or network touched); :func:`prepare` then resolves everything that can fail, in the
order that fails fastest (the tokenizer, the data, then the models), before any training: a
missing file or field, a folder that is not one, or a hub id with no network is a
:class:`~.sources.SourceError`, which the command line prints as one line and exits 2.

Sources (``--data``): ``synthetic`` (the built-in author world, one corpus per seed; tiny GPT-2s
pre-trained on it), ``tofu`` (``tofu.py``), ``wmdp-bio``/``wmdp-cyber`` (``wmdp.py``), or a folder:
an export (``export.py``, it has ``sago_roles.json``) or TOFU's files. ``--data-dir DIR`` reads
``tofu``'s or WMDP's files from a folder instead of the hub.
"""

from __future__ import annotations

import argparse
from dataclasses import dataclass
from pathlib import Path

import torch

from .checkpoints import (
    DATE_STRING,
    DTYPES,
    SYSTEM_PROMPT,
    ChatTemplate,
    HFTokenizer,
    load_model,
    load_tokenizer,
    template_for,
)  # fmt: skip
from .export import MANIFEST, exported_data
from .sources import BenchmarkData, SourceError
from .synthetic import synthetic_data
from .tofu import FORGET_SPLITS, tofu_data
from .wmdp import DOMAINS, wmdp_data

__all__ = ["Prepared", "add_arguments", "check_arguments", "data_for_seed", "prepare"]

NAMED_SOURCES = ("synthetic", "tofu", *DOMAINS)


def add_arguments(p: argparse.ArgumentParser) -> None:
    """The data, checkpoint and memory flags (their help says what each does)."""
    g = p.add_argument_group("data and models (see sago_kernels/unlearning/loading.py)")
    g.add_argument("--data", default="synthetic", metavar="SOURCE",
                   help="synthetic (default), tofu (the hub's locuslab/TOFU), wmdp-bio, "
                   "wmdp-cyber, or a folder: TOFU's files or an --export-data folder")  # fmt: skip
    g.add_argument("--data-dir", default=None, metavar="DIR",
                   help="read --data tofu / wmdp-*'s files from DIR instead of the hub (default: "
                   "the hub)")
    g.add_argument("--forget-split", default=None, choices=FORGET_SPLITS,
                   help="TOFU's forget split (default forget10); the retain split and holdout "
                   "follow (retain90, holdout10)")  # fmt: skip
    g.add_argument("--model", default=None, metavar="ID_OR_DIR",
                   help="the checkpoint to unlearn (hub id or save_pretrained folder); no "
                   "pre-training then (default: none, the synthetic world pre-trains its "
                   "own)")  # fmt: skip
    g.add_argument("--retain-model", default=None, metavar="ID_OR_DIR",
                   help="the retain-only checkpoint, the reference of forget quality, privleak "
                   "and the early stop; without it those are reported as not available "
                   "(default: none)")
    g.add_argument("--template", default="auto", choices=("auto", "chat", "plain"),
                   help="question/answer layout: the tokenizer's chat template (auto: when it "
                   "has one) or plain 'Question: ...\\nAnswer: ...'")  # fmt: skip
    g.add_argument("--system-prompt", default=SYSTEM_PROMPT,
                   help="the chat template's system prompt ('' for none; default "
                   "open-unlearning's)")  # fmt: skip
    g.add_argument("--date-string", default=DATE_STRING,
                   help="date_string for templates that print one (Llama 3); '' for none")
    g.add_argument("--dtype", default="float32", choices=sorted(DTYPES),
                   help="model weights (bfloat16 halves a checkpoint's memory)")
    g.add_argument("--gradient-checkpointing", action="store_true",
                   help="recompute activations in the backward (a 7B on one GPU needs it)")
    g.add_argument("--buffers", type=int, default=2, choices=(1, 2),
                   help="gradient buffers of the synthesizer: 1 combines inside the retain "
                   "backward (one buffer's memory fewer)")  # fmt: skip
    g.add_argument("--lora-rank", type=int, default=0,
                   help="train LoRA adapters of this rank on every linear map instead of all "
                   "weights (0: full); saved merged")  # fmt: skip
    g.add_argument("--max-length", type=int, default=None,
                   help="cut every example to its first N tokens (documents: WMDP's passages) "
                   "(default: whole)")
    g.add_argument("--grad-accum", type=int, default=1,
                   help="micro-batches of --batch per side and step (gradient accumulation)")
    g.add_argument("--eval-batch", type=int, default=64,
                   help="examples per forward in the evaluation and the forgetting curve")
    g.add_argument("--eval-limit", type=int, default=None,
                   help="WMDP/MMLU: a fixed (seed 0) sample of N questions of each set "
                   "(default: all)")
    g.add_argument("--max-documents", type=int, default=None,
                   help="WMDP: the first N passages of each corpus (default: all)")
    g.add_argument("--save-model", default=None, metavar="DIR",
                   help="save each run's final model and tokenizer (save_pretrained) to "
                   "DIR/<loss>-<method>[-g<γ>-a<α>]-seed<seed> (default: not saved)")
    g.add_argument("--export-data", default=None, metavar="DIR",
                   help="write the synthetic world of the one --seeds seed as TOFU's files "
                   "(see export.py) and exit (default: no export)")  # fmt: skip


def _is_folder_source(data: str) -> bool:
    return data not in NAMED_SOURCES


def check_arguments(args: argparse.Namespace) -> list[str]:
    """Every value checked before anything is read: what is wrong, and how to fix it."""
    problems = []
    folder = _is_folder_source(args.data)
    if folder and not Path(args.data).is_dir():
        problems.append(f"--data {args.data}: not one of {', '.join(NAMED_SOURCES)} and no "
                        "such folder")  # fmt: skip
    if args.data_dir is not None and args.data not in ("tofu", *DOMAINS):
        problems.append("--data-dir goes with --data tofu, wmdp-bio or wmdp-cyber (a folder of "
                        "their files); for another folder pass it as --data DIR")  # fmt: skip
    if args.forget_split is not None and args.data in ("synthetic", *DOMAINS):
        problems.append(f"--forget-split is TOFU's; with --data {args.data} use "
                        "--forget-percent" if args.data == "synthetic" else
                        f"--forget-split is TOFU's; --data {args.data} has none")  # fmt: skip
    if args.data == "synthetic" and args.model is not None:
        problems.append("--model with --data synthetic: the synthetic world pre-trains its own "
                        "models; to unlearn a given model on it, write it with --export-data "
                        "DIR and run --data DIR --model ...")  # fmt: skip
    if args.model is None:
        if args.data in ("tofu", *DOMAINS) or (
            folder and Path(args.data).is_dir() and not (Path(args.data) / MANIFEST).exists()
        ):
            problems.append(f"--data {args.data} needs --model (the checkpoint to unlearn, e.g. "
                            "open-unlearning/tofu_Llama-3.2-1B-Instruct_full)")  # fmt: skip
        if args.retain_model is not None:
            problems.append("--retain-model goes with --model")
        for flag, given in (("--lora-rank", args.lora_rank), ("--dtype", args.dtype != "float32"),
                            ("--gradient-checkpointing", args.gradient_checkpointing)):
            if given:
                problems.append(f"{flag} applies to a given --model")
    if getattr(args, "paper", False) and args.model is not None and args.retain_model is None:
        problems.append("--paper reports matched forgetting, which needs a retain-only model: "
                        "add --retain-model")  # fmt: skip
    if args.lora_rank < 0:
        problems.append(f"--lora-rank should be >= 0 (0: full fine-tuning), got {args.lora_rank}")
    for name in ("grad_accum", "eval_batch"):
        if getattr(args, name) < 1:
            problems.append(f"--{name.replace('_', '-')} should be >= 1, got {getattr(args, name)}")
    for name in ("max_length", "eval_limit", "max_documents"):
        value = getattr(args, name)
        if value is not None and value < (8 if name == "max_length" else 1):
            low = 8 if name == "max_length" else 1
            problems.append(f"--{name.replace('_', '-')} should be >= {low}, got {value}")
    if args.buffers == 1 and args.grad_accum > 1:
        problems.append("--buffers 1 combines inside the one retain backward of a step, so it "
                        "takes no --grad-accum; lower --batch, or use --buffers 2")  # fmt: skip
    if args.export_data is not None:
        if args.data != "synthetic":
            problems.append("--export-data writes the synthetic world: leave out --data")
        if len(args.seeds) != 1:
            problems.append(f"--export-data writes one seed's corpus; give one --seeds, got "
                            f"{args.seeds}")  # fmt: skip
    return problems


@dataclass
class Prepared:
    """What :func:`prepare` resolved: the data (None: synthetic, built per seed), the given
    models (None: pre-trained per seed) and the model's own tokenizer (for ``--save-model``)."""

    data: BenchmarkData | None
    target: torch.nn.Module | None
    retain_model: torch.nn.Module | None
    hf_tokenizer: object | None
    cache: dict


def prepare(args: argparse.Namespace) -> Prepared:
    """Tokenizer, data, then models: everything that can fail on a file or the network, first."""
    if args.data == "synthetic":
        return Prepared(None, None, None, None, {})
    tokenizer = template = None
    if args.model is not None:
        tokenizer = load_tokenizer("--model", args.model)
        template = template_for(tokenizer, args.template, args.system_prompt, args.date_string)
    if args.data == "tofu" or (_is_folder_source(args.data)
                               and not (Path(args.data) / MANIFEST).exists()):  # fmt: skip
        source = args.data_dir or args.data
        data = tofu_data(source, args.forget_split or "forget10", tokenizer, template,
                         args.max_length)  # fmt: skip
    elif args.data in DOMAINS:
        data = wmdp_data(args.data, args.data_dir, tokenizer, max_length=args.max_length,
                         max_documents=args.max_documents, eval_limit=args.eval_limit)  # fmt: skip
    else:  # an export: without a chat template, its own layout (the one it was trained with)
        own = args.template == "auto" and not isinstance(template, ChatTemplate)
        data = exported_data(args.data, tokenizer=tokenizer, template=None if own else template,
                             max_length=args.max_length)  # fmt: skip
        split = data.info.get("forget_split")
        if args.forget_split is not None and split is not None and args.forget_split != split:
            raise SourceError(f"--forget-split {args.forget_split}: the export at {args.data} "
                              f"holds {split}")  # fmt: skip
    if args.model is None:
        return Prepared(data, None, None, None, {})
    kw = {"dtype": args.dtype, "device": args.device,
          "gradient_checkpointing": args.gradient_checkpointing}  # fmt: skip
    target = load_model("--model", args.model, **kw)
    retain = None if args.retain_model is None else load_model("--retain-model",
                                                               args.retain_model, **kw)
    layers = getattr(target.config, "num_hidden_layers", None)
    rmu = "rmu" in {spec.loss for spec in args.runs}
    if rmu and layers is not None and args.rmu_layer > layers:
        raise SourceError(f"--rmu-layer {args.rmu_layer}: the model has {layers} blocks")
    hf = tokenizer.hf if isinstance(tokenizer, HFTokenizer) else None
    return Prepared(data, target, retain, hf, {})


def data_for_seed(args: argparse.Namespace, prepared: Prepared, seed: int) -> BenchmarkData:
    """The seed's data: the synthetic world is drawn per seed, every other source is fixed."""
    if prepared.data is not None:
        return prepared.data
    return synthetic_data(
        seed=seed, authors=args.authors, forget_percent=args.forget_percent,
        qa_per_author=args.qa_per_author, world_facts=args.world_facts,
        real_authors=args.real_authors, neighbours_per_author=args.neighbours,
        eval_retain=args.eval_retain,
    )  # fmt: skip
