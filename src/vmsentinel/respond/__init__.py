"""Responses through the hypervisor: dump, cut the network, pause."""
