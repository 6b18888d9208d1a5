"""The systemd unit of ``vmsentinel serve``: the service runs as root only because reading guest
RAM needs it, so everything else is taken away: no new privileges, only the capabilities that
reading QEMU's memory needs, the file system read-only but for its own folder, a private /tmp, no
kernel tunables, modules or clock, only Unix and IP sockets."""

from __future__ import annotations

import shlex
from pathlib import Path

#: reading another process's memory (/proc/PID/mem, map_files) and QEMU's files; nothing more
CAPABILITIES = "CAP_SYS_PTRACE CAP_DAC_READ_SEARCH CAP_DAC_OVERRIDE"


def unit_text(executable: Path, args: str, state: Path) -> str:
    command = " ".join([shlex.quote(str(executable)), "serve", *shlex.split(args), "--state-dir", shlex.quote(str(state))])
    return f"""[Unit]
Description=vmsentinel: watches virtual machines from outside, through their memory
Documentation=https://github.com/vmsentinel/vmsentinel
After=network.target libvirtd.service
Wants=libvirtd.service

[Service]
Type=exec
ExecStart={command}
ExecReload=/bin/kill -HUP $MAINPID
Restart=on-failure
RestartSec=5
StateDirectory={state.name if state.parent == Path("/var/lib") else ""}
Environment=VMSENTINEL_STATE={state}
CapabilityBoundingSet={CAPABILITIES}
AmbientCapabilities={CAPABILITIES}
NoNewPrivileges=yes
ProtectSystem=strict
ReadWritePaths={state}
ReadOnlyPaths=/dev/shm /run/libvirt
ProtectHome=read-only
PrivateTmp=yes
PrivateDevices=yes
ProtectKernelTunables=yes
ProtectKernelModules=yes
ProtectKernelLogs=yes
ProtectControlGroups=yes
ProtectClock=yes
ProtectHostname=yes
RestrictAddressFamilies=AF_UNIX AF_INET AF_INET6
RestrictNamespaces=yes
RestrictRealtime=yes
RestrictSUIDSGID=yes
LockPersonality=yes
SystemCallArchitectures=native
UMask=0077

[Install]
WantedBy=multi-user.target
"""
