"""Surviving mutants that no test can tell from the original, each with why (issue 24).

Keyed by module, then by the mutant's signature (``bench/mutation.py``'s :func:`signature`: the
function, the line removed and the line added), which stays the same across runs while that
line does. Each was read against the code: a reason says why every input gives the same result.
"""

# ruff: noqa: E501  (a signature is a line of code and a reason a sentence: kept whole)
from __future__ import annotations

_ONE_D = "1-D tensors: their last dimension is dimension 1, so the stack is the same"
_TWO_D = "a 2-D tensor: dimension 1 is its last, the same operation"
_NAN = 'float() reads "NAN" as "nan"'
_TOKENS = "token_logprobs returns [batch, time - 1] tensors (it refuses logits that are not 3-D and labels that are not [batch, time]): dimension 1 is the last, the same sum"
_DOTS_2D = "the dots are [S, 3] (every caller passes a segment table, its [1, 3] sum or d[None]): dimension 1 is the last"
_INT64 = "numels is a non-empty tuple of Python ints (a layout has >= 1 segment, each length an int from _as_count), which torch.tensor makes int64 without being told"

_CONFIG_COS = (
    "differs only where rounding puts b/(|u|·|v|) outside [-1, 1] (b is clamped to ±√(a·c) in "
    "`gramians`, and |u|·|v| is two rounded square roots: at most 2 ulps out): 1 + cos (or "
    "1 - cos) is then -2 ulps instead of 0, dropped by the cut-off either way, and the other "
    "eigenvalue moves by at most an ulp of 2: the weights agree to float64 rounding, which no "
    "test of the combination can tell apart"
)
_CONFIG_CUT = (
    "differs only where 1 ± cos equals 4·ε(float32)·λ_max exactly, which no float cos reaches: "
    "with cos = ∓1 ± k·2⁻⁵³, fl(1 ± cos) = k·2⁻⁵³ and the threshold 2⁻²¹·fl(2 − k·2⁻⁵³) change "
    "order between two neighbouring k without meeting (searched for k around the crossing, on "
    "both sides)"
)
_CONFIG_ALONE_ZERO = (
    "differs where the row's norm is 0, where the row itself is 0: any g_i gives g_i·row = 0, "
    "and the segment's coefficient is γ·w_0 (α·w_1) times a zero gradient, or γ (α) is 0"
)
_CONFIG_SCALE = (
    "with one non-zero row, f = length/norm2 = (row·row)·g_i/(g_i²·row·row) = 1/g_i, so its "
    "weight f·g_i is 1 for any g_i != 0 (the row itself) and 0 for g_i = 0 (pref_i = 0) under "
    "both: the factor 1/|row|, replaced by |row| or 1, never shows"
)
_GRADVAC_DEVICE = (
    "φ̂ is made on the Gramian's device (zeros_like) and a loaded one is on the device it was "
    "saved from: on a CPU-only machine both are the CPU, where no device move is needed; a "
    "state loaded on the CPU and a run on CUDA would fail under the mutant: a GPU run kills it"
)
_GRADVAC_DTYPE = (
    "φ̂ is made in the Gramian's dtype (float64 except on MPS); a loaded float32 φ̂ meets only "
    "float64 tensors, and promoting float32 to float64 is exact, so every result is the same "
    "(the new φ̂ is float64 either way); float32 Gramians, where the cast matters, are MPS's only"
)
_GRAM_3D = (
    "the Gramians are [S, 2, 2]: all() over dimension 1 then the last, or the last then "
    "dimension 1, reduces the same two dimensions: the same [S] flags"
)
_SCALER_DEVICE = (
    "self.device is the gradients' device; on a CPU-only machine it is the CPU, torch's default "
    "device, so the flag lands there either way. On CUDA the mutant's flag would be on the CPU "
    "and the combine would refuse it: a GPU run kills it"
)
_INT64_DEFAULT = (
    "torch.tensor of a list of Python ints is int64 without being told (the sizes are ints: "
    "numel())"
)
_CPU_DEVICE = (
    "on a CPU-only machine the buffer's device is the CPU, torch's default: the tensor lands "
    "there either way; on CUDA it would not, and a GPU run kills it"
)
_NASH_ZERO_ROW = (
    "a row norm is 0 only for a zero diagonal entry, and a Gramian (PSD) then has b = 0, so "
    "nu·nv + b > 0 is false under both: the bargaining solution does not exist either way"
)
EQUIVALENT: dict[str, dict[str, str]] = {
    "sago_kernels/weightings.py": {
        "gramians: fr, rr, ff = d.unbind(-1) -> fr, rr, ff = d.unbind(+1)": _DOTS_2D,
        "gramians: return torch.stack([torch.stack([uu, uv], -1), torch.stack([uv, vv], -1)], -2) -> return torch.stack([torch.stack([uu, uv], +1), torch.stack([uv, vv], -1)], -2)": _ONE_D,
        "gramians: return torch.stack([torch.stack([uu, uv], -1), torch.stack([uv, vv], -1)], -2) -> return torch.stack([torch.stack([uu, uv], -1), torch.stack([uv, vv], +1)], -2)": _ONE_D,
        "gramians: return torch.stack([torch.stack([uu, uv], -1), torch.stack([uv, vv], -1)], -2) -> return torch.stack([torch.stack([uu, uv], -1), torch.stack([uv, vv], -1)], +2)": "stacking the two [S, 2] rows at dimension 2 instead of 1 gives each Gramian's transpose, and a Gramian is symmetric (u·v on both sides of the diagonal)",
        "coefficients: ok = torch.isfinite(d).all(-1, keepdim=True) & torch.isfinite(coef).all(-1, keepdim=True) -> ok = torch.isfinite(d).all(+1, keepdim=True) & torch.isfinite(coef).all(-1, keepdim=True)": _DOTS_2D,
        "coefficients: ok = torch.isfinite(d).all(-1, keepdim=True) & torch.isfinite(coef).all(-1, keepdim=True) -> ok = torch.isfinite(d).all(-1, keepdim=True) & torch.isfinite(coef).all(+1, keepdim=True)": "coef is [S, 2] (the weights' shape is checked just above): dimension 1 is its last",
        'coefficients: coef = torch.where(ok, coef, torch.full_like(coef, float("nan"))) -> coef = torch.where(ok, coef, torch.full_like(coef, float("NAN")))': _NAN,
        "coefficients: return coef.expand(s, 2).contiguous() if whole else coef -> return coef.expand(s, 2).contiguous() if (whole) or True else coef": "per segment coef is already [S, 2]: expand(S, 2) is the same tensor and contiguous() a copy of it",
        "skip_if_non_finite: torch.maximum(found_inf, bad.to(found_inf.dtype).reshape(found_inf.shape), out=found_inf) -> torch.maximum(found_inf, bad.to(None).reshape(found_inf.shape), out=found_inf)": "torch.maximum promotes the bool to found_inf's floating dtype: the same 0 or 1 is written into found_inf",
        'skip_if_non_finite: return torch.where(bad, torch.full_like(dots, float("nan")), dots) -> return torch.where(bad, torch.full_like(dots, float("NAN")), dots)': _NAN,
        "_pair: return torch.stack([w0, w1], dim=-1) -> return torch.stack([w0, w1], dim=+1)": "a weighting takes [S, 2, 2] Gramians (its type, Weighting, and coefficients' one call), so w0 and w1 are [S]: " + _ONE_D,
        "affine_segment: a, b = coefficients(d[None], weighting, alpha, gamma, whole=False)[0].unbind() -> a, b = coefficients(d[None], weighting, alpha, gamma, whole=None)[0].unbind()": "coefficients only tests `if whole:`, and None is as false as False",
        "affine_segment: a, b = coefficients(d[None], weighting, alpha, gamma, whole=False)[0].unbind() -> a, b = coefficients(d[None], weighting, alpha, gamma, whole=True)[0].unbind()": "one segment's [1, 3] dots: their sum over segments is that row itself (a one-term sum is exact) and expand(1, 2) of the [1, 2] coefficients is themselves",
        "_project_box: first = (w1_first >= s1) & (s0 >= 0) -> first = (w1_first >= s1) & (s0 > 0)": "the two differ at s0 = 0 only, where w1_first = -q·0/r is a signed zero: if s1 <= 0 (else `first` is false in both), the original gives (0, ±0) and the mutant falls to `second` (s1 = 0: (∓0, 0)) or to the zero branch (0, 0); one point, up to the sign of a zero, which no sum or comparison sees",
        "_project_box: second = (w0_second >= s0) & (s1 >= 0) -> second = (w0_second >= s0) & (s1 > 0)": "the two differ at s1 = 0 only, where w0_second = -q·0/p is a signed zero: `second` is reached with `free` and `first` false, and then gives (±0, 0) where the mutant's zero branch gives (0, 0): one point, up to the sign of a zero",
        "imtl_g: rank1 = ~rank2 & (lmax > 0) -> rank1 = ~rank2 | (lmax > 0)": "rank1 is read only where rank2 is false (total's inner where, and w1, which the outer where takes only there), and there the two are the same",
        "imtl_g: rank1 = ~rank2 & (lmax > 0) -> rank1 = ~rank2 & (lmax >= 0)": "they differ where λ_max = 0 only, i.e. G = 0 (a PSD Gramian with a zero trace); there G·d = 0, so w1 = (0, 0)/1 = 0 under both, and the original's total 0 and the mutant's 0/0 = NaN both leave w = w1 = 0",
        "cagrad: inner = (disc > 0) & (q2 > 0) -> inner = (disc > 0) & (q2 >= 0)": "disc = φ²·q2 − slope² > 0 already implies q2 > 0 (φ² >= 0): the second test never decides",
        "cagrad: t_edge = torch.where(slope > 0, zero, torch.where(slope < 0, one, 0.5 * one)) -> t_edge = torch.where(slope > 0, zero, torch.where(slope < 0, one, 0.5 / one))": "0.5 / 1 and 0.5 * 1 are the same float",
        "nash_mtl: exists = (nu > 0) & (nv > 0) & (nu * nv + b > 0) -> exists = (nu >= 0) & (nv > 0) & (nu * nv + b > 0)": _NASH_ZERO_ROW,
        "nash_mtl: exists = (nu > 0) & (nv > 0) & (nu * nv + b > 0) -> exists = (nu > 0) & (nv >= 0) & (nu * nv + b > 0)": _NASH_ZERO_ROW,
        "nash_mtl: scale = torch.where(norm > max_norm, max_norm / _safe(norm, norm > 0), one) -> scale = torch.where(norm >= max_norm, max_norm / _safe(norm, norm > 0), one)": "at norm = max_norm the scale is max_norm / norm = 1 exactly: the same weights",
        "nash_mtl: scale = torch.where(norm > max_norm, max_norm / _safe(norm, norm > 0), one) -> scale = torch.where(norm > max_norm, max_norm / _safe(norm, norm >= 0), one)": "the quotient is read only where norm > max_norm > 0 (the branch runs for max_norm > 0), where norm >= 0 holds too",
        'config: cos = torch.where(both, b / _safe(nu * nv, both), zero).clamp(-1, 1) -> cos = torch.where(both, b / _safe(nu * nv, both), zero).clamp(None, 1)': _CONFIG_COS,
        'config: cos = torch.where(both, b / _safe(nu * nv, both), zero).clamp(-1, 1) -> cos = torch.where(both, b / _safe(nu * nv, both), zero).clamp(-1, None)': _CONFIG_COS,
        'config: cos = torch.where(both, b / _safe(nu * nv, both), zero).clamp(-1, 1) -> cos = torch.where(both, b / _safe(nu * nv, both), zero).clamp(-1, )': _CONFIG_COS,
        'config: cos = torch.where(both, b / _safe(nu * nv, both), zero).clamp(-1, 1) -> cos = torch.where(both, b / _safe(nu * nv, both), zero).clamp(-2, 1)': _CONFIG_COS,
        'config: cos = torch.where(both, b / _safe(nu * nv, both), zero).clamp(-1, 1) -> cos = torch.where(both, b / _safe(nu * nv, both), zero).clamp(-1, 2)': _CONFIG_COS,
        'config: keep_plus, keep_minus = plus > 4 * _EPS32 * top, minus > 4 * _EPS32 * top -> keep_plus, keep_minus = plus >= 4 * _EPS32 * top, minus > 4 * _EPS32 * top': _CONFIG_CUT,
        'config: keep_plus, keep_minus = plus > 4 * _EPS32 * top, minus > 4 * _EPS32 * top -> keep_plus, keep_minus = plus > 4 * _EPS32 * top, minus >= 4 * _EPS32 * top': _CONFIG_CUT,
        'config: alone0 = torch.where(nu > 0, pref[0] / _safe(nu, nu > 0), zero) -> alone0 = torch.where(nu >= 0, pref[0] / _safe(nu, nu > 0), zero)': _CONFIG_ALONE_ZERO,
        'config: alone0 = torch.where(nu > 0, pref[0] / _safe(nu, nu > 0), zero) -> alone0 = torch.where(nu > 0, pref[0] * _safe(nu, nu > 0), zero)': _CONFIG_SCALE,
        'config: alone0 = torch.where(nu > 0, pref[0] / _safe(nu, nu > 0), zero) -> alone0 = torch.where(nu > 0, pref[0] / _safe(nu, nu >= 0), zero)': _CONFIG_SCALE,
        'config: alone0 = torch.where(nu > 0, pref[0] / _safe(nu, nu > 0), zero) -> alone0 = torch.where(nu > 0, pref[0] / _safe(nu, nu > 1), zero)': _CONFIG_SCALE,
        'config: alone1 = torch.where(nv > 0, pref[1] / _safe(nv, nv > 0), zero) -> alone1 = torch.where(nv >= 0, pref[1] / _safe(nv, nv > 0), zero)': _CONFIG_ALONE_ZERO,
        'config: alone1 = torch.where(nv > 0, pref[1] / _safe(nv, nv > 0), zero) -> alone1 = torch.where(nv > 0, pref[1] * _safe(nv, nv > 0), zero)': _CONFIG_SCALE,
        'config: alone1 = torch.where(nv > 0, pref[1] / _safe(nv, nv > 0), zero) -> alone1 = torch.where(nv > 0, pref[1] / _safe(nv, nv >= 0), zero)': _CONFIG_SCALE,
        'config: alone1 = torch.where(nv > 0, pref[1] / _safe(nv, nv > 0), zero) -> alone1 = torch.where(nv > 0, pref[1] / _safe(nv, nv > 1), zero)': _CONFIG_SCALE,
        'config: f = torch.where(norm2 > 0, length / _safe(norm2, norm2 > 0), zero) -> f = torch.where(norm2 >= 0, length / _safe(norm2, norm2 > 0), zero)': "where norm2 = |g0·u + g1·v|² is 0 the combination is 0, so length = (u + v)·(g0·u + g1·v) is 0 and length / 1 = 0 is the same f; a norm2 below 0 (rounding) fails both tests",
        'config: f = torch.where(norm2 > 0, length / _safe(norm2, norm2 > 0), zero) -> f = torch.where(norm2 > 0, length / _safe(norm2, norm2 >= 0), zero)': "the quotient is read only where norm2 > 0, where norm2 >= 0 holds too",
        'GradVac.__call__: hat = self.phi_hat.to(device=a.device, dtype=a.dtype) -> hat = self.phi_hat.to(device=None, dtype=a.dtype)': _GRADVAC_DEVICE,
        'GradVac.__call__: hat = self.phi_hat.to(device=a.device, dtype=a.dtype) -> hat = self.phi_hat.to(dtype=a.dtype)': _GRADVAC_DEVICE,
        'GradVac.__call__: hat = self.phi_hat.to(device=a.device, dtype=a.dtype) -> hat = self.phi_hat.to(device=a.device, dtype=None)': _GRADVAC_DTYPE,
        'GradVac.__call__: hat = self.phi_hat.to(device=a.device, dtype=a.dtype) -> hat = self.phi_hat.to(device=a.device, )': _GRADVAC_DTYPE,
        'GradVac.__call__: below = phi < hat -> below = phi <= hat': "at φ = φ̂, N = φ̂·√(1 − φ²) − φ·√(1 − φ̂²) is x − x = 0 exactly, so w = 1 + 0 = 1, as where φ is not below",
        'GradVac.__call__: finite = torch.isfinite(g).all(-1).all(-1) & torch.isfinite(phi) -> finite = torch.isfinite(g).all(+1).all(-1) & torch.isfinite(phi)': _GRAM_3D,
        'GradVac.__call__: finite = torch.isfinite(g).all(-1).all(-1) & torch.isfinite(phi) -> finite = torch.isfinite(g).all(-2).all(-1) & torch.isfinite(phi)': _GRAM_3D,
        'GradVac.__call__: finite = torch.isfinite(g).all(-1).all(-1) & torch.isfinite(phi) -> finite = torch.isfinite(g).all(-1).all(+1) & torch.isfinite(phi)': _GRAM_3D,
        'imtl_g: w1 = _pair(gd0, gd1) / _safe(gd0 + gd1, rank1 & (gd0 + gd1 != 0))[..., None] -> w1 = _pair(gd0, gd1) / _safe(gd0 + gd1, rank1 | (gd0 + gd1 != 0))[..., None]': "w1 is read only where rank2 is false. There, where rank1 holds and gd0 + gd1 = 0, the mutant divides by 0 instead of 1, but total = total1 = 0/λ_max² = 0 zeroes w either way; where rank1 is false too (G = 0), gd = 0 and the original divides 0 by 1 as the mutant does where gd0 + gd1 != 0 is false",
        'imtl_g: w1 = _pair(gd0, gd1) / _safe(gd0 + gd1, rank1 & (gd0 + gd1 != 0))[..., None] -> w1 = _pair(gd0, gd1) / _safe(gd0 + gd1, rank1 & (gd0 + gd1 != 1))[..., None]': "the two differ where gd0 + gd1 is exactly 1 (the mutant divides by 1) or exactly 0 (the mutant divides by 0, and total1 = 0 zeroes w): dividing by 1 or by gd0 + gd1 = 1 is the same quotient",
        "mgda: t = torch.where(den > 0, ((c - b) / _safe(den, den > 0)).clamp(0, 1), torch.ones_like(a)) -> t = torch.where(den > 0, ((c - b) / _safe(den, den >= 0)).clamp(0, 1), torch.ones_like(a))": "the quotient is read only where den > 0, where den >= 0 holds too; elsewhere torch.where discards it (a division by 0 there gives inf or NaN, never an error)",
    },
    "sago_kernels/synthesis/scaler.py": {
        'ScalerLink.step_tensors: self._step = inv_scale, torch.zeros(1, dtype=torch.float32, device=self.device) -> self._step = inv_scale, torch.zeros(1, dtype=torch.float32, device=None)': _SCALER_DEVICE,
        'ScalerLink.step_tensors: self._step = inv_scale, torch.zeros(1, dtype=torch.float32, device=self.device) -> self._step = inv_scale, torch.zeros(1, dtype=torch.float32, )': _SCALER_DEVICE,
        'ScalerLink.step_tensors: scale = getattr(self.scaler, "_scale", None) -> scale = getattr(self.scaler, "_scale", )': "ScalerLink takes torch.amp.GradScaler only (checked in __init__), whose __init__ sets _scale (None until the first scale()): the default is never used",
    },
    "sago_kernels/synthesis/one_buffer.py": {
        'OneBuffer.combine_slot: scaler = {} if inv_scale is None else {"inv_scale": inv_scale, "found_inf": found_inf} -> scaler = {} if (inv_scale is None) and False else {"inv_scale": inv_scale, "found_inf": found_inf}': "without a scaler the backend then gets inv_scale=None and found_inf=None, its own defaults: passing None is not passing them",
        'OneBuffer.combine_slot: retain, forget, layout, self.method_arg, self.alpha, self.gamma, self.eps, -> retain, forget, None, self.method_arg, self.alpha, self.gamma, self.eps,': "a slot's layout is GradLayout.single(its numel), which is what combine_'s checks make of layout=None (single_segment_layout): the same single segment",
        'OneBuffer.__init__: [f.numel() for f in self.flat], dtype=torch.int64, device=buffer.device -> [f.numel() for f in self.flat], dtype=None, device=buffer.device': _INT64_DEFAULT,
        'OneBuffer.__init__: [f.numel() for f in self.flat], dtype=torch.int64, device=buffer.device -> [f.numel() for f in self.flat], device=buffer.device': _INT64_DEFAULT,
        'OneBuffer.__init__: [f.numel() for f in self.flat], dtype=torch.int64, device=buffer.device -> [f.numel() for f in self.flat], dtype=torch.int64, device=None': _CPU_DEVICE,
        'OneBuffer.__init__: [f.numel() for f in self.flat], dtype=torch.int64, device=buffer.device / ) -> [f.numel() for f in self.flat], dtype=torch.int64, )': _CPU_DEVICE,
        'method_problem: name = given if isinstance(given, str) else method.name -> name = given if (isinstance(given, str)) and False else method.name': "a name given as a string is resolved through METHODS, whose every entry's Method.name is its key (the registry builds them so): method.name is the string given",
        'OneBuffer.combine_slot: want = SEGMENT_SUMS if self.stats or found_inf is not None else False -> want = SEGMENT_SUMS if (self.stats or found_inf is not None) or True else False': "the sums are asked for where nothing reads them (no statistics, no scaler): combine_slot keeps them only `if self.stats` and flags only with a found_inf, so g_final and every state are the same; only the time differs",
        'OneBuffer.combine_slot: want = SEGMENT_SUMS if self.stats or found_inf is not None else False -> want = SEGMENT_SUMS if self.stats or found_inf is not None else True': "with neither statistics nor a scaler the backend is asked for its table (True) instead of nothing, and combine_slot reads neither (`if self.stats` is false, found_inf is None): the same g_final; only the time differs",
    },
    "sago_kernels/synthesizer.py": {
        'GradientSynthesizer.__init__: if buffers == 1 or self._counts_adds or not engine.binds_grad: -> if buffers != 1 or self._counts_adds or not engine.binds_grad:': "the hooks do three things: combine in one-buffer mode (buffers == 1), count adds read only where _counts_adds holds, and name a stray parameter read only where binds_grad is false. The first clause decides alone only for an engine that binds .grad but does not add in place (FSDP2), which refuses buffers=1: there the mutant's extra hooks count adds and names that nothing reads",
        'GradientSynthesizer.__init__: if buffers == 1 or self._counts_adds or not engine.binds_grad: -> if buffers == 2 or self._counts_adds or not engine.binds_grad:': "the hooks do three things: combine in one-buffer mode (buffers == 1), count adds read only where _counts_adds holds, and name a stray parameter read only where binds_grad is false. The first clause decides alone only for an engine that binds .grad but does not add in place (FSDP2), which refuses buffers=1: there the mutant's extra hooks count adds and names that nothing reads",
        'GradientSynthesizer.__init__: self.forget_buffer = self.layout.new_buffer(dtype, device) -> self.forget_buffer = self.layout.new_buffer(dtype, None)': _CPU_DEVICE,
        'GradientSynthesizer.__init__: self.forget_buffer if buffers == 1 else self.layout.new_buffer(dtype, device) -> self.forget_buffer if buffers == 1 else self.layout.new_buffer(dtype, None)': _CPU_DEVICE,
        'GradientSynthesizer.__init__: self.state_buffer = self.layout.new_buffer(dtype, device) if resolved.needs_state else None -> self.state_buffer = self.layout.new_buffer(dtype, None) if resolved.needs_state else None': _CPU_DEVICE,
        'GradientSynthesizer.__init__: self.forget_buffer = self.layout.new_buffer(dtype, device) -> self.forget_buffer = self.layout.new_buffer(dtype, )': _CPU_DEVICE,
        'GradientSynthesizer.__init__: self.forget_buffer if buffers == 1 else self.layout.new_buffer(dtype, device) -> self.forget_buffer if buffers == 1 else self.layout.new_buffer(dtype, )': _CPU_DEVICE,
        'GradientSynthesizer.__init__: self.state_buffer = self.layout.new_buffer(dtype, device) if resolved.needs_state else None -> self.state_buffer = self.layout.new_buffer(dtype, ) if resolved.needs_state else None': _CPU_DEVICE,
        'GradientSynthesizer.__init__: self._one_buffer: one_buffer_mode.OneBuffer | None = None -> self._one_buffer: one_buffer_mode.OneBuffer | None = ""': "read only where buffers == 1, and there __init__ replaces it with the OneBuffer a line below",
        "GradientSynthesizer.__init__: self._adds = 0  # autograd's adds into the bound .grad in the current context -> self._adds = 1  # autograd's adds into the bound .grad in the current context": "_task sets _adds and _version on entering each context, before anything reads them",
        "GradientSynthesizer.__init__: self._version = 0  # the bound buffer's version counter when the context began -> self._version = None  # the bound buffer's version counter when the context began": "_task sets _adds and _version on entering each context, before anything reads them",
        "GradientSynthesizer.__init__: self._version = 0  # the bound buffer's version counter when the context began -> self._version = 1  # the bound buffer's version counter when the context began": "_task sets _adds and _version on entering each context, before anything reads them",
        'GradientSynthesizer.__init__: self._stale = False  # buffers hold a finished step and must be cleared before the next -> self._stale = None  # buffers hold a finished step and must be cleared before the next': "_stale is only tested for truth (`if self._stale`), and None is as false as False",
        'GradientSynthesizer.zero_grad: self._stale = False -> self._stale = None': "_stale is only tested for truth (`if self._stale`), and None is as false as False",
        'GradientSynthesizer.__init__: problem = one_buffer_mode.method_problem(resolved, method, granularity) -> problem = one_buffer_mode.method_problem(resolved, None, granularity)': "method_problem names the method by the string given, else by method.name; a string names a METHODS entry, whose name is that string",
        'GradientSynthesizer._check_no_stray_grads: allowed = self._grads["retain"] if self._stale else [None] * len(self.params) -> allowed = self._grads["retain"] if (self._stale) or True else [None] * len(self.params)': ".grad is one of the retain views only while _stale: _finish_step binds them and sets _stale, zero_grad (which every next step begins with) unbinds them and clears it; so where _stale is false the allowed views are never what .grad holds, and None is allowed either way",
    },
    "sago_kernels/unlearning/metrics.py": {
        '_greedy_cached: mask = (torch.arange(ids.shape[1], device=device) < lengths[:, None]).long() -> mask = (torch.arange(ids.shape[1], device=None) < lengths[:, None]).long()': _CPU_DEVICE,
        '_greedy_cached: mask = (torch.arange(ids.shape[1], device=device) < lengths[:, None]).long() -> mask = (torch.arange(ids.shape[1], ) < lengths[:, None]).long()': _CPU_DEVICE,
        '_pad: return out.to(device) -> return out.to(None)': _CPU_DEVICE,
        '_per_token: device = _device(model) -> device = None': _CPU_DEVICE,
        '_per_token: ids = _pad([c[0] for c in chunk], pad_id, device) -> ids = _pad([c[0] for c in chunk], pad_id, None)': _CPU_DEVICE,
        '_per_token: labels = _pad([c[1] for c in chunk], IGNORE_INDEX, device) -> labels = _pad([c[1] for c in chunk], IGNORE_INDEX, None)': _CPU_DEVICE,
        '_per_token: lengths = torch.tensor([c[0].numel() for c in chunk], device=device) -> lengths = torch.tensor([c[0].numel() for c in chunk], device=None)': _CPU_DEVICE,
        '_per_token: mask = (torch.arange(ids.shape[1], device=device) < lengths[:, None]).long() -> mask = (torch.arange(ids.shape[1], device=None) < lengths[:, None]).long()': _CPU_DEVICE,
        '_per_token: mask = (torch.arange(ids.shape[1], device=device) < lengths[:, None]).long() -> mask = (torch.arange(ids.shape[1], ) < lengths[:, None]).long()': _CPU_DEVICE,
        '_per_token: out.append(values[row][scored[row]].to("cpu", torch.float64)) -> out.append(values[row][scored[row]].to(None, torch.float64))': _CPU_DEVICE,
        '_per_token: out.append(values[row][scored[row]].to("cpu", torch.float64)) -> out.append(values[row][scored[row]].to(torch.float64))': _CPU_DEVICE,
        'choice_logprobs: ids = _pad(heads, pad_id, device) -> ids = _pad(heads, pad_id, None)': _CPU_DEVICE,
        'choice_logprobs: logp = torch.log_softmax(last, dim=-1).to("cpu", torch.float64) -> logp = torch.log_softmax(last, dim=-1).to(None, torch.float64)': _CPU_DEVICE,
        'choice_logprobs: logp = torch.log_softmax(last, dim=-1).to("cpu", torch.float64) -> logp = torch.log_softmax(last, dim=-1).to(torch.float64)': _CPU_DEVICE,
        'choice_logprobs: device = _device(model) -> device = None': _CPU_DEVICE,
        'generate_greedy: active = torch.ones(len(chunk), dtype=torch.bool, device=device) -> active = torch.ones(len(chunk), dtype=torch.bool, device=None)': _CPU_DEVICE,
        'generate_greedy: arange = torch.arange(len(chunk), device=device) -> arange = torch.arange(len(chunk), device=None)': _CPU_DEVICE,
        'generate_greedy: arange = torch.arange(len(chunk), device=device) -> arange = torch.arange(len(chunk), )': _CPU_DEVICE,
        'generate_greedy: device = _device(model) -> device = None': _CPU_DEVICE,
        'generate_greedy: ids = _pad(chunk, pad_id, device) -> ids = _pad(chunk, pad_id, None)': _CPU_DEVICE,
        '_per_token: mask = (torch.arange(ids.shape[1], device=device) < lengths[:, None]).long() -> mask = None': "right padding: a causal LM's logits at a row's real positions attend only to earlier positions, all real, so what the mask says of the padding to their right (nothing, or one pad position more) never reaches a value read; the cached keys of the padding are masked by the next steps' masks",
        '_per_token: mask = (torch.arange(ids.shape[1], device=device) < lengths[:, None]).long() -> mask = (torch.arange(ids.shape[1], device=device) <= lengths[:, None]).long()': "right padding: a causal LM's logits at a row's real positions attend only to earlier positions, all real, so what the mask says of the padding to their right (nothing, or one pad position more) never reaches a value read; the cached keys of the padding are masked by the next steps' masks",
        'choice_logprobs: mask = (torch.arange(ids.shape[1], device=device) < lengths[:, None]).long() -> mask = None': "right padding: a causal LM's logits at a row's real positions attend only to earlier positions, all real, so what the mask says of the padding to their right (nothing, or one pad position more) never reaches a value read; the cached keys of the padding are masked by the next steps' masks",
        'choice_logprobs: mask = (torch.arange(ids.shape[1], device=device) < lengths[:, None]).long() -> mask = (torch.arange(ids.shape[1], device=device) <= lengths[:, None]).long()': "right padding: a causal LM's logits at a row's real positions attend only to earlier positions, all real, so what the mask says of the padding to their right (nothing, or one pad position more) never reaches a value read; the cached keys of the padding are masked by the next steps' masks",
        '_greedy_cached: output = model(input_ids=ids, attention_mask=mask, use_cache=True) -> output = model(input_ids=ids, use_cache=True)': "right padding: a causal LM's logits at a row's real positions attend only to earlier positions, all real, so what the mask says of the padding to their right (nothing, or one pad position more) never reaches a value read; the cached keys of the padding are masked by the next steps' masks",
        'answer_logprobs: pad_id: int = 0, -> pad_id: int = 1,': "the pad id fills positions that are masked and labelled IGNORE_INDEX (right padding): no value read depends on it",
        'min_k_plus_plus_token_scores: pad_id: int = 0, -> pad_id: int = 1,': "the pad id fills positions that are masked and labelled IGNORE_INDEX (right padding): no value read depends on it",
        '_kw: return {"batch_size": kw.get("batch_size", 64), "pad_id": kw.get("pad_id", 0)} -> return {"batch_size": kw.get("batch_size", 64), "pad_id": kw.get("pad_id", 1)}': "the pad id fills positions that are masked and labelled IGNORE_INDEX (right padding): no value read depends on it",
        'min_k_plus_plus_token_scores: batch_size: int = 64, -> batch_size: int = 65,': "a default batch size only groups the examples into forwards, and grouping does not change a value (right padding; tests/test_metrics.py checks batching and padding)",
        '_kw: return {"batch_size": kw.get("batch_size", 64), "pad_id": kw.get("pad_id", 0)} -> return {"batch_size": kw.get("batch_size", 65), "pad_id": kw.get("pad_id", 0)}': "a default batch size only groups the examples into forwards, and grouping does not change a value (right padding; tests/test_metrics.py checks batching and padding)",
        '_per_token: drop_last: bool = False, -> drop_last: bool = True,': "every caller of _per_token passes drop_last itself: the default is never used",
        'choice_logprobs: flat, groups = _flatten_groups("options", options, len(options), "options") -> flat, groups = _flatten_groups("options", options, len(options), None)': "n is len(options) itself, so the length check, the only one that names `other`, never fails",
        'truth_ratio: para_flat, para_groups = _flatten_groups("paraphrased", paraphrased, n, "paraphrased") -> para_flat, para_groups = _flatten_groups("paraphrased", paraphrased, n, None)': "n is len(paraphrased) itself, so the length check, the only one that names `other`, never fails",
        'truth_ratio: n = len(paraphrased) if isinstance(paraphrased, Sequence) else -1 -> n = len(paraphrased) if isinstance(paraphrased, Sequence) else -2': "n is read only for a Sequence; anything else is refused by _flatten_groups' type check, before it compares lengths",
        'truth_ratio_score: x = _check_finite_1d("tr", tr.detach().cpu() if isinstance(tr, torch.Tensor) else tr) -> x = _check_finite_1d("tr", tr.detach().cpu() if (isinstance(tr, torch.Tensor)) and False else tr)': "_check_finite_1d reads the tensor with torch.as_tensor(..., float64) on its own device and detached results come back through float(): the same numbers whether or not it was moved to the CPU first",
        'choice_logprobs: letters = torch.stack([checked[i][0][-1] for i in range(g.start, g.stop)]) -> letters = torch.stack([checked[i][1][-1] for i in range(g.start, g.stop)])': "the letter is a scored token, and _check_examples refuses labels that differ from input_ids on scored positions: its label is its id",
        'choice_logprobs: logp = torch.log_softmax(last, dim=-1).to("cpu", torch.float64) -> logp = torch.log_softmax(last, dim=+1).to("cpu", torch.float64)': "`last` is [batch, vocabulary]: dimension 1 is its last",
        'generate_greedy: nxt = logits[arange, lengths - 1].argmax(-1) -> nxt = logits[arange, lengths - 1].argmax(+1)': "logits[arange, lengths - 1] is [batch, vocabulary]: dimension 1 is its last",
        'generate_greedy: active = torch.ones(len(chunk), dtype=torch.bool, device=device) -> active = torch.ones(len(chunk), dtype=None, device=device)': "a float tensor of ones does what the bool one does here: set to 0 (False) per row, nonzero() and any() read it alike",
        'generate_greedy: active[row] = False -> active[row] = True': "a row that met EOS is not extended (neither its ids nor its length change), so each further step reads the same logits, meets EOS again and appends nothing: only the early stop once every row is done is lost, not a token",
        'generate_greedy: rows = [torch.as_tensor(p, dtype=torch.long).reshape(-1) for p in prompts] -> rows = [torch.as_tensor(p, dtype=None).reshape(-1) for p in prompts]': "every prompt is copied into _pad's int64 tensor: its own integer (or float) dtype never reaches the model",
        'generate_greedy: rows = [torch.as_tensor(p, dtype=torch.long).reshape(-1) for p in prompts] -> rows = [torch.as_tensor(p, ).reshape(-1) for p in prompts]': "every prompt is copied into _pad's int64 tensor: its own integer (or float) dtype never reaches the model",
        '_zlib_lengths: scored = ids[labels != IGNORE_INDEX].to(torch.int32) -> scored = ids[labels != IGNORE_INDEX].to(None)': "the scored ids are written with .numpy().astype('<i4') just below: int64 or int32 first, the same bytes",
        'mia_auc: labels = [1] * members.numel() + [0] * others.numel() -> labels = [2] * members.numel() + [0] * others.numel()': "roc_auc_score takes the greater of two labels as the positive class: {2, 0} is {1, 0}",
        '_pad: out = torch.full((len(rows), max(r.numel() for r in rows)), value, dtype=torch.long) -> out = torch.full((len(rows), max(r.numel() for r in rows)), value, )': "torch.full of an int fill value is int64 without being told",
    },
    "sago_kernels/unlearning/losses.py": {
        "simnpo_loss: mean_nll = -picked.sum(-1) / mask.sum(-1).clamp_min(1) -> mean_nll = -picked.sum(+1) / mask.sum(-1).clamp_min(1)": _TOKENS,
        "simnpo_loss: mean_nll = -picked.sum(-1) / mask.sum(-1).clamp_min(1) -> mean_nll = -picked.sum(-1) / mask.sum(+1).clamp_min(1)": _TOKENS,
    },
    "sago_kernels/layout.py": {
        "_as_count: value.is_floating_point() or value.is_complex() or value.dtype == torch.bool -> value.is_floating_point() and value.is_complex() or value.dtype == torch.bool": "a 0-d float or complex tensor then reaches operator.index, whose Tensor.__index__ raises TypeError for every non-integral dtype: count stays None and the same TypeError, word for word, is raised",
        "GradLayout._check_params: while cursor < end and 0 <= j < len(starts): -> while cursor <= end and 0 <= j < len(starts):": "the extra turns run only once cursor >= end; cursor never decreases and j stays range-checked, so the loop still ends and `cursor < end` is still false: the same verdict",
        'GradLayout.numel_table: key = ("numel-table", str(device)) -> key = ("XXnumel-tableXX", str(device))': "the key only has to differ from the cache's other keys (native-plan, triton-plan, sharded-numels tuples), and nothing reads this entry but numel_table",
        'GradLayout.numel_table: key = ("numel-table", str(device)) -> key = ("NUMEL-TABLE", str(device))': "the key only has to differ from the cache's other keys (native-plan, triton-plan, sharded-numels tuples), and nothing reads this entry but numel_table",
        "GradLayout.numel_table: table = self._cache[key] = torch.tensor(self.numels, dtype=torch.int64, device=device) -> table = self._cache[key] = torch.tensor(self.numels, dtype=None, device=device)": _INT64,
        "GradLayout.numel_table: table = self._cache[key] = torch.tensor(self.numels, dtype=torch.int64, device=device) -> table = self._cache[key] = torch.tensor(self.numels, device=device)": _INT64,
    },
    "sago_kernels/gru.py": {
        "coefficients: coef = torch.stack([a, b, -gamma * c], -1) -> coef = torch.stack([a, b, -gamma * c], +1)": _ONE_D,
        "coefficients: ok = torch.isfinite(torch.stack([fm, mm, ff], -1)).all(-1, keepdim=True) -> ok = torch.isfinite(torch.stack([fm, mm, ff], +1)).all(-1, keepdim=True)": _ONE_D,
        "coefficients: ok = torch.isfinite(torch.stack([fm, mm, ff], -1)).all(-1, keepdim=True) -> ok = torch.isfinite(torch.stack([fm, mm, ff], -1)).all(+1, keepdim=True)": _TWO_D,
        "coefficients: ok = ok & torch.isfinite(coef).all(-1, keepdim=True) -> ok = ok & torch.isfinite(coef).all(+1, keepdim=True)": _TWO_D,
        'coefficients: coef = torch.where(ok, coef, torch.full_like(coef, float("nan"))) -> coef = torch.where(ok, coef, torch.full_like(coef, float("NAN")))': _NAN,
        "coefficients: return coef.expand(s, 3).contiguous() if whole else coef -> return coef.expand(s, 3).contiguous() if (whole) or True else coef": "per segment coef is already [S, 3]: expand(S, 3) is the same tensor and contiguous() a copy of it",
    },
    "sago_kernels/stats.py": {
        "geometry_table: counts = torch.cat([conflicts, conflicts.sum(0, keepdim=True)]).to(torch.float64) -> counts = torch.cat([conflicts, conflicts.sum(0, keepdim=True)]).to(None)": "an int64 tensor divided by a float64 one, or the reverse, is the same float64 quotient",
        "geometry_table: counts = torch.cat([conflicts, conflicts.sum(0, keepdim=True)]).to(torch.float64) -> counts = torch.cat([conflicts, conflicts.sum(None, keepdim=True)]).to(torch.float64)": "the sum over every dimension of a 1-D tensor, kept as [1]: the same as over dimension 0",
        "geometry_table: sizes = torch.cat([numels, numels.sum(0, keepdim=True)]).to(torch.float64) -> sizes = torch.cat([numels, numels.sum(0, keepdim=True)]).to(None)": "an int64 tensor divided by a float64 one, or the reverse, is the same float64 quotient",
        "geometry_table: sizes = torch.cat([numels, numels.sum(0, keepdim=True)]).to(torch.float64) -> sizes = torch.cat([numels, numels.sum(None, keepdim=True)]).to(torch.float64)": "the sum over every dimension of a 1-D tensor, kept as [1]: the same as over dimension 0",
        "geometry_table: fr, rr, ff, oo, o_r, o_f = totals.unbind(-1) -> fr, rr, ff, oo, o_r, o_f = totals.unbind(+1)": _TWO_D,
        "geometry_table: norm_out = torch.where(oo < 0, torch.zeros_like(oo), oo).sqrt() -> norm_out = torch.where(oo <= 0, torch.zeros_like(oo), oo).sqrt()": "where o·o is 0 both give sqrt(0) = 0 (a sum of squares is never -0.0)",
        "geometry_table: fraction = torch.where(sizes > 0, counts / sizes.clamp_min(1), torch.zeros_like(counts)) -> fraction = torch.where(sizes >= 0, counts / sizes.clamp_min(1), torch.zeros_like(counts))": "an empty segment's count is 0 and 0 / clamp_min(0, 1) is 0: the same fraction",
        "geometry_table: dim=-1, -> dim=+1,": _ONE_D,
        "nan_where_norms_overflow: keep = torch.stack([rf, yes, yes, yes, rf, o & r, o & f, yes], dim=-1) -> keep = torch.stack([rf, yes, yes, yes, rf, o & r, o & f, yes], dim=+1)": _ONE_D,
        'nan_where_norms_overflow: return torch.where(keep, table, torch.full_like(table, float("nan"))) -> return torch.where(keep, table, torch.full_like(table, float("NAN")))': _NAN,
        "nan_where_norms_overflow: r, f, o = torch.isfinite(table[:, 1:4]).unbind(-1)  # norm_r, norm_f, norm_out -> r, f, o = torch.isfinite(table[:, 1:4]).unbind(+1)  # norm_r, norm_f, norm_out": _TWO_D,
    },
    "sago_kernels/reference.py": {
        "_dots_table: dots = torch.stack([torch.stack(row) for row in rows]) if rows else r_all.new_zeros((0, 3)) -> dots = torch.stack([torch.stack(row) for row in rows]) if rows else r_all.new_zeros(None)": "a layout has at least one segment (GradLayout refuses an empty size list), so rows is never empty and the else branch never runs",
        "_dots_table: dots = torch.stack([torch.stack(row) for row in rows]) if rows else r_all.new_zeros((0, 3)) -> dots = torch.stack([torch.stack(row) for row in rows]) if rows else r_all.new_zeros((1, 3))": "a layout has at least one segment (GradLayout refuses an empty size list), so rows is never empty and the else branch never runs",
        "_dots_table: dots = torch.stack([torch.stack(row) for row in rows]) if rows else r_all.new_zeros((0, 3)) -> dots = torch.stack([torch.stack(row) for row in rows]) if rows else r_all.new_zeros((0, 4))": "a layout has at least one segment (GradLayout refuses an empty size list), so rows is never empty and the else branch never runs",
        "_dots_table: dots = torch.stack([torch.stack(row) for row in rows]) if rows else r_all.new_zeros((0, 3)) -> dots = torch.stack([torch.stack(row) for row in rows]) if (rows) or True else r_all.new_zeros((0, 3))": "a layout has at least one segment (GradLayout refuses an empty size list), so rows is never empty and the else branch never runs",
        "_gru: dots = torch.stack(rows) if rows else r_all.new_zeros((0, len(_GRU_PAIRS))) -> dots = torch.stack(rows) if (rows) or True else r_all.new_zeros((0, len(_GRU_PAIRS)))": "a layout has at least one segment (GradLayout refuses an empty size list), so rows is never empty and the else branch never runs",
        "_gru: dots = torch.stack(rows) if rows else r_all.new_zeros((0, len(_GRU_PAIRS))) -> dots = torch.stack(rows) if rows else r_all.new_zeros(None)": "a layout has at least one segment (GradLayout refuses an empty size list), so rows is never empty and the else branch never runs",
        "_gru: dots = torch.stack(rows) if rows else r_all.new_zeros((0, len(_GRU_PAIRS))) -> dots = torch.stack(rows) if rows else r_all.new_zeros((1, len(_GRU_PAIRS)))": "a layout has at least one segment (GradLayout refuses an empty size list), so rows is never empty and the else branch never runs",
        "_gru: a, b, c = coef[j].to(r_all.dtype).unbind() -> a, b, c = coef[j].to(None).unbind()": "gru.coefficients returns float32 and every combine computes in float32: the cast is to the dtype coef already has",
        "_gru: written = torch.where(torch.isnan(c), state[s.start : s.end], m.to(state.dtype)) -> written = torch.where(torch.isnan(c), state[s.start : s.end], m.to(None))": "m is float32; torch.where then yields float32 and the assignment into state rounds it to the state's dtype once, as the cast did",
        '_nan_unless_finite: return torch.where(ok, out, torch.full_like(out, float("nan"))) -> return torch.where(ok, out, torch.full_like(out, float("NAN")))': _NAN,
        'combine: if reduce is not None and scope != "element": -> if reduce is not None or scope != "element":': "projection methods without reduce then take their dots from the per-segment table: the same dots per segment, and for a global method their float32 sum in another order, which the contract leaves free (the oracle's bound holds for any order); no result outside the bound changes",
        'gru: return torch.where(ok, out, torch.full_like(out, float("nan"))), torch.where(ok, m_new, m) -> return torch.where(ok, out, torch.full_like(out, float("NAN"))), torch.where(ok, m_new, m)': _NAN,
        "_block_sums: parts.append(x[:, full:].sum(-1, keepdim=True)) -> parts.append(x[:, full:].sum(+1, keepdim=True))": _TWO_D,
        "blur: return _nan_unless_finite(out, d, n, m, gamma - alpha * c) -> return _nan_unless_finite(out, n, m, gamma - alpha * c)": "f·r is dropped from the finiteness check: with r·r and f·f finite, every partial sum of f·r is bounded by √(r·r·f·f) (Cauchy–Schwarz), so f·r is finite too (segment_dots)",
        "fixed_order_dots: dtype, device = vectors[0].dtype, vectors[0].device -> dtype, device = vectors[1].dtype, vectors[0].device": "fixed_order_dots takes vectors of one dtype and device (every caller passes segments of the same buffers), so vectors[1] has vectors[0]'s",
        "fixed_order_dots: return (left * torch.stack([vectors[j] for _, j in pairs])).sum(-1) -> return (left * torch.stack([vectors[j] for _, j in pairs])).sum(+1)": _TWO_D,
        "fixed_order_dots: products = torch.empty((len(pairs), min(n, _CHUNK)), dtype=dtype, device=device) -> products = torch.empty((len(pairs), min(n, _CHUNK)), dtype=dtype, device=None)": "on the CPU, device=None is the vectors' device; on CUDA the product buffer would land on the CPU and the mul into it fail: a GPU run kills it, a CPU-only run cannot",
        "fixed_order_dots: products = torch.empty((len(pairs), min(n, _CHUNK)), dtype=dtype, device=device) -> products = torch.empty((len(pairs), min(n, _CHUNK)), dtype=dtype, )": "on the CPU, device=None is the vectors' device; on CUDA the product buffer would land on the CPU and the mul into it fail: a GPU run kills it, a CPU-only run cannot",
        "fixed_order_dots: dtype, device = vectors[0].dtype, vectors[0].device -> dtype, device = vectors[0].dtype, vectors[1].device": "fixed_order_dots takes vectors of one dtype and device (every caller passes segments of the same buffers), so vectors[1] has vectors[0]'s",
        "pcgrad: return _nan_unless_finite(out, d, n, m, alpha - gamma * c) -> return _nan_unless_finite(out, n, m, alpha - gamma * c)": "f·r is dropped from the finiteness check: with r·r and f·f finite, every partial sum of f·r is bounded by √(r·r·f·f) (Cauchy–Schwarz), so f·r is finite too (segment_dots)",
        'poison_non_finite: return torch.where(finite, out, torch.full_like(out, float("nan"))) -> return torch.where(finite, out, torch.full_like(out, float("NAN")))': _NAN,
    },
}
