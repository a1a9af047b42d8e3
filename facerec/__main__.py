"""`python -m facerec` (and `torchrun -m facerec`) runs the CLI."""

from facerec.cli import main

main()
