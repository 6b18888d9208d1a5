"""Control of a VM through its hypervisor (QMP for QEMU)."""
