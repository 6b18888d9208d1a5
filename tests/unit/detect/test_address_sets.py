"""The baseline's compact address sets behave as the set and dict they replace, hostile keys included."""

from __future__ import annotations

import pickle

import pytest

from vmsentinel.detect.baseline import AddressMap, AddressSet


def test_address_set_membership_order_and_pickling() -> None:
    sites = AddressSet([0xFFFFFFFF81000010, 5, 0xFFFFFFFF81000010, 1 << 63])
    assert len(sites) == 3 and list(sites) == [5, 1 << 63, 0xFFFFFFFF81000010]
    assert 5 in sites and 6 not in sites and 0xFFFFFFFF81000010 in sites
    assert -1 not in sites and 1 << 64 not in sites and "5" not in sites  # never raises
    assert list(pickle.loads(pickle.dumps(sites))) == list(sites)
    assert 4 not in AddressSet()


def test_address_map_lookup_and_missing_keys() -> None:
    jumps = AddressMap({0xFFFFFFFF81000020: 0xFFFFFFFF81000100, 7: 9})
    assert jumps[7] == 9 and jumps[0xFFFFFFFF81000020] == 0xFFFFFFFF81000100
    assert dict(jumps) == {7: 9, 0xFFFFFFFF81000020: 0xFFFFFFFF81000100}
    assert 8 not in jumps and -3 not in jumps
    with pytest.raises(KeyError):
        jumps[8]
    assert dict(pickle.loads(pickle.dumps(jumps))) == dict(jumps) and len(AddressMap()) == 0
