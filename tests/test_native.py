"""The native CPU backend: what the shared fuzz tests cannot see.

The fuzz and property tests already run every method against the float64 truth on this backend
(it is in ``sk.backends()``). Here: results independent of the thread count and of the
instruction set, the exact bf16/fp16 conversions, no memory in proportion to N, and the
fallbacks when the library is missing.
"""

from __future__ import annotations

import os
import subprocess
import sys
import textwrap
from pathlib import Path

import pytest
import torch
from conftest import BACKENDS
from oracle import bits
from strategies import fill_pair, state_for

import sago_kernels as sk
from sago_kernels import native

ROOT = Path(__file__).resolve().parents[1]
pytestmark = pytest.mark.skipif("native" not in BACKENDS, reason="the native library is not built")

# several chunks per segment at this chunking, tails of every length, an empty segment
LAYOUT = sk.GradLayout.from_sizes([1000, 0, 1, 77, 4099, 16, 33], alignment=16)
SMALL_CHUNKS = native.NativeConfig(min_chunk_elems=64, target_chunks=4)


def _combinebits(r, f, method):
    with native.native_config(SMALL_CHUNKS):
        out, st = sk.combine_(
            r.clone(), f, layout=LAYOUT, method=method, alpha=0.75, gamma=1.5, stats=True,
            backend="native", **state_for(method, r),
        )  # fmt: skip
    return bits(out).clone(), st.table.view(torch.int32).clone()


@pytest.mark.parametrize("dtype", [torch.float32, torch.bfloat16, torch.float16])
@pytest.mark.parametrize("method", list(sk.METHODS))
def test_bitwise_identical_for_any_thread_count(method, dtype):
    r, f = fill_pair(LAYOUT, dtype, 3, False, "cpu")
    threads_before = torch.get_num_threads()
    results = {}
    try:
        for threads in (1, 2, 3, 7):
            torch.set_num_threads(threads)
            results[threads] = _combinebits(r, f, method)
    finally:
        torch.set_num_threads(threads_before)
    for threads, (out, table) in results.items():
        assert torch.equal(out, results[1][0]), f"output differs with {threads} threads"
        assert torch.equal(table, results[1][1]), f"statistics differ with {threads} threads"


def _runnable_isas() -> list[str]:
    best = native.ISAS.index(native.isa())
    return list(native.ISAS[: best + 1])


@pytest.mark.parametrize("dtype", [torch.float32, torch.bfloat16, torch.float16])
@pytest.mark.parametrize("method", list(sk.METHODS))
def test_every_instruction_set_gives_the_samebits(method, dtype, monkeypatch):
    r, f = fill_pair(LAYOUT, dtype, 8, True, "cpu")
    results = {}
    for isa in _runnable_isas():
        monkeypatch.setenv("SAGO_NATIVE_ISA", isa)
        assert native.isa() == isa
        results[isa] = _combinebits(r, f, method)
    for isa, (out, table) in results.items():  # NaN payloads are not part of the contract
        assert _same_values(out, results["baseline"][0]), f"{isa} output differs from baseline"
        assert _same_values(
            table.view(torch.float32), results["baseline"][1].view(torch.float32)
        ), f"{isa} statistics differ"


def test_bad_config_is_refused():
    with pytest.raises(TypeError, match="should be a NativeConfig"):
        with native.native_config("small"):
            pass
    with pytest.raises(ValueError, match="multiple of 16"):
        native.NativeConfig(min_chunk_elems=24)


def test_bad_instruction_set_name_is_refused(monkeypatch):
    monkeypatch.setenv("SAGO_NATIVE_ISA", "sse9")
    with pytest.raises(ValueError, match="SAGO_NATIVE_ISA"):
        native.isa()


# --------------------------------------------------------------------------- conversions


def _same_values(got: torch.Tensor, want: torch.Tensor) -> bool:
    """Equal bits, except that any NaN matches any NaN (payloads are not part of the contract)."""
    both_nan = torch.isnan(got.float()) & torch.isnan(want.float())
    return bool(((bits(got) == bits(want)) | both_nan).all())


@pytest.mark.parametrize("dtype", [torch.bfloat16, torch.float16])
def test_widening_is_exact_for_every_16_bit_word(dtype, monkeypatch):
    words = torch.arange(-(2**15), 2**15, dtype=torch.int32).to(torch.int16)
    for isa in _runnable_isas():
        monkeypatch.setenv("SAGO_NATIVE_ISA", isa)
        got = native.widen(words, dtype)
        assert _same_values(got, words.view(dtype).float()), isa


def _rounding_cases(dtype: torch.dtype) -> torch.Tensor:
    """float32 values at and around every rounding decision of ``dtype``: each representable
    value, the midpoints to its neighbours (ties), one float32 ulp either side of them, the
    overflow and underflow edges, specials, and random bit patterns."""
    words = torch.arange(-(2**15), 2**15, dtype=torch.int32).to(torch.int16)
    values = words.view(dtype).double()
    values = values[torch.isfinite(values)].sort().values
    mids = (values[1:] + values[:-1]) / 2  # exact in float64, and in float32 for these dtypes
    mids32 = mids.float()
    up = torch.nextafter(mids32, torch.full_like(mids32, float("inf")))
    down = torch.nextafter(mids32, torch.full_like(mids32, -float("inf")))
    big = torch.finfo(dtype).max
    edges = torch.tensor(
        [big, big * (1 + 2.0**-9), 65520.0, 65519.99, 2.0**-24, 2.0**-25, 2.0**-26, 3 * 2.0**-26,
         1e-40, -1e-40, 1.4e-45, 0.0, -0.0, float("inf"), -float("inf"), float("nan")]
    )  # fmt: skip
    noise = torch.randint(
        -(2**31), 2**31 - 1, (200_000,), generator=torch.Generator().manual_seed(0)
    )
    return torch.cat(
        [values.float(), mids32, up, down, edges, noise.to(torch.int32).view(torch.float32)]
    )


@pytest.mark.parametrize("dtype", [torch.bfloat16, torch.float16])
def test_narrowing_rounds_like_torch(dtype, monkeypatch):
    x = _rounding_cases(dtype)
    want = x.to(dtype)
    for isa in _runnable_isas():
        monkeypatch.setenv("SAGO_NATIVE_ISA", isa)
        got = native.narrow(x, dtype)
        bad = ~((bits(got) == bits(want)) | (torch.isnan(got.float()) & torch.isnan(want.float())))
        assert not bad.any(), (
            f"{isa}: {x[bad][:5].tolist()} -> {got[bad][:5].tolist()}, "
            f"torch: {want[bad][:5].tolist()}"
        )


# --------------------------------------------------------------------------- memory


def test_no_memory_in_proportion_to_the_buffers():
    """Peak resident memory of a combine, measured in a fresh process, stays O(segments)."""
    code = textwrap.dedent(
        """
        import resource, torch, sago_kernels as sk
        n = 1 << 25  # 128 MB per float32 buffer
        layout = sk.GradLayout.from_sizes([n - 5000, 3000, 2000], alignment=16)
        r = torch.randn(layout.numel); f = torch.randn(layout.numel)
        m = torch.randn(layout.numel)  # GRU's state
        # every method once on small buffers first: the library, its threads and the torch ops
        # of the O(segments) steps touch their pages there, not in the measured calls
        small = sk.GradLayout.from_sizes([300, 200], alignment=16)
        rs, fs, ms = (torch.randn(small.numel) for _ in range(3))
        for method in sk.methods():
            state = {"state": ms} if sk.METHODS[method].needs_state else {}
            sk.combine_(rs, fs, layout=small, method=method, stats=True, backend="native", **state)
        sk.combine_(r, f, layout=layout, method="sum", backend="native")  # the big plan
        before = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss
        for method in sk.methods():
            state = {"state": m} if sk.METHODS[method].needs_state else {}
            sk.combine_(r, f, layout=layout, method=method, stats=True, backend="native", **state)
        grown = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss - before
        print(grown)
        """
    )
    done = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=300)
    assert done.returncode == 0, done.stderr
    grown_kib = int(done.stdout.split()[-1])
    # one N-sized float32 temporary would be 131072 KiB
    assert grown_kib < 8 * 1024, f"peak memory grew by {grown_kib} KiB during the combines"


# --------------------------------------------------------------------------- fallbacks


def _python(code: str, **env: str) -> subprocess.CompletedProcess:
    # without TRITON_INTERPRET, as a user's process: auto on CPU must not pick the interpreter
    full_env = {k: v for k, v in os.environ.items() if k != "TRITON_INTERPRET"} | env
    return subprocess.run(
        [sys.executable, "-c", textwrap.dedent(code)], capture_output=True, text=True,
        env=full_env, timeout=120,
    )  # fmt: skip


def test_without_the_library_cpu_combines_fall_back_with_one_notice():
    done = _python(
        """
        import warnings, torch, sago_kernels as sk
        assert "native" not in sk.backends(), sk.backends()
        r = torch.tensor([1.0, -2.0]); f = torch.tensor([-1.0, -1.0])
        with warnings.catch_warnings(record=True) as caught:
            warnings.simplefilter("always")
            for _ in range(3):
                out = sk.combine_(r.clone(), f, method="sago")
        assert out.tolist() == [1.0, -1.0], out
        notices = [str(w.message) for w in caught]
        assert len(notices) == 1 and "reference backend" in notices[0], notices
        try:
            sk.combine_(r.clone(), f, method="sago", backend="native")
        except RuntimeError as e:
            print(e)
        """,
        SAGO_NATIVE_LIB="0",
    )
    assert done.returncode == 0, done.stderr
    assert "backend='native' is not available: disabled by SAGO_NATIVE_LIB=0" in done.stdout


def test_a_foreign_library_is_refused_not_loaded():
    libc = "libc.so.6"
    done = _python(
        """
        from sago_kernels import native
        assert not native.available()
        print(native.unavailable_reason())
        """,
        SAGO_NATIVE_LIB=str(next(Path("/lib").rglob(libc), Path("/lib64") / libc)),
    )
    assert done.returncode == 0, done.stderr
    assert "is not a sago_kernels native library" in done.stdout or "not found" in done.stdout


def test_setup_without_cmake_installs_and_says_so_in_one_line(tmp_path):
    done = subprocess.run(
        [sys.executable, "setup.py", "-q", "build_ext", "--build-lib", str(tmp_path / "lib"),
         "--build-temp", str(tmp_path / "tmp")],
        cwd=ROOT, capture_output=True, text=True, timeout=120,
        env={**os.environ, "SAGO_CMAKE": str(tmp_path / "no-cmake-here")},
    )  # fmt: skip
    assert done.returncode == 0, done.stderr
    lines = [line for line in done.stderr.splitlines() if "native CPU backend not built" in line]
    assert len(lines) == 1 and "CMake was not found" in lines[0], done.stderr
    assert not list((tmp_path / "lib").rglob("_sago_native*")), "nothing should have been built"
