"""``attnebm``: attention as an energy over ordered histories (``model.py``, ``module.py``)."""

from recsys_ebm.models.attn_ebm.model import AttnEBM, AttnEBMConfig

__all__ = ["AttnEBM", "AttnEBMConfig"]
