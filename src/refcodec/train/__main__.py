"""``python -m refcodec.train ARGS``: what ``torchrun --nproc_per_node=K -m refcodec.train ARGS`` runs in each process."""

from .trainer import main

main()
