"""ptychoflow: real-time, AI-accelerated X-ray ptychography over EPICS.

The core package runs everywhere (configuration, PV names, NTNDArray helpers,
the scan-file model and the detector simulator); ``ptychoflow.ioc``,
``ptychoflow.edge`` and ``ptychoflow.remote`` are the three places the
workflow runs.
"""

__version__ = "0.1.0"
