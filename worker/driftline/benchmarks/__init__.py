"""The code behind ``driftline bench``: shipped, because the command is.

One module per benchmark (``throughput``, ``latency``, ``state``, ``drift``), ``suite``
runs them together into one report with its targets, ``broker`` starts the broker a run
uses, and ``worker_process`` runs ``driftline worker`` as a child process for the latency
benchmark.  Nothing here is imported by the worker itself.
"""
