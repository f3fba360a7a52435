"""The workloads of ``scripts/bench.py``, one module per section of its table.

``common`` (rows, settings, timing helpers, the table), ``workloads`` (data files and configs),
``training`` (sections overhead, cnn), ``step``, ``data_path`` (data), ``logging_cost``
(logging), ``startup``, ``checkpoint`` and ``gpu``. ``scripts/bench.py`` runs them.
"""
