"""The HPC half of the loop: scan file in, validated ONNX model and its card out.

- :mod:`.stages` — ``transfer``, ``reconstruct``, ``train``, ``export``: the
  picklable stage functions any executor runs (see :mod:`ptychoflow.stages`);
- :mod:`.recon` — rPIE/ePIE/LSQML/DM with pty-chi, reconstruction files;
- :mod:`.pairs`, :mod:`.dataset` — training pairs and the growing training set;
- :mod:`.ptychonn`, :mod:`.train` — the network and continuous training;
- :mod:`.export`, :mod:`.quality` — ONNX, model card, quality figures;
- :mod:`.cli` — ``ptychoflow remote reconstruct|train|export|evaluate``.

Nothing heavy is imported here: torch, pty-chi and onnx load inside the
modules that need them.
"""
