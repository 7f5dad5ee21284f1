"""Inference: engines, the checks a model must pass, where batches run, hot swap.

* ``engines.py``: ONNX Runtime, TensorRT, OpenVINO, PyTorch behind one ``Engine``
  interface, and the registry (``ENGINES``, ``AUTO``) ``--engine`` chooses from;
* ``modelcheck.py``: model paths under the model folder, and what a model
  must declare (input, outputs, card) before it may serve;
* ``runners.py``: engines on threads of this process (streams) or in worker
  processes, each returning futures;
* ``hotswap.py``: load, check and warm up a model in the background; a model
  swapped out closes itself once its last batch is published;
* ``resume.py``: the record of the model serving, kept in the model folder, so
  a restarted edge serves the model deployed last rather than ``--model``.
"""
