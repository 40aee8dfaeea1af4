"""The shared model contract (tests/model_contract.py) run against the dot-product EBM."""

from __future__ import annotations

from model_contract import ModelContract

from recsys_ebm.models.dot_ebm import DotEBM
from recsys_ebm.models.indexed import IndexedRecommender
from recsys_ebm.ranking.faiss_index import IndexConfig


class TestDotEBMHistoryContract(ModelContract):
    """User vectors from a history encoder: fold-in is the same computation as training users."""

    fold_in_exact = True

    def make_model(self, seed: int) -> DotEBM:
        return DotEBM(dim=8, user_model="history", loss="exact", epochs=30, lr=0.05,
                      batch_size=64, seed=seed)


class TestDotEBMFreeContract(ModelContract):
    """Free user vectors (cosine energy, the default): fold-in re-optimises a new vector, so
    only the ranking must agree."""

    fold_in_exact = False

    def make_model(self, seed: int) -> DotEBM:
        return DotEBM(dim=8, user_model="free", loss="exact", epochs=30, lr=0.05,
                      batch_size=64, seed=seed)


class TestDotEBMFreeDotContract(ModelContract):
    """Free user vectors with the plain dot-product energy and L2."""

    fold_in_exact = False

    def make_model(self, seed: int) -> DotEBM:
        return DotEBM(dim=8, user_model="free", similarity="dot", l2=1e-3, loss="exact", epochs=30,
                      lr=0.05, batch_size=64, seed=seed)


class TestIndexedDotEBMContract(ModelContract):
    """The free-vector dpebm served through an exact (flat) FAISS index: the same contract."""

    fold_in_exact = False

    def make_model(self, seed: int) -> IndexedRecommender:
        return IndexedRecommender(DotEBM(dim=8, user_model="free", loss="exact", epochs=30, lr=0.05,
                                         batch_size=64, seed=seed), config=IndexConfig(kind="flat"))


class TestHNSWDotEBMContract(ModelContract):
    """Served through an HNSW graph: on a catalog this small the graph search is exact."""

    fold_in_exact = False

    def make_model(self, seed: int) -> IndexedRecommender:
        return IndexedRecommender(DotEBM(dim=8, user_model="free", loss="exact", epochs=30, lr=0.05,
                                         batch_size=64, seed=seed), config=IndexConfig(kind="hnsw"))
