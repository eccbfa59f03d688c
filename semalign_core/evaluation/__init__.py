"""Evaluation helpers: the sandbox that runs model-generated code and the HumanEval/MBPP scorers.

Import the submodules directly (``semalign_core.evaluation.sandbox``,
``semalign_core.evaluation.code_tasks``); this package imports nothing heavy on its own.
"""
