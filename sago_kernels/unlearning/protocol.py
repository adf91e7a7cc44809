"""The benchmark's protocol: pre-train the models, run Algorithm 1 per (loss, method), match.

Per seed (:func:`prepare_seed`): a target model trained on the data's ``target_train`` sets and a
retain-only model trained on its ``retain_model_train`` sets (the reference of forget quality and
privacy leakage), both tiny GPT-2s built from a config; or the given checkpoints (``--model``,
``--retain-model``: :func:`given_seed`; without a retain-only model there is no reference, so no
forget quality, privacy leakage or matched forgetting, and the forgetting curve is kept at its
two ends only). Then, for each forget loss and each
combine method (:func:`unlearn`), Algorithm 1 with the fused combine from the target model, on the
same batches for every method. Each run is measured twice:

- **matched forgetting**: at the first step where the forget set's exactly-memorised answer
  tokens fall to the retain-only model's count on the same answers (counts of tokens, compared as
  integers: a float mean would miss an exact hit, see issue 17);
- **fixed budget**: after ``--steps`` steps, as the paper's fixed epochs.

``forget_only`` (:data:`FORGET_ONLY`) is the paper's forget-only baselines (GA, NPO, SimNPO, RMU
alone): γ·∇L_f steps the model, with no retain forward, backward or combine (the retain batch is
still drawn, so the forget batches are those of every other method). Under AdamW the γ of a
lone gradient hardly matters (Adam is invariant to its scale), so SimNPO alone is not slowed by
its γ; in a combine, γ weighs g_f against g_r.
"""

from __future__ import annotations

import argparse
import copy
import sys
import time
from pathlib import Path

import torch

from ..synthesizer import GradientSynthesizer
from .algorithm import unlearning_step
from .evaluation import Evaluator
from .losses import (
    FORGET_LOSSES,
    IGNORE_INDEX,
    SUGGESTED_GAMMA,
    check_models,
    get_loss,
    loss_hparams,
    nll_loss,
    run_loss,
    step_hparams,
)  # fmt: skip
from .sources import QA, BenchmarkData

PROTOCOLS = ("matched", "fixed")
FORGET_ONLY = "forget_only"
"""The paper's forget-only baselines (GA, NPO, SimNPO, RMU alone), a pseudo-method of this
benchmark: γ·∇L_f steps the model; no retain loss, no retain backward, no combine."""
GEOMETRY = ("cos_fr", "cos_out_f", "cos_out_r")
"""The per-step gradient geometry a run keeps (paper Table 3: Forget–Retain, Comb–Forget,
Comb–Retain cosines of the whole model's gradients, from the combine's own statistics)."""


# --------------------------------------------------------------------------- models and data


def tiny_lm(vocab_size: int, positions: int, args: argparse.Namespace, seed: int):
    """A small GPT-2 built from a config (no download); dropout off so runs are deterministic."""
    import transformers

    torch.manual_seed(seed)
    cfg = transformers.GPT2Config(
        vocab_size=vocab_size, n_positions=positions, n_embd=args.width, n_layer=args.layers,
        n_head=4, resid_pdrop=0.0, embd_pdrop=0.0, attn_pdrop=0.0,
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
                     batch_size: int = 64) -> tuple[int, int]:  # fmt: skip
    """(answer tokens the model predicts exactly, teacher-forced; answer tokens): integers, so a
    target is met or not without float rounding. ``batch_size`` rows per forward."""
    was_training = model.training
    model.eval()
    hits = total = 0
    for start in range(0, len(batch["input_ids"]), batch_size):
        rows = {k: v[start : start + batch_size] for k, v in batch.items()}
        logits = model(input_ids=rows["input_ids"], attention_mask=rows["attention_mask"]).logits
        targets = rows["labels"][:, 1:]
        scored = targets != IGNORE_INDEX
        hits += int(((logits[:, :-1].argmax(-1) == targets) & scored).sum())
        total += int(scored.sum())
    model.train(was_training)
    return hits, total


def train(model, examples, pad_id, args, seed, desc) -> dict:
    """Memorise ``examples`` (AdamW) until every answer token is predicted exactly, or
    ``--pretrain-epochs`` run out; a warning when the target was not reached."""
    from tqdm.auto import tqdm

    everything = pad(examples, pad_id, args.device)
    opt = torch.optim.AdamW(model.parameters(), lr=args.pretrain_lr, weight_decay=0.0)
    g = torch.Generator().manual_seed(seed)
    n, start = len(examples), time.perf_counter()
    hit, total = 0, 1
    bar = tqdm(range(1, args.pretrain_epochs + 1), desc=desc, leave=False, disable=args.no_progress)
    epoch = 0
    for epoch in bar:
        model.train()
        for idx in torch.randperm(n, generator=g).split(args.pretrain_batch):
            batch = {k: v[idx.to(args.device)] for k, v in everything.items()}
            logits = model(input_ids=batch["input_ids"], attention_mask=batch["attention_mask"])
            nll_loss(logits.logits, batch["labels"]).backward()
            opt.step()
            opt.zero_grad()
        if epoch % 5 == 0 or epoch == args.pretrain_epochs:
            hit, total = memorised_tokens(model, everything)
            bar.set_postfix(memorised=f"{hit / total:.3f}")
            if hit == total:
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
    """The models' context: the longest encoded answer or paraphrase of any set, or perturbed
    answer of the forget set, plus 8."""
    longest = 0
    for item in data.items(list(data.sets)):
        if isinstance(item, QA):
            for answer in (item.answer, item.paraphrased_answer):
                longest = max(longest, len(data.encode_qa(item.question, answer)["input_ids"]))
    for item in data.eval_set("forget"):
        for answer in item.perturbed_answers:
            longest = max(longest, len(data.encode_qa(item.question, answer)["input_ids"]))
    return longest + 8


def _eval_batch(args: argparse.Namespace) -> int:
    return getattr(args, "eval_batch", 64)


def given_seed(data: BenchmarkData, args: argparse.Namespace, seed: int, target, retain_model,
               cache: dict) -> dict:  # fmt: skip
    """:func:`prepare_seed` for given checkpoints: nothing trained; the two models' evaluations
    do not depend on the seed, so they are made once (``cache``)."""
    if "evaluator" not in cache:
        evaluator = Evaluator(data, args, reference_available=retain_model is not None)
        reference = None
        if retain_model is not None:
            reference = evaluator(retain_model)
            forget_all = pad(data.examples(data.forget), data.tokenizer.pad_id, args.device)
            hit, _ = memorised_tokens(retain_model, forget_all, _eval_batch(args))
            reference["memorised_forget_tokens"] = hit
        cache.update(evaluator=evaluator, reference=reference,
                     target_eval=evaluator(target, reference))  # fmt: skip
    info = {
        "seed": seed, "vocab": data.info["vocab"], "sizes": data.info["sizes"],
        "target_training": None, "retain_training": None,
        "given": {"model": args.model, "retain_model": args.retain_model},
        "retain_model": cache["reference"], "target_model": cache["target_eval"],
    }  # fmt: skip
    return {"target": target, "retain_model": retain_model, "evaluator": cache["evaluator"],
            "reference": cache["reference"], "info": info}  # fmt: skip


def seed_line(info: dict) -> str:
    """One line on a prepared seed: how the models were had, and the target's scores."""
    metrics = info["target_model"]["metrics"]
    shown = (("forget_quality", "FQ", "{:.3g}"), ("model_utility", "MU", "{:.3f}"),
             ("forget_choice_accuracy", "forget accuracy", "{:.3f}"),
             ("retention_choice_accuracy", "retention accuracy", "{:.3f}"))  # fmt: skip
    scores = ", ".join(f"{label} {fmt.format(metrics[key])}" for key, label, fmt in shown
                       if metrics.get(key) is not None)  # fmt: skip
    if info["target_training"] is None:
        models = f"given model {info['given']['model']}"
        if info["given"]["retain_model"] is None:
            models += " (no --retain-model: forget quality and privleak not available)"
    else:
        t, r = info["target_training"], info["retain_training"]
        models = (f"vocabulary {info['vocab']}, target memorised {t['memorised']:.3f} in "
                  f"{t['epochs']} epochs, retain-only {r['memorised']:.3f}")  # fmt: skip
    return f"seed {info['seed']}: {models}; before unlearning {scores}"


def prepare_seed(data: BenchmarkData, args: argparse.Namespace, seed: int) -> dict:
    """The seed's target and retain-only models, trained, its evaluator and the two models' own
    evaluations: ``{"target", "retain_model", "evaluator", "reference", "info"}``."""
    tok = data.tokenizer
    positions = _positions(data)
    target = tiny_lm(tok.vocab_size, positions, args, seed)
    target_info = train(target, data.examples(data.target_train), tok.pad_id, args, seed,
                        f"seed {seed}: target")  # fmt: skip
    retain_model = tiny_lm(tok.vocab_size, positions, args, seed)
    retain_info = train(retain_model, data.examples(data.retain_model_train), tok.pad_id, args,
                        seed, f"seed {seed}: retain-only")  # fmt: skip
    evaluator = Evaluator(data, args)
    reference = evaluator(retain_model)
    hit, _ = memorised_tokens(retain_model, pad(data.examples(data.forget), tok.pad_id,
                                                args.device), _eval_batch(args))  # fmt: skip
    reference["memorised_forget_tokens"] = hit
    target_eval = evaluator(target, reference)
    info = {
        "seed": seed, "vocab": data.info["vocab"], "sizes": data.info["sizes"],
        "target_training": target_info, "retain_training": retain_info,
        "retain_model": reference, "target_model": target_eval,
    }  # fmt: skip
    return {"target": target, "retain_model": retain_model, "evaluator": evaluator,
            "reference": reference, "info": info}  # fmt: skip


# --------------------------------------------------------------------------- one run


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


def unlearn(target, data: BenchmarkData, evaluator, reference, loss, method, seed, args) -> dict:
    """Algorithm 1 from the target model; evaluated at matched forgetting and at the budget.

    ``method`` is a combine method, or :data:`FORGET_ONLY` (no retain term at all). The forget
    and retain batches are drawn from one generator per (seed, loss) for every method, the
    forget-only baseline included (it draws the retain batch and leaves it unused), so all
    methods see the same forget batches. Combine runs keep each step's global gradient
    geometry (:data:`GEOMETRY`)."""
    lora = getattr(args, "lora_rank", 0)
    if lora:  # adapters on the target itself, removed after the run; the reference: adapters off
        from .checkpoints import attach_lora, detach_lora
        from .references import AdaptersOff

        model = attach_lora(target, lora).train()
        ref_model = AdaptersOff(model)
    else:
        model = copy.deepcopy(target).train().requires_grad_(True)
        ref_model = target
    try:
        return _unlearn(model, ref_model, data, evaluator, reference, loss, method, seed, args)
    finally:
        if lora:
            detach_lora(model)


def _unlearn(model, target, data, evaluator, reference, loss, method, seed, args) -> dict:
    gamma = args.gamma if args.gamma is not None else SUGGESTED_GAMMA.get(loss, 1.0)
    synth = None
    if method != FORGET_ONLY:
        synth = GradientSynthesizer(model, method=method, alpha=args.alpha, gamma=gamma,
                                    backend=args.backend, keep_history=None,
                                    buffers=getattr(args, "buffers", 2))  # fmt: skip
    trained = [p for p in model.parameters() if p.requires_grad]
    opt = torch.optim.AdamW(trained, lr=args.lr, weight_decay=0.0)
    pad_id = data.tokenizer.pad_id
    forget_all = pad(data.examples(data.forget), pad_id, args.device)
    retain_all = pad(data.examples(data.retain), pad_id, args.device)
    g = torch.Generator().manual_seed(1000 * seed + sorted(FORGET_LOSSES).index(loss))

    def draw(batch: dict[str, torch.Tensor]) -> dict[str, torch.Tensor]:
        idx = torch.randint(len(batch["input_ids"]), (args.batch,), generator=g)
        return {k: v[idx.to(args.device)] for k, v in batch.items()}

    loss_kwargs = {"layer": args.rmu_layer} if loss == "rmu" else {}
    retain_loss = "rmu" if loss == "rmu" else "nll"
    accumulate = getattr(args, "grad_accum", 1)
    # matched forgetting needs the retain-only model's count and the count after every step
    matching = reference is not None and "memorised_forget_tokens" in reference
    curve, results, start = [], {}, time.perf_counter()
    hit, total = memorised_tokens(model, forget_all, _eval_batch(args))
    curve.append({"step": 0, "forget_memorised": hit / total, "forget_tokens_memorised": hit})
    for step in range(1, args.steps + 1):
        if accumulate > 1:
            pairs = [(draw(forget_all), draw(retain_all)) for _ in range(accumulate)]
            accumulated_step(model, synth, opt, [f for f, _ in pairs], [r for _, r in pairs],
                             forget_loss=loss, retain_loss=retain_loss, ref_model=target,
                             loss_kwargs=loss_kwargs, gamma=gamma)  # fmt: skip
        elif synth is None:
            forget_batch, retain_batch = draw(forget_all), draw(retain_all)
            forget_only_step(model, opt, forget_batch, forget_loss=loss, ref_model=target,
                             loss_kwargs=loss_kwargs, gamma=gamma)  # fmt: skip
        else:
            forget_batch, retain_batch = draw(forget_all), draw(retain_all)
            unlearning_step(
                model, synth, opt, forget_batch, retain_batch, forget_loss=loss,
                retain_loss=retain_loss, ref_model=target, loss_kwargs=loss_kwargs,
            )  # fmt: skip
        if not (matching or step == args.steps):
            continue
        hit, total = memorised_tokens(model, forget_all, _eval_batch(args))
        curve.append(
            {"step": step, "forget_memorised": hit / total, "forget_tokens_memorised": hit}
        )
        if matching and "matched" not in results and hit <= reference["memorised_forget_tokens"]:
            results["matched"] = {"steps": step, "reached": True, **evaluator(model, reference)}
    results["fixed"] = {"steps": args.steps, "reached": True, **evaluator(model, reference)}
    if matching and "matched" not in results:  # never as forgotten as the retain-only model
        results["matched"] = {**results["fixed"], "reached": False}
    if getattr(args, "save_model", None):
        from .checkpoints import save_model

        where = Path(args.save_model) / f"{loss}-{method}-seed{seed}"
        save_model(model, data.tokenizer, where)
    geometry = None
    if synth is not None:  # one row per step: the whole model's cosines
        table = synth.history_table()
        geometry = {name: [row[name] for row in table] for name in GEOMETRY}
    return {"seed": seed, "loss": loss, "method": method, "gamma": gamma,
            "curve": curve, "geometry": geometry, "protocols": results,
            "seconds": round(time.perf_counter() - start, 1)}  # fmt: skip
