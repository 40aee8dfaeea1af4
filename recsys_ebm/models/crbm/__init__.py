"""Conditional RBM for collaborative filtering (Salakhutdinov, Mnih & Hinton, ICML 2007).

One RBM per *case*, all sharing weights. A case is a user whose visible units are the items
they rated (``orientation="user"``, as in the paper) or an item whose visible units are the
users who rated it (``orientation="item"``, the I-RBM of the AutoRec paper: better on
MovieLens). Below, "units" are the items of a user-case or the users of an item-case.

Training is CD-k (k on a schedule, optionally persistent) with each weight's gradient divided
by the number of cases in the minibatch that touched it, momentum, weight decay, learning-rate
decay and early stopping on the RMSE of a validation split carved from the training ratings.

Modules: ``config`` (`CRBMConfig`), ``cases`` (`CaseData`, `CaseBatch`: which ratings form a
case), ``module`` (`CRBMModule`: energies, exact predictions, CD-k gradients), ``trainer``
(the CD-k training run and its monitor) and ``model`` (the `CRBM` recommender).
"""

from __future__ import annotations

from recsys_ebm.models.crbm.cases import CaseData
from recsys_ebm.models.crbm.config import CRBMConfig
from recsys_ebm.models.crbm.model import CRBM

__all__ = ["CRBM", "CRBMConfig", "CaseData"]
