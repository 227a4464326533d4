"""The encoder's effort levels (``refine``): refinement steps of each, plain data without torch, so that the
command line's parser starts at once."""

EFFORTS = {"default": 0, "fast": 40, "slow": 120}  # refinement steps of each effort (fast: see ``refine``)
