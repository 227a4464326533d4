"""The zoo's sizes, qualities and defaults: plain data (and the size's lookup), without torch, so that the command line's parser
(and ``--help``, ``--version``, ``info``) starts at once; ``registry`` builds and loads the models."""

PRESETS = {
    "paper": {"N": 192, "M": 384},  # Table 1
    "small": {"N": 64, "M": 96},  # trainable on a CPU
    "medium": {"N": 128, "M": 192},  # high quality, grown from small (models.widen); the choice: its model card
    "mbt": {"N": 192, "M": 192},  # CompressAI's mbt2018 at qualities 1-4 (for --init from its checkpoints)
    "mbt-hq": {"N": 192, "M": 320},  # CompressAI's mbt2018 at qualities 5-8
}


def preset_of(N: int | None, M: int | None) -> str | None:
    """The preset of size N x M, or None where no preset has that size."""
    return next((p for p, size in PRESETS.items() if size == {"N": N, "M": M}), None)


# MSE lambdas of CompressAI's zoo for qualities 1-8 (loss = R + lambda * 255^2 * MSE), and a quality 0
# at half of quality 1's lambda (CompressAI's levels are about a factor 2 apart) for rates below 0.2 bpp.
LAMBDAS = {0: 0.0009, 1: 0.0018, 2: 0.0035, 3: 0.0067, 4: 0.0130, 5: 0.0250, 6: 0.0483, 7: 0.0932, 8: 0.1800}
# MS-SSIM lambdas of CompressAI's zoo for qualities 1-8 (loss = R + lambda * (1 - MS-SSIM)), and quality 0 likewise.
LAMBDAS_MS_SSIM = {0: 1.20, 1: 2.40, 2: 4.58, 3: 8.73, 4: 16.64, 5: 31.73, 6: 60.50, 7: 115.37, 8: 220.00}
VARIABLE = "vr"  # the quality part of a variable-rate model's id; its levels are the qualities above

DEFAULT_MODEL = "grm"
# A model name codes with the first of these presets that has a shipped variable-rate model of the objective
# (``registry.default_preset``): the wide grm/medium/vr, or grm/small/vr (the fast model, and MS-SSIM's until a wide one ships).
DEFAULT_PRESETS = ("medium", "small")
DEFAULT_QUALITY = 3
