"""Entropy coding with constriction's range coder (exact, near-zero overhead).

Symbols are written in the order they are given and read back in the same
order (a queue), so a decoder can interleave reading with predicting. Gaussian
symbols use constriction's QuantizedGaussian (eq. 2 with the coding scale);
factorized symbols use a categorical row per channel. Symbols, means and scales may be
NumPy arrays or tensors of any shape on any device: the coder runs on the CPU, on flat arrays.
"""

from __future__ import annotations

import constriction
import numpy as np
import torch

from ..errors import RefcodecError

SYMBOL_MAX = 255  # latents are clamped to [-SYMBOL_MAX, SYMBOL_MAX] by the encoder
_GAUSSIAN = constriction.stream.model.QuantizedGaussian(-SYMBOL_MAX, SYMBOL_MAX)


class CodingError(RefcodecError):
    """The payload cannot be decoded with this model (corrupt or foreign data)."""


def _flat(x: np.ndarray | torch.Tensor, dtype) -> np.ndarray:
    """``x`` as a flat NumPy array of ``dtype``, moved to the CPU if it is a tensor."""
    if isinstance(x, torch.Tensor):
        x = x.detach().cpu().numpy()
    return np.asarray(x).astype(dtype, copy=False).reshape(-1)


class Encoder:
    """Range encoder: symbols are read back by :class:`Decoder` in the order they were written."""
    def __init__(self) -> None:
        self._coder = constriction.stream.queue.RangeEncoder()

    def gaussian(self, symbols: np.ndarray, means: np.ndarray, scales: np.ndarray) -> None:
        """Integer symbols with per-symbol mean and (table) scale."""
        self._coder.encode(_flat(symbols, np.int32), _GAUSSIAN, _flat(means, np.float64), _flat(scales, np.float64))

    def categorical(self, symbols: np.ndarray, probabilities: np.ndarray) -> None:
        """Symbols 0..len(probabilities)-1 under one fixed probability row."""
        model = constriction.stream.model.Categorical(probabilities, perfect=False)
        self._coder.encode(_flat(symbols, np.int32), model)

    def finish(self) -> bytes:
        """The compressed stream (a multiple of 4 bytes); the encoder is spent."""
        return self._coder.get_compressed().tobytes()


class Decoder:
    """Range decoder of an :class:`Encoder`'s stream; any failure is a :class:`CodingError`."""
    def __init__(self, data: bytes) -> None:
        if len(data) % 4:
            raise CodingError("entropy-coded stream length is not a multiple of 4 bytes")
        self._coder = constriction.stream.queue.RangeDecoder(np.frombuffer(data, dtype=np.uint32).copy())

    def gaussian(self, means: np.ndarray, scales: np.ndarray) -> np.ndarray:
        """One integer symbol per (mean, scale), as :meth:`Encoder.gaussian` wrote them."""
        try:
            return self._coder.decode(_GAUSSIAN, _flat(means, np.float64), _flat(scales, np.float64))
        except Exception as e:  # constriction reports exhausted or invalid data as generic errors
            raise CodingError(f"entropy decoding failed: {e}") from None

    def categorical(self, count: int, probabilities: np.ndarray) -> np.ndarray:
        """``count`` symbols under one probability row, as :meth:`Encoder.categorical` wrote them."""
        model = constriction.stream.model.Categorical(probabilities, perfect=False)
        try:
            return self._coder.decode(model, count)
        except Exception as e:
            raise CodingError(f"entropy decoding failed: {e}") from None
