"""Connectors: how a guest's memory and its hypervisor are reached."""
