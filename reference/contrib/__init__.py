"""Optional backends that need extra packages (``pip install .[torch]``).

Nothing in the core package imports from here.
"""
