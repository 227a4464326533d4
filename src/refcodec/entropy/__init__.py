"""Entropy coding: the range coder, the factorized density of z and the Gaussian conditional of y (eq. 2)."""
