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


def test_guests_of_one_build_share_their_sites_at_any_slide() -> None:
    """Two baselines of one build (sites at two slides) hold one array of offsets between them; a guest
    with one more site holds its own."""
    sites = [0xFFFFFFFF81000010 + 0x40 * i for i in range(1000)]
    jumps = {a: a + 0x200 for a in sites[:10]}
    slide = 0x3400000
    one, two = AddressSet(sites), AddressSet(a + slide for a in sites)
    assert one._offsets is two._offsets
    assert sites[5] + slide in two and sites[5] not in two and list(two)[:2] == [sites[0] + slide, sites[1] + slide]
    other = AddressSet([*sites, sites[-1] + 0x40])
    assert other._offsets is not one._offsets and len(other) == 1001
    first, moved = AddressMap(jumps), AddressMap({a + slide: t + slide for a, t in jumps.items()})
    assert first._keys is moved._keys and first._values is moved._values
    assert moved[sites[3] + slide] == sites[3] + slide + 0x200
    back = AddressMap({0xFFFFFFFF81000100: 0xFFFFFFFF81000000})  # a target below every site
    assert dict(back) == {0xFFFFFFFF81000100: 0xFFFFFFFF81000000}
    loaded = pickle.loads(pickle.dumps(two))
    assert loaded._offsets is one._offsets and list(loaded) == list(two)


def test_a_baseline_stored_with_absolute_addresses_still_loads() -> None:
    """Rows written before the offsets were shared hold ``_sorted`` (and ``_keys``/``_values``) absolute."""
    from array import array

    old_set = AddressSet.__new__(AddressSet)
    old_set.__dict__.update(_sorted=array("Q", [5, 0xFFFFFFFF81000010]))
    old_map = AddressMap.__new__(AddressMap)
    old_map.__dict__.update(_keys=array("Q", [7, 0xFFFFFFFF81000020]), _values=array("Q", [9, 0xFFFFFFFF81000100]))
    sites, jumps = pickle.loads(pickle.dumps(old_set)), pickle.loads(pickle.dumps(old_map))
    assert list(sites) == [5, 0xFFFFFFFF81000010] and 0xFFFFFFFF81000010 in sites
    assert dict(jumps) == {7: 9, 0xFFFFFFFF81000020: 0xFFFFFFFF81000100}
