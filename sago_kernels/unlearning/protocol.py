"""The benchmark's protocol: pre-train the models, then run Algorithm 1 per cell of the grid.

Per seed (:func:`prepare_seed`): a target model trained on the data's ``target_train`` sets and a
retain-only model trained on its ``retain_model_train`` sets (the reference of forget quality and
privacy leakage), both tiny GPT-2s built from a config, each trained until it predicts every
scored token; or the given checkpoints (``--model``, ``--retain-model``: :func:`given_seed`;
without a retain-only model there is no reference, so no forget quality, privacy leakage or
early stop). Then each :class:`RunSpec` (:func:`unlearn`): Algorithm 1 with the fused combine
from the target model, for a fixed budget of ``--steps`` steps, evaluated at the end. The grid
(the paper's Appendix A): the forget weight γ and the retain weight α, each swept with the other
at its default (:func:`grid_points`), as multiples of the weights the loss's source sets
(``losses.SUGGESTED_GAMMA`` and ``SUGGESTED_ALPHA``). Every run of one (seed, loss) draws the
same batches, whatever its method and weights, so runs differ only by what is compared.

Every run of one (seed, loss) sees the same forget batches in the same order, so NPO's reference
log-probabilities, log p_ref(x) of each row of each step's forget batch, are the same numbers for
all of them: :class:`StepReferences` computes them in the first run that needs them (the
reference forward that run would do anyway) and hands them to every later run as a
``references.CachedReference``. Per (seed, loss) that is ``--steps`` (× ``--grad-accum``)
reference forwards instead of that many per run: with the default grid (5 points of 3 combine
methods, and the forget-only run) 16 times fewer for NPO, and none of the reference model's
activations in the later runs. The values are bitwise those of the reference forward inside the
step: the same batch tensors through the same model in the same order; a per-example cache
computed in other batches would not be, since a row's log-probability can move in its last bits
with the batch it is padded in.

Runs at the default weights also record the **early stop**: the first step at which the forget
pool's exactly-predicted answer tokens fall to the retain-only model's count on the same answers
(integers: a float mean would miss an exact hit, issue 17), evaluated there; a secondary view.

``forget_only`` (:data:`FORGET_ONLY`) is the paper's forget-only baselines (GA, NPO, SimNPO
alone): γ·∇L_f steps the model, with no retain forward, backward or combine (the retain batch is
still drawn, so the forget batches are those of every other method). Under AdamW the scale of a
lone gradient hardly matters, so it runs at the default weights only. RMU has no forget-only
row: RMU is its forget term and its retain term (WMDP's ``rmu/unlearn.py``), so its standalone
baseline is the ``sum`` of the two, at RMU's α = 100.
"""

from __future__ import annotations

import argparse
import copy
import sys
import time
from dataclasses import asdict, dataclass
from pathlib import Path

import torch

from ..methods import METHODS
from ..synthesizer import GradientSynthesizer
from .algorithm import unlearning_step
from .evaluation import Evaluator
from .losses import (
    FORGET_LOSSES,
    IGNORE_INDEX,
    SUGGESTED_ALPHA,
    SUGGESTED_GAMMA,
    check_models,
    get_loss,
    loss_hparams,
    nll_loss,
    run_loss,
    step_hparams,
)  # fmt: skip
from .logprobs import model_logits, sequence_logprob
from .progress import Progress
from .references import CachedReference, run_reference
from .sources import QA, BenchmarkData, MultipleChoice

FORGET_ONLY = "forget_only"
"""The paper's forget-only baselines (GA, NPO, SimNPO alone), a pseudo-method of this
benchmark: γ·∇L_f steps the model; no retain loss, no retain backward, no combine."""
GEOMETRY = ("cos_fr", "cos_out_f", "cos_out_r")
"""The per-step gradient geometry a run keeps (paper Table 3: Forget–Retain, Comb–Forget,
Comb–Retain cosines of the whole model's gradients, from the combine's own statistics)."""


@dataclass(frozen=True)
class RunSpec:
    """One unlearning run of a seed: the forget loss, the combine method, the multiples of the
    loss's source weights, and whether to record the early stop."""

    loss: str
    method: str
    gamma_scale: float = 1.0
    alpha_scale: float = 1.0
    early_stop: bool = False

    @property
    def default_weights(self) -> bool:
        return self.gamma_scale == 1.0 and self.alpha_scale == 1.0


def grid_points(gammas: list[float], alphas: list[float]) -> list[tuple[float, float]]:
    """The (γ, α) multiples a (loss, method) runs at: (1, 1), each γ with α = 1, each α with
    γ = 1, as the paper sweeps each weight "when necessary" with the other at its default.
    Under AdamW only the ratio γ/α moves a combine (every method here is equivariant to a
    common scale), so the cross product would repeat ratios."""
    points = [(1.0, 1.0)] + [(g, 1.0) for g in gammas] + [(1.0, a) for a in alphas]
    return list(dict.fromkeys(points))


def run_specs(losses: list[str], methods: list[str], gammas: list[float],
              alphas: list[float]) -> list[RunSpec]:  # fmt: skip
    """Every run of a seed: each loss with each method over the grid (the forget-only baseline
    at the default weights, not for RMU), the default point with the early stop."""
    specs = []
    for loss in losses:
        for method in methods:
            if method == FORGET_ONLY:
                if loss != "rmu":
                    specs.append(RunSpec(loss, method, early_stop=True))
                continue
            for g, a in grid_points(gammas, alphas):
                specs.append(RunSpec(loss, method, g, a, early_stop=(g, a) == (1.0, 1.0)))
    return specs


# --------------------------------------------------------------------------- models and data


def tiny_lm(vocab_size: int, positions: int, args: argparse.Namespace, seed: int,
            special_ids: tuple[int, int, int] | None = None):  # fmt: skip
    """A small GPT-2 built from a config (no download); dropout off so runs are deterministic.
    ``special_ids``: (bos, eos, pad) of the tokenizer, so the config names tokens that exist
    (GPT-2's defaults, 50256, are outside a small vocabulary and make transformers warn)."""
    import transformers

    torch.manual_seed(seed)
    bos, eos, pad_id = special_ids if special_ids is not None else (None, None, None)
    cfg = transformers.GPT2Config(
        vocab_size=vocab_size, n_positions=positions, n_embd=args.width, n_layer=args.layers,
        n_head=4, resid_pdrop=0.0, embd_pdrop=0.0, attn_pdrop=0.0, bos_token_id=bos,
        eos_token_id=eos, pad_token_id=pad_id,
    )  # fmt: skip
    return transformers.GPT2LMHeadModel(cfg).to(args.device)


def pad(examples: list[dict], pad_id: int, device: torch.device | str) -> dict[str, torch.Tensor]:
    """Right-padded batch tensors with an attention mask (padding is never scored)."""
    width = max(len(e["input_ids"]) for e in examples)
    ids = torch.full((len(examples), width), pad_id, dtype=torch.long)
    labels = torch.full((len(examples), width), IGNORE_INDEX, dtype=torch.long)
    mask = torch.zeros((len(examples), width), dtype=torch.long)
    for i, e in enumerate(examples):
        n = len(e["input_ids"])
        ids[i, :n] = torch.tensor(e["input_ids"])
        labels[i, :n] = torch.tensor(e["labels"])
        mask[i, :n] = 1
    return {"input_ids": ids.to(device), "labels": labels.to(device),
            "attention_mask": mask.to(device)}  # fmt: skip


@torch.no_grad()
def memorised_tokens(model: torch.nn.Module, batch: dict[str, torch.Tensor],
                     batch_size: int | None = None) -> tuple[int, int]:  # fmt: skip
    """(answer tokens the model predicts exactly, teacher-forced; answer tokens): integers, so a
    target is met or not without float rounding. ``batch_size`` rows per forward (None: all)."""
    was_training = model.training
    model.eval()
    rows = len(batch["input_ids"])
    step = rows if batch_size is None else batch_size
    hits = total = 0
    for start in range(0, rows, step):
        part = {k: v[start : start + step] for k, v in batch.items()}
        logits = model(input_ids=part["input_ids"], attention_mask=part["attention_mask"]).logits
        targets = part["labels"][:, 1:]
        scored = targets != IGNORE_INDEX
        hits += int(((logits[:, :-1].argmax(-1) == targets) & scored).sum())
        total += int(scored.sum())
    model.train(was_training)
    return hits, total


def _eval_batch(args: argparse.Namespace) -> int:
    return getattr(args, "eval_batch", 64)


def train(model, examples, pad_id, args, seed, desc, progress: bool = True,
          bar: bool | None = None) -> dict:  # fmt: skip
    """Memorise ``examples`` (AdamW) until every scored token is predicted exactly, or
    ``--pretrain-epochs`` run out; a warning when the target was not reached."""
    everything = pad(examples, pad_id, args.device)
    opt = torch.optim.AdamW(model.parameters(), lr=args.pretrain_lr, weight_decay=0.0)
    g = torch.Generator().manual_seed(seed)
    n, start = len(examples), time.perf_counter()
    hit, total, epoch = 0, 1, 0
    with Progress(args.pretrain_epochs, f"{desc}, epochs", enabled=progress, bar=bar,
                  leave=False, every=60, estimate=False) as shown:  # fmt: skip
        for epoch in range(1, args.pretrain_epochs + 1):
            model.train()
            for idx in torch.randperm(n, generator=g).split(args.pretrain_batch):
                batch = {k: v[idx.to(args.device)] for k, v in everything.items()}
                logits = model(input_ids=batch["input_ids"],
                               attention_mask=batch["attention_mask"])  # fmt: skip
                nll_loss(logits.logits, batch["labels"]).backward()
                opt.step()
                opt.zero_grad()
            note = ""
            # every epoch from the 10th (a forward over the data, a fraction of an epoch's cost)
            if epoch >= min(10, args.pretrain_epochs):
                hit, total = memorised_tokens(model, everything)
                note = f"memorised {hit / total:.3f}"
            shown.update(note=note)
            if note and hit == total:
                break
    hit, total = memorised_tokens(model, everything)
    info = {"epochs": epoch, "memorised": hit / total, "reached": hit == total,
            "seconds": round(time.perf_counter() - start, 1)}  # fmt: skip
    if not info["reached"]:
        print(
            f"warning: {desc} memorised {hit} of {total} answer tokens after {epoch} epochs "
            "(pre-training did not reach its target; raise --pretrain-epochs or --width)",
            file=sys.stderr, flush=True,
        )  # fmt: skip
    model.eval().requires_grad_(False)
    return info


def _positions(data: BenchmarkData) -> int:
    """The models' context: the longest example any set makes (a question with any of its
    answers, a probe's prompt with the longest answer, a question with an option), plus 8."""
    tok, template = data.tokenizer, data.template
    longest_answer = 0
    longest = 0
    for items in data.sets.values():
        for item in items:
            if isinstance(item, QA):
                for answer in (item.answer, item.paraphrased_answer, *item.perturbed_answers):
                    if answer:
                        n = len(data.encode_qa(item.question, answer)["input_ids"])
                        longest = max(longest, n)
                longest_answer = max(longest_answer, len(template.answer_ids(tok, item.answer)))
            elif isinstance(item, MultipleChoice):
                prompt, options = template.choice_ids(tok, item)
                longest = max(longest, len(prompt) + max(len(o) for o in options))
    for items in data.sets.values():
        for item in items:
            if not isinstance(item, (QA, MultipleChoice)) and hasattr(item, "style"):
                n = len(template.probe_ids(tok, item)) + longest_answer
                longest = max(longest, n)
    return longest + 8


def prepare_seed(data: BenchmarkData, args: argparse.Namespace, seed: int,
                 progress: bool = True, bar: bool | None = None) -> dict:  # fmt: skip
    """The seed's target and retain-only models, trained, its evaluator and the two models' own
    evaluations: ``{"target", "retain_model", "evaluator", "reference", "info"}``."""
    leaks = data.leaks()
    if leaks:
        raise ValueError(f"The data's held-out sets are not held out: {'; '.join(leaks)}.")
    tok = data.tokenizer
    positions = _positions(data)
    special = (tok.bos_id, tok.eos_id, tok.pad_id)
    target = tiny_lm(tok.vocab_size, positions, args, seed, special)
    target_info = train(target, data.examples(data.target_train), tok.pad_id, args, seed,
                        f"seed {seed}: pre-training the target", progress, bar)  # fmt: skip
    retain_model = tiny_lm(tok.vocab_size, positions, args, seed, special)
    retain_info = train(retain_model, data.examples(data.retain_model_train), tok.pad_id, args,
                        seed, f"seed {seed}: pre-training the retain-only model", progress,
                        bar)  # fmt: skip
    evaluator = Evaluator(data, batch_size=_eval_batch(args))
    reference = evaluator(retain_model)
    hit, _ = memorised_tokens(retain_model, pad(data.examples(data.forget), tok.pad_id,
                                                args.device), _eval_batch(args))  # fmt: skip
    reference["memorised_forget_tokens"] = hit
    target_eval = evaluator(target, reference)
    info = {
        "seed": seed, "data": data.info, "identities": data.identities(),
        "positions": positions, "target_training": target_info,
        "retain_training": retain_info, "retain_model": reference, "target_model": target_eval,
    }  # fmt: skip
    return {"target": target, "retain_model": retain_model, "evaluator": evaluator,
            "reference": reference, "info": info}  # fmt: skip


def given_seed(data: BenchmarkData, args: argparse.Namespace, seed: int, target, retain_model,
               cache: dict) -> dict:  # fmt: skip
    """:func:`prepare_seed` for given checkpoints: nothing trained; the two models'
    evaluations do not depend on the seed, so they are made once (``cache``)."""
    if "evaluator" not in cache:
        leaks = data.leaks()
        if leaks:
            raise ValueError(f"The data's held-out sets are not held out: {'; '.join(leaks)}.")
        evaluator = Evaluator(data, batch_size=_eval_batch(args),
                              reference_available=retain_model is not None)  # fmt: skip
        reference = None
        if retain_model is not None:
            reference = evaluator(retain_model)
            forget_all = pad(data.examples(data.forget), data.tokenizer.pad_id, args.device)
            hit, _ = memorised_tokens(retain_model, forget_all, _eval_batch(args))
            reference["memorised_forget_tokens"] = hit
        cache.update(evaluator=evaluator, reference=reference,
                     target_eval=evaluator(target, reference))  # fmt: skip
    info = {
        "seed": seed, "data": data.info, "identities": data.identities(),
        "target_training": None, "retain_training": None,
        "given": {"model": args.model, "retain_model": args.retain_model},
        "retain_model": copy.deepcopy(cache["reference"]),
        "target_model": copy.deepcopy(cache["target_eval"]),
    }  # fmt: skip
    return {"target": target, "retain_model": retain_model, "evaluator": cache["evaluator"],
            "reference": cache["reference"], "info": info}  # fmt: skip


def seed_line(info: dict) -> str:
    """One line on a prepared seed: how the models were had, and the target's scores."""
    metrics = info["target_model"]["metrics"]
    shown = (("forget_probe_rouge", "forget_probe_rouge", "{:.3f}"),
             ("forget_quality", "forget_quality", "{:.3g}"),
             ("model_utility", "model_utility", "{:.3f}"),
             ("forget_choice_accuracy", "forget_choice_accuracy", "{:.3f}"),
             ("retention_choice_accuracy", "retention_choice_accuracy", "{:.3f}"))  # fmt: skip
    scores = ", ".join(f"{label} {fmt.format(metrics[key])}" for key, label, fmt in shown
                       if metrics.get(key) is not None)  # fmt: skip
    if info["target_training"] is None:
        models = f"given model {info['given']['model']}"
        if info["given"]["retain_model"] is None:
            models += " (no --retain-model: forget quality and privleak not available)"
    else:
        t, r = info["target_training"], info["retain_training"]
        models = (f"target memorised {t['memorised']:.3f} in {t['epochs']} epochs, retain-only "
                  f"{r['memorised']:.3f} in {r['epochs']}")  # fmt: skip
    return f"seed {info['seed']}: {models}; target model {scores or 'scored'}"


# --------------------------------------------------------------------------- one run


class StepReferences:
    """NPO's reference log-probabilities of one seed's forget batches, by (loss, step): filled
    by the first run of a (seed, loss) that steps, read by every later one (they all draw the
    same batches, which each read checks against the rows it was filled with).

    :meth:`reference` returns what a step's loss takes in place of the reference model: a
    :class:`~.references.CachedReference` of that step's rows (all its micro-batches', in
    order), the batches carrying ``index``, their rows' positions in it. ``forwards`` counts
    the reference forwards made."""

    def __init__(self) -> None:
        self._steps: dict[tuple[str, int], tuple[list[torch.Tensor], CachedReference]] = {}
        self.forwards = 0

    def reference(self, loss: str, step: int, rows: list[torch.Tensor],
                  batches: list[dict[str, torch.Tensor]],
                  ref_model) -> tuple[CachedReference, list[dict[str, torch.Tensor]]]:  # fmt: skip
        """The cached reference of step ``step`` of ``loss``'s runs and the batches with their
        ``index``; ``rows``: each micro-batch's row indices into the forget pool."""
        key = (loss, step)
        if key in self._steps:
            seen, cached = self._steps[key]
            if len(seen) != len(rows) or not all(torch.equal(a, b) for a, b in zip(seen, rows)):
                raise RuntimeError(
                    f"Step {step} of a {loss!r} run drew other forget rows than the run that "
                    "filled the reference cache: the runs of one (seed, loss) should draw the "
                    "same batches."
                )
        else:
            values = []
            for batch in batches:  # the forward the step would make, on the same tensors
                values.append(run_reference(ref_model, lambda ref, b=batch: sequence_logprob(
                    model_logits(ref, b), b["labels"])))  # fmt: skip
                self.forwards += 1
            cached = CachedReference(torch.cat(values))
            self._steps[key] = ([r.clone() for r in rows], cached)
        indexed, start = [], 0
        for batch in batches:
            n = len(batch["input_ids"])
            index = torch.arange(start, start + n, device=batch["input_ids"].device)
            indexed.append({**batch, "index": index})
            start += n
        return cached, indexed


def forget_only_step(model, optimizer, forget_batch, *, forget_loss, ref_model, loss_kwargs,
                     gamma) -> torch.Tensor:  # fmt: skip
    """One step of a forget-only baseline: one forward and backward of the forget loss, the
    gradient scaled by γ in place (the forget term of the ``sum`` combine, γ·g_f), then
    ``optimizer.step()`` and ``optimizer.zero_grad()``. No retain forward or backward."""
    f_loss = get_loss(forget_loss, forget=True)
    hparams = loss_hparams(f_loss, dict(loss_kwargs))
    check_models(f_loss, hparams, model, ref_model)
    loss_f = run_loss(f_loss, model, forget_batch, ref_model=ref_model, **hparams)
    loss_f.backward()
    _scale_grads(model, gamma)
    optimizer.step()
    optimizer.zero_grad()
    return loss_f.detach()


def _scale_grads(model: torch.nn.Module, gamma: float) -> None:
    if gamma != 1.0:
        torch._foreach_mul_([p.grad for p in model.parameters() if p.grad is not None], gamma)


def accumulated_step(model, synth, optimizer, forget_batches, retain_batches, *, forget_loss,
                     retain_loss, ref_model, loss_kwargs, gamma) -> None:  # fmt: skip
    """One step over several micro-batches a side (``--grad-accum``): each loss divided by
    their number, the forget backward passes accumulated in the forget buffer, the retain ones
    in the retain buffer, one combine; with ``synth`` None, the forget-only baseline's γ·g_f."""
    f_loss, r_loss = get_loss(forget_loss, forget=True), get_loss(retain_loss, forget=False)
    hparams, r_hparams = step_hparams(f_loss, r_loss, loss_kwargs, None)
    check_models(f_loss, hparams, model, ref_model)
    k = len(forget_batches)
    if synth is None:
        for batch in forget_batches:
            (run_loss(f_loss, model, batch, ref_model=ref_model, **hparams) / k).backward()
        _scale_grads(model, gamma)
    else:
        with synth.forget():
            for batch in forget_batches:
                (run_loss(f_loss, model, batch, ref_model=ref_model, **hparams) / k).backward()
        with synth.retain():
            for batch in retain_batches:
                (run_loss(r_loss, model, batch, ref_model=ref_model, **r_hparams) / k).backward()
        synth.combine_()
    optimizer.step()
    optimizer.zero_grad()


def weights(spec: RunSpec) -> tuple[float, float]:
    """(γ, α) of a run: its multiples of the loss's source weights."""
    gamma = SUGGESTED_GAMMA.get(spec.loss, 1.0) * spec.gamma_scale
    alpha = SUGGESTED_ALPHA.get(spec.loss, 1.0) * spec.alpha_scale
    return gamma, alpha


def unlearn(target, data: BenchmarkData, evaluator, reference, spec: RunSpec, seed: int,
            args, references: StepReferences | None = None) -> dict:  # fmt: skip
    """Algorithm 1 from the target model for ``--steps`` steps, evaluated at the end (and at the
    early stop when ``spec.early_stop`` and there is a retain-only model to stop at).

    ``spec.method`` is a combine method, or :data:`FORGET_ONLY` (no retain term at all). The
    forget and retain batches are drawn from one generator per (seed, loss), whatever the
    method and the weights (the forget-only baseline draws the retain batch and leaves it
    unused). Combine runs keep each step's global gradient geometry (:data:`GEOMETRY`).

    With ``--lora-rank`` the adapters go on the target itself for the run and come off after
    (the base is never written), and the reference is the base with its adapters off
    (``references.AdaptersOff``); otherwise the run trains a copy and the target is the
    reference.

    ``references``: the seed's :class:`StepReferences`, shared by its runs, for a loss that
    reads the reference only through log p_ref(x) (NPO); None runs the reference model inside
    every step (the same numbers, bit for bit)."""
    lora = getattr(args, "lora_rank", 0)
    if lora:
        from .checkpoints import attach_lora, detach_lora
        from .references import AdaptersOff

        model = attach_lora(target, lora).train()
        ref_model = AdaptersOff(model)
    else:
        model = copy.deepcopy(target).train().requires_grad_(True)
        ref_model = target
    try:
        return _unlearn(model, ref_model, data, evaluator, reference, spec, seed, args,
                        references)  # fmt: skip
    finally:
        if lora:
            detach_lora(model)


def _unlearn(model, ref_model, data, evaluator, reference, spec: RunSpec, seed: int, args,
             references: StepReferences | None) -> dict:  # fmt: skip
    gamma, alpha = weights(spec)
    synth = None
    if spec.method != FORGET_ONLY:
        # the segments of a per-segment method: the paper's PCGrad projects per module
        per_segment = METHODS[spec.method].scope == "segment"
        granularity = args.granularity if per_segment else "parameter"
        synth = GradientSynthesizer(
            model, method=spec.method, alpha=alpha, gamma=gamma,
            backend=args.backend, keep_history=None, granularity=granularity,
            buffers=getattr(args, "buffers", 2),
        )  # fmt: skip
    trained = [p for p in model.parameters() if p.requires_grad]
    opt = torch.optim.AdamW(trained, lr=args.lr, weight_decay=0.0)
    pad_id = data.tokenizer.pad_id
    forget_all = pad(data.examples(data.forget), pad_id, args.device)
    retain_all = pad(data.examples(data.retain), pad_id, args.device)
    g = torch.Generator().manual_seed(1000 * seed + sorted(FORGET_LOSSES).index(spec.loss))

    drawn: list[torch.Tensor] = []  # this step's forget rows, per micro-batch

    def draw(batch: dict[str, torch.Tensor]) -> dict[str, torch.Tensor]:
        idx = torch.randint(len(batch["input_ids"]), (args.batch,), generator=g)
        if batch is forget_all:
            drawn.append(idx)
        return {k: v[idx.to(args.device)] for k, v in batch.items()}

    cache = references if get_loss(spec.loss, forget=True).per_sequence_reference else None

    def step_reference(step: int, forget_batches: list[dict]) -> tuple[object, list[dict]]:
        """The reference this step's losses take, and the forget batches they read."""
        if cache is None:
            return ref_model, forget_batches
        return cache.reference(spec.loss, step, drawn, forget_batches, ref_model)

    loss_kwargs = {"layer": args.rmu_layer} if spec.loss == "rmu" else {}
    retain_loss = "rmu" if spec.loss == "rmu" else "nll"
    accumulate = getattr(args, "grad_accum", 1)
    eval_batch = _eval_batch(args)
    # the early stop needs the retain-only model's count (none without a retain-only model)
    early_stop = (spec.early_stop and reference is not None
                  and "memorised_forget_tokens" in reference)  # fmt: skip
    curve, early, start = [], None, time.perf_counter()
    total = None
    if early_stop:
        hit, total = memorised_tokens(model, forget_all, eval_batch)
        curve.append({"step": 0, "forget_tokens_memorised": hit})
    for step in range(1, args.steps + 1):
        drawn.clear()
        if accumulate > 1:
            pairs = [(draw(forget_all), draw(retain_all)) for _ in range(accumulate)]
            ref, forget_batches = step_reference(step, [f for f, _ in pairs])
            accumulated_step(model, synth, opt, forget_batches, [r for _, r in pairs],
                             forget_loss=spec.loss, retain_loss=retain_loss, ref_model=ref,
                             loss_kwargs=loss_kwargs, gamma=gamma)  # fmt: skip
        elif synth is None:
            forget_batch, retain_batch = draw(forget_all), draw(retain_all)
            ref, (forget_batch,) = step_reference(step, [forget_batch])
            forget_only_step(model, opt, forget_batch, forget_loss=spec.loss, ref_model=ref,
                             loss_kwargs=loss_kwargs, gamma=gamma)  # fmt: skip
        else:
            forget_batch, retain_batch = draw(forget_all), draw(retain_all)
            ref, (forget_batch,) = step_reference(step, [forget_batch])
            unlearning_step(
                model, synth, opt, forget_batch, retain_batch, forget_loss=spec.loss,
                retain_loss=retain_loss, ref_model=ref, loss_kwargs=loss_kwargs,
            )  # fmt: skip
        if early_stop:
            hit, total = memorised_tokens(model, forget_all, eval_batch)
            curve.append({"step": step, "forget_tokens_memorised": hit})
            if early is None and hit <= reference["memorised_forget_tokens"]:
                early = {"steps": step, "reached": True, **evaluator(model, reference)}
    fixed = {"steps": args.steps, **evaluator(model, reference)}
    if early_stop and early is None:  # never as forgotten as the retain-only model: say so
        early = {**fixed, "reached": False}
    if getattr(args, "save_model", None):
        from .checkpoints import save_model

        grid = "" if spec.default_weights else f"-g{spec.gamma_scale:g}-a{spec.alpha_scale:g}"
        where = Path(args.save_model) / f"{spec.loss}-{spec.method}{grid}-seed{seed}"
        save_model(model, data.tokenizer, where)
    geometry = None
    if synth is not None:  # one row per step: the whole model's cosines
        table = synth.history_table()
        geometry = {name: [row[name] for row in table] for name in GEOMETRY}
    return {
        "seed": seed, **asdict(spec), "gamma": gamma, "alpha": alpha, "fixed": fixed,
        "early_stop": early, "curve": curve or None, "forget_tokens": total,
        "geometry": geometry, "seconds": round(time.perf_counter() - start, 2),
    }  # fmt: skip
