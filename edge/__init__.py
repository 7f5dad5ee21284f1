"""The edge service: runs next to the detector, turns every frame into a phase image.

What lives where (each wing is a package; its ``__init__`` says more):

* ``cli.py``, ``settings.py``: ``ptychoflow edge`` and its ``[edge]`` settings;
* ``service.py``: wires a frame source, the publisher and the PVA server, and
  registers the put handlers of the edge's PVs;
* ``messages.py``: the vocabulary between the parts (what goes down the
  publisher's queue) and their interfaces (``FrameSource``, ``MapSink``);
* ``channel.py``: typed messages on a pipe plus shared-memory image slots,
  used by the lanes and by the stitching process alike;
* ``threads.py``: thread names and Linux scheduling policy;
* ``input/``: frames in, up to the engine (PVA monitor, frame queue,
  positions, gap counting, the intake that batches);
* ``infer/``: engines and their registry, model checks, runners, hot swap;
* ``output/``: the PVA server, the publisher, the stitching process;
* ``lanes/``: one process per input PV (parent, child, their protocol, the
  ledger of lost frames);
* ``bench/``: ``ptychoflow bench edge``, its pipeline pass, fixture models,
  the PyTorch baseline and the pvapy peer.

The edge installs without torch, pty-chi or onnx (``ptychoflow[edge]``), and
imports nothing from ``ptychoflow.remote`` but in the benchmark's baseline.
"""
