"""`python -m compactsearch` (also what `torchrun -m compactsearch` runs)."""

from compactsearch.cli import main

main()
