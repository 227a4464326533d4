"""Layers: GSDN/IGSDN (section 4), masked convolutions and the global reference (section 3)."""
