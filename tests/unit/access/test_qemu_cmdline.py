"""QEMU command lines as QEMU, libvirt and the lab write them: the RAM they give a guest, where
the PC rule puts it, and the command lines whose layout cannot be known without the monitor."""

from __future__ import annotations

import json

import pytest

from vmsentinel.access.qemu_cmdline import parse_cmdline, parse_opts, parse_size
from vmsentinel.access.qemu_process import cmdline_blocks
from vmsentinel.errors import LayoutUnknown

GiB, MiB = 1 << 30, 1 << 20
FOUR_GIB = 4 * GiB

#: a libvirt 9.0 TCG domain on QEMU 7.2 as this host ran it (ps shows the same)
LIBVIRT9_I440FX = [
    "/usr/bin/qemu-system-x86_64", "-name", "guest=vmst-manual-1,debug-threads=on", "-S",
    "-object",
    '{"qom-type":"secret","id":"masterKey0","format":"raw","file":"/var/lib/libvirt/qemu/domain-1-vmst-manual-1/master-key.aes"}',
    "-machine", "pc-i440fx-7.2,usb=off,dump-guest-core=off,memory-backend=pc.ram", "-accel", "tcg", "-cpu", "max,la57=off",
    "-m", "512", "-object", '{"qom-type":"memory-backend-ram","id":"pc.ram","size":536870912}', "-overcommit", "mem-lock=off",
    "-smp", "1,sockets=1,cores=1,threads=1", "-uuid", "0dd57023-209c-4d87-90fc-8d1419ceaf7d", "-display", "none",
    "-no-user-config", "-nodefaults", "-chardev", "socket,id=charmonitor,fd=31,server=on,wait=off",
    "-mon", "chardev=charmonitor,id=monitor,mode=control", "-rtc", "base=utc", "-no-shutdown", "-no-acpi", "-boot", "strict=on",
    "-kernel", "/tmp/vmst-manual/vmlinuz", "-initrd", "/tmp/vmst-manual/initrd.img",
    "-append", "console=ttyS0 panic=-1 vmsentinel.name=vmst-manual-1 kaslr",
    "-device", '{"driver":"piix3-usb-uhci","id":"usb","bus":"pci.0","addr":"0x1.0x2"}',
    "-netdev", '{"type":"user","id":"hostnet0"}',
    "-device", '{"driver":"virtio-net-pci","netdev":"hostnet0","id":"net0","mac":"52:54:00:f0:15:7f","bus":"pci.0","addr":"0x2"}',
    "-add-fd", "set=0,fd=30,opaque=serial0-source", "-chardev", "file,id=charserial0,path=/dev/fdset/0,append=on",
    "-device", '{"driver":"isa-serial","chardev":"charserial0","id":"serial0","index":0}',
    "-chardev", "socket,id=charserial1,fd=29,server=on,wait=off",
    "-device", '{"driver":"isa-serial","chardev":"charserial1","id":"serial1","index":1}',
    "-audiodev", '{"id":"audio1","driver":"none"}',
    "-sandbox", "on,obsolete=deny,elevateprivileges=deny,spawn=deny,resourcecontrol=deny", "-msg", "timestamp=on",
]  # fmt: skip

#: libvirt with memory hotplug enabled (<maxMemory slots='16'>), 4.5 GiB on q35
LIBVIRT_Q35_HOTPLUG = [
    "/usr/bin/qemu-system-x86_64", "-name", "guest=db1,debug-threads=on", "-S",
    "-machine", "pc-q35-7.2,usb=off,vmport=off,dump-guest-core=off,memory-backend=pc.ram", "-accel", "kvm",
    "-cpu", "host,migratable=on", "-m", "size=4718592k,slots=16,maxmem=16777216k",
    "-object", '{"qom-type":"memory-backend-ram","id":"pc.ram","size":4831838208}',
    "-overcommit", "mem-lock=off", "-smp", "2,sockets=2,cores=1,threads=1",
    "-chardev", "socket,id=charmonitor,fd=34,server=on,wait=off", "-mon", "chardev=charmonitor,id=monitor,mode=control",
]  # fmt: skip

#: libvirt with two NUMA cells (<numa><cell id='0' cpus='0' memory='1048576' unit='KiB'/>...)
LIBVIRT_NUMA = [
    "/usr/bin/qemu-system-x86_64", "-name", "guest=numa,debug-threads=on",
    "-machine", "pc-q35-7.2,usb=off,dump-guest-core=off", "-accel", "tcg", "-m", "size=1572864k",
    "-object", '{"qom-type":"memory-backend-ram","id":"ram-node0","size":1073741824}',
    "-numa", "node,nodeid=0,cpus=0,memdev=ram-node0",
    "-object", '{"qom-type":"memory-backend-memfd","id":"ram-node1","share":true,"size":536870912}',
    "-numa", "node,nodeid=1,cpus=1,memdev=ram-node1", "-smp", "2,sockets=2,cores=1,threads=1",
]  # fmt: skip

#: what `vmsentinel lab up` runs
LAB = [
    "/usr/bin/qemu-system-x86_64", "-name", "vmsentinel-web1", "-machine", "q35,memory-backend=ram0", "-accel", "tcg",
    "-cpu", "max,la57=off", "-smp", "1", "-m", "512M",
    "-object", "memory-backend-file,id=ram0,size=512M,mem-path=/dev/shm/vmsentinel-web1.ram,share=on",
    "-kernel", "/root/.cache/vmsentinel/kernels/k/boot/vmlinuz", "-initrd", "/tmp/initrd.img", "-append", "console=ttyS0",
    "-display", "none", "-no-reboot", "-nodefaults", "-chardev", "file,id=con0,path=/tmp/console.log",
    "-serial", "chardev:con0", "-chardev", "socket,id=ctl0,path=/tmp/ctl.sock,server=on,wait=off", "-serial", "chardev:ctl0",
    "-qmp", "unix:/tmp/lab web1/qmp.sock,server=on,wait=off", "-netdev", "user,id=net0,restrict=on",
    "-device", "virtio-net-pci,netdev=net0",
]  # fmt: skip


def layout(argv: list[str]) -> list[tuple[str, list[tuple[int, int, int]]]]:
    return [
        (b.name, [(s.phys_start, s.file_offset, s.length) for s in b.segments]) for b in cmdline_blocks(parse_cmdline(argv), 42)
    ]


def qemu(*args: str) -> list[str]:
    return ["qemu-system-x86_64", *args]


@pytest.mark.parametrize(
    ("text", "default_shift", "expected"),
    [
        ("512", 20, 512 * MiB),
        ("512M", 20, 512 * MiB),
        ("4718592k", 20, 4608 * MiB),
        ("1.5G", 0, 3 * GiB // 2),
        ("536870912", 0, 512 * MiB),
        ("0x20000000", 0, 512 * MiB),
        ("4G", 0, FOUR_GIB),
        ("2T", 0, 2 << 40),
    ],
)
def test_sizes(text: str, default_shift: int, expected: int) -> None:
    assert parse_size(text, default_shift) == expected


def test_sizes_that_are_none() -> None:
    for bad in ("", "M", "12Q", "-1", "1,5G"):
        with pytest.raises(ValueError):
            parse_size(bad)


def test_options_syntax() -> None:
    assert parse_opts("q35,accel=tcg", "type") == {"type": "q35", "accel": "tcg"}
    assert parse_opts("socket,id=m,path=/run/a,,b.sock,server,nowait", "backend") == {
        "backend": "socket",
        "id": "m",
        "path": "/run/a,b.sock",
        "server": "on",
        "wait": "off",
    }
    assert parse_opts('{"qom-type":"memory-backend-ram","id":"pc.ram","size":536870912,"share":true}', "qom-type") == {
        "qom-type": "memory-backend-ram",
        "id": "pc.ram",
        "size": "536870912",
        "share": "on",
    }
    with pytest.raises(ValueError):
        parse_opts('{"qom-type": ', "qom-type")


def test_libvirt9_i440fx_domain() -> None:
    config = parse_cmdline(LIBVIRT9_I440FX)
    assert config.machine_type == "pc-i440fx-7.2"
    assert config.name == "vmst-manual-1"
    assert config.backends["pc.ram"].kind == "ram" and not config.backends["pc.ram"].share
    assert config.qmp_sockets() == []  # libvirt passes its monitor as fd=31: not ours to reach
    assert config.memory_devices == []  # virtio-net, serial, usb are no memory devices
    assert layout(LIBVIRT9_I440FX) == [("pc.ram", [(0, 0, 512 * MiB)])]


def test_libvirt_q35_with_memory_hotplug_splits_at_2g() -> None:
    config = parse_cmdline(LIBVIRT_Q35_HOTPLUG)
    assert config.memory == {"size": "4718592k", "slots": "16", "maxmem": "16777216k"}
    assert config.ram_size() == 4608 * MiB
    assert layout(LIBVIRT_Q35_HOTPLUG) == [("pc.ram", [(0, 0, 2 * GiB), (FOUR_GIB, 2 * GiB, 2560 * MiB)])]


def test_numa_nodes_are_contiguous_in_node_order() -> None:
    # node 0 (1 GiB) then node 1 (512 MiB): together 1.5 GiB, all below the q35 hole
    assert layout(LIBVIRT_NUMA) == [("ram-node0", [(0, 0, GiB)]), ("ram-node1", [(GiB, 0, 512 * MiB)])]
    # nodes given out of order, and a node without nodeid takes the next number
    argv = qemu(
        "-M", "q35", "-m", "3G",
        "-object", "memory-backend-ram,id=b,size=2G", "-object", "memory-backend-ram,id=a,size=1G",
        "-numa", "node,nodeid=1,memdev=b", "-numa", "node,nodeid=0,memdev=a",
    )  # fmt: skip
    # 3 GiB on q35: 2 GiB low (node 0's 1 GiB, node 1's first GiB), node 1's second GiB at 4 GiB
    assert layout(argv) == [("a", [(0, 0, GiB)]), ("b", [(GiB, 0, GiB), (FOUR_GIB, GiB, GiB)])]
    assert [b.id for b in [parse_cmdline(argv).backends[n["memdev"]] for n in parse_cmdline(argv).numa_nodes]] == ["b", "a"]


def test_lab_command_line_and_its_qmp_socket() -> None:
    config = parse_cmdline(LAB)
    assert config.qmp_sockets() == ["/tmp/lab web1/qmp.sock"]
    ram = config.backends["ram0"]
    assert (ram.kind, ram.share, ram.mem_path, ram.size) == ("file", True, "/dev/shm/vmsentinel-web1.ram", 512 * MiB)
    assert layout(LAB) == [("ram0", [(0, 0, 512 * MiB)])]


def test_monitors_found_on_the_command_line() -> None:
    argv = qemu(
        "-chardev", "socket,id=mon0,path=/run/qemu/mon0.sock,server=on,wait=off", "-mon", "chardev=mon0,mode=control",
        "-chardev", "socket,id=hmp0,path=/run/qemu/hmp.sock,server=on", "-mon", "chardev=hmp0",  # readline: no QMP
        "-chardev", "socket,id=cli,path=/run/qemu/cli.sock", "-mon", "chardev=cli,mode=control",  # QEMU connects out
        "-qmp", "unix:/run/qemu/qmp.sock,server,nowait", "-qmp", "tcp:127.0.0.1:4444,server=on",
        "--qmp", "unix:/run/qemu/client.sock",
    )  # fmt: skip
    assert parse_cmdline(argv).qmp_sockets() == ["/run/qemu/qmp.sock", "/run/qemu/mon0.sock"]


@pytest.mark.parametrize(
    ("args", "expected"),
    [
        # legacy -m: one pc.ram block; no -machine is QEMU's default, pc
        (("-m", "512"), [(0, 0, 512 * MiB)]),
        (("-m", "4608"), [(0, 0, 3 * GiB), (FOUR_GIB, 3 * GiB, 1536 * MiB)]),
        (("-M", "q35", "-m", "4608"), [(0, 0, 2 * GiB), (FOUR_GIB, 2 * GiB, 2560 * MiB)]),
        (("-machine", "pc-q35-7.2,accel=tcg", "-m", "2815M"), [(0, 0, 2815 * MiB)]),
        (("-machine", "pc-q35-7.2", "-m", "2816M"), [(0, 0, 2 * GiB), (FOUR_GIB, 2 * GiB, 768 * MiB)]),
        # before pc-i440fx-2.0, 3.5 GiB stay below 4 GiB
        (("-machine", "pc-i440fx-1.7", "-m", "4G"), [(0, 0, 3584 * MiB), (FOUR_GIB, 3584 * MiB, 512 * MiB)]),
        (("--machine", "pc", "-machine", "max-ram-below-4g=2G", "-m", "4G"), [(0, 0, 2 * GiB), (FOUR_GIB, 2 * GiB, 2 * GiB)]),
        (("-machine", "pc,max-ram-below-4g=4G", "-m", "3968M"), [(0, 0, 3968 * MiB)]),
        (("-M", "q35,max-ram-below-4g=1G", "-m", "2G"), [(0, 0, GiB), (FOUR_GIB, GiB, GiB)]),
        ((), [(0, 0, 128 * MiB)]),  # no -m at all: 128 MiB
    ],
)
def test_pc_rule(args: tuple[str, ...], expected: list[tuple[int, int, int]]) -> None:
    assert layout(qemu(*args)) == [("pc.ram", expected)]


def test_backends_of_every_kind() -> None:
    config = parse_cmdline(
        qemu(
            "-object", "memory-backend-memfd,id=m,size=512M",
            "-object", "memory-backend-memfd,id=p,size=1G,share=off,hugetlb=on",
            "-object", "memory-backend-file,id=f,size=1G,mem-path=/dev/hugepages",
            "-object", "memory-backend-ram,id=r,size=64M,share=on",
            "-object", "memory-backend-file,id=s,size=1G,mem-path=/dev/shm/x,share=on,prealloc=on",
        )
    )  # fmt: skip
    b = config.backends
    kinds = [(x.kind, x.share) for x in b.values()]
    assert kinds == [("memfd", True), ("memfd", False), ("file", False), ("ram", True), ("file", True)]
    assert b["p"].hugetlb and b["f"].mem_path == "/dev/hugepages"
    # -mem-path makes the legacy block a private file mapping
    assert parse_cmdline(qemu("-m", "1G", "-mem-path", "/dev/hugepages")).mem_path == "/dev/hugepages"


def test_a_pc_dimm_with_an_address_is_placed() -> None:
    argv = qemu(
        "-m", "512,slots=2,maxmem=2G", "-object", "memory-backend-ram,id=d0,size=256M",
        "-device", '{"driver":"pc-dimm","id":"dimm0","memdev":"d0","addr":4294967296}',
        "-object", "memory-backend-file,id=pm,size=1G,mem-path=/tmp/pmem,share=on", "-device", "nvdimm,id=nv0,memdev=pm",
    )  # fmt: skip
    # the NVDIMM is persistent memory (a disk to the guest), not RAM: left out
    assert layout(argv) == [("pc.ram", [(0, 0, 512 * MiB)]), ("d0", [(FOUR_GIB, 0, 256 * MiB)])]


@pytest.mark.parametrize(
    ("args", "why"),
    [
        (("-m", "512,slots=2,maxmem=2G", "-object", "memory-backend-ram,id=d0,size=256M",
          "-device", "pc-dimm,id=dimm0,memdev=d0"),
         "pc-dimm dimm0 (memdev d0) that QEMU placed at run time (no addr=)"),
        (("-m", "1G,maxmem=4G", "-object", "memory-backend-ram,id=vm0,size=1G",
          "-device", "virtio-mem-pci,id=vmem0,memdev=vm0"),
         "virtio-mem-pci vmem0"),
        (("-M", "microvm", "-m", "512"), "machine type 'microvm'"),
        (("-M", "isapc"), "machine type 'isapc'"),
        (("-readconfig", "/etc/qemu/vm.cfg", "-m", "512"), "-readconfig /etc/qemu/vm.cfg"),
        (("-m", "512", "-set", "machine.max-ram-below-4g=1G"), "-set machine.max-ram-below-4g=1G"),
        (("-m", "1G", "-machine", "memory-backend=r", "-object", "memory-backend-ram,id=r,size=512M"),
         "-m 1G is not the 512 MiB"),
        (("-machine", "memory-backend=gone"), "memory backend 'gone' is not on the command line"),
        (("-object", "memory-backend-ram,id=a,size=1G", "-numa", "node,memdev=a", "-numa", "node,nodeid=0,memdev=a"),
         "NUMA node 0 twice"),
        (("-m", "1000G"), "AMD's HyperTransport hole"),
        (("-object", "memory-backend-epc,id=e,size=64M", "-machine", "memory-backend=e"), "memory-backend-epc"),
    ],
)  # fmt: skip
def test_what_the_command_line_cannot_settle_is_refused(args: tuple[str, ...], why: str) -> None:
    with pytest.raises(LayoutUnknown, match="QEMU pid 42") as refused:
        layout(qemu(*args))
    assert why in str(refused.value)


def test_other_architectures_and_unreadable_options_are_refused() -> None:
    with pytest.raises(LayoutUnknown, match="qemu-system-aarch64"):
        cmdline_blocks(parse_cmdline(["/usr/bin/qemu-system-aarch64", "-M", "virt", "-m", "1G"]), 42)
    with pytest.raises(LayoutUnknown, match="cannot read QEMU's -m lots"):
        parse_cmdline(qemu("-m", "lots"))
    with pytest.raises(LayoutUnknown, match="-object"):
        parse_cmdline(qemu("-object", '{"qom-type": "memory-backend-ram", "size": '))


def test_unknown_options_do_not_swallow_the_next_option() -> None:
    # -some-new-flag takes no argument, -other takes one: -m is read either way
    config = parse_cmdline(qemu("-some-new-flag", "-m", "1G", "-other", "value", "disk.img", "-M", "q35"))
    assert config.ram_size() == GiB and config.machine_type == "q35"
    assert json.dumps(config.memory) == '{"size": "1G"}'
