"""Model construction: tiny seeded models made from configs (``tiny``) and, later, the registry.

Kept free of heavy imports so ``import semalign_core.models`` stays cheap.
"""
