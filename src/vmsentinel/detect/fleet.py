"""The fleet as a detector: guests of one kernel build, and guests cloned from one image, should look
alike, so a guest unlike most of its peers is suspect (``fleet_outlier``).

Each guest's inventory (``events.GuestInventory``: facet -> {item -> digest or value}, the same for
two clean guests of one build whatever their KASLR slides) is compared with its peers':

- **Kernel-wide facets** (``kernel_text``, ``kernel_rodata``, ``syscalls``, ``idt``, ``modules``,
  ``taint``, ``bpf``, and any facet this module does not know) are compared among every guest of one
  kernel build (same GNU build id; the release when there is none).
- **Clone facets** (``executables``, ``code_pages``, ``listening``) are compared only among guests
  judged clones of one image: same build, and sets of executable paths that mostly overlap
  (:data:`CLONE_OVERLAP` of the smaller set is in the larger; clones are linked in chains, so a
  group is a connected set of such pairs).
- **A verdict needs a strict majority of a group of at least** :data:`MIN_GROUP` **guests**: for each
  item, the value more than half the group holds is the norm and a guest holding anything else (or
  nothing, where the majority has it) differs. Two against two, or a group of two, says nothing:
  there is no telling which side is the odd one. A guest without a facet at all (it could not be
  read) takes no part in that facet's vote. In ``code_pages`` a page absent from a guest (not in its
  memory) is no vote either: only the pages it has are compared.

One finding per guest and facet that differs (severity high), its evidence naming the facet, each
differing item with the guest's value and the majority's, and the peers it was compared with. A
finding that stays the same while peers come and go keeps its key (it is not raised again); when the
guest no longer differs, it is cleared.

    comparer = FleetComparer()
    change = comparer.update(inventory)              # or update(inventory, name="web1/lab:db")
    change.raised, change.cleared                    # Findings
    comparer.remove("lab:db")                        # a guest that left the watch

The module is pure (no I/O): the watcher feeds it the inventories its workers send, a central service
those of every host.
"""

from __future__ import annotations

import hashlib
import json
import sys
from collections import Counter
from collections.abc import Iterable, Mapping
from dataclasses import dataclass, field
from itertools import islice
from typing import Any, Protocol

from vmsentinel.detect.finding import ROOTKIT, Attack, Finding, Severity
from vmsentinel.detect.registry import register

DETECTOR = "fleet_outlier"
#: guests needed before any verdict (with two, neither can be called the odd one)
MIN_GROUP = 3
#: share of the smaller set of executable paths that must be in the larger for two guests to be clones
CLONE_OVERLAP = 0.8
CLONE_FACETS = frozenset({"executables", "code_pages", "listening"})
#: facets in which an item a guest lacks is no vote (a code page not in memory says nothing)
SPARSE_FACETS = frozenset({"code_pages"})
#: differing items named in one finding's evidence (the rest are counted)
MAX_REPORTED_ITEMS = 20
#: what is taken from an inventory at most, facets and items in all (a hostile one cannot make the
#: comparison endless; a 6.12 guest's holds about 8000 items)
MAX_FACETS = 64
MAX_ITEMS = 1 << 18
MAX_TEXT = 256
COMPROMISED_BINARY = Attack("T1554", "Compromise Host Software Binary", "TA0003", "Persistence")
ATTACKS = {"executables": COMPROMISED_BINARY, "code_pages": COMPROMISED_BINARY}


class InventoryLike(Protocol):
    """What the comparer reads of an inventory (``events.GuestInventory`` or anything shaped like it)."""

    @property
    def target(self) -> str: ...

    @property
    def build_id(self) -> str: ...

    @property
    def release(self) -> str: ...

    @property
    def facets(self) -> Mapping[str, Mapping[str, str]]: ...


@dataclass(frozen=True)
class Peer:
    """One guest's inventory as compared: its name, its group and its facets, checked and bounded."""

    name: str
    build_id: str
    release: str
    facets: dict[str, dict[str, str]]
    #: facet -> digest of its items (guests with equal facets are compared once)
    digests: dict[str, str] = field(default_factory=dict, repr=False, compare=False)

    @property
    def group(self) -> str:
        return f"build:{self.build_id}" if self.build_id else f"release:{self.release}"

    @classmethod
    def of(cls, inventory: Any, name: str | None = None) -> Peer:
        """A peer from anything shaped like a ``GuestInventory`` (fields missing or of the wrong kind are
        taken as empty: a hostile or broken record is compared as what it holds, never raises)."""
        facets: dict[str, dict[str, str]] = {}
        raw = getattr(inventory, "facets", None)
        budget = MAX_ITEMS
        if isinstance(raw, Mapping):
            for facet, items in islice(raw.items(), MAX_FACETS):
                if not isinstance(facet, str) or not isinstance(items, Mapping):
                    continue
                clean: dict[str, str] = {}
                for key, value in islice(items.items(), budget):  # interned: peers of a build share their digests
                    clean[_interned(_text(key))] = _interned(_text(value))
                budget -= len(clean)
                facets[_text(facet)] = clean
        digests = {
            f: hashlib.blake2b(json.dumps(sorted(v.items())).encode(), digest_size=16).hexdigest() for f, v in facets.items()
        }
        return cls(
            _text(name if name is not None else getattr(inventory, "target", "")),
            _text(getattr(inventory, "build_id", "")),
            _text(getattr(inventory, "release", "")),
            facets,
            digests,
        )


def _interned(text: str) -> str:
    return sys.intern(text) if type(text) is str else text


def _text(value: object) -> str:
    """A value as a bounded string (a long one keeps its start and a digest of the whole)."""
    text = value if isinstance(value, str) else "" if value is None else str(value)
    if len(text) > MAX_TEXT:
        text = text[: MAX_TEXT - 34] + "…" + hashlib.blake2b(text.encode(errors="replace"), digest_size=16).hexdigest()
    return text


@dataclass
class FleetChange:
    """What one update changed: findings to raise, findings reported before and now over."""

    raised: list[Finding] = field(default_factory=list)
    cleared: list[Finding] = field(default_factory=list)


def clone_groups(peers: Iterable[Peer], overlap: float = CLONE_OVERLAP) -> list[list[Peer]]:
    """Peers (of one build) linked when their sets of executable paths mostly overlap; each connected set
    of links is one group of clones. A peer without the ``executables`` facet is in none."""
    members = [p for p in peers if "executables" in p.facets]
    parent = list(range(len(members)))

    def root(i: int) -> int:
        while parent[i] != i:
            parent[i] = parent[parent[i]]
            i = parent[i]
        return i

    paths = [set(p.facets["executables"]) for p in members]
    for i in range(len(members)):
        for j in range(i + 1, len(members)):
            if _clones(paths[i], paths[j], overlap):
                parent[root(i)] = root(j)
    groups: dict[int, list[Peer]] = {}
    for i, peer in enumerate(members):
        groups.setdefault(root(i), []).append(peer)
    return list(groups.values())


def _clones(a: set[str], b: set[str], overlap: float) -> bool:
    if not a and not b:
        return True
    if not a or not b:
        return False
    return len(a & b) >= overlap * min(len(a), len(b))


def compare_peers(peers: Iterable[Peer], min_group: int = MIN_GROUP) -> list[Finding]:
    """Every ``fleet_outlier`` finding among ``peers`` (any builds: each is compared within its own)."""
    by_group: dict[str, list[Peer]] = {}
    for peer in peers:
        by_group.setdefault(peer.group, []).append(peer)
    findings: list[Finding] = []
    for group in by_group.values():
        findings += _compare_build(group, min_group)
    return findings


def _compare_build(peers: list[Peer], min_group: int) -> list[Finding]:
    findings: list[Finding] = []
    kernel = sorted({f for p in peers for f in p.facets if f not in CLONE_FACETS})
    for facet in kernel:
        findings += _facet_outliers(facet, [p for p in peers if facet in p.facets], "build", min_group)
    for clones in clone_groups(peers):
        for facet in sorted(CLONE_FACETS):
            findings += _facet_outliers(facet, [p for p in clones if facet in p.facets], "clones", min_group)
    return findings


def _facet_outliers(facet: str, peers: list[Peer], scope: str, min_group: int) -> list[Finding]:
    if len(peers) < min_group:
        return []
    classes: dict[str, list[Peer]] = {}
    for peer in peers:
        classes.setdefault(peer.digests[facet], []).append(peer)
    if len(classes) == 1:
        return []  # every guest holds the same: nothing to look at item by item
    sparse = facet in SPARSE_FACETS
    shapes = [(members, members[0].facets[facet]) for members in classes.values()]
    items = sorted({item for _, values in shapes for item in values})
    differences: dict[int, list[tuple[str, str | None, str | None]]] = {}
    for item in items:
        votes: Counter[str | None] = Counter()
        for members, values in shapes:
            value = values.get(item)
            if value is None and sparse:
                continue
            votes[value] += len(members)
        voters = sum(votes.values())
        if voters < min_group or len(votes) < 2:
            continue
        majority, count = votes.most_common(1)[0]
        if count * 2 <= voters:
            continue  # no strict majority: no telling which value is the norm
        for index, (_members, values) in enumerate(shapes):
            value = values.get(item)
            if (value is None and sparse) or value == majority:
                continue
            differences.setdefault(index, []).append((item, value, majority))
    findings = []
    names = sorted(p.name for p in peers)
    for index, differing in differences.items():
        members, _values = shapes[index]
        for peer in members:
            findings.append(_finding(peer, facet, scope, differing, [n for n in names if n != peer.name]))
    return findings


def _finding(
    peer: Peer, facet: str, scope: str, differing: list[tuple[str, str | None, str | None]], peers: list[str]
) -> Finding:
    shown = [{"item": item, "value": value, "majority": majority} for item, value, majority in differing[:MAX_REPORTED_ITEMS]]
    among = "guests of its kernel build" if scope == "build" else "clones of its image"
    title = f"{facet} of {peer.name} is unlike that of most {among} ({len(differing)} item{'s' if len(differing) != 1 else ''})"
    evidence: dict[str, Any] = {
        "facet": facet,
        "compared_among": among,
        "build_id": peer.build_id,
        "release": peer.release,
        "differences": shown,
        "differing_items": len(differing),
        "peers": peers,
    }
    return Finding(DETECTOR, title, Severity.HIGH, ATTACKS.get(facet, ROOTKIT), peer.name, evidence, tuple(peers))


def _identity(finding: Finding) -> str:
    """What a finding says, without whom it was compared with: a finding whose peers alone changed is
    the same finding (kept with its key, not raised again)."""
    evidence = {k: v for k, v in finding.evidence.items() if k != "peers"}
    return json.dumps([finding.target, evidence], sort_keys=True, default=str)


class FleetComparer:
    """The peers of one watch (or of a whole fleet) and the outliers reported among them: fed one
    inventory at a time, it answers what to raise and what to clear."""

    def __init__(self, min_group: int = MIN_GROUP) -> None:
        self.min_group = max(2, min_group)
        self.peers: dict[str, Peer] = {}
        #: identity (see _identity) -> the finding reported for it
        self.reported: dict[str, Finding] = {}

    def update(self, inventory: Any, name: str | None = None) -> FleetChange:
        """Take ``inventory`` as the guest's (``name``, default: its ``target``) and compare again."""
        peer = Peer.of(inventory, name)
        old = self.peers.get(peer.name)
        self.peers[peer.name] = peer
        return self._again({peer.group} | ({old.group} if old is not None else set()))

    def remove(self, name: str) -> FleetChange:
        """The guest left: its findings are cleared, and its group compared again without it."""
        old = self.peers.pop(name, None)
        if old is None:
            return FleetChange()
        return self._again({old.group})

    def clear(self) -> FleetChange:
        """Forget every peer (the detector was disabled): every finding reported is cleared."""
        change = FleetChange(cleared=list(self.reported.values()))
        self.peers.clear()
        self.reported.clear()
        return change

    def findings(self) -> list[Finding]:
        """The findings in force."""
        return list(self.reported.values())

    def _again(self, groups: set[str]) -> FleetChange:
        members = [p for p in self.peers.values() if p.group in groups]
        names = {p.name for p in members}
        current = {_identity(f): f for f in compare_peers(members, self.min_group)}
        change = FleetChange()
        for identity, finding in list(self.reported.items()):
            in_scope = finding.target in names or finding.target not in self.peers
            if in_scope and identity not in current:
                change.cleared.append(self.reported.pop(identity))
        for identity, finding in current.items():
            if identity not in self.reported:
                self.reported[identity] = finding
                change.raised.append(finding)
        return change


@register(DETECTOR, facets={"inventory"})
def fleet_outlier(target: str, snap: object, prev: object, base: object) -> list[Finding]:
    """A guest whose kernel (text, read-only data, syscall table, IDT, modules, taint, eBPF programs) or,
    among clones of one image, whose programs, code pages or listening ports are unlike those of a
    strict majority of at least three peers (ATT&CK T1014 Rootkit). Compared by the watch across its
    guests (or by a central service across hosts), not within one snapshot: here it only asks a sweep
    for the guest's inventory."""
    return []
