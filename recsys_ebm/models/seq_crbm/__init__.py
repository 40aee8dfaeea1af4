"""``seqcrbm``: a conditional RBM over event sequences (``module.py`` the energy, ``model.py``
the recommender and its CD-k / exact training)."""

from recsys_ebm.models.seq_crbm.model import SeqCRBM, SeqCRBMConfig

__all__ = ["SeqCRBM", "SeqCRBMConfig"]
