"""CPU architectures: turning guest-virtual addresses into guest-physical ones."""

from vmsentinel.arch.x86_64 import Mapping, MappingWalk, PagingAddressSpace, Translation, cr3_to_root, paging_levels_from_cr4

__all__ = ["Mapping", "MappingWalk", "PagingAddressSpace", "Translation", "cr3_to_root", "paging_levels_from_cr4"]
