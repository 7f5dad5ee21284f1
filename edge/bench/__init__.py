"""``ptychoflow bench edge``: how fast the edge is, measured against what a user would compare.

* ``edge.py``: the command: engine alone, the pipeline, the baseline, the peer;
* ``pipeline.py``: the pipeline pass (simulator -> edge -> client), timed;
* ``models.py``: small ONNX models built with the onnx helper API (tests, stand-ins);
* ``baseline.py``: the network remote/ trains, and PyTorch eager as the baseline
  (the one module of the edge that imports ``ptychoflow.remote``);
* ``peer.py``, ``peer_processor.py``: the same model in pvapy's HPC consumer.
"""
