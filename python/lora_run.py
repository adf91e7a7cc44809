"""Recipe: unlearning through LoRA adapters (peft) with UnlearningTrainer (paper Algorithm 1).

    python python/lora_run.py                  # about a minute on a CPU
    python python/lora_run.py --forget-loss ga --method pcgrad --rank 4

A tiny GPT-2 memorises a synthetic corpus, then peft wraps it with LoRA adapters and only the
adapters unlearn: the synthesizer's flat forget/retain buffers hold the adapters' gradients
alone (the base is frozen and never written), so they take a fraction of the memory that
buffers for the whole model would. At the end the adapters are merged into the base weights.
NPO's reference is the base itself, the model with its adapters switched off
(``AdaptersOff(model)``): no copy of the model is held, and with peft's default init (B = 0) it
is exactly the model that unlearning starts from.
"""

from __future__ import annotations

import argparse
import tempfile
import time

import peft
import torch
import transformers

import sago_kernels as sk
from sago_kernels.unlearning.data import PairedCollator, PairedDataset
from sago_kernels.unlearning.facts import evaluate, make_corpus, score
from sago_kernels.unlearning.losses import nll_loss
from sago_kernels.unlearning.references import AdaptersOff
from sago_kernels.unlearning.trainer import UnlearningTrainer

SPLITS = ("forget", "retain", "neighbour")


def accuracies(model, splits):
    return {s: round(evaluate(model, batch)[0], 3) for s, batch in splits.items()}


def main(argv=None):
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--method", default="sago", choices=sk.methods(), help="the combine")
    p.add_argument("--forget-loss", default="npo", choices=["ga", "npo", "simnpo"])
    p.add_argument("--entities", type=int, default=100, help="fictitious entities (4 facts each)")
    p.add_argument("--pretrain-epochs", type=int, default=120, help="at most; stops when learnt")
    p.add_argument("--epochs", type=float, default=10, help="unlearning epochs over the forget set")
    p.add_argument("--rank", type=int, default=8, help="LoRA rank r")
    p.add_argument("--lr", type=float, default=5e-3, help="unlearning learning rate")
    p.add_argument("--buffers", type=int, default=2, choices=[1, 2],
                   help="1: the synthesizer's one-buffer mode (needs no accumulation)")  # fmt: skip
    args = p.parse_args(argv)
    start = time.perf_counter()
    torch.manual_seed(0)

    corpus = make_corpus(args.entities)
    cfg = transformers.GPT2Config(
        vocab_size=len(corpus.vocab), n_positions=4, n_embd=128, n_layer=4, n_head=4,
        bos_token_id=corpus.pad_id, eos_token_id=corpus.pad_id,
        resid_pdrop=0.0, embd_pdrop=0.0, attn_pdrop=0.0,
    )  # fmt: skip
    model = transformers.GPT2LMHeadModel(cfg)
    splits = {s: corpus.tensors(s) for s in SPLITS}
    everything = {k: torch.cat([v[k] for v in splits.values()]) for k in ("input_ids", "labels")}
    opt = torch.optim.AdamW(model.parameters(), lr=1e-3)
    for _ in range(args.pretrain_epochs):  # learn the facts first (a plain loop is quickest)
        for idx in torch.randperm(len(everything["input_ids"])).split(50):
            logits = model(everything["input_ids"][idx]).logits
            nll_loss(logits, everything["labels"][idx]).backward()
            opt.step()
            opt.zero_grad()
        if (known := score(model, everything)).correct == known.total:  # counts, not a mean
            break
    print("before:", accuracies(model, splits))

    base = {n: p.detach().clone() for n, p in model.named_parameters()}
    model = peft.get_peft_model(model, peft.LoraConfig(
        r=args.rank, lora_alpha=2 * args.rank, lora_dropout=0.0,
        target_modules=["c_attn", "c_proj", "c_fc"],  # every linear map of the blocks
        fan_in_fan_out=True,  # GPT-2's Conv1D stores weights as (in, out)
    ))  # fmt: skip

    with tempfile.TemporaryDirectory() as out:
        training_args = transformers.TrainingArguments(
            output_dir=out, per_device_train_batch_size=8,
            gradient_accumulation_steps=2 if args.buffers == 2 else 1,
            learning_rate=args.lr, num_train_epochs=args.epochs, lr_scheduler_type="constant",
            max_grad_norm=1.0, logging_steps=10, report_to=[], save_strategy="no", use_cpu=True,
            disable_tqdm=True,
        )  # fmt: skip
        trainer = UnlearningTrainer(
            model=model, args=training_args,
            train_dataset=PairedDataset(corpus.examples("forget"), corpus.examples("retain")),
            data_collator=PairedCollator(pad_token_id=corpus.pad_id),
            method=args.method, forget_loss=args.forget_loss, retain_loss="nll",
            # NPO's reference: the base, i.e. this model with its adapters off (no copy)
            ref_model=AdaptersOff(model) if args.forget_loss == "npo" else None,
            buffers=args.buffers,
        )  # fmt: skip
        synth = trainer.synth
        trainable = sum(p.numel() for p in synth.params)
        total = sum(p.numel() for p in model.parameters())
        whole = 2 * sum(p.numel() for p in base.values()) * synth.retain_buffer.element_size()
        print(
            f"trainable: {trainable:,} of {total:,} parameters ({trainable / total:.1%}), "
            f"{len(synth.params)} adapter tensors (lora_A/lora_B); synthesizer buffers: "
            f"{synth.memory_bytes / 2**20:.2f} MiB (buffers={synth.buffers}; two buffers for "
            f"the whole model would take {whole / 2**20:.2f} MiB)"
        )
        trainer.train()
    for row in trainer.state.log_history:
        if "forget_loss" in row:
            print({k: row[k] for k in ("step", "forget_loss", "retain_loss", "cos_fr")})
    print("after: ", accuracies(model, splits))

    untouched = all(
        torch.equal(p, base[n.removeprefix("base_model.model.").replace(".base_layer", "")])
        for n, p in model.named_parameters() if "lora_" not in n
    )  # fmt: skip
    merged = model.merge_and_unload()  # adapters folded into the base weights: a plain GPT-2
    print(f"base weights untouched during unlearning: {untouched}")
    print("merged:", accuracies(merged, splits), f"({type(merged).__name__})")
    print(f"wall time: {time.perf_counter() - start:.0f} s")


if __name__ == "__main__":
    main()
