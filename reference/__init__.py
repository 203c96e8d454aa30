"""Reference implementation of dynamic-index negative mining for dual encoders.

Monath, Zaheer, Allen, McCallum, "Improving Dual-Encoder Training through
Dynamic Indexes for Negative Mining", AISTATS 2023. See ``SPEC.md`` for the
notation used throughout (q, z, rho, eps, cut, phi, W).
"""

__version__ = "0.1.0"
