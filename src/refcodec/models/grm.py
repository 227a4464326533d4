"""The global reference model (paper section 3, Figure 5) and its ablations.

The entropy model predicts (mu, log-sigma) for every latent in progressive
stages. Each stage adds one source of information and a parameter network
(1x1 convolutions) that sees the features so far and the previous stage's
prediction, and refines it additively:

    stage 1, context:    (mu1, s1) = P1(ctx)
    stage 2, reference:  (mu2, s2) = (mu1, s1) + P2(ctx, ref, mu1, s1)
    stage 3, hyperprior: (mu3, s3) = (mu2, s2) + P3(ctx, ref, hyper, mu2, s2)

where ctx is a masked convolution of the decoded latents, ref the global
reference (``layers.reference``) scaled by similarity S and confidence U
(computed from stage 1), and hyper the hyper-synthesis output. Only the last
stage drives the entropy coder; training weights the rates of all stages.

Flags give the ablation of Figure 7 from one class: ``reference``, ``confidence``,
``hyperprior`` and ``gsdn``. ``levels`` > 0 makes one model serve a continuous quality in
[0, levels - 1] with gain units on y and z (``layers.gain``, Cui et al. 2021). With ``progressive=False`` all features go to one
parameter network: with the reference off this is the joint context + hyperprior
model of Minnen et al. (2018).

Coding: the encoder computes every prediction at once from the quantized latents;
the decoder repeats them step by step in the order of the decode schedule. Both
run the entropy model bit-exactly (``fixedpoint``), so their predictions agree.
"""

from __future__ import annotations

import numpy as np
import torch
import torch.nn.functional as F
from torch import nn
from tqdm import tqdm

from .. import profiling
from ..entropy.coder import SYMBOL_MAX, Decoder, Encoder
from ..entropy.factorized import FactorizedDensity
from ..entropy.gaussian import coding_scale, exact_likelihood, likelihood
from ..fixedpoint import ExactNet, cached, exact_rows, snap
from ..layers.gain import GainUnit
from ..layers.masked_conv import MaskedConv2d
from ..layers.reference import ReferenceIndex, masked_patches, patches_at, search
from ..schedule import Schedule
from .base import (
    STRIDE,
    CompressionModel,
    add_noise,
    analysis_transform,
    decode_factorized,
    encode_factorized,
    hyper_analysis,
    hyper_synthesis,
    ste_round,
    synthesis_transform,
)


def parameter_network(cin: int, m: int) -> nn.Sequential:
    """Three 1x1 convolutions, as the entropy parameters of Minnen et al. (2018); 2M outputs."""
    return nn.Sequential(
        nn.Conv2d(cin, m * 10 // 3, 1), nn.LeakyReLU(inplace=True),
        nn.Conv2d(m * 10 // 3, m * 8 // 3, 1), nn.LeakyReLU(inplace=True),
        nn.Conv2d(m * 8 // 3, 2 * m, 1),
    )  # fmt: skip


def _pulled(t: torch.Tensor, factor: torch.Tensor) -> torch.Tensor:
    """``t`` itself, whose gradient is multiplied by ``factor`` (per channel): ``GRM.pull_new_channels``."""
    return t * factor + (t * (1 - factor)).detach()


def _rows(t: torch.Tensor) -> torch.Tensor:
    """(N, C, H, W) -> (N*H*W, C)."""
    return t.permute(0, 2, 3, 1).reshape(-1, t.shape[1])


def _unrows(t: torch.Tensor, n: int, h: int, w: int) -> torch.Tensor:
    return t.view(n, h, w, -1).permute(0, 3, 1, 2)


def _linear_rows(net: nn.Sequential, x: torch.Tensor) -> torch.Tensor:
    """A network of 1x1 convolutions applied to rows of features."""
    for layer in net:
        x = F.linear(x, layer.weight.flatten(1), layer.bias) if isinstance(layer, nn.Conv2d) else layer(x)
    return x


POSITION_BLOCK = 4096  # positions per block when the encoder runs the exact entropy model (bounded memory)


class CodingLatent:
    """The quantized latent of one image at coding time, zero-padded, and what the entropy
    model reads from it at any set of positions: masked patches and the exact masked
    convolutions of them (``fixedpoint``), with only the visible taps multiplied.

    The encoder fills it at once and evaluates it in blocks of positions; the decoder fills
    it one wavefront step at a time. A position sees the same inputs either way, so both
    get the same bits.
    """

    def __init__(self, channels: int, height: int, width: int, kernel: int, device: torch.device | str = "cpu"):
        self.pad = kernel // 2
        self.y = torch.zeros(channels, height + 2 * self.pad, width + 2 * self.pad, dtype=torch.float64, device=device)

    def set(self, rows: torch.Tensor, cols: torch.Tensor, values: torch.Tensor) -> None:
        """Write decoded latents, rows (P, C), at the given positions."""
        self.y[:, rows + self.pad, cols + self.pad] = values.T.double()

    @property
    def inner(self) -> torch.Tensor:
        """The latent without its padding, (C, H, W): a view."""
        p = self.pad
        return self.y[:, p : self.y.shape[1] - p, p : self.y.shape[2] - p]

    def patches(self, rows: torch.Tensor, cols: torch.Tensor, mask: torch.Tensor) -> torch.Tensor:
        offset = self.pad - mask.shape[-1] // 2
        return patches_at(self.y, rows + offset, cols + offset, mask.bool())

    def conv(self, layer: MaskedConv2d):
        """``layer`` as an exact function of (rows, cols) -> output rows (P, out)."""
        linear, mask = exact_rows(layer), layer.mask.bool()
        return lambda rows, cols: linear(self.patches(rows, cols, mask))


class GRM(CompressionModel):
    """Context -> reference -> hyperprior entropy model over a GSDN autoencoder."""

    def __init__(
        self,
        N: int = 192,
        M: int = 384,
        reference: bool = True,
        confidence: bool = True,
        hyperprior: bool = True,
        gsdn: bool = True,
        progressive: bool = True,
        schedule: str = "wavefront",
        context_kernel: int = 5,
        reference_kernel: int = 3,
        levels: int = 0,
    ):
        super().__init__()
        if confidence and not reference:
            raise ValueError("confidence needs the reference")
        if reference and not progressive:
            raise ValueError("the reference needs progressive stages (its confidence comes from stage 1)")
        self.N, self.M = N, M
        self.reference, self.confidence, self.hyperprior = reference, confidence, hyperprior
        self.schedule = Schedule(schedule)
        self.g_a = analysis_transform(N, M, gsdn)
        self.g_s = synthesis_transform(N, M, gsdn)
        if hyperprior:
            self.h_a = hyper_analysis(N, M)
            self.h_s = hyper_synthesis(N, M)
            self.density = FactorizedDensity(N)
        self.context = MaskedConv2d(M, 2 * M, context_kernel, mask=self.schedule.visible(context_kernel, False))
        if reference:
            self.transfer = MaskedConv2d(M, 2 * M, reference_kernel, mask=self.schedule.visible(reference_kernel, True))
            self.register_buffer("search_mask", self.schedule.visible(reference_kernel, False), persistent=False)
        kinds = ["context"] + ["reference"] * reference + ["hyperprior"] * hyperprior
        self.stages = [[k] for k in kinds] if progressive else [kinds]
        self.levels = levels
        if levels:
            if levels < 2:
                raise ValueError("a variable-rate model needs at least 2 quality levels")
            self.y_gain = GainUnit(M, levels)
            if hyperprior:
                self.z_gain = GainUnit(N, levels)
        # training only: each channel's factor on the rate's gradient to the encoder (``pull_new_channels``)
        self.register_buffer("rate_pull", torch.ones(1, M, 1, 1), persistent=False)
        self.register_buffer("z_rate_pull", torch.ones(1, N, 1, 1), persistent=False)
        self.param_nets = nn.ModuleList()
        features = 0
        for i, stage in enumerate(self.stages):
            features += 2 * M * len(stage)
            self.param_nets.append(parameter_network(features + (2 * M if i else 0), M))
            if i:  # later stages start as the identity refinement
                nn.init.zeros_(self.param_nets[i][-1].weight)
                nn.init.zeros_(self.param_nets[i][-1].bias)

    def use_schedule(self, name: str) -> None:
        """Switch decode order if every causal mask stays the same (true for raster/wavefront at k <= 5)."""
        new = Schedule(name)
        masks = [(self.context.mask, False)] + ([(self.transfer.mask, True)] if self.reference else [])
        for mask, centre in masks:
            if not torch.equal(new.visible(mask.shape[-1], centre), mask.cpu()):
                raise ValueError(f"the {name} schedule changes this model's causal masks")
        self.schedule = new

    def _predict(self, ctx, hyper, reference_fn, run) -> list[tuple[torch.Tensor, torch.Tensor]]:
        """(mu, log-sigma) rows of every stage; ``run(i, rows)`` applies parameter network i."""
        features, preds = [], []
        for i, stage in enumerate(self.stages):
            for kind in stage:
                if kind == "context":
                    features.append(ctx)
                elif kind == "reference":
                    with profiling.stage("reference"):
                        features.append(reference_fn(*preds[0]))
                else:
                    features.append(hyper)
            inputs = torch.cat(features + (list(preds[-1]) if preds else []), 1)
            with profiling.stage("parameters"):
                mean, log_scale = run(i, inputs).chunk(2, 1)
            preds.append((mean, log_scale) if not preds else (preds[-1][0] + mean, preds[-1][1] + log_scale))
        return preds

    # -- training ---------------------------------------------------------------------------

    def pull_new_channels(self, n: int, m: int, factor: float) -> None:
        """Scale the rate's gradient to the encoder on the latent channels from ``m`` (y) and ``n`` (z) on by
        ``factor`` (values and the entropy model's own gradients are unchanged). Channels that widening
        (``models.widen``) adds start at 0 under entropy parameters of the smallest scale, where any value costs
        many bits: with the full pull they never leave 0. ``refcodec train --grow-warmup`` ramps it from 0 to 1."""
        self.rate_pull.fill_(1.0)[:, m:] = factor
        self.z_rate_pull.fill_(1.0)[:, n:] = factor

    def forward(self, x: torch.Tensor, quality: torch.Tensor | None = None) -> dict:
        """Reconstruction and likelihoods; a variable-rate model takes a quality per image (N,)."""
        y = self.g_a(x)
        n, _, h, w = y.shape
        ones = (x.new_ones(()),) * 2
        y_gain, y_inverse = self.y_gain(self._qualities(quality, n, x)) if self.levels else ones
        y = y * y_gain
        y_hat = ste_round(y)
        y_rate = add_noise(_pulled(y, self.rate_pull)) if self.training else torch.round(y)
        out = {"likelihoods": {}}
        hyper = None
        if self.hyperprior:
            z_gain, z_inverse = self.z_gain(self._qualities(quality, n, x)) if self.levels else ones
            z = self.h_a(y) * z_gain
            z_rate = add_noise(_pulled(z, self.z_rate_pull)) if self.training else torch.round(z)
            out["likelihoods"]["z"] = self.density.likelihood(z_rate)
            hyper = self.h_s(ste_round(z) * z_inverse)
        rows = _rows(y_rate)
        out["likelihoods"]["y"] = [_unrows(likelihood(rows, m, s), n, h, w) for m, s in self.predict(y_hat, hyper)]
        out["x_hat"] = self.g_s(y_hat * y_inverse)
        return out

    def _qualities(self, quality: torch.Tensor | None, n: int, x: torch.Tensor) -> torch.Tensor:
        if quality is None:
            if self.quality is None:
                raise ValueError("a variable-rate model needs a quality")
            quality = torch.tensor(self.quality)
        return quality.to(x).expand(n)

    def predict(self, y_hat: torch.Tensor, hyper: torch.Tensor | None) -> list[tuple[torch.Tensor, torch.Tensor]]:
        """Training-time (mu, log-sigma) rows (N*H*W, M) of every stage from latents (N, M, H, W)."""
        n, _, h, w = y_hat.shape

        def reference_fn(mean1, log_scale1):
            steps = self.schedule.steps(h, w).flatten().to(y_hat.device)
            q = masked_patches(y_hat, self.search_mask)
            index, s = search(q, steps, q, steps)  # every image of the batch at once, in its own latents
            index = (index + torch.arange(0, n * h * w, h * w, device=index.device).view(-1, 1)).flatten()
            conf = likelihood(_rows(y_hat), mean1, log_scale1).mean(1)[index] if self.confidence else 1
            return _rows(self.transfer(y_hat))[index] * (s.flatten() * conf).unsqueeze(1)

        hyper_rows = None if hyper is None else _rows(hyper)
        return self._predict(_rows(self.context(y_hat)), hyper_rows, reference_fn, lambda i, r: _linear_rows(self.param_nets[i], r))

    # -- coding -----------------------------------------------------------------------------

    def stream_count(self) -> int:
        return 1 + self.hyperprior

    def _exact_nets(self):
        return [ExactNet(net) for net in self.param_nets]

    def _confidence(self, y_rows, mean1, log_scale1) -> torch.Tensor:
        """U: channel average of the exact stage-1 probabilities, on the fixed-point grid."""
        if not self.confidence:
            return torch.ones(len(y_rows), dtype=torch.float64, device=y_rows.device)
        return snap(exact_likelihood(y_rows, mean1, log_scale1).sum(1) / self.M)

    @staticmethod
    def _transfer(feats, conf, index, s) -> torch.Tensor:
        return snap(snap(feats[index] * snap(s).unsqueeze(1)) * conf[index].unsqueeze(1))

    def _hyper_rows(self, z_hat: torch.Tensor) -> torch.Tensor:
        if self.levels:  # a float64 product with a gain on the fixed-point grid: the same bits everywhere
            z_hat = z_hat.double() * self.coding_gains()[3].to(z_hat.device)
        return _rows(ExactNet(self.h_s)(z_hat))

    def coding_gains(self) -> tuple[torch.Tensor, ...]:
        """Exact (y gain, y inverse gain, z gain, z inverse gain) at the coding quality (cached)."""
        if self.quality is None:
            raise ValueError("a variable-rate model needs a quality: call use_quality first")
        units = [self.y_gain] + ([self.z_gain] if self.hyperprior else [])
        tensors = [p for unit in units for p in unit.parameters()]
        return cached(self, f"_gains_at_{self.quality!r}", tensors, lambda: sum((u.exact(self.quality) for u in units), ()))

    @torch.no_grad()
    def analysis(self, x: torch.Tensor) -> torch.Tensor:
        """g_a, then the gain of the coding quality for a variable-rate model."""
        y = super().analysis(x)
        return y if not self.levels else y * self.coding_gains()[0].to(y)

    def synthesis_gain(self) -> torch.Tensor | None:
        """The inverse gain of the coding quality for a variable-rate model (exact, on the fixed-point grid)."""
        return self.coding_gains()[1] if self.levels else None

    def _coding_latent(self, height: int, width: int, device: torch.device | str = "cpu") -> CodingLatent:
        kernel = max(self.context.mask.shape[-1], self.transfer.mask.shape[-1] if self.reference else 1)
        return CodingLatent(self.M, height, width, kernel, device)

    def exact_predict(
        self, y_hat: torch.Tensor, hyper: torch.Tensor | None, trace: dict | None = None
    ) -> list[tuple[torch.Tensor, torch.Tensor]]:
        """Coding-time (mu, log-sigma) rows of every stage for a whole latent (1, M, H, W), bit-exact.

        Runs in blocks of positions, so memory stays a few times that of the latent itself.
        ``trace``, if given, receives the reference of every position: ``index`` (raster),
        similarity ``S`` and the confidence ``U`` of every position (for figures). Runs on the
        latent's device: the arithmetic is exact, so a GPU encoder gives a CPU decoder the same bits.
        """
        _, _, h, w = y_hat.shape
        steps = self.schedule.steps(h, w).flatten().to(y_hat.device)
        latent = self._coding_latent(h, w, y_hat.device)
        blocks = [(p // w, p % w) for p in torch.arange(h * w, device=y_hat.device).split(POSITION_BLOCK)]
        latent.inner.copy_(y_hat[0])

        def everywhere(fn) -> torch.Tensor:
            return torch.cat([fn(rows, cols) for rows, cols in blocks])

        def reference_fn(mean1, log_scale1):
            found = ReferenceIndex(steps, self.M * int(self.search_mask.sum()))
            for rows, cols in blocks:
                found.add(rows * w + cols, latent.patches(rows, cols, self.search_mask))
            index, s = found.search_all()
            feats = everywhere(latent.conv(self.transfer))
            conf = self._confidence(_rows(y_hat).double(), mean1, log_scale1)
            if trace is not None:
                trace.update(index=index, S=s, U=conf)
            return self._transfer(feats, conf, index, s)

        nets = self._exact_nets()
        with profiling.stage("context"):
            ctx = everywhere(latent.conv(self.context))
        return self._predict(ctx, hyper, reference_fn, lambda i, r: torch.cat([nets[i](b) for b in r.split(POSITION_BLOCK)]))

    @torch.no_grad()
    def encode(self, x: torch.Tensor) -> tuple[list[bytes], torch.Tensor]:
        return self.encode_latents(*self.latents(x))

    @torch.no_grad()
    def latents(self, x: torch.Tensor, ungained: torch.Tensor | None = None) -> tuple[torch.Tensor, torch.Tensor | None]:
        """The unquantized latents y and z (None without a hyperprior) that the encoder rounds and codes;
        ``ungained``: g_a(x) before the quality's gain, from an earlier ``CompressionModel.analysis`` of x (rate
        control codes one image at many qualities with one analysis: the same y, bit for bit)."""
        y = self.analysis(x) if ungained is None else ungained * self.coding_gains()[0].to(ungained)
        if not self.hyperprior:
            return y, None
        with profiling.stage("hyper"):
            z = self.h_a(y)
        return y, z if not self.levels else z * self.coding_gains()[2].to(z)

    @torch.no_grad()
    def encode_latents(self, y: torch.Tensor, z: torch.Tensor | None) -> tuple[list[bytes], torch.Tensor]:
        """Streams and y_hat of given latents (:meth:`latents`, or refined ones: ``refine``)."""
        _, _, h, w = y.shape
        y_hat = torch.round(y).clamp(-SYMBOL_MAX, SYMBOL_MAX)
        streams, hyper = [], None
        if self.hyperprior:
            with profiling.stage("hyper"):
                z_hat = self.density.clamp_to_support(torch.round(z))
                streams.append(encode_factorized(self.density, z_hat))
                hyper = self._hyper_rows(z_hat)
        mean, log_scale = self.exact_predict(y_hat, hyper)[-1]
        with profiling.stage("coder"):
            order = self.schedule.coding_permutation(h, w).to(y_hat.device)
            enc = Encoder()
            enc.gaussian(_rows(y_hat)[order], mean[order], coding_scale(log_scale[order]))
            streams.append(enc.finish())
        return streams, y_hat

    def quantized(self, y: torch.Tensor, z: torch.Tensor | None, quantize) -> dict:
        """Likelihoods of the coding stage and of z, and the reconstruction, of latents y, z quantized by
        ``quantize`` (rounding, or a relaxation of it with gradients), at the coding quality: the
        training-time form of what :meth:`encode_latents` codes, for refining latents (``refine``)."""
        n, _, h, w = y.shape
        y_q = quantize(y)
        gains = [g.to(y) for g in self.coding_gains()] if self.levels else [y.new_ones(())] * 4
        out = {"likelihoods": {}}
        hyper = None
        if self.hyperprior:
            z_q = quantize(z)
            out["likelihoods"]["z"] = self.density.likelihood(z_q)
            hyper = self.h_s(z_q * gains[3])
        mean, log_scale = self.predict(y_q, hyper)[-1]
        out["likelihoods"]["y"] = [_unrows(likelihood(_rows(y_q), mean, log_scale), n, h, w)]
        out["x_hat"] = self.g_s(y_q * gains[1])
        return out

    @torch.no_grad()
    def decode(self, streams: list[bytes], height: int, width: int, progress: tqdm | None = None) -> torch.Tensor:
        return self.decode_latents(streams, self.decode_hyper(streams, height, width), height, width, progress)

    def decode_steps(self, height: int, width: int) -> int:
        """The steps of the decode schedule (wavefronts, or positions in raster order) of a padded image."""
        return len(self.schedule.order(height // STRIDE, width // STRIDE))

    @torch.no_grad()
    def decode_hyper(self, streams: list[bytes], height: int, width: int) -> torch.Tensor | None:
        """The exact hyperprior features rows (H*W, 2M) of a padded image's side stream (None without a hyperprior)."""
        if not self.hyperprior:
            return None
        with profiling.stage("hyper"):
            return self._hyper_rows(decode_factorized(self.density, streams[0], height // STRIDE // 4, width // STRIDE // 4))

    @torch.no_grad()
    def decode_latents(self, streams: list[bytes], hyper: torch.Tensor | None, height: int, width: int,
                       progress: tqdm | None = None) -> torch.Tensor:  # fmt: skip
        """y_hat from the latent stream, given the hyperprior rows of :meth:`decode_hyper`; ``progress`` (a bar)
        advances by one per step of the decode schedule."""
        h, w, m = height // STRIDE, width // STRIDE, self.M
        device = self.context.weight.device  # a model on a GPU decodes there; the range decoder runs on the CPU
        dec = Decoder(streams[-1])
        nets = self._exact_nets()
        latent = self._coding_latent(h, w, device)
        steps = self.schedule.steps(h, w).flatten().to(device)
        context_at = latent.conv(self.context)
        if self.reference:
            transfer_at = latent.conv(self.transfer)
            found = ReferenceIndex(steps, m * int(self.search_mask.sum()))
            feats = torch.zeros(h * w, 2 * m, dtype=torch.float64, device=device)
            conf = torch.zeros(h * w, dtype=torch.float64, device=device)

        for positions in self.schedule.order(h, w):
            positions = positions.to(device)
            rows, cols = positions // w, positions % w
            stage1 = {}

            def reference_fn(mean1, log_scale1):
                stage1["pred"] = (mean1, log_scale1)
                q = latent.patches(rows, cols, self.search_mask)
                found.add(positions, q)
                index, s = found.search(q, steps[positions])
                return self._transfer(feats, conf, index, s)

            with profiling.stage("context"):
                ctx = context_at(rows, cols)
            preds = self._predict(ctx, None if hyper is None else hyper[positions], reference_fn, lambda i, r: nets[i](r))
            mean, log_scale = preds[-1]
            with profiling.stage("coder"):
                symbols = dec.gaussian(mean, coding_scale(log_scale))
            y_new = torch.from_numpy(symbols.astype(np.float64)).view(len(positions), m).to(device)
            latent.set(rows, cols, y_new)
            if self.reference:
                with profiling.stage("reference"):
                    feats[positions] = transfer_at(rows, cols)
                    conf[positions] = self._confidence(y_new, *stage1["pred"])
            if progress is not None:
                progress.update(1)
        return latent.inner.unsqueeze(0).float()
