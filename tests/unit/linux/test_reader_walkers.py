"""The bounded walkers every view uses (list_head lists, hlists, XArrays) on a
synthetic kernel: loops, truncation, and pointers out of the address space."""

from __future__ import annotations

import gc

import pytest
from tests.synthetic import DIRECT_MAP, synthetic_kernel_reader
from tests.synthetic_kernel import sample_btf

from vmsentinel.errors import ReadError

DIRECT = DIRECT_MAP
TASKS_OFF = 8  # task_struct.tasks in sample_btf()


class SyntheticKernel:
    def __init__(self) -> None:
        self.mem, self.reader = synthetic_kernel_reader(sample_btf(), symbols={"head": DIRECT + 0x1000})
        self.next_free = 0x10000

    def alloc(self, size: int = 0x100) -> int:
        addr = DIRECT + self.next_free
        self.next_free += (size + 0xFF) & ~0xFF
        return addr

    def put(self, vaddr: int, value: int) -> None:
        self.mem.write_u64(vaddr - DIRECT, value)


def _circular_list(k: SyntheticKernel, count: int) -> tuple[int, list[int]]:
    head = k.alloc()
    tasks = [k.alloc() for _ in range(count)]
    nodes = [head] + [t + TASKS_OFF for t in tasks]
    for a, b in zip(nodes, nodes[1:] + nodes[:1], strict=True):
        k.put(a, b)
        k.put(b + 8, a)
    return head, tasks


def test_list_walk_visits_each_container_once() -> None:
    k = SyntheticKernel()
    head, tasks = _circular_list(k, 5)
    walk = k.reader.list_walk(head, "task_struct", "tasks")
    assert walk.items == tasks and not walk.problems and not walk.truncated


def test_list_that_loops_without_returning_to_its_head() -> None:
    k = SyntheticKernel()
    head, tasks = _circular_list(k, 5)
    k.put(tasks[3] + TASKS_OFF, tasks[1] + TASKS_OFF)  # 4th -> 2nd: a cycle that skips the head
    walk = k.reader.list_walk(head, "task_struct", "tasks")
    assert walk.items == tasks[:4]
    assert any("loops back" in p for p in walk.problems)


@pytest.mark.parametrize("bad", [0x7FFF0000, 0x0000800000000000, DIRECT + 0x4000000])
def test_list_with_pointers_out_of_the_address_space(bad: int) -> None:
    k = SyntheticKernel()
    head, tasks = _circular_list(k, 3)
    k.put(tasks[1] + TASKS_OFF, bad)  # user, non-canonical, and unmapped kernel addresses
    walk = k.reader.list_walk(head, "task_struct", "tasks")
    if bad == DIRECT + 0x4000000:
        assert walk.items == [*tasks[:2], bad - TASKS_OFF]  # reached, but reading past it fails
        assert any("cannot read" in p for p in walk.problems)
    else:
        assert walk.items == tasks[:2] and any("bad next pointer" in p for p in walk.problems)


def test_list_walk_is_capped() -> None:
    k = SyntheticKernel()
    head, _ = _circular_list(k, 50)
    walk = k.reader.list_walk(head, "task_struct", "tasks", limit=10)
    assert walk.truncated and len(walk.items) == 10


def test_hlist_walk_and_its_loops() -> None:
    k = SyntheticKernel()
    first_at = k.alloc()
    nodes = [k.alloc() + TASKS_OFF for _ in range(3)]
    k.put(first_at, nodes[0])
    k.put(nodes[0], nodes[1])
    k.put(nodes[1], nodes[2])
    k.put(nodes[2], 0)
    assert k.reader.hlist_walk(first_at, "task_struct", "tasks").items == [n - TASKS_OFF for n in nodes]
    k.put(nodes[2], nodes[0])  # loop
    walk = k.reader.hlist_walk(first_at, "task_struct", "tasks")
    assert len(walk.items) == 3 and walk.problems


def _xa_node(k: SyntheticKernel, shift: int, slots: dict[int, int]) -> int:
    node = k.alloc(576)
    k.mem.write(node - DIRECT, bytes([shift]))
    for slot, entry in slots.items():
        k.put(node + 40 + slot * 8, entry)
    return node


def test_xarray_two_levels_and_skipped_internal_entries() -> None:
    k = SyntheticKernel()
    pid_a, pid_b, pid_c = k.alloc(), k.alloc(), k.alloc()
    leaf0 = _xa_node(k, 0, {1: pid_a, 2: (5 << 2) | 2, 3: 0x11})  # a pointer, a sibling entry, a value entry
    leaf1 = _xa_node(k, 0, {63: pid_b})
    top = _xa_node(k, 6, {0: leaf0 | 2, 3: leaf1 | 2, 5: pid_c})
    head_at = k.alloc()
    k.put(head_at, top | 2)
    gc.collect()
    gc.disable()  # as in a worker: the walk must leave no reference cycle behind
    try:
        entries, problems = k.reader.xarray_entries(head_at)
        assert gc.collect() == 0
    finally:
        gc.enable()
    assert entries == [(1, pid_a), (3 * 64 + 63, pid_b), (5 << 6, pid_c)] and not problems


def test_xarray_cycles_and_bad_shifts_are_bounded() -> None:
    k = SyntheticKernel()
    head_at = k.alloc()
    top = _xa_node(k, 6, {})
    k.put(top + 40, top | 2)  # slot 0 points back at itself
    k.put(head_at, top | 2)
    entries, problems = k.reader.xarray_entries(head_at)
    assert entries == [] and any("shift" in p for p in problems)
    k.put(head_at, DIRECT + 0x5000000 | 2)  # a node outside RAM
    entries, problems = k.reader.xarray_entries(head_at)
    assert entries == [] and any("cannot read" in p for p in problems)


def test_reads_outside_the_address_space_raise_read_error() -> None:
    k = SyntheticKernel()
    with pytest.raises(ReadError):
        k.reader.u64(DIRECT + 0x4000000)
    with pytest.raises(ReadError):
        k.reader.cstring(0xFFFFFFFF81000000)
    assert k.reader.pointer(k.alloc()) is None  # NULL
