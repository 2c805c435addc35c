"""The `dvc repro` stages' entry points (`python -m tasks.stages.<stage>`, see dvc.yaml): each
reads params.yaml and its folders and calls the module it is named after. Kept apart from those
modules, so the code a cache key follows (tasks/code_closure.py) is the work, not the command
line that starts it.
"""
