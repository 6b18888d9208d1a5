"""vmsentinel: a security sentinel that watches virtual machines from outside."""

__version__ = "0.1.0"
