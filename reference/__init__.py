"""Reference implementation of dynamic-index negative mining for dual encoders.

Monath, Zaheer, Allen, McCallum, "Improving Dual-Encoder Training through
Dynamic Indexes for Negative Mining", AISTATS 2023. The specification,
with the notation used throughout (q, z, rho, eps, cut, phi, W), the
invariants, the propositions P1-P13 and a reading order (``reference/plain.py``
first), is ``proofs/README.md``.
"""

__version__ = "0.1.0"
