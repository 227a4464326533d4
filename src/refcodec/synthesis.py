"""Bit-exact synthesis g_s: the same pixels from a file on every machine, thread count and device.

g_s (four stride-2 5x5 transposed convolutions with IGSDN, eq. 6, or IGDN between them) runs in
integer fixed-point arithmetic, as the entropy model does (``fixedpoint``), so that the decoded
pixels depend on the file and the weights only. Every layer is a function of integers:

- Activations are integers: the latents themselves at the input, then units of 2**-SYNTHESIS_BITS
  (about 1/8000 of an 8-bit level), clamped to what three digits hold (+-31.7) before every layer.
- A transposed convolution sums integer products: acc_c = sum_k x_k w_kc + b_c, where the weights
  of output column c are rounded to 13 significant bits (w_kc = round(w * 2**e_c), |w_kc| <= 8127,
  e_c chosen per column) and b_c = round(b * 2**(input bits + e_c)). The output is
  round(acc_c * 2**(SYNTHESIS_BITS - input bits - e_c)), half to even: a power-of-two scaling and
  one rounding of an exact integer.
- IGSDN: u = round(w * sqrt(beta + sum_j gamma_ij w_j^2)) + round(nu + sum_j tau_ij w_j), with the
  squares rounded to units, gamma, tau on the grid 2**-WEIGHT_BITS and beta, nu on the units' grid
  of 2**-WEIGHT_BITS; the square root of an exact number is correctly rounded (IEEE 754) and then
  rounded to units.

Every sum is of integers (or of multiples of 2**-WEIGHT_BITS for IGSDN) whose worst case, the sum of
the absolute terms at the largest inputs, is checked when a layer is prepared to stay below 2**53
(2**53 units of 2**-WEIGHT_BITS for IGSDN): then float64 holds every partial sum exactly, whatever
the order of the additions, blocking, fused multiply-adds, thread count or device. For the shipped
``small`` models the largest worst case is 2**40.9 for a transposed convolution (limit 2**53) and
2**28.0 for IGSDN (limit 2**37); ``ExactSynthesis.margins`` gives every layer's, and
``benchmarks/exact_synthesis.py`` records them.

How the integer sums are computed does not change them, so the fastest exact way is used on each
machine. A transposed convolution's sums have three exact kernels (``KERNELS``):

- ``int8``: the operands split into signed 7-bit digits (x = x0 + 128 x1 + 128**2 x2, weights two
  digits), multiplied as int8 matrices with int32 sums (``torch._int_mm``, oneDNN's s8s8s32 GEMM): a
  column sums at most 2 * 576 products below 2**12, far from 2**31, and 7-bit digits keep every pair of
  products below 2**15, so even the AVX2 instruction that saturates 16-bit pair sums cannot saturate.
  Fast where oneDNN has VNNI; elsewhere torch falls back to a generic int8 GEMM, many times slower;
- ``float32``: the same digits multiplied as float32 matrices: each product is at most 2**12 and a column
  sums fewer than 4096 of them (checked per layer when it is prepared, as the int8 bound is), so every
  partial sum is an integer below 2**24, which float32 holds exactly in any order;
- ``float64``: the integers themselves multiplied in float64, exact by the worst-case bound above.

On a CPU a short timed probe of the three on each layer's shape, at its first use in a process, picks
the fastest (:func:`kernel_for`; ``REFCODEC_SYNTHESIS_KERNEL`` forces one, for tests and bug reports);
elsewhere (a GPU, whose float32 products may run in TF32) the float64 one. No convolution kernel of a
library, and so no cuDNN algorithm, is on this path.

Each layer rounds to units and the weights carry 13 significant bits, so the pixels are those of
the float32 transform up to an occasional level at a rounding boundary (measured in
``benchmarks/exact_synthesis.py``). Format version 3 files are synthesized this way; older files
with the float32 transform they were written for (``models.base.CompressionModel.synthesize``).
"""

from __future__ import annotations

import math
import os
import time

import torch
import torch.nn.functional as F
from torch import nn

from .errors import RefcodecError
from .fixedpoint import WEIGHT_BITS, cached, snap
from .layers.gdn import IGSDN

SYNTHESIS_BITS = 15  # activations after the first layer: units of 2**-15
DIGIT_BITS = 7  # int8 digits in [-64, 63]
WEIGHT_DIGITS = 2  # weights: two digits, |w| <= 8127 in units of their column's grid
INPUT_DIGITS = 2  # the latents: integers, |y| <= 8127 (the coder keeps them within 255)
ACTIVATION_DIGITS = 3  # later activations: |x| <= 1040319 units (31.7)
EXACT = 2.0**53  # float64 holds every integer below this
FEW_OUTPUTS = 8  # a transposed convolution with at most this many output channels sums its taps into place
BLOCK = 1024  # positions per product on a CPU: a block's buffers stay in cache; elsewhere one block per layer
KERNELS = ("int8", "float32", "float64")  # exact ways to compute a transposed convolution's integer sums
KERNEL_VARIABLE = "REFCODEC_SYNTHESIS_KERNEL"  # names one of KERNELS to use on a CPU instead of the probe's choice
FLOAT32_EXACT = 2.0**24  # float32 holds every integer below this
PROBE_SIZE = (8, 16)  # the probe's first input, rows x columns of a layer's input: a millisecond a kernel on VNNI
PROBE_GROW = 2  # the side of its second input, for the kernels within PROBE_KEEP of the fastest on the first
PROBE_KEEP = 3.0
_PROBED: dict[tuple, dict[str, float]] = {}  # (layer shape, threads) -> seconds of each kernel on the probe


class ExactnessError(ValueError):
    """A layer whose worst-case sums could round: it cannot run exactly."""


def digit_max(count: int) -> int:
    """The largest |x| whose ``count`` digits (:func:`digits`) all lie in [-64, 63]."""
    return 63 * sum(128**i for i in range(count))


def digits(x: torch.Tensor, count: int, dtype: torch.dtype = torch.int8) -> list[torch.Tensor]:
    """Integers |x| <= digit_max(count) (float) as digits d_i in [-64, 63], x = sum_i 128**i d_i, of ``dtype``
    (int8, or float32 for the float32 kernel).

    In float32, which holds these integers and every step exactly (scaling by 1/128, adding 1/2, floor)."""
    v = x.float()
    out = []
    for _ in range(count - 1):
        high = v.mul(1 / 128).add_(0.5).floor_()
        out.append(torch.add(v, high, alpha=-128).to(dtype))
        v = high
    return out + [v.to(dtype)]


def _check(name: str, worst: torch.Tensor, limit: float = EXACT) -> float:
    """The largest worst-case magnitude, refused at or above ``limit``."""
    top = float(worst.max())
    if top >= limit:
        raise ExactnessError(f"{name}: worst-case sum 2**{math.log2(top):.1f} is not below 2**{math.log2(limit):.0f}; "
                             "it cannot run in exact fixed point")  # fmt: skip
    return top


def _block(x: torch.Tensor) -> int:
    return BLOCK if x.device.type == "cpu" else 1 << 62


class KernelError(RefcodecError):
    """REFCODEC_SYNTHESIS_KERNEL names no kernel."""


def forced_kernel() -> str | None:
    """The kernel REFCODEC_SYNTHESIS_KERNEL names, or None when it is unset or empty."""
    name = os.environ.get(KERNEL_VARIABLE, "").strip()
    if name and name not in KERNELS:
        raise KernelError(f"{KERNEL_VARIABLE}={name!r} names no synthesis kernel; choose one of {', '.join(KERNELS)}")
    return name or None


def kernel_for(layer: ExactDeconv, device: torch.device) -> str:
    """The kernel ``layer`` runs with on ``device``: the forced one, else on a CPU the fastest on the probe
    (timed once per layer shape and thread count in a process), elsewhere float64."""
    if device.type != "cpu":
        return "float64"
    forced = forced_kernel()
    if forced:
        return forced
    key = (layer.shape, torch.get_num_threads())
    if key not in _PROBED:
        _PROBED[key] = layer.probe()
    return min(_PROBED[key], key=_PROBED[key].get)


def probed() -> list[dict]:
    """What this process's probes measured: per layer shape and thread count, the seconds of every kernel
    on the probe input and the kernel chosen (for ``refcodec demo`` and the benchmarks)."""
    return [{"inputs": shape[0], "outputs": shape[1], "input_digits": shape[2], "threads": threads,
             "seconds": times, "kernel": min(times, key=times.get)} for (shape, threads), times in _PROBED.items()]  # fmt: skip


class ExactDeconv:
    """A transposed convolution (kernel k odd, stride s, padding k // 2, output padding s - 1: output s*H x s*W)
    from (H, W, C) integers in units of 2**-in_bits to units of 2**-SYNTHESIS_BITS. Output phase (a, b), the
    outputs (s*m + a, s*n + b), is a small convolution: input (m + e, n + f) times tap (a + p - s*e, b + p - s*f)
    for the e, f that give taps within the kernel; each phase is one product of im2col rows and an integer
    matrix. ``gain``, per input channel, is folded into the weights (a variable-rate model's inverse gain)."""

    def __init__(self, layer: nn.ConvTranspose2d, in_bits: int, in_digits: int, gain: torch.Tensor | None = None):
        (k, _), (s, _), (p, _), (op, _) = layer.kernel_size, layer.stride, layer.padding, layer.output_padding
        if k % 2 == 0 or p != k // 2 or op != s - 1 or layer.kernel_size[1] != k or layer.stride[1] != s or layer.groups != 1:
            raise ExactnessError(f"no exact synthesis for {layer}")
        weight = layer.weight.detach().double().cpu()
        if gain is not None:
            weight = weight * gain.detach().double().cpu().view(-1, 1, 1, 1)
        shifts = {a: [e for e in range(-k, k + 1) if 0 <= a + p - s * e < k] for a in range(s)}
        self.lo = -min(min(e) for e in shifts.values())
        self.hi = max(max(e) for e in shifts.values())
        bias = torch.zeros(weight.shape[1], dtype=torch.float64) if layer.bias is None else layer.bias.detach().double().cpu()
        self.phases = []  # (a, b, taps as (row, col) offsets into the padded input, integer weights, digits, bias, scale)
        self.worst = 0.0
        for a in range(s):
            for b in range(s):
                taps = [(e, f) for e in shifts[a] for f in shifts[b]]
                matrix = torch.cat([weight[:, :, a + p - s * e, b + p - s * f] for e, f in taps])  # (taps * C_in, C_out)
                top = matrix.abs().amax(0)
                exponent = torch.floor(torch.log2(digit_max(WEIGHT_DIGITS) / top.clamp_min(2.0**-30))).clamp(max=30.0)
                w = torch.round(matrix * 2**exponent)  # integers, |w| <= 8127, 13 significant bits per column
                b_int = torch.round(bias * 2 ** (exponent + in_bits))
                in_max = digit_max(in_digits)
                self.worst = max(self.worst, _check("transposed convolution", w.abs().sum(0) * in_max + b_int.abs()))
                _check("int8 digit products", torch.tensor(64.0 * len(w) * (digit_max(WEIGHT_DIGITS) + 64)), 2.0**31)
                offsets = [(e + self.lo, f + self.lo) for e, f in taps]
                weight_digits = torch.cat(digits(w, WEIGHT_DIGITS), 1)
                self.phases.append((a, b, offsets, w, {"int8": weight_digits, "float32": weight_digits.float()}, b_int,
                                    2 ** (SYNTHESIS_BITS - in_bits - exponent)))  # fmt: skip
        rows = max(len(w) for _, _, _, w, *_ in self.phases)  # the longest column: taps * C_in
        _check("float32 digit products", torch.tensor(64.0 * 64.0 * rows), FLOAT32_EXACT)  # products below 2**12
        self.shape = (rows, weight.shape[1], in_digits)
        self.stride, self.cout, self.kernel = s, weight.shape[1], k
        self.in_digits, self.in_max = in_digits, digit_max(in_digits)
        self.digit_weights = torch.tensor([128.0**i for i in range(in_digits)], dtype=torch.float64)
        # Few outputs (the last layer): every tap's product at once, (C_out*k*k, C_in), summed into place.
        self.taps = torch.zeros(k, k, weight.shape[0], self.cout, dtype=torch.float64) if self.cout <= FEW_OUTPUTS else None
        if self.taps is not None:
            for a, b, offsets, w, _, _, _ in self.phases:
                for n, (i, j) in enumerate(offsets):
                    e, f = i - self.lo, j - self.lo
                    self.taps[a + p - s * e, b + p - s * f] = w[n * weight.shape[0] : (n + 1) * weight.shape[0]]
            self.taps = self.taps.permute(3, 0, 1, 2).reshape(-1, weight.shape[0])

    def to(self, device: torch.device) -> ExactDeconv:
        self.taps = None if self.taps is None else self.taps.to(device)
        self.digit_weights = self.digit_weights.to(device)
        self.phases = [(a, b, o, w.to(device), {k: v.to(device) for k, v in d.items()}, bias.to(device), scale.to(device))
                       for a, b, o, w, d, bias, scale in self.phases]  # fmt: skip
        return self

    def __call__(self, x: torch.Tensor, kernel: str | None = None) -> torch.Tensor:
        """Output units of input units ``x`` (H, W, C) with ``kernel`` (one of KERNELS; by default
        :func:`kernel_for`, or for few outputs the products summed into place), the same numbers with any."""
        h, w, _ = x.shape
        s, cout = self.stride, self.cout
        if self.taps is not None and kernel is None:
            return self._scatter(x)
        kernel = kernel or kernel_for(self, x.device)
        digit_type = {"int8": torch.int8, "float32": torch.float32}.get(kernel)
        pad = (0, 0, self.lo, self.hi, self.lo, self.hi)
        planes = [F.pad(d, pad) for d in digits(x, self.in_digits, digit_type)] if digit_type else [F.pad(x, pad)]
        out = x.new_empty(h, s, w, s, cout)
        rows = max(1, min(h, _block(x) // w))
        # Buffers reused by every block and phase: fresh memory for each product would cost more than the product.
        taps = max(len(offsets) for _, _, offsets, *_ in self.phases)
        columns = planes[0].new_empty(len(planes) * rows * w * taps * x.shape[2])
        if digit_type:
            size = rows * w * cout * len(planes)
            products = torch.int32 if kernel == "int8" else torch.float32
            sums = torch.int32 if kernel == "int8" else torch.float64  # float32 pairs sum past 2**24: in float64
            buffers = (torch.empty(size * WEIGHT_DIGITS, dtype=products, device=x.device),
                       torch.empty(size * (1 if kernel == "int8" else WEIGHT_DIGITS), dtype=sums, device=x.device), x.new_empty(size))  # fmt: skip
        acc = x.new_empty(rows * w, cout)
        for r0 in range(0, h, rows):
            r1 = min(h, r0 + rows)
            n = (r1 - r0) * w
            for a, b, offsets, weight, weight_digits, bias, scale in self.phases:
                cols = columns[: len(planes) * n * len(offsets) * x.shape[2]].view(len(planes), r1 - r0, w, -1)
                for plane, col in zip(planes, cols):  # im2col: the taps of each position side by side
                    torch.cat([plane[r0 + i : r1 + i, j : j + w] for i, j in offsets], -1, out=col)
                if digit_type:
                    self._digit_products(cols.view(len(planes) * n, -1), weight_digits[kernel], buffers, acc[:n])
                else:
                    torch.mm(cols[0].view(n, -1), weight, out=acc[:n])
                out[r0:r1, a, :, b] = acc[:n].add_(bias).mul_(scale).round_().view(r1 - r0, w, cout)
        return out.view(h * s, w * s, cout)

    def _scatter(self, x: torch.Tensor) -> torch.Tensor:
        """The same sums as the phases, for few output channels: each input's products with every tap
        (a float64 product of integers), added into place (col2im, ``F.fold``), then scaled and rounded."""
        h, w, _ = x.shape
        s, k = self.stride, self.kernel
        columns = x.view(h * w, -1).T
        products = x.new_empty(1, len(self.taps), h * w)  # (1, C_out*k*k, H*W), by blocks of positions
        step = _block(x)
        for start in range(0, h * w, step):
            torch.mm(self.taps, columns[:, start : start + step], out=products[0, :, start : start + step])
        acc = F.fold(products, (s * h, s * w), k, stride=s, padding=k // 2)[0].view(self.cout, h, s, w, s)
        for a, b, _, _, _, bias, scale in self.phases:
            acc[:, :, a, :, b].add_(bias.view(-1, 1, 1)).mul_(scale.view(-1, 1, 1)).round_()
        return acc.view(self.cout, h * s, w * s).permute(1, 2, 0)

    def _digit_products(self, columns: torch.Tensor, weight_digits: torch.Tensor, buffers: tuple[torch.Tensor, ...], acc: torch.Tensor) -> None:
        """acc = sum_k x_k w_kc exactly, from the digits of x (the column matrices of every digit, stacked,
        lowest first) and of w, int8 or float32: int32 (below 2**31, checked) or float32 (below 2**24, checked)
        sums per pair of digits; the weight digits' pair summed in int32 or float64; then float64 sums of those
        times 128**i (integers below 2**53: exact in any order)."""
        products, sums, sums_float = buffers
        count, size = self.in_digits, acc.numel()
        out = products[: WEIGHT_DIGITS * count * size].view(len(columns), -1)
        product = torch._int_mm(columns, weight_digits, out=out) if columns.dtype == torch.int8 else torch.mm(columns, weight_digits, out=out)
        product = product.view(count, -1, WEIGHT_DIGITS, self.cout)
        if product.dtype == torch.float32:
            product = sums[: WEIGHT_DIGITS * count * size].view(product.shape).copy_(product)
            sums = sums_float
        digit_sums = torch.add(product[:, :, 0], product[:, :, 1], alpha=128, out=sums[: count * size].view(count, -1, self.cout))
        digit_sums = sums_float[: count * size].view(count, -1).copy_(digit_sums.view(count, -1))
        torch.mv(digit_sums.T, self.digit_weights, out=acc.view(-1))

    def probe(self) -> dict[str, float]:
        """Seconds of each kernel on this layer's shape: one call each on a PROBE_SIZE input, then the best of two
        calls on a PROBE_GROW times larger one for the kernels within PROBE_KEEP of the fastest, so that a kernel
        many times slower on this machine (int8 without VNNI) costs one small call."""
        c_in = self.phases[0][3].shape[0] // len(self.phases[0][2])
        top = digit_max(self.in_digits)

        def seconds(kernel: str, x: torch.Tensor, calls: int) -> float:
            best = math.inf
            for _ in range(calls):
                start = time.perf_counter()
                self(x, kernel)
                best = min(best, time.perf_counter() - start)
            return best

        own = torch.Generator().manual_seed(0)  # not the global one: a probe must not move a training run's random draws
        small = torch.randint(-top, top + 1, (*PROBE_SIZE, c_in), generator=own).double()
        times = {kernel: seconds(kernel, small, 1) for kernel in KERNELS}
        large = torch.randint(-top, top + 1, (PROBE_SIZE[0] * PROBE_GROW, PROBE_SIZE[1] * PROBE_GROW, c_in), generator=own).double()
        fastest = min(times.values())
        return times | {k: seconds(k, large, 2) for k, t in times.items() if t <= PROBE_KEEP * fastest}


class ExactIGSDN:
    """IGSDN (eq. 6; IGDN without the subtractive part), K fixed-point steps, on (H, W, C) units:
    u <- round(w * sqrt(beta + gamma u^2)) + round(nu + tau u), from u = w."""

    def __init__(self, layer: IGSDN):
        unit = 2.0**SYNTHESIS_BITS
        in_max = digit_max(ACTIVATION_DIGITS)
        limit = 2.0 ** (53 - WEIGHT_BITS)  # in units: sums of multiples of 2**-WEIGHT_BITS
        beta, gamma = layer.effective()
        gamma = snap(gamma.detach(), WEIGHT_BITS).T.contiguous().cpu()
        beta = snap(beta.detach(), WEIGHT_BITS + SYNTHESIS_BITS).cpu() * unit
        norm = gamma.abs().sum(0) * round(in_max**2 / unit) + beta.abs()
        self.worst = _check("IGSDN normalization", norm, limit)
        _check("IGSDN product", (norm * unit).sqrt().add(1) * in_max)
        self.gamma, self.beta = gamma * unit, beta * unit  # the sum times 2**SYNTHESIS_BITS (exact), ready for sqrt
        self.tau = self.nu = None
        if layer.subtractive:
            self.tau = snap(layer.tau.detach(), WEIGHT_BITS).T.contiguous().cpu()
            self.nu = snap(layer.nu.detach(), WEIGHT_BITS + SYNTHESIS_BITS).cpu() * unit
            self.worst = max(self.worst, _check("IGSDN shift", self.tau.abs().sum(0) * in_max + self.nu.abs(), limit))
        self.iterations, self.in_max = layer.iterations, in_max

    def to(self, device: torch.device) -> ExactIGSDN:
        for name in ("gamma", "beta", "tau", "nu"):
            if getattr(self, name) is not None:
                setattr(self, name, getattr(self, name).to(device))
        return self

    def __call__(self, x: torch.Tensor) -> torch.Tensor:
        """IGSDN of ``x`` (H, W, C), in place: block by block, each block's inputs are read before it is written."""
        unit = 2.0**SYNTHESIS_BITS
        flat = x.view(-1, x.shape[-1])
        step = min(_block(x), len(flat))
        w_units, u_units, square, scales, shift, u_next = (flat.new_empty(step, flat.shape[1]) for _ in range(6))
        for start in range(0, len(flat), step):
            w = flat[start : start + step]
            n = len(w)
            torch.mul(w, 1 / unit, out=w_units[:n])  # exact: a power of two
            u, units = w, w_units[:n]
            for i in range(self.iterations):
                if i:
                    u = u.clamp_(-self.in_max, self.in_max)
                    units = torch.mul(u, 1 / unit, out=u_units[:n])
                torch.mul(u, units, out=square[:n]).round_()  # round(u^2 / unit): u^2 < 2**53, one rounding
                scale = torch.addmm(self.beta, square[:n], self.gamma, out=scales[:n]).sqrt_().round_()
                if self.tau is not None:
                    torch.addmm(self.nu, u, self.tau, out=shift[:n]).round_()
                u = torch.mul(scale, w_units[:n], out=w if i == self.iterations - 1 else u_next[:n]).round_()
                if self.tau is not None:
                    u.add_(shift[:n])
        return x


class ExactSynthesis:
    """A frozen, bit-exact copy of a synthesis transform (``models.base.synthesis_transform``):
    integer latents (1, M, H, W) in, reconstruction values (1, 3, s*H, s*W) in float64 out.
    ``gain`` (1, M, 1, 1): a variable-rate model's inverse gain, folded into the first layer."""

    def __init__(self, g_s: nn.Sequential, gain: torch.Tensor | None = None):
        self.layers: list[ExactDeconv | ExactIGSDN] = []
        for layer in g_s:
            if isinstance(layer, nn.ConvTranspose2d):
                first = not self.layers
                self.layers.append(ExactDeconv(layer, 0 if first else SYNTHESIS_BITS, INPUT_DIGITS if first else ACTIVATION_DIGITS,
                                               gain if first else None))  # fmt: skip
            elif isinstance(layer, IGSDN):
                self.layers.append(ExactIGSDN(layer))
            else:
                raise ExactnessError(f"no exact synthesis for {type(layer).__name__}")
        if not isinstance(self.layers[0], ExactDeconv):
            raise ExactnessError("exact synthesis starts with a transposed convolution")
        self.device = torch.device("cpu")

    def __call__(self, y: torch.Tensor) -> torch.Tensor:
        if y.device != self.device:
            self.layers = [layer.to(y.device) for layer in self.layers]
            self.device = y.device
        x = y[0].double().permute(1, 2, 0).round()  # (H, W, M): the integer latents
        for layer in self.layers:
            x = layer(x.clamp_(-layer.in_max, layer.in_max))
        return x.mul_(2.0**-SYNTHESIS_BITS).permute(2, 0, 1).unsqueeze(0)

    def margins(self) -> list[tuple[str, float, float]]:
        """Each layer's largest worst-case sum and its limit, as powers of two."""
        return [(type(layer).__name__, math.log2(layer.worst), 53.0 if isinstance(layer, ExactDeconv) else 53.0 - WEIGHT_BITS)
                for layer in self.layers]  # fmt: skip


def exact_synthesis(g_s: nn.Sequential, gain: torch.Tensor | None = None) -> ExactSynthesis:
    """The exact copy of ``g_s`` (with ``gain`` folded in), prepared once and kept until one of its tensors
    changes (``fixedpoint.cached``)."""
    tensors = list(g_s.parameters()) + ([] if gain is None else [gain])
    return cached(g_s, "_exact_synthesis", tensors, lambda: ExactSynthesis(g_s, gain))
