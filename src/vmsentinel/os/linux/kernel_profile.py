"""Resolve the profile and location of the kernel running in a guest, once:
from the cache when this kernel was seen before (milliseconds), otherwise
from memory alone (kallsyms + BTF, well under a few seconds), and cache it.

    resolved = resolve_kernel(target.memory, source="lab:web1")
    resolved.location.runtime_symbol("init_task"); resolved.how   # "cache" | "memory"
"""

from __future__ import annotations

import time
from dataclasses import dataclass, field

from vmsentinel.errors import KernelNotFound
from vmsentinel.memory.base import PhysicalMemory
from vmsentinel.os.linux.kernel_locate import KernelLocation, find_kernel, locate, profile_from_memory
from vmsentinel.os.linux.profile.profile import KernelProfile
from vmsentinel.os.linux.profile.store import ProfileStore


@dataclass
class ResolvedKernel:
    profile: KernelProfile
    location: KernelLocation
    how: str
    seconds: float
    timings: dict[str, float] = field(default_factory=dict)
    notes: list[str] = field(default_factory=list)


def resolve_kernel(
    mem: PhysicalMemory,
    source: str,
    store: ProfileStore | None = None,
    profile: KernelProfile | None = None,
    use_cache: bool = True,
) -> ResolvedKernel:
    """Profile + location for the kernel in ``mem``; ``profile`` forces a given profile (e.g. an ISF).

    ``use_cache=False`` builds from memory even when the cache knows the kernel (and refreshes the cache).
    """
    started = time.perf_counter()
    store = store or ProfileStore()
    notes: list[str] = []
    if profile is not None:
        found = find_kernel(mem)
        if found.banner.text != profile.identity.banner:
            notes.append("the given profile's banner differs from the guest's")
        slide = found.symbols.as_dict()["_text"] - profile.symbol("_text")
        location = locate(mem, profile, found.banner_phys, slide)
        return ResolvedKernel(profile, location, "given", time.perf_counter() - started, found.seconds, notes)
    if use_cache:
        hit = store.match(mem)
        if hit is not None:
            cached, banner_phys = hit
            try:
                location = locate(mem, cached, banner_phys)
                return ResolvedKernel(cached, location, "cache", time.perf_counter() - started)
            except KernelNotFound as exc:
                notes.append(f"cached profile did not fit: {exc}")
    found = find_kernel(mem)
    built = None
    if use_cache:
        cached_profile = store.get(found.identity.key)
        if cached_profile is not None and cached_profile.identity.banner == found.banner.text:
            built = cached_profile
    how = "cache" if built is not None else "memory"
    if built is None:
        built = profile_from_memory(found, source)
    location = locate(mem, built, found.banner_phys)
    # even when asked not to read the cache, a fresh build refreshes it
    if how == "memory":
        store.put(built, found.banner_phys)
    else:
        store.remember(built, found.banner_phys)
    return ResolvedKernel(built, location, how, time.perf_counter() - started, found.seconds, notes + found.notes)
