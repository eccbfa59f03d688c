"""The report layer: tables and figures from ``results/`` alone, beside the published numbers.

Imports no torch and loads no model. ``build`` runs every group (``python -m
semalign_core.report``). One module per page: ``model_statistics`` (Table 3), ``analysis_figures``
(SemAlign Figs. 2, 4-6; SALF's deviations and gains), ``semalign_tables`` (Table 1, Tables 4-5
budgets), ``teacher_table`` (Table 2), ``ablations``, ``salf`` (SALF main table, cost–benefit
figures). Shared: ``results`` (reading records), ``published`` (the papers' numbers),
``markdown`` (the one table writer), ``plots`` (deterministic PNGs).
"""
