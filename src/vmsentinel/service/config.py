"""The service's configuration file (``vmsentinel serve --config FILE``, TOML): the same settings as
the command line's options, which win over the file. Unknown keys and wrong types are refused with
the file and the key named, so that a typo never silently leaves a default in force.

    targets = ["libvirt:"]
    listen = "0.0.0.0:8443"
    tls_cert = "/etc/vmsentinel/tls.pem"
    tls_key = "/etc/vmsentinel/tls.key"
    state_dir = "/var/lib/vmsentinel"
    policy = "/etc/vmsentinel/policy.vmspolicy"
    trusted_keys = ["/etc/vmsentinel/trusted-keys/ops.pub"]
    workers = 2
"""

from __future__ import annotations

import tomllib
from pathlib import Path
from typing import Any

from vmsentinel.errors import VmSentinelError

#: key -> the types its value may have
KEYS: dict[str, tuple[type, ...]] = {
    "targets": (list,),
    "listen": (str,),
    "tls_cert": (str,),
    "tls_key": (str,),
    "insecure_http": (bool,),
    "state_dir": (str,),
    "policy": (str,),
    "trusted_keys": (list,),
    "policy_signature": (str,),
    "unsigned_policy": (bool,),
    "interval": (int, float),
    "workers": (int,),
    "kernel_images": (list,),
    "bus": (str,),
    "bus_creds": (str,),
    "bus_tls_ca": (str,),
    "host_id": (str,),
    "fleet": (bool,),
}


def load_config(path: str | Path) -> dict[str, Any]:
    """The settings in ``path``, checked; relative paths in it are taken from the file's folder."""
    file = Path(path)
    try:
        data = tomllib.loads(file.read_text())
    except OSError as exc:
        raise VmSentinelError(f"cannot read the service configuration {file}: {exc.strerror}") from exc
    except tomllib.TOMLDecodeError as exc:
        raise VmSentinelError(f"{file}: not valid TOML: {exc}") from exc
    for key, value in data.items():
        if key not in KEYS:
            raise VmSentinelError(f"{file}: unknown setting {key!r} (known: {', '.join(KEYS)})")
        if (isinstance(value, bool) and bool not in KEYS[key]) or not isinstance(value, KEYS[key]):
            raise VmSentinelError(
                f"{file}: {key} must be {' or '.join(t.__name__ for t in KEYS[key])}, not {type(value).__name__}"
            )
        if isinstance(value, list) and not all(isinstance(v, str) for v in value):
            raise VmSentinelError(f"{file}: {key} must be a list of strings")
    for key in ("tls_cert", "tls_key", "state_dir", "policy", "policy_signature", "bus_creds", "bus_tls_ca"):
        if key in data and not Path(data[key]).is_absolute():
            data[key] = str(file.parent / data[key])
    if "trusted_keys" in data:
        data["trusted_keys"] = [v if Path(v).is_absolute() else str(file.parent / v) for v in data["trusted_keys"]]
    return data
