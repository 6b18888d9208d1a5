"""``python -m vmsentinel``."""

from .cli.main import main

main()
