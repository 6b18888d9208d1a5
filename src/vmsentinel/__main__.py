"""``python -m vmsentinel``."""

from vmsentinel.cli.entry import main

if __name__ == "__main__":  # worker processes import this module as __mp_main__: they must not run the CLI
    main()
