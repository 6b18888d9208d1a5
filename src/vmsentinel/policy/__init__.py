"""The sentinel's policy: which detectors run, how it responds, where alerts go.
(Signing of policy bundles comes with the code-signing work.)"""

from .config import Policy, load_policy

__all__ = ["Policy", "load_policy"]
