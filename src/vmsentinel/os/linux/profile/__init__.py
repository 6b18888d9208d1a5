"""Kernel profiles: types (BTF), symbols (kallsyms, System.map), kernel images, the cache, and Volatility 3 ISF."""
