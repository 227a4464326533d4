"""Evaluation: real-bitstream evaluation, classical codecs and BD-rates, speed benchmarks, plots and figures."""
