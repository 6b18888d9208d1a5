"""Policy files (TOML)::

    interval = 1.0
    [intervals]                  # per guest, overriding the interval above
    "lab:db1" = 5.0
    [detectors]
    enabled = ["hidden_process", "hidden_module", "syscall_hook", "yara"]   # default: all (see detect/registry.py)
    [responses]                  # actions by severity; the default is alert only
    critical = ["dump", "pause"]
    high = ["cut_network"]
    [responses.detectors]        # or by detector, which wins over severity
    hidden_module = ["pause"]
    [sigma]
    rules = ["rules/process_creation"]   # Sigma process_creation rules (files or folders)
    [yara]
    rules = ["rules/malware.yar"]        # YARA rules over new processes and modules, everything on full sweeps
    [allowlist]                  # code allowed to run (each file signed on its own: FILE.minisig or FILE.sig)
    files = ["allowlists/web.json"]
    trusted_keys = ["keys/release.pub"]  # who may sign allowlists (minisign, OpenSSH or allowed_signers)
    [fleet]                      # what the fleet's central service may ask this host for over the bus
    remote_actions = ["pause", "resume"]  # default: nothing (a request is refused, and recorded)
    [sinks]
    ocsf = "findings.jsonl"
    db = "vmsentinel.db"
    dumps = "dumps"

Unknown keys and unknown actions are errors: a typo must not silently disable a response.
"""

from __future__ import annotations

import tomllib
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from vmsentinel.detect.finding import Finding
from vmsentinel.detect.registry import check_names, names
from vmsentinel.errors import PolicyError

ACTIONS = ("alert", "pause", "resume", "dump", "cut_network")
SEVERITIES = ("informational", "low", "medium", "high", "critical")


@dataclass
class Policy:
    interval: float = 1.0
    intervals: dict[str, float] = field(default_factory=dict)
    detectors: list[str] = field(default_factory=names)
    by_severity: dict[str, list[str]] = field(default_factory=dict)
    by_detector: dict[str, list[str]] = field(default_factory=dict)
    ocsf: str = "vmsentinel-findings.jsonl"
    db: str = "vmsentinel.db"
    dumps: str = "vmsentinel-dumps"
    sigma_rules: list[str] = field(default_factory=list)
    yara_rules: list[str] = field(default_factory=list)
    allowlists: list[str] = field(default_factory=list)
    allowlist_keys: list[str] = field(default_factory=list)
    #: responses the fleet's central service may ask this host for through the bus
    fleet_actions: list[str] = field(default_factory=list)
    source: str = "built-in defaults"

    def actions_for(self, finding: Finding) -> list[str]:
        if finding.detector in self.by_detector:
            return self.by_detector[finding.detector]
        return self.by_severity.get(finding.severity.name.lower(), ["alert"])


def _actions(where: str, value: Any) -> list[str]:
    if not isinstance(value, list) or not all(isinstance(a, str) for a in value):
        raise PolicyError(f"{where}: expected a list of actions")
    bad = [a for a in value if a not in ACTIONS]
    if bad:
        raise PolicyError(f"{where}: unknown action(s) {', '.join(bad)} (known: {', '.join(ACTIONS)})")
    return list(value)


def load_policy(path: str | Path | None) -> Policy:
    if path is None:
        return Policy()
    try:
        data = tomllib.loads(Path(path).read_text())
    except OSError as exc:
        raise PolicyError(f"cannot read policy {path}: {exc.strerror}") from exc
    except tomllib.TOMLDecodeError as exc:
        raise PolicyError(f"policy {path} is not valid TOML: {exc}") from exc
    unknown = set(data) - {
        "interval",
        "intervals",
        "detectors",
        "responses",
        "sinks",
        "sigma",
        "yara",
        "allowlist",
        "fleet",
    }
    if unknown:
        raise PolicyError(f"policy {path}: unknown section(s) {', '.join(sorted(unknown))}")
    policy = Policy(source=str(path))
    if "interval" in data:
        if not isinstance(data["interval"], int | float) or data["interval"] <= 0:
            raise PolicyError(f"policy {path}: interval must be a positive number of seconds")
        policy.interval = float(data["interval"])
    for target, seconds in dict(data.get("intervals", {})).items():
        if not isinstance(seconds, int | float) or isinstance(seconds, bool) or seconds <= 0:
            raise PolicyError(f"policy {path}: [intervals] {target!r} must be a positive number of seconds")
        policy.intervals[target] = float(seconds)
    enabled = data.get("detectors", {}).get("enabled")
    if enabled is not None:
        if not isinstance(enabled, list) or not all(isinstance(d, str) for d in enabled):
            raise PolicyError(f"policy {path}: [detectors] enabled must be a list of detector names")
        policy.detectors = check_names(enabled, f"policy {path}: [detectors] enabled")
    responses = dict(data.get("responses", {}))
    per_detector = responses.pop("detectors", {})
    for severity, actions in responses.items():
        if severity not in SEVERITIES:
            raise PolicyError(f"policy {path}: [responses] {severity!r} is no severity ({', '.join(SEVERITIES)})")
        policy.by_severity[severity] = _actions(f"[responses] {severity}", actions)
    for detector, actions in per_detector.items():
        check_names([detector], f"policy {path}: [responses.detectors]")
        policy.by_detector[detector] = _actions(f"[responses.detectors] {detector}", actions)
    sigma = data.get("sigma", {}).get("rules", [])
    if not isinstance(sigma, list) or not all(isinstance(p, str) for p in sigma):
        raise PolicyError(f"policy {path}: [sigma] rules must be a list of files or folders")
    base_dir = Path(path).parent
    policy.sigma_rules = [str(base_dir / p) for p in sigma]
    yara = data.get("yara", {}).get("rules", [])
    if not isinstance(yara, list) or not all(isinstance(p, str) for p in yara):
        raise PolicyError(f"policy {path}: [yara] rules must be a list of files or folders")
    policy.yara_rules = [str(base_dir / p) for p in yara]
    allow = dict(data.get("allowlist", {}))
    unknown = set(allow) - {"files", "trusted_keys"}
    if unknown:
        raise PolicyError(f"policy {path}: [allowlist] unknown key(s) {', '.join(sorted(unknown))}")
    for key in ("files", "trusted_keys"):
        value = allow.get(key, [])
        if not isinstance(value, list) or not all(isinstance(p, str) for p in value):
            raise PolicyError(f"policy {path}: [allowlist] {key} must be a list of files")
    policy.allowlists = [str(base_dir / p) for p in allow.get("files", [])]
    policy.allowlist_keys = [str(base_dir / p) for p in allow.get("trusted_keys", [])]
    if policy.allowlists and not policy.allowlist_keys:
        raise PolicyError(f"policy {path}: [allowlist] files need trusted_keys to verify their signatures")
    fleet = dict(data.get("fleet", {}))
    unknown = set(fleet) - {"remote_actions"}
    if unknown:
        raise PolicyError(f"policy {path}: [fleet] unknown key(s) {', '.join(sorted(unknown))}")
    remote = _actions(f"policy {path}: [fleet] remote_actions", fleet.get("remote_actions", []))
    if "alert" in remote:
        raise PolicyError(f"policy {path}: [fleet] remote_actions: 'alert' is no response to ask for")
    policy.fleet_actions = remote
    sinks = data.get("sinks", {})
    policy.ocsf = str(sinks.get("ocsf", policy.ocsf))
    policy.db = str(sinks.get("db", policy.db))
    policy.dumps = str(sinks.get("dumps", policy.dumps))
    return policy
