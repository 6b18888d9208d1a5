"""The ``vmsentinel`` command."""
