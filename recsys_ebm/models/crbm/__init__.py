"""Conditional RBM for collaborative filtering (Salakhutdinov, Mnih & Hinton, ICML 2007).

One RBM per *case*, all sharing weights. A case is a user whose visible units are the items
they rated (``orientation="user"``, as in the paper) or an item whose visible units are the
users who rated it (``orientation="item"``, the I-RBM of the AutoRec paper: better on
MovieLens). Below, "units" are the items of a user-case or the users of an item-case.

Training is CD-k (k on a schedule, optionally persistent) with each weight's gradient divided
by the number of cases in the minibatch that touched it, momentum, weight decay, learning-rate
decay and early stopping on the RMSE of a validation split carved from the training ratings.

``visible="joint"`` gives one RBM per user over a binary "rated" unit for every item beside
the rating softmax of the rated ones: it models which items a user rates, not only how, and
ranks by the exact p(r_i = 1 | v).

Modules: ``config`` (`CRBMConfig`), ``cases`` (`CaseData`, `CaseBatch`: which ratings form a
case), ``module`` (`CRBMModule`: energies, exact predictions, CD-k gradients), ``trainer``
(the CD-k training run and its monitor), ``joint`` (the joint layer's energies, exact scores and
CD-k / PCD), ``joint_model`` (its training run, scores and ranking), ``gibbs`` (temperature-T
block Gibbs chains and their exploratory lists), ``retrieval`` (FAISS candidates, exact
re-ranking), ``threads`` and ``model`` (the `CRBM` recommender).
"""

from __future__ import annotations

from recsys_ebm.models.crbm.cases import CaseData
from recsys_ebm.models.crbm.config import CRBMConfig
from recsys_ebm.models.crbm.model import CRBM

__all__ = ["CRBM", "CRBMConfig", "CaseData"]
