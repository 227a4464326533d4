"""``python -m refcodec.train ARGS``: what ``torchrun --nproc_per_node=K -m refcodec.train ARGS`` runs in each process."""

from .. import allocator

allocator.reexec()  # glibc reads its tunables at start: restart with them before anything is allocated

from .trainer import main  # noqa: E402

main()
