"""The training methods by name: what each one trains and which loss it minimises.

Imports no torch, so the config validates `method` and derives `uses_prototypes` cheaply;
each method's loss is registered in `steps.LOSSES` under `Method.loss`
(see docs/method.md#losses).
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Mapping

from .registry import Registry


@dataclass(frozen=True)
class Method:
    loss: str  # a name in steps.LOSSES
    prototype_head: bool  # DPNP prototype head; otherwise a linear softmax head
    adversarial: bool = True  # trains on the training adversary's PGD examples
    clean_branch: bool = True  # the clean batch also goes through the network
    attack_loss: str | None = None  # the training attack's objective; None: the config's train_attack_loss
    weights: tuple[str, ...] = ()  # the loss weights (config fields) its loss reads, all terms switched on


METHODS: Registry[Method] = Registry("method")

METHODS.register("adv_dpnp")(Method(loss="adv_dpnp", prototype_head=True,
                                    weights=("lambda_ppa", "lambda_npr", "beta_adv", "lambda_cons")))
METHODS.register("dpnp")(Method(loss="adv_dpnp", prototype_head=True, adversarial=False,  # clean terms only
                                weights=("lambda_ppa", "lambda_npr")))
METHODS.register("pgd_at")(Method(loss="pgd_at", prototype_head=False, clean_branch=False))
# TRADES' attack maximises KL to the clean prediction.
METHODS.register("trades")(Method(loss="trades", prototype_head=False, attack_loss="kl", weights=("trades_beta",)))
# MART's attack is PGD on CE, as in the authors' code, whatever train_attack_loss says.
METHODS.register("mart")(Method(loss="mart", prototype_head=False, attack_loss="ce", weights=("mart_beta",)))
# Mechanism controls (docs/method.md#mechanism-controls): Adv-DPNP's step and loss with a linear softmax
# head (PPA and NPR need prototypes, so they drop out), and PGD-AT's loss on the prototype head.
METHODS.register("hybrid_linear")(Method(loss="adv_dpnp", prototype_head=False, weights=("beta_adv", "lambda_cons")))
METHODS.register("proto_ce")(Method(loss="pgd_at", prototype_head=True, clean_branch=False))

WEIGHT_SWITCHES = {"lambda_ppa": "use_ppa", "lambda_npr": "use_npr", "lambda_cons": "use_consistency"}
"""A loss weight -> the config switch whose False drops its term (and so the weight) from the loss."""


def loss_weights(method: str, switches: Mapping[str, bool] | None = None) -> tuple[str, ...]:
    """The loss weights `method`'s loss reads when `switches` (config field -> bool; absent: on) hold."""
    return tuple(w for w in METHODS.get(method).weights if (switches or {}).get(WEIGHT_SWITCHES.get(w, ""), True))
