"""``python -m vmsentinel``."""

from .cli.entry import main

main()
