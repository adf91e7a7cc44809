"""UnlearningTrainer on a tiny GPT-2 built from a config (no download)."""

from __future__ import annotations

import copy

import pytest
import torch

transformers = pytest.importorskip("transformers")

import sago_kernels as sk  # noqa: E402
from sago_kernels.unlearning.data import PairedCollator, PairedDataset, split_pair  # noqa: E402
from sago_kernels.unlearning.losses import run_loss  # noqa: E402
from sago_kernels.unlearning.trainer import UnlearningTrainer  # noqa: E402

VOCAB = 17


def _model(seed=0):
    torch.manual_seed(seed)
    cfg = transformers.GPT2Config(
        vocab_size=VOCAB, n_positions=16, n_embd=16, n_layer=2, n_head=2,
        resid_pdrop=0.0, embd_pdrop=0.0, attn_pdrop=0.0,  # deterministic: compared to a manual loop
    )  # fmt: skip
    return transformers.GPT2LMHeadModel(cfg)


def _examples(n, seed):
    g = torch.Generator().manual_seed(seed)
    out = []
    for i in range(n):
        ids = torch.randint(1, VOCAB, (3 + i % 3,), generator=g).tolist()
        out.append({"input_ids": ids, "labels": [-100] + ids[1:]})
    return out


class _InOrder(UnlearningTrainer):
    def _get_train_sampler(self, train_dataset=None):
        return torch.utils.data.SequentialSampler(train_dataset or self.train_dataset)


def _args(tmp_path, **kw):
    base = dict(
        output_dir=str(tmp_path), per_device_train_batch_size=2, learning_rate=0.05,
        optim="sgd", lr_scheduler_type="constant", max_grad_norm=0.0, logging_steps=1,
        report_to=[], save_strategy="no", use_cpu=True, seed=0, disable_tqdm=True,
        dataloader_drop_last=True, num_train_epochs=1,
    )  # fmt: skip
    base.update(kw)
    return transformers.TrainingArguments(**base)


@pytest.mark.parametrize(
    "forget_loss, retain_loss, loss_kwargs",
    [("npo", "nll", {}), ("simnpo", "kl", {}), ("ga", "nll", {}), ("rmu", "rmu", {"layer": 2})],
)
def test_trainer_equals_a_manual_algorithm_1_loop(tmp_path, forget_loss, retain_loss, loss_kwargs):
    forget, retain = _examples(8, 1), _examples(12, 2)
    data = PairedDataset(forget, retain, seed=3)
    collate = PairedCollator(pad_token_id=0)
    model, ref = _model(), _model()
    manual = copy.deepcopy(model)
    trainer = _InOrder(
        model=model, args=_args(tmp_path, gradient_accumulation_steps=2), train_dataset=data,
        data_collator=collate, method="sago", gamma=0.5, forget_loss=forget_loss,
        retain_loss=retain_loss, ref_model=ref, backend="reference", loss_kwargs=loss_kwargs,
    )  # fmt: skip
    if retain_loss == "rmu":  # the retain term steers nothing: it keeps the forget term's layer
        assert trainer.retain_loss_kwargs == {"layer": loss_kwargs["layer"]}
    result = trainer.train()
    assert trainer.state.global_step == 2  # 8 pairs / (2 per batch × 2 accumulation)

    synth = sk.GradientSynthesizer(manual, method="sago", gamma=0.5, backend="reference")
    opt = torch.optim.SGD(manual.parameters(), lr=0.05)
    batches = [collate([data[i] for i in range(k, k + 2)]) for k in range(0, 8, 2)]
    for step in range(2):
        for b in batches[2 * step : 2 * step + 2]:
            f, r = split_pair(b)
            with synth.forget():
                (run_loss(forget_loss, manual, f, ref_model=ref, **loss_kwargs) / 2).backward()
            with synth.retain():
                r_kwargs = {"layer": loss_kwargs["layer"]} if retain_loss == "rmu" else {}
                r_loss = run_loss(retain_loss, manual, r, ref_model=ref, forget=False, **r_kwargs)
                (r_loss / 2).backward()
        synth.combine_()
        opt.step()
        opt.zero_grad()
    for (name, a), b in zip(model.named_parameters(), manual.parameters()):
        torch.testing.assert_close(a, b, rtol=1e-5, atol=1e-6, msg=name)
    logs = [h for h in trainer.state.log_history if "forget_loss" in h]
    assert logs and all(
        k in logs[0] for k in ("retain_loss", "cos_fr", "cos_out_r", "conflict_fraction")
    )
    assert result.training_loss == result.training_loss  # finite, not NaN


def test_trainer_runs_with_adamw_clipping_and_scheduler(tmp_path):
    data = PairedDataset(_examples(6, 4), _examples(6, 5))
    trainer = UnlearningTrainer(
        model=_model(), args=_args(tmp_path, optim="adamw_torch", max_grad_norm=1.0,
                                   lr_scheduler_type="linear", learning_rate=1e-3),
        train_dataset=data, data_collator=PairedCollator(), method="pcgrad", forget_loss="simnpo",
    )  # fmt: skip
    trainer.train()
    assert trainer.state.global_step == 3
    assert len(trainer.synth.history) == 3


def test_trainer_in_one_buffer_mode_takes_the_same_steps(tmp_path):
    """``buffers=1`` (GPT-2's tied embedding included) steps exactly as the default mode."""
    data = PairedDataset(_examples(8, 1), _examples(12, 2), seed=3)
    models = []
    for buffers in (2, 1):
        trainer = _InOrder(
            model=_model(), args=_args(tmp_path / str(buffers)), train_dataset=data,
            data_collator=PairedCollator(pad_token_id=0), method="sago", gamma=0.5,
            forget_loss="ga", buffers=buffers,
        )  # fmt: skip
        trainer.train()
        assert trainer.state.global_step == 4 and trainer.synth.buffers == buffers
        models.append(trainer.model)
    for (name, a), b in zip(models[0].named_parameters(), models[1].parameters()):
        assert torch.equal(a, b), name
    with pytest.raises(ValueError, match="one retain backward per step.*accumulation_steps = 2"):
        UnlearningTrainer(
            model=_model(), args=_args(tmp_path, gradient_accumulation_steps=2),
            train_dataset=data, data_collator=PairedCollator(), forget_loss="ga", buffers=1,
        )  # fmt: skip


def test_trainer_checks_rmus_layers_against_the_model(tmp_path):
    data = PairedDataset(_examples(2, 0), _examples(2, 1))
    kw = dict(args=_args(tmp_path), train_dataset=data, data_collator=PairedCollator(),
              forget_loss="rmu", retain_loss="rmu", ref_model=_model())  # fmt: skip
    with pytest.raises(ValueError, match=r"layer.*\[0, 2\].*layer = 3"):
        UnlearningTrainer(model=_model(), loss_kwargs={"layer": 3}, **kw)
    with pytest.raises(ValueError, match=r"layer.*\[0, 2\].*layer = 3"):
        UnlearningTrainer(model=_model(), retain_loss_kwargs={"layer": 3}, **kw)
    with pytest.raises(TypeError, match="retain_loss_kwargs.*'rmu' loss's hyperparameters"):
        UnlearningTrainer(model=_model(), retain_loss_kwargs={"steering": 5.0}, **kw)
    trainer = UnlearningTrainer(model=_model(), retain_loss_kwargs={"layer": 2}, **kw)
    assert trainer.loss_kwargs["layer"] == 1 and trainer.retain_loss_kwargs == {"layer": 2}


def test_trainer_rejects_missing_reference(tmp_path):
    data = PairedDataset(_examples(2, 0), _examples(2, 1))
    with pytest.raises(ValueError, match="ref_model"):
        UnlearningTrainer(model=_model(), args=_args(tmp_path), train_dataset=data,
                          data_collator=PairedCollator(), forget_loss="npo")  # fmt: skip


@pytest.mark.parametrize("shared", ["itself", "one_module"])
def test_trainer_refuses_a_reference_sharing_the_models_parameters(tmp_path, shared):
    """ref_model=model froze the caller's model and then said "no trainable parameters"; a
    reference sharing one module froze it silently, so it was never unlearned."""
    model = _model()
    ref = model if shared == "itself" else copy.deepcopy(model)
    if shared == "one_module":
        ref.transformer.h[1] = model.transformer.h[1]
    data = PairedDataset(_examples(2, 0), _examples(2, 1))
    kw = dict(args=_args(tmp_path), train_dataset=data, data_collator=PairedCollator(),
              forget_loss="npo")  # fmt: skip
    with pytest.raises(ValueError, match="`ref_model` should .*separate"):
        UnlearningTrainer(model=model, ref_model=ref, **kw)
    assert all(p.requires_grad for p in model.parameters())  # nothing was frozen
    synth = sk.GradientSynthesizer(model)
    batch = PairedCollator()([{"forget": e, "retain": e} for e in _examples(2, 0)])
    forget, retain = split_pair(batch)
    with pytest.raises(ValueError, match="`ref_model` should .*separate"):
        sk.unlearning_step(model, synth, torch.optim.SGD(model.parameters(), lr=0.1), forget,
                           retain, ref_model=ref)  # fmt: skip
    frozen_shared = copy.deepcopy(model)  # sharing only frozen parameters is fine
    model.transformer.wte.weight.requires_grad_(False)
    frozen_shared.transformer.wte = model.transformer.wte
    UnlearningTrainer(model=model, ref_model=frozen_shared, **kw)


def test_collator_pads_and_masks():
    batch = PairedCollator(pad_token_id=9)([
        {"forget": {"input_ids": [1, 2, 3]}, "retain": {"input_ids": [4], "labels": [-100]}},
        {"forget": {"input_ids": [5]}, "retain": {"input_ids": [6, 7]}},
    ])  # fmt: skip
    assert batch["forget_input_ids"].tolist() == [[1, 2, 3], [5, 9, 9]]
    assert batch["forget_labels"].tolist() == [[1, 2, 3], [5, -100, -100]]
    assert batch["retain_attention_mask"].tolist() == [[1, 0], [1, 1]]
    assert batch["retain_labels"].tolist() == [[-100, -100], [6, 7]]


def test_checkpoints_carry_the_gru_average_and_resume_it(tmp_path):
    """A run resumed from a mid-run checkpoint ends where the uninterrupted run ends: the
    synthesizer's moving average travels in the checkpoint (``sago_synthesizer.pt``)."""
    forget, retain = _examples(8, 1), _examples(8, 2)
    data = PairedDataset(forget, retain, seed=3)
    kw = dict(
        data_collator=PairedCollator(pad_token_id=0), method="gru_global", forget_loss="ga",
        retain_loss="nll", backend="reference", train_dataset=data,
    )
    args = dict(save_strategy="steps", save_steps=2, num_train_epochs=2)
    straight = _InOrder(model=_model(), args=_args(tmp_path / "a", **args), **kw)
    straight.train()
    assert straight.state.global_step == 8
    checkpoint = tmp_path / "a" / "checkpoint-4"
    saved = torch.load(checkpoint / "sago_synthesizer.pt", weights_only=True)
    assert saved["ema"].shape == straight.synth.state_buffer.shape and saved["ema"].any()

    resumed = _InOrder(model=_model(seed=1), args=_args(tmp_path / "b", **args), **kw)
    resumed.train(resume_from_checkpoint=str(checkpoint))
    assert torch.equal(resumed.synth.state_buffer, straight.synth.state_buffer)
    for a, b in zip(straight.model.parameters(), resumed.model.parameters()):
        torch.testing.assert_close(a, b, rtol=0, atol=0)
    (checkpoint / "sago_synthesizer.pt").unlink()  # a checkpoint without the average: refused,
    lost = _InOrder(model=_model(seed=1), args=_args(tmp_path / "c", **args), **kw)
    with pytest.raises(FileNotFoundError, match="keeps a state across steps"):  # not from zero
        lost.train(resume_from_checkpoint=str(checkpoint))


class _CPUScaler(_InOrder):
    """accelerate gives a GradScaler only with fp16 on an accelerator; on a CPU the test hands
    the Trainer one (the scaled backward, scaler.step and update all run as on a GPU)."""

    def create_accelerator_and_postprocess(self):
        super().create_accelerator_and_postprocess()
        # (not native_amp: on a CPU that would also autocast the forward to bfloat16)
        self.accelerator.scaler = torch.amp.GradScaler("cpu", init_scale=2.0**16)


@pytest.mark.parametrize("buffers", [2, 1])
def test_trainer_with_a_loss_scaler_steps_as_fp32(tmp_path, buffers):
    """The fp16 path: losses scaled by the accelerator's GradScaler, the combine unscaling in its
    own pass, the optimizer stepped through scaler.step: the same weights as without a scaler,
    bit for bit (clipping on: the Trainer's unscale before clipping is skipped after the
    combine's)."""
    data = PairedDataset(_examples(8, 1), _examples(12, 2), seed=3)
    kw = dict(train_dataset=data, data_collator=PairedCollator(pad_token_id=0), method="pcgrad",
              forget_loss="npo", ref_model="cache", buffers=buffers,
              backend="reference")  # fmt: skip
    args = dict(max_grad_norm=1.0, optim="adamw_torch", learning_rate=1e-2)
    plain = _InOrder(model=_model(), args=_args(tmp_path / "a", **args), **kw)
    plain.train()
    scaled = _CPUScaler(model=_model(), args=_args(tmp_path / "b", **args), **kw)
    assert scaled.synth._scaler is not None
    scaled.train()
    assert scaled.accelerator.scaler.get_scale() == 2.0**16  # no overflow, no back-off
    for (name, a), b in zip(plain.model.named_parameters(), scaled.model.parameters()):
        assert torch.equal(a, b), name


@pytest.mark.skipif(not torch.cuda.is_available(), reason="fp16 autocast with a GradScaler: CUDA")
def test_trainer_fp16_on_cuda(tmp_path):
    """The real fp16 path on a GPU (the GPU check runs it): accelerate's own scaler and autocast,
    the synthesizer unscaling; the run trains and the scaler's steps are taken."""
    data = PairedDataset(_examples(8, 1), _examples(12, 2), seed=3)
    trainer = _InOrder(
        model=_model().cuda(), args=_args(tmp_path, use_cpu=False, fp16=True, max_grad_norm=1.0),
        train_dataset=data, data_collator=PairedCollator(pad_token_id=0), method="sago",
        forget_loss="ga",
    )  # fmt: skip
    assert trainer.synth._scaler is not None and trainer.synth._scaler.enabled
    before = [p.detach().clone() for p in trainer.model.parameters()]
    trainer.train()
    assert trainer.state.global_step == 4
    assert any(not torch.equal(a, b) for a, b in zip(before, trainer.model.parameters()))
