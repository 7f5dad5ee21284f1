"""Out: the edge's pvAccess PVs, the publisher that feeds them, the stitching process.

* ``pvaserver.py``: every PV of ``pvnames.EDGE``, put handlers registered per PV;
* ``publisher.py``: takes batches off the queue, posts Phase/Amplitude, places
  them on the map and posts the status twice a second;
* ``stitchproc.py``: the map in a process of its own (``--stitch-process``),
  a ``MapSink`` like the in-process ``ptychoflow.stitch.Stitcher``.
"""
