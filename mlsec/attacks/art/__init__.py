"""Any evasion attack of the Adversarial Robustness Toolbox (ART) behind mlsec's Attack interface.

``ARTAttack("CarliniL2Method", eps=0.5, norm="l2", max_iter=10)`` runs ART's attack through an ART
``PyTorchClassifier`` built around the model at call time, and hands the answer to the base class,
which projects it onto the eps ball and the bounds like every mlsec attack's. Minimum-norm attacks
(Carlini-Wagner, DeepFool, ElasticNet, HopSkipJump) have no budget of their own; the projection
makes their answers admissible, so they are scored at the budget like any other attack.

ART is imported when an ART attack is first built, not when mlsec is imported: the import takes
seconds and writes ``~/.art/config.json``.

Modules: :mod:`~mlsec.attacks.art.catalog` (which ART attacks can run), :mod:`.options` (the ART
options, checked by ART), :mod:`.estimator` (the classifier ART wraps, seeding) and
:mod:`.attack` (the :class:`ARTAttack` class and the registered ART attacks).

References:
    M.-I. Nicolae et al. Adversarial Robustness Toolbox v1.0.0. arXiv:1807.01069.
    https://github.com/Trusted-AI/adversarial-robustness-toolbox

"""

from mlsec.attacks.art.attack import ARTAttack, ARTDeepFool, ARTElasticNet
from mlsec.attacks.art.catalog import art_attack_names, gradient_free

__all__ = ["ARTAttack", "ARTDeepFool", "ARTElasticNet", "art_attack_names", "gradient_free"]
