"""The fleet as a detector: a guest unlike a strict majority of at least three peers of its kernel
build (or, for what it runs, of its clones) is an outlier, named with each differing item, its value
and the majority's; equal guests, two against two and groups of two say nothing; a guest fixed (or
gone) is cleared; hostile inventories do not break the comparison."""

from __future__ import annotations

import json
from dataclasses import asdict
from typing import Any

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from vmsentinel.detect.finding import Severity
from vmsentinel.detect.fleet import DETECTOR, FleetComparer, Peer, clone_groups, compare_peers
from vmsentinel.detect.registry import names, specs
from vmsentinel.events import GuestInventory

BUILD = "ab" * 20


def inventory(target: str, **changes: dict[str, str | None]) -> GuestInventory:
    """A clean guest's inventory, with ``changes`` (facet -> {item: value, or None to drop it})."""
    facets: dict[str, dict[str, str]] = {
        "kernel_text": {f"{i * 4096:x}": f"{i:016x}" for i in range(64)},
        "syscalls": {"x64:0": "__x64_sys_read", "x64:39": "__x64_sys_getpid"},
        "modules": {"virtio_net": "00112233aabbccdd"},
        "taint": {"mask": "0x0"},
        "executables": {"/bin/busybox": "mapped", "/usr/sbin/sshd": "mapped"},
        "code_pages": {"/bin/busybox@0": "1111", "/bin/busybox@1000": "2222"},
        "listening": {"tcp:22": "/usr/sbin/sshd"},
    }
    for facet, items in changes.items():
        for item, value in items.items():
            if value is None:
                facets.setdefault(facet, {}).pop(item, None)
            else:
                facets.setdefault(facet, {})[item] = value
    return GuestInventory(target, BUILD, "6.12.0-test", facets)


def outliers(comparer: FleetComparer) -> dict[tuple[str, str], Any]:
    return {(f.target, f.evidence["facet"]): f for f in comparer.findings()}


def test_five_peers_with_one_outlier_flag_exactly_it_naming_the_item() -> None:
    comparer = FleetComparer()
    raised = []
    for n in [0, 1, 2, 4, 3]:
        hooked = {"syscalls": {"x64:39": "outside:module:vmsrootkit"}} if n == 3 else {}
        raised += comparer.update(inventory(f"lab:g{n}", **hooked)).raised
    (finding,) = raised
    assert comparer.findings() == [finding]
    assert finding.detector == DETECTOR and finding.target == "lab:g3" and finding.severity == Severity.HIGH
    assert finding.attack.technique_id == "T1014"
    evidence = finding.evidence
    assert evidence["facet"] == "syscalls" and evidence["differing_items"] == 1
    assert evidence["differences"] == [{"item": "x64:39", "value": "outside:module:vmsrootkit", "majority": "__x64_sys_getpid"}]
    assert evidence["peers"] == ["lab:g0", "lab:g1", "lab:g2", "lab:g4"] and set(finding.sources) == set(evidence["peers"])
    json.dumps(finding.to_json())  # what the sinks write


def test_five_equal_guests_give_nothing() -> None:
    comparer = FleetComparer()
    assert not any(comparer.update(inventory(f"g{n}")).raised for n in range(5))
    assert comparer.findings() == []


def test_two_against_two_and_a_group_of_two_give_nothing() -> None:
    odd = {"taint": {"mask": "0x3000 OE"}}
    assert compare_peers([Peer.of(inventory("a")), Peer.of(inventory("b", **odd))]) == []
    peers = [Peer.of(inventory(n)) for n in "ab"] + [Peer.of(inventory(n, **odd)) for n in "cd"]
    assert compare_peers(peers) == []
    # a fifth guest makes a strict majority: the other side is now the odd one
    assert sorted(f.target for f in compare_peers([*peers, Peer.of(inventory("e"))])) == ["c", "d"]


def test_a_module_only_one_guest_has_is_a_difference() -> None:
    peers = [Peer.of(inventory(n)) for n in "abc"] + [Peer.of(inventory("d", modules={"vmsrootkit": "feedfacefeedface"}))]
    (finding,) = compare_peers(peers)
    assert finding.target == "d" and finding.evidence["differences"] == [
        {"item": "vmsrootkit", "value": "feedfacefeedface", "majority": None}
    ]


def test_replaced_by_a_fixed_inventory_the_outlier_is_cleared() -> None:
    comparer = FleetComparer()
    for n in range(4):
        comparer.update(inventory(f"g{n}", **({"kernel_text": {"3000": "badbadbadbadbad0"}} if n == 0 else {})))
    (finding,) = comparer.findings()
    assert finding.target == "g0" and finding.evidence["differences"][0]["item"] == "3000"
    change = comparer.update(inventory("g0"))
    assert change.raised == [] and [f.key for f in change.cleared] == [finding.key]
    assert comparer.findings() == []


def test_a_finding_keeps_its_key_while_peers_come_and_go_and_goes_with_its_guest() -> None:
    comparer = FleetComparer()
    for n in range(4):
        comparer.update(inventory(f"g{n}", **({"taint": {"mask": "0x1"}} if n == 1 else {})))
    (first,) = comparer.findings()
    change = comparer.update(inventory("g9"))  # a new peer: the same verdict, not raised again
    assert change.raised == [] and change.cleared == [] and comparer.findings() == [first]
    change = comparer.remove("g1")
    assert [f.key for f in change.cleared] == [first.key] and comparer.findings() == []


def test_groups_too_small_after_a_guest_leaves_clear_their_findings() -> None:
    comparer = FleetComparer()
    for n in range(3):
        comparer.update(inventory(f"g{n}", **({"taint": {"mask": "0x1"}} if n == 2 else {})))
    assert len(comparer.findings()) == 1
    change = comparer.remove("g0")  # two left: no telling which one is odd
    assert len(change.cleared) == 1 and comparer.findings() == []


def test_kernel_builds_are_compared_apart() -> None:
    other = [GuestInventory(f"o{n}", "cd" * 20, "6.1.0-test", inventory("x").facets) for n in range(2)]
    odd = GuestInventory("o2", "cd" * 20, "6.1.0-test", inventory("x", taint={"mask": "0x1"}).facets)
    peers = [Peer.of(i) for i in [*other, odd, *(inventory(f"g{n}") for n in range(3))]]
    assert [f.target for f in compare_peers(peers)] == ["o2"]


def test_clone_facets_are_compared_among_clones_only() -> None:
    another_image = {"executables": {"/bin/busybox": None, "/usr/sbin/sshd": None, "/sbin/apk": "mapped", "/bin/ash": "mapped"}}
    clones = [Peer.of(inventory(n)) for n in "abc"]
    stranger = Peer.of(inventory("z", **another_image, listening={"tcp:22": None}))
    assert sorted(len(g) for g in clone_groups([*clones, stranger])) == [1, 3]
    assert compare_peers([*clones, stranger]) == []  # kernel alike; what it runs is no clone's business
    backdoor = Peer.of(inventory("d", listening={"tcp:4444": "/tmp/.x"}, executables={"/tmp/.x": "mapped"}))
    found = {(f.target, f.evidence["facet"]) for f in compare_peers([*clones, backdoor])}
    assert found == {("d", "listening"), ("d", "executables")}


def test_a_code_page_absent_from_a_guest_is_no_vote() -> None:
    peers = [Peer.of(inventory(n)) for n in "ab"]
    peers.append(Peer.of(inventory("c", code_pages={"/bin/busybox@1000": None})))  # paged out
    peers.append(Peer.of(inventory("d", code_pages={"/bin/busybox@0": None})))
    assert compare_peers(peers) == []
    patched = Peer.of(inventory("e", code_pages={"/bin/busybox@1000": "6666"}))
    (finding,) = compare_peers([*peers, patched])
    assert finding.target == "e" and finding.attack.technique_id == "T1554"


def test_hostile_and_garbage_inventories_do_not_break_the_comparison() -> None:
    comparer = FleetComparer()
    for n in range(3):
        comparer.update(inventory(f"g{n}"))
    garbage: list[Any] = [
        object(),
        None,
        GuestInventory("x1", BUILD, "r", None),  # type: ignore[arg-type]
        GuestInventory("x2", BUILD, "r", {"kernel_text": "not a dict", 7: {}, "syscalls": {1: 2, "x64:0": None}}),  # type: ignore[dict-item]
        GuestInventory("x3", BUILD, "r", {"taint": {"mask": "A" * 100_000}, "t": {str(i): str(i) for i in range(300_000)}}),
        GuestInventory(5, [1], {"r": 1}, {"modules": {"m": ["list"]}}),  # type: ignore[arg-type]
    ]
    for record in garbage:
        comparer.update(record)
        comparer.update(record, name="host/guest")
    names_seen = {f.target for f in comparer.findings()}
    assert names_seen <= {"x2", "x3", "host/guest", "5", ""} and "g0" not in names_seen
    assert len(comparer.peers["x3"].facets["taint"]["mask"]) <= 256
    for record in garbage:
        comparer.remove(getattr(record, "target", ""))
    comparer.remove("host/guest")
    comparer.remove("nobody")


def test_an_inventory_survives_json_and_is_compared_under_a_qualified_name() -> None:
    event = inventory("lab:g0", taint={"mask": "0x1"})
    wire = json.loads(json.dumps(asdict(event)))
    back = GuestInventory(**wire)
    assert back == event
    comparer = FleetComparer()
    for n in range(1, 4):
        comparer.update(GuestInventory(**json.loads(json.dumps(asdict(inventory(f"lab:g{n}"))))), name=f"web1/lab:g{n}")
    (finding,) = comparer.update(back, name="web2/lab:g0").raised
    assert finding.target == "web2/lab:g0" and finding.evidence["peers"] == ["web1/lab:g1", "web1/lab:g2", "web1/lab:g3"]


def test_it_is_a_detector_like_the_others() -> None:
    assert DETECTOR in names()
    (spec,) = specs([DETECTOR])
    assert "inventory" in spec.facets and spec.summary


@pytest.mark.parametrize("min_group", [3, 4])
def test_at_least_min_group_guests_vote(min_group: int) -> None:
    peers = [Peer.of(inventory(n)) for n in "ab"] + [Peer.of(inventory("c", taint={"mask": "0x1"}))]
    assert len(compare_peers(peers, min_group)) == (1 if min_group == 3 else 0)


_VALUES = st.one_of(st.text(max_size=20), st.integers(), st.none(), st.binary(max_size=8), st.lists(st.integers(), max_size=3))


@settings(max_examples=200, deadline=None)
@given(
    st.lists(
        st.dictionaries(
            st.one_of(st.text(max_size=12), st.integers()),
            st.one_of(st.dictionaries(st.one_of(st.text(max_size=8), st.integers()), _VALUES, max_size=8), _VALUES),
            max_size=5,
        ),
        min_size=1,
        max_size=6,
    )
)
def test_any_facets_at_all_are_compared_without_raising(records: list[dict[Any, Any]]) -> None:
    comparer = FleetComparer()
    for n, facets in enumerate(records):
        comparer.update(GuestInventory(f"g{n % 4}", BUILD if n % 3 else "", "r", facets))  # type: ignore[arg-type]
    for finding in comparer.findings():
        json.dumps(finding.to_json())
    for n in range(4):
        comparer.remove(f"g{n}")
    assert comparer.findings() == []
