"""References without a second model: NPO's cached log p_ref(x) and LoRA's adapter-off base.

Each form must give the losses of a frozen copy of the model, bit for bit, on the same batches:
through ``unlearning_step``, through the Trainer (resumed from a checkpoint too) and under LoRA.
"""

from __future__ import annotations

import copy

import pytest
import torch

transformers = pytest.importorskip("transformers")
peft = pytest.importorskip("peft")

import sago_kernels as sk  # noqa: E402
from sago_kernels.unlearning.data import PairedCollator, PairedDataset, split_pair  # noqa: E402
from sago_kernels.unlearning.references import AdaptersOff, CachedReference  # noqa: E402
from test_lora import _base, _lora  # noqa: E402
from test_trainer import _args, _examples, _InOrder, _model  # noqa: E402

pytestmark = pytest.mark.filterwarnings("ignore:`is_gradient_checkpointing`:FutureWarning")


def _batches(n_pairs=8, batch=2):
    data = PairedDataset(_examples(n_pairs, 1), _examples(12, 2), seed=3)
    collate = PairedCollator(pad_token_id=0)
    return data, [collate([data[i] for i in range(k, k + batch)]) for k in range(0, n_pairs, batch)]


def _run(model, ref, batches, forget_loss="npo", retain_loss="nll", **kw):
    synth = sk.GradientSynthesizer(model, method="sago", gamma=0.5)
    opt = torch.optim.AdamW([p for p in model.parameters() if p.requires_grad], lr=1e-2)
    for batch in batches:
        f, r = split_pair(batch)
        sk.unlearning_step(model, synth, opt, f, r, forget_loss=forget_loss,
                           retain_loss=retain_loss, ref_model=ref, **kw)  # fmt: skip
    return model


def test_a_cached_reference_steps_as_the_frozen_copy():
    data, batches = _batches()
    model = _model()
    with_copy = _run(copy.deepcopy(model), copy.deepcopy(model), batches)
    forget_sides = [split_pair(b)[0] for b in batches]
    cache = CachedReference.compute(model, forget_sides, size=len(data))  # before unlearning
    assert len(cache) == 8 and cache.logprobs.dtype == torch.float32
    with_cache = _run(model, cache, batches)
    for (name, a), b in zip(with_copy.named_parameters(), with_cache.parameters()):
        assert torch.equal(a, b), name


def test_a_cached_reference_is_refused_where_a_loss_needs_more():
    data, batches = _batches()
    model = _model()
    cache = CachedReference.compute(model, [split_pair(b)[0] for b in batches], size=len(data))
    f, r = split_pair(batches[0])
    synth, opt = sk.GradientSynthesizer(model), torch.optim.SGD(model.parameters(), lr=0.1)
    with pytest.raises(ValueError, match="next-token distributions.*AdaptersOff"):
        sk.unlearning_step(model, synth, opt, f, r, forget_loss="ga", retain_loss="kl",
                           ref_model=cache)  # fmt: skip
    with pytest.raises(ValueError, match="hidden states.*AdaptersOff"):
        sk.unlearning_step(model, synth, opt, f, r, forget_loss="rmu", retain_loss="rmu",
                           ref_model=cache)  # fmt: skip
    del f["index"]
    with pytest.raises(ValueError, match="carry `index`.*forget_index"):
        sk.unlearning_step(model, synth, opt, f, r, ref_model=cache)
    with pytest.raises(ValueError, match=r"needs `ref_model`.*CachedReference"):
        sk.unlearning_step(model, synth, opt, f, r)


def test_compute_covers_the_whole_forget_set_by_index():
    data, batches = _batches()
    sides = [split_pair(b)[0] for b in batches]
    with pytest.raises(ValueError, match="cover all 8.*2 never seen"):
        CachedReference.compute(_model(), sides[:-1], size=8)
    with pytest.raises(ValueError, match=r"positions in \[0, 6\)"):
        CachedReference.compute(_model(), sides, size=6)
    model = _model().train()
    CachedReference.compute(model, sides, size=8)
    assert model.training and all(m.training for m in model.modules())  # modes put back


def test_the_trainers_cache_steps_as_the_frozen_copy_and_resumes(tmp_path):
    data = PairedDataset(_examples(8, 1), _examples(8, 2), seed=3)
    kw = dict(data_collator=PairedCollator(pad_token_id=0), method="sago", gamma=0.5,
              forget_loss="npo", retain_loss="nll", train_dataset=data)  # fmt: skip
    save = dict(save_strategy="steps", save_steps=2, num_train_epochs=2)
    with_copy = _InOrder(model=_model(), args=_args(tmp_path / "a", **save), ref_model=_model(),
                         **kw)  # fmt: skip
    with_copy.train()
    cached = _InOrder(model=_model(), args=_args(tmp_path / "b", **save), ref_model="cache", **kw)
    assert isinstance(cached.ref_model, CachedReference) and len(cached.ref_model) == 8
    cached.train()
    assert with_copy.state.global_step == cached.state.global_step == 8
    for (name, a), b in zip(with_copy.model.named_parameters(), cached.model.parameters()):
        assert torch.equal(a, b), name
    checkpoint = tmp_path / "b" / "checkpoint-4"
    assert (checkpoint / "sago_reference_cache.pt").is_file()
    # built from another model: its cache would be wrong, the checkpoint's replaces it
    resumed = _InOrder(model=_model(seed=1), args=_args(tmp_path / "c", **save),
                       ref_model="cache", **kw)  # fmt: skip
    resumed.train(resume_from_checkpoint=str(checkpoint))
    assert torch.equal(resumed.ref_model.logprobs, cached.ref_model.logprobs)
    for (name, a), b in zip(cached.model.named_parameters(), resumed.model.parameters()):
        assert torch.equal(a, b), name
    with pytest.raises(ValueError, match="next-token distributions"):
        _InOrder(model=_model(), args=_args(tmp_path / "d"), ref_model="cache",
                 **{**kw, "retain_loss": "kl"})  # fmt: skip
    with pytest.raises(ValueError, match='or "cache"'):
        _InOrder(model=_model(), args=_args(tmp_path / "d"), ref_model="copy", **kw)


@pytest.mark.parametrize(
    "forget_loss, retain_loss, kw",
    [("npo", "nll", {}), ("ga", "kl", {}), ("rmu", "rmu", {"loss_kwargs": {"layer": 1}})],
)
def test_adapters_off_is_the_frozen_base_for_every_loss(forget_loss, retain_loss, kw):
    """The base with the adapters disabled (in eval mode, without grad) is the reference a
    frozen copy of the base would be: the same steps, bit for bit, with no copy."""
    _, batches = _batches(6)
    base = _base()
    ref = copy.deepcopy(base)
    model = _lora(base, init="gaussian")  # B != 0: the adapters change the model from step 0
    twin = copy.deepcopy(model)
    a = _run(model, AdaptersOff(model), batches, forget_loss, retain_loss, **kw)
    b = _run(twin, ref, batches, forget_loss, retain_loss, **kw)
    for (name, x), y in zip(a.named_parameters(), b.parameters()):
        assert torch.equal(x, y), name
    with pytest.raises(TypeError, match="peft model"):
        AdaptersOff(_model())
