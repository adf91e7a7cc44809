"""Bad input raises a clear error before anything is written; both buffers keep their bits."""

from __future__ import annotations

import warnings

import pytest
import torch
from strategies import state_for

import sago_kernels as sk

LAYOUT = sk.GradLayout.from_sizes([5, 9], alignment=16)


def _buffers(device):
    g = torch.Generator().manual_seed(0)
    r = torch.randn(LAYOUT.numel, generator=g).to(device)
    f = torch.randn(LAYOUT.numel, generator=g).to(device)
    return r, f


def _bits(t):
    return t.view(torch.int32).clone() if t.dtype == torch.float32 else t.clone()


def _args(*args, **kwargs):
    return args, kwargs


# Each case: (description, build(r, f) -> (args, kwargs) for combine_, exception, message fragment)
CASES = [
    ("retain not a tensor", lambda r, f: _args(r.tolist(), f), TypeError, "torch.Tensor"),
    ("float64 buffers", lambda r, f: _args(r.double(), f.double()), TypeError, "dtype"),
    ("int buffers", lambda r, f: _args(r.int(), f.int()), TypeError, "dtype"),
    ("2-D retain", lambda r, f: _args(r.view(2, -1), f), ValueError, "1-D"),
    ("non-contiguous", lambda r, f: _args(r[::2], f[::2]), ValueError, "contiguous"),
    ("dtype mismatch", lambda r, f: _args(r, f.half()), TypeError, "dtype of `retain`"),
    ("length mismatch", lambda r, f: _args(r, f[:-1]), ValueError, "as many elements"),
    (
        "device mismatch",
        lambda r, f: _args(r, torch.empty_like(f, device="meta")),
        ValueError,
        "device",
    ),
    ("same buffer", lambda r, f: _args(r, r), ValueError, "share memory"),
    ("overlap", lambda r, f: _args(r[:16], r[8:24]), ValueError, "share memory"),
    ("out partial overlap", lambda r, f: _args(r[:16], f[:16], out=r[1:17]), ValueError, "overlap"),
    ("out dtype", lambda r, f: _args(r, f, out=torch.empty_like(r).half()), TypeError, "dtype"),
    (
        "layout too small",
        lambda r, f: _args(r, f, layout=sk.GradLayout.from_sizes([5])),
        ValueError,
        "does not fit",
    ),
    ("layout not a layout", lambda r, f: _args(r, f, layout=[5, 9]), TypeError, "GradLayout"),
    ("unknown method", lambda r, f: _args(r, f, method="pc_grad"), ValueError, "`method`"),
    ("unknown backend", lambda r, f: _args(r, f, backend="cuda"), ValueError, "`backend`"),
    ("alpha NaN", lambda r, f: _args(r, f, alpha=float("nan")), ValueError, "finite"),
    ("gamma inf", lambda r, f: _args(r, f, gamma=float("inf")), ValueError, "finite"),
    ("alpha str", lambda r, f: _args(r, f, alpha="1"), TypeError, "float"),
    ("alpha bool", lambda r, f: _args(r, f, alpha=True), TypeError, "float"),
    ("alpha tensor", lambda r, f: _args(r, f, alpha=torch.tensor(1.0)), TypeError, "host sync"),
    ("gamma None", lambda r, f: _args(r, f, gamma=None), TypeError, "float"),
    ("eps negative", lambda r, f: _args(r, f, eps=-1e-3), ValueError, ">= 0"),
    ("stats not bool", lambda r, f: _args(r, f, stats=1), TypeError, "bool"),
    # every backend computes in float32: a larger scalar is ±inf there
    ("alpha past float32", lambda r, f: _args(r, f, alpha=1e39), ValueError, "float32"),
    ("gamma past float32", lambda r, f: _args(r, f, gamma=-3.5e38), ValueError, "float32"),
    ("eps past float32", lambda r, f: _args(r, f, eps=1e39), ValueError, "float32"),
    ("alpha int past float64", lambda r, f: _args(r, f, alpha=10**400), ValueError, "float32"),
    # the kernels read raw memory: a negative view's memory holds the other sign
    ("retain negative view", lambda r, f: _args(torch._neg_view(r), f), ValueError, "resolve_neg"),
    ("forget negative view", lambda r, f: _args(r, torch._neg_view(f)), ValueError, "resolve_neg"),
    (
        "out negative view",
        lambda r, f: _args(r, f, out=torch._neg_view(torch.zeros_like(r))),
        ValueError,
        "resolve_neg",
    ),
    # the combine has no derivative: in grad mode nothing may require grad
    (
        "retain requires grad",
        lambda r, f: _args(r.detach().requires_grad_(), f),
        ValueError,
        "require grad",
    ),
    (
        "forget requires grad",
        lambda r, f: _args(r, f.detach().requires_grad_()),
        ValueError,
        "require grad",
    ),
    (
        "out requires grad",
        lambda r, f: _args(r, f, out=torch.zeros_like(r).requires_grad_()),
        ValueError,
        "require grad",
    ),
    ("sparse retain", lambda r, f: _args(r.to_sparse(), f), TypeError, "strided"),
]


@pytest.mark.parametrize("case", CASES, ids=[c[0] for c in CASES])
def test_bad_input_raises_before_writing(backend, device, case):
    _, build, exc, fragment = case
    r, f = _buffers(device)
    before = _bits(r), _bits(f)
    args, kwargs = build(r, f)
    kwargs.setdefault("backend", backend)
    kwargs.setdefault("method", "pcgrad")
    with pytest.raises(exc, match=fragment):
        sk.combine_(*args, **kwargs)
    assert torch.equal(_bits(r), before[0]) and torch.equal(_bits(f), before[1])


@pytest.mark.parametrize("method", list(sk.METHODS))
def test_out_may_be_forget_and_leaves_retain(backend, device, method):
    r, f = _buffers(device)
    r_before, f_before = r.clone(), f.clone()
    expected = sk.combine_(r.clone(), f.clone(), layout=LAYOUT, method=method, backend=backend,
                           **state_for(method, r))  # fmt: skip
    written = sk.combine_(r, f, layout=LAYOUT, method=method, out=f, backend=backend,
                          **state_for(method, r))  # fmt: skip
    assert written is f
    assert torch.equal(r, r_before)
    for got, want in zip(LAYOUT.segment_views(f), LAYOUT.segment_views(expected)):
        assert torch.equal(got, want)
    assert torch.equal(f[5:16], f_before[5:16]), "padding is never written"


def test_backend_triton_unavailable_is_a_clear_error(monkeypatch):
    import sago_kernels.dispatch as b

    monkeypatch.setattr(b, "_triton_installed", lambda: False)
    r, f = torch.zeros(4), torch.zeros(4)
    with pytest.raises(RuntimeError, match="triton is not installed"):
        sk.combine_(r, f, backend="triton")
    monkeypatch.setattr(b.native, "available", lambda: False)
    with pytest.warns(UserWarning, match="native CPU backend is not available"):
        assert b.resolve_backend(None, torch.device("cpu"))[0] == "reference"


def test_triton_on_cpu_without_interpreter_is_a_clear_error(monkeypatch):
    monkeypatch.setenv("TRITON_INTERPRET", "0")
    with pytest.raises(RuntimeError, match="TRITON_INTERPRET=1"):
        sk.combine_(torch.zeros(4), torch.zeros(4), backend="triton")


@pytest.mark.skipif(not sk.dispatch._triton_installed(), reason="needs triton")
def test_broken_interpreter_is_a_clear_error(monkeypatch):
    """An interpreter that cannot run the kernels is named as the reason, never a traceback."""
    import sago_kernels.dispatch as b
    from sago_kernels.kernels import interpreter_check

    monkeypatch.setenv("TRITON_INTERPRET", "1")
    monkeypatch.setattr(b, "_warned_fallback", set())
    monkeypatch.setattr(b.native, "available", lambda: False)
    monkeypatch.setattr(interpreter_check, "interpreter_problem", lambda: "broken for this test")
    cpu = torch.device("cpu")
    with pytest.raises(RuntimeError, match="not available: broken for this test"):
        b.resolve_backend("triton", cpu)
    with pytest.warns(UserWarning, match="native CPU backend is not available"):
        assert b.resolve_backend(None, cpu)[0] == "reference"
    assert ("triton" in sk.backends()) == torch.cuda.is_available()


@pytest.mark.skipif(not sk.dispatch._triton_installed(), reason="needs triton")
def test_interpreter_check_names_the_numpy_triton_pairing(monkeypatch):
    """Triton <= 3.6 with numpy >= 2.4 fails on int(array); the reason says what to install."""
    from sago_kernels.kernels import interpreter_check

    class InterpretedFunction:  # an interpreted kernel that fails the way Triton 3.6's does
        def __getitem__(self, grid):
            def launch(*args):
                raise TypeError("only 0-dimensional arrays can be converted to Python scalars")

            return launch

    monkeypatch.setattr(interpreter_check, "_loop_to_scalar_bound", InterpretedFunction())
    why = interpreter_check.interpreter_problem.__wrapped__()
    assert "0-dimensional" in why and "pip install 'triton>=3.7'" in why
    assert "'numpy<2.4'" in why


def test_auto_backend_choice(monkeypatch):
    """CPU: native when built, else Triton under its interpreter, else the reference."""
    import sago_kernels.dispatch as b

    cpu = torch.device("cpu")
    monkeypatch.setattr(b, "_warned_fallback", set())
    if b.native.available():
        assert b.resolve_backend(None, cpu)[0] == "native"
    monkeypatch.setattr(b.native, "available", lambda: False)
    if b._triton_installed():  # jit the check's kernel as this process does (compiled on a GPU)
        import sago_kernels.kernels.interpreter_check  # noqa: F401
    monkeypatch.setenv("TRITON_INTERPRET", "1")
    usable = b._triton_installed() and b._interpreter_problem() is None
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")  # the fallback's warning, when the interpreter is unusable
        assert b.resolve_backend(None, cpu)[0] == ("triton" if usable else "reference")
    monkeypatch.setenv("TRITON_INTERPRET", "0")
    monkeypatch.setattr(b, "_warned_fallback", set())
    with pytest.warns(UserWarning, match="native CPU backend is not available"):
        assert b.resolve_backend(None, cpu)[0] == "reference"
    assert "reference" in sk.backends() and "native" not in sk.backends()


def test_native_backend_errors_are_clear(monkeypatch):
    import sago_kernels.dispatch as b

    if b.native.available() and torch.cuda.is_available():
        with pytest.raises(RuntimeError, match="runs on CPU tensors"):
            b.resolve_backend("native", torch.device("cuda"))
    monkeypatch.setattr(b.native, "available", lambda: False)
    monkeypatch.setattr(b.native, "unavailable_reason", lambda: "not built here")
    with pytest.raises(RuntimeError, match="backend='native' is not available: not built here"):
        sk.combine_(torch.zeros(4), torch.zeros(4), backend="native")


@pytest.mark.skipif(not sk.dispatch._triton_installed(), reason="needs triton")
def test_interpreter_check_names_a_late_interpret_setting(monkeypatch):
    """Kernels jitted before TRITON_INTERPRET=1 was set are compiled ones: say so."""
    from sago_kernels.kernels import interpreter_check

    class Compiled:  # what triton.jit returns without the interpreter
        pass

    monkeypatch.setattr(interpreter_check, "_loop_to_scalar_bound", Compiled())
    why = interpreter_check.interpreter_problem.__wrapped__()
    assert "set after `import triton`" in why


# --------------------------------------------------------------------------- the in-place contract


@pytest.mark.parametrize("use_out", [False, True])
@pytest.mark.parametrize("method", ["sum", "pcgrad"])
def test_the_written_buffer_version_is_bumped(backend, device, method, use_out):
    """Native and Triton write through raw pointers; autograd must still see the write."""
    r, f = _buffers(device)
    out = torch.zeros_like(r) if use_out else None
    target = out if use_out else r
    before = target._version, f._version
    sk.combine_(r, f, layout=LAYOUT, method=method, out=out, backend=backend)
    assert target._version > before[0]
    assert f._version == before[1], "forget is only read"


@pytest.mark.parametrize("use_out", [False, True])
def test_overwriting_a_buffer_autograd_saved_is_caught(backend, device, use_out):
    r, f = _buffers(device)
    target = torch.zeros_like(r) if use_out else r
    x = torch.ones_like(r, requires_grad=True)
    y = (x * target).sum()  # saves `target` for backward
    sk.combine_(r, f, layout=LAYOUT, method="sago", out=target if use_out else None,
                backend=backend)  # fmt: skip
    with pytest.raises(RuntimeError, match="modified by an inplace operation"):
        y.backward()


@pytest.mark.parametrize("written", ["retain", "out"])
def test_inference_tensors_are_written_only_in_inference_mode(backend, device, written):
    r, f = _buffers(device)
    with torch.inference_mode():
        frozen = torch.zeros_like(r) if written == "out" else r.clone()
    before = _bits(frozen)
    args = (r, f, frozen) if written == "out" else (frozen, f, None)
    with pytest.raises(ValueError, match="inference_mode"):
        sk.combine_(args[0], args[1], layout=LAYOUT, out=args[2], backend=backend)
    assert torch.equal(_bits(frozen), before), "refused before anything was written"
    expected = sk.combine_(r.clone(), f, layout=LAYOUT, backend="reference")
    with torch.inference_mode():
        got = sk.combine_(args[0], args[1], layout=LAYOUT, out=args[2], backend=backend)
    for a, b in zip(LAYOUT.segment_views(got), LAYOUT.segment_views(expected)):
        assert torch.equal(a, b)


def test_inference_forget_is_read_outside_inference_mode(backend, device):
    r, f = _buffers(device)
    with torch.inference_mode():
        frozen_f = f.clone()
    expected = sk.combine_(r.clone(), f, layout=LAYOUT, backend="reference")
    got = sk.combine_(r, frozen_f, layout=LAYOUT, backend=backend)
    assert torch.equal(got, expected)


def test_tensors_that_require_grad_are_written_under_no_grad(backend, device):
    """Outside grad mode the combine is an in-place op like any other: allowed, and counted."""
    r, f = _buffers(device)
    leaf = r.clone().requires_grad_()
    expected = sk.combine_(r.clone(), f, layout=LAYOUT, backend="reference")
    with torch.no_grad():
        version = leaf._version
        sk.combine_(leaf, f.clone().requires_grad_(), layout=LAYOUT, backend=backend)
    assert leaf._version > version
    assert torch.equal(leaf.detach(), expected)


def test_custom_ops_refuse_before_writing_and_bump_the_version(backend, device):
    """The ops of ops.py (what torch.compile calls) keep the same contract when called as ops."""
    from sago_kernels import ops

    op = torch.ops.sago_kernels.combine_.default
    weights = torch.tensor([1.0, 1.0, 1e-10], dtype=torch.float64)
    r, f = _buffers(device)
    version = r._version
    op(r, f, ops.WHOLE_BUFFER, "sum", weights, False, backend)
    assert r._version > version
    with torch.inference_mode():
        frozen = r.clone()
    before = _bits(frozen)
    with pytest.raises(ValueError, match="inference_mode"):
        op(frozen, f, ops.WHOLE_BUFFER, "sum", weights, False, backend)
    assert torch.equal(_bits(frozen), before)
    leaf = r.clone().requires_grad_()
    before = _bits(leaf.detach())
    with pytest.raises(ValueError, match="require grad"):
        op(leaf, f, ops.WHOLE_BUFFER, "sum", weights, False, backend)
    assert torch.equal(_bits(leaf.detach()), before)
    huge = torch.tensor([1e39, 1.0, 1e-10], dtype=torch.float64)
    before = _bits(r)
    with pytest.raises(ValueError, match="float32"):
        op(r, f, ops.WHOLE_BUFFER, "sum", huge, False, backend)
    assert torch.equal(_bits(r), before)


# --------------------------------------------------------------------------- scalars


@pytest.mark.parametrize("name, value", [("alpha", 1e39), ("gamma", -1e39), ("eps", 3.5e38)])
def test_scalars_past_float32_are_refused_by_every_entry_point(device, name, value):
    r, f = _buffers(device)
    before = _bits(r)
    with pytest.raises(ValueError, match="float32"):
        sk.combine_grads_([r[:5], r[16:25]], [f[:5], f[16:25]], **{name: value})
    assert torch.equal(_bits(r), before)
    model = torch.nn.Linear(2, 1).to(device)
    with pytest.raises(ValueError, match="float32"):
        sk.GradientSynthesizer(model, **{name: value})


def test_largest_float32_scalar_is_accepted(backend, device):
    r, f = _buffers(device)
    biggest = torch.finfo(torch.float32).max
    out = sk.combine_(torch.zeros_like(r), f * 0, layout=LAYOUT, method="sum", alpha=biggest,
                      gamma=-biggest, backend=backend)  # fmt: skip
    assert torch.equal(out, torch.zeros_like(r))


# --------------------------------------------------------------------------- memory on elements


@pytest.mark.parametrize("method", ["sum", "pcgrad"])
def test_buffers_interleaving_outside_the_segments_are_accepted(backend, device, method):
    """Only segment elements are read or written, so overlap is judged on them: retain and
    forget may interleave in one storage when no segment element is in both."""
    layout = sk.GradLayout([0, 4], [2, 2], 6)  # elements 2, 3 belong to no segment
    g = torch.Generator().manual_seed(3)
    storage = torch.randn(10, generator=g).to(device)
    r, f = storage[0:6], storage[2:8]  # r's segments: 0-1, 4-5; f's: 2-3, 6-7
    expected = sk.combine_(r.clone(), f.clone(), layout=layout, method=method, backend="reference")
    f_before = f.clone()
    sk.combine_(r, f, layout=layout, method=method, backend=backend)
    assert torch.equal(storage[[2, 3, 6, 7]], f_before[[0, 1, 4, 5]]), "forget is not written"
    for got, want in zip(layout.segment_views(r), layout.segment_views(expected)):
        torch.testing.assert_close(got, want)
    for shifted in (storage[1:7], storage[4:10]):  # segment elements shared at shifts 1 and 4
        before = _bits(storage)
        with pytest.raises(ValueError, match="share memory"):
            sk.combine_(r, shifted, layout=layout, method=method, backend=backend)
        assert torch.equal(_bits(storage), before)


def test_out_interleaving_outside_the_segments_is_accepted(backend, device):
    layout = sk.GradLayout([0, 4], [2, 2], 6)
    storage = torch.arange(8.0, device=device) - 3
    f = torch.arange(6.0, device=device) + 10
    r_before = storage[0:6].clone()
    out = sk.combine_(storage[0:6], f, layout=layout, method="sum", out=storage[2:8],
                      backend=backend)  # fmt: skip
    assert torch.equal(out[[0, 1, 4, 5]], (r_before + f)[[0, 1, 4, 5]])
    assert torch.equal(storage[[0, 1, 4, 5]], r_before[[0, 1, 4, 5]]), "retain is not written"
    with pytest.raises(ValueError, match="overlap"):
        sk.combine_(storage[0:6], f, layout=layout, method="sum", out=storage[1:7],
                    backend=backend)  # fmt: skip


def test_compiled_combine_refuses_tensors_that_require_grad(device):
    """Inside torch.compile the eager checks run in the op's body, below autograd; the grad-mode
    check runs where the compiler traces combine_, before anything is written."""
    torch._dynamo.reset()

    def step(r, f):
        sk.combine_(r, f, layout=LAYOUT, method="sum")
        return r * 2

    compiled = torch.compile(step, backend="aot_eager")
    r, f = _buffers(device)
    leaf = r.clone().requires_grad_()
    before = _bits(leaf.detach())
    with pytest.raises(ValueError, match="require grad"):
        compiled(leaf, f)
    assert torch.equal(_bits(leaf.detach()), before)
