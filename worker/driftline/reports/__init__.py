"""HTML reports an operator opens: a model version's evaluation, and a drift incident.

Imported only by ``driftline report`` (it draws with matplotlib, which the worker never
loads).  ``data`` computes what is shown, ``render`` draws it, ``store`` writes it beside
the model in the registry.
"""
