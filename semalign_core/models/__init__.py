"""Models by name and how they are made.

registry        ``load_model(name)``: registry names, local folders, hub ids; owns the model cache
gguf            real small models from GGUF files in PyPI wheels, dequantised once
tiny            tiny seeded random models of every supported architecture (smoke profile, tests)
derive          ``derive_student``: a smaller same-vocabulary student by structured pruning
teacher_recipe  what a made teacher is (its recipe and cache key); torch-free
teachers        made teachers on disk, and loading any teacher

Import the submodules directly; this package imports nothing heavy on its own.
"""
