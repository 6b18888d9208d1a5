"""``python -m vmsentinel``."""

from vmsentinel.cli.entry import main

main()
