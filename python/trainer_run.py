"""Recipe: unlearning with a transformers Trainer (UnlearningTrainer, paper Algorithm 1).

    python python/trainer_run.py               # a couple of minutes on a CPU

The Trainer brings gradient accumulation, any optimizer and scheduler, clipping and logging;
UnlearningTrainer routes the forget and retain losses into two flat gradient buffers and
combines them with the fused kernel before every optimizer step.
"""

from __future__ import annotations

import argparse
import copy
import tempfile

import torch
import transformers

from sago_kernels.unlearning.data import PairedCollator, PairedDataset
from sago_kernels.unlearning.facts import evaluate, make_corpus, score
from sago_kernels.unlearning.losses import nll_loss
from sago_kernels.unlearning.trainer import UnlearningTrainer


def main(argv=None):
    p = argparse.ArgumentParser()
    p.add_argument("--method", default="sago")
    p.add_argument("--entities", type=int, default=100)
    p.add_argument("--pretrain-epochs", type=int, default=120)
    p.add_argument("--epochs", type=float, default=20)
    args = p.parse_args(argv)
    torch.manual_seed(0)

    corpus = make_corpus(args.entities)
    cfg = transformers.GPT2Config(
        vocab_size=len(corpus.vocab),
        n_positions=4,
        n_embd=128,
        n_layer=4,
        n_head=4,
        resid_pdrop=0.0,
        embd_pdrop=0.0,
        attn_pdrop=0.0,
    )
    model = transformers.GPT2LMHeadModel(cfg)
    splits = {s: corpus.tensors(s) for s in ("forget", "retain", "neighbour")}
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
    print("before:", {s: round(evaluate(model, b)[0], 3) for s, b in splits.items()})

    with tempfile.TemporaryDirectory() as out:
        training_args = transformers.TrainingArguments(
            output_dir=out, per_device_train_batch_size=8, gradient_accumulation_steps=2,
            learning_rate=1e-3, num_train_epochs=args.epochs, lr_scheduler_type="constant",
            max_grad_norm=1.0, logging_steps=10, report_to=[], save_strategy="no", use_cpu=True,
            disable_tqdm=True,
        )  # fmt: skip
        trainer = UnlearningTrainer(
            model=model, args=training_args,
            train_dataset=PairedDataset(corpus.examples("forget"), corpus.examples("retain")),
            data_collator=PairedCollator(pad_token_id=corpus.pad_id),
            method=args.method, forget_loss="npo", retain_loss="nll",
            ref_model=copy.deepcopy(model),
        )  # fmt: skip
        trainer.train()
    for row in trainer.state.log_history:
        if "forget_loss" in row:
            print(
                {k: row[k] for k in ("step", "forget_loss", "retain_loss", "cos_fr", "cos_out_r")}
            )
    print("after: ", {s: round(evaluate(model, b)[0], 3) for s, b in splits.items()})


if __name__ == "__main__":
    main()
