"""Evaluation: benchmark scores through lm-eval, and safe execution of generated code.

harness     ``evaluate(model, tasks, ...)``: the one evaluation API (lm-eval over our task configs)
answers     GSM8K answer extraction
sandbox     one process per generated program, with limits; pass decided by a per-run nonce
sandbox_child  what the sandbox runs (by path; standard library only) and its pipe protocol
code_tasks  HumanEval/MBPP programs, code extraction, parallel scoring, pass@k

Import the submodules directly; this package imports nothing heavy on its own.
"""
