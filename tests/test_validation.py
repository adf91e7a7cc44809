"""Bad input raises a clear error before anything is written; both buffers keep their bits."""

from __future__ import annotations

import warnings

import pytest
import torch

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
    expected = sk.combine_(r.clone(), f.clone(), layout=LAYOUT, method=method, backend=backend)
    written = sk.combine_(r, f, layout=LAYOUT, method=method, out=f, backend=backend)
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
