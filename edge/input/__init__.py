"""Frames in, up to the engine: one input PV on threads of the edge process.

* ``monitor.py``: the p4p monitor; its callback decodes and queues, nothing more;
* ``framequeue.py``: the bounded drop-oldest queue (counted), taken in micro-batches,
  with an optional observer of every frame dropped or taken (the lanes' ledger);
* ``positions.py``: scan positions from frame attributes, position channels or a file;
* ``channels.py``: motor readbacks (pvAccess, or Channel Access via caproto) and
  position streams (NTTable), feeding ``matching.py``;
* ``matching.py``: frames to channel positions by time or uniqueId, free of EPICS;
* ``gaps.py``: frames lost before the edge, from gaps in ``uniqueId``;
* ``intake.py``: the collector thread: check, preprocess, submit, swap models
  between batches; a ``FrameSource`` for one input.
"""
