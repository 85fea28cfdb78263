"""``python -m cafs.cli``."""

from cafs.cli import main

main()
