"""The control IOC: workflow PVs over CA and PVA, state machine, registry, clients.

Importing the package is cheap on purpose: the IOC itself (softioc), the ophyd
devices and the Bluesky plans live in submodules that import their heavy
dependencies only when used.
"""
