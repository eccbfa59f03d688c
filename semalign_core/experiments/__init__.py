"""Experiments: one module per notebook, and what the notebooks share.

=====================  ======================================================================
notebook               module
=====================  ======================================================================
00 models and data     ``models_data``
01 SemAlign analyses   ``semalign_analyses`` (Fig. 2, Figs. 4-6)
02 SALF analysis       ``salf_analysis`` (deviations, gains, eof)
03, 04 Tables 1-2      ``transfer_tables`` (04's teachers are made by ``teachers``)
05 ablations           ``ablations`` (its variants: ``ablation_variants``)
06 SALF main table     ``salf_main``
07 SALF cost–benefit   ``salf_cost_benefit`` (both SALF notebooks run ``salf_cells``)
=====================  ======================================================================

Shared: ``catalog`` (every experiment's name and table layout), ``budgets`` (every per-profile
budget and the default seeds), ``model_pool`` (loading models), ``notebook`` (``start`` and the
parameter checks). Every run is one record, reused while valid (``records.get_or_compute``).
"""
