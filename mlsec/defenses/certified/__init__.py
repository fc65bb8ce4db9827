"""Certified robustness: randomized smoothing (l2) and interval bound propagation (linf).

A certificate is a lower bound on robust accuracy, where an attack gives an upper bound.

- :class:`Smoothing` (Cohen, Rosenfeld & Kolter 2019): the smoothed classifier of a base model
  under Gaussian noise; CERTIFY gives each sample an l2 radius that holds with probability at least
  ``1 - alpha``, PREDICT its class or an abstention.
- :func:`verified` and the other interval functions (Gowal et al. 2018): bounds of a network's
  outputs over a linf box, layer by layer; a verified sample is provably classified correctly
  everywhere within eps.

References:
    J. Cohen, E. Rosenfeld, J. Z. Kolter. Certified Adversarial Robustness via Randomized
    Smoothing. ICML 2019. arXiv:1902.02918.

    S. Gowal, K. Dvijotham, R. Stanforth, R. Bunel, C. Qin, J. Uesato, R. Arandjelovic, T. Mann,
    P. Kohli. On the Effectiveness of Interval Bound Propagation for Training Verifiably Robust
    Models. arXiv:1810.12715, 2018.

"""

from mlsec.defenses.certified.intervals import (
    check_bounded,
    interval_bounds,
    linf_bounds,
    margin_bounds,
    verified,
)
from mlsec.defenses.certified.smoothing import Certificate, SmoothedClassifier, Smoothing

__all__ = [
    "Certificate",
    "SmoothedClassifier",
    "Smoothing",
    "check_bounded",
    "interval_bounds",
    "linf_bounds",
    "margin_bounds",
    "verified",
]
