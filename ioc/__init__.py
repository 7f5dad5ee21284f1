"""The control IOC: workflow PVs over CA and PVA, the orchestrator, the clients of the engines.

Importing the package is cheap on purpose: the IOC itself (softioc), the ophyd
devices, the Bluesky plans and the engines' SDKs (Parsl, globus-sdk) are
imported by the submodules that use them, when they are used.

What lives where:

- the IOC: ``server`` (records, put rules, Auto mode), ``puts`` (put rules and
  handlers declared on their PV), ``records``, ``validate``, ``access``, ``autosave``,
  ``watcher``, ``cli``;
- runs: ``stagetable`` (the one table of stages), ``statemachine``, ``orchestrator``
  (runs, overlap, lineage, abort), ``stagerun`` (one compute stage: slot, channel,
  retry), ``runstate``, ``deploy`` (register, deploy if better), ``qualitygate``,
  ``registry`` (SQLite), ``settings``;
- the engines' clients: ``transfer/`` (local copy, Globus Transfer), ``compute/``
  (local processes, Parsl, Globus Compute), ``globus_auth`` and ``login_cli``,
  ``flow_cli`` (Globus Flows), ``sitecheck`` (is the compute site compatible?);
- clients of the IOC: ``devices`` (ophyd), ``devices_async`` (ophyd-async), ``plans``
  (Bluesky), ``naming``; and of the edge and the simulator: ``devices_edge`` (ophyd-async);
- benchmarks: ``bench`` (PV latency), ``remotebench`` (back ends).
"""
