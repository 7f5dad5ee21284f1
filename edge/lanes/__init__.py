"""Lanes: one process per input PV, for detectors that scatter frames over several PVs.

* ``parent.py``: the edge process's side (``LaneSet``, a ``FrameSource``);
* ``child.py``: the lane process: an intake whose batches go to the edge
  process through shared-memory slots;
* ``handle.py``: the edge process's end of one lane, and restarts;
* ``protocol.py``: what the two say to each other (frozen dataclasses);
* ``ledger.py``: frames no lane saw, from every frame each lane accounted for.
"""
