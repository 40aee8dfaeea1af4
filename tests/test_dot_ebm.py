"""Dot-product EBM: energies, probabilities and losses against hand computations; training
behaviour (NLL decreases, divergence detection, early stopping); config validation.

The interface contract (known top-1, filtering, save/load, seeds, fold-in) is in
test_contract_dot_ebm.py.
"""

from __future__ import annotations

import math
import re

import numpy as np
import pytest
import scipy.sparse as sp
import torch
from model_contract import checkerboard

from recsys_ebm.errors import ModelFitError
from recsys_ebm.models.dot_ebm import DotEBM, DotEBMConfig, DotEBMModule
from recsys_ebm.models.training import ranking_validator


@pytest.fixture(autouse=True, scope="module")
def _one_torch_thread():
    # tiny tensors: intra-op threads only add OpenMP spin-waits on a shared machine
    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(threads)


# Hand-made parameters: 2 users, 3 items, dim 2.
P = [[1.0, 2.0], [-1.0, 0.5]]
Q = [[3.0, -1.0], [0.0, 1.0], [2.0, 2.0]]
B = [0.5, -1.0, 0.0]
# -E(u, i) = p_u . q_i + b_i, worked out on paper:
#   u0: 3 - 2 + 0.5 = 1.5,   0 + 2 - 1 = 1,    2 + 4 + 0 = 6
#   u1: -3 - 0.5 + 0.5 = -3, 0 + 0.5 - 1 = -0.5, -2 + 1 + 0 = -1
NEG_ENERGY = [[1.5, 1.0, 6.0], [-3.0, -0.5, -1.0]]


def _hand_model(**options) -> DotEBM:
    """A 'fitted' free-vector model holding the hand-made parameters."""
    model = DotEBM(dim=2, user_model="free", **options)
    model.n_users, model.n_items = 2, 3
    model.user_factors = np.array(P, dtype=np.float32)
    model.item_factors = np.array(Q, dtype=np.float32)
    model.item_bias = np.array(B, dtype=np.float32)
    return model


def _softmax(row: list[float], temperature: float) -> list[float]:
    """Plain-Python softmax(row / T)."""
    exps = [math.exp(x / temperature) for x in row]
    return [e / sum(exps) for e in exps]


def _blocks(seed: int = 0, n_users: int = 60, n_items: int = 40) -> tuple[sp.csr_matrix, sp.csr_matrix]:
    """4 noisy user groups x 10-item blocks; a quarter of each user's items held out for validation."""
    rng = np.random.default_rng(seed)
    group = rng.integers(0, 4, n_users)
    dense = rng.random((n_users, n_items)) < np.where(group[:, None] == np.arange(n_items) // 10, 0.5, 0.05)
    valid = np.zeros_like(dense)
    for u in range(n_users):
        items = np.flatnonzero(dense[u])
        held = rng.choice(items, size=max(1, len(items) // 4), replace=False)
        valid[u, held], dense[u, held] = True, False
    return sp.csr_matrix(dense.astype(np.float32)), sp.csr_matrix(valid.astype(np.float32))


# ---------------------------------------------------------------------- energy and probabilities
def test_energy_is_minus_dot_product_plus_bias_by_hand():
    model = _hand_model()
    users, items = np.repeat([0, 1], 3), np.tile([0, 1, 2], 2)
    energy = model.energy(users, items)
    assert energy.shape == (6,)
    np.testing.assert_allclose(energy, -np.ravel(NEG_ENERGY), rtol=1e-6)
    np.testing.assert_allclose(model.score([0, 1]), NEG_ENERGY, rtol=1e-6)


def test_energy_of_a_trained_model_matches_its_vectors():
    train = checkerboard().train
    model = DotEBM(dim=4, user_model="history", epochs=3, lr=0.05, seed=0).fit(train, show_progress=False)
    p, q, b = model.user_vectors(np.arange(16)), model.item_vectors(), model.item_biases()
    users, items = np.meshgrid(np.arange(16), np.arange(16), indexing="ij")
    energy = model.energy(users.ravel(), items.ravel()).reshape(16, 16)
    for u in range(16):
        for i in range(16):
            by_hand = -(sum(float(p[u, d]) * float(q[i, d]) for d in range(4)) + float(b[i]))
            assert energy[u, i] == pytest.approx(by_hand, rel=1e-5, abs=1e-6)
    np.testing.assert_allclose(model.score(np.arange(16)), -energy, rtol=1e-6, atol=1e-6)


def test_energy_rejects_unknown_ids_by_name():
    model = _hand_model()
    with pytest.raises(IndexError, match="item id 3"):
        model.energy([0], [3])
    with pytest.raises(IndexError, match="item id -1"):
        model.energy([0], [-1])
    with pytest.raises(IndexError, match="user id 2"):
        model.energy([2], [0])
    with pytest.raises(ValueError, match="align"):
        model.energy([0, 1], [0])


@pytest.mark.parametrize("temperature", [1.0, 0.5, 3.0])
def test_probabilities_are_the_softmax_of_minus_energy_over_t(temperature):
    model = _hand_model()
    probs = model.probabilities([0, 1], temperature=temperature)
    assert probs.shape == (2, 3)
    np.testing.assert_allclose(probs.sum(axis=1), 1.0, rtol=1e-12)
    for u in range(2):
        np.testing.assert_allclose(probs[u], _softmax(NEG_ENERGY[u], temperature), rtol=1e-6)


def test_probabilities_default_to_the_config_temperature():
    model = _hand_model(temperature=0.25)
    np.testing.assert_allclose(model.probabilities([0])[0], _softmax(NEG_ENERGY[0], 0.25), rtol=1e-6)
    # 6 / 0.25 dominates: p(item 2 | u0) = 1 / (1 + e^-18 + e^-20)
    assert model.probabilities([0])[0, 2] == pytest.approx(1 / (1 + math.exp(-18) + math.exp(-20)))


def test_history_encoder_by_hand():
    # p_u = tanh(W^T x / ||x|| + c); x = items {0, 2} of 3, so x / ||x|| = (1, 0, 1) / sqrt(2)
    config = DotEBMConfig(dim=2, user_model="history", similarity="dot")
    model = DotEBM(config)
    model.n_users, model.n_items = 0, 3
    model.module = DotEBMModule(0, 3, config, torch.Generator().manual_seed(0))
    w = [[0.5, -1.0], [2.0, 2.0], [0.25, 1.0]]
    c = [0.1, -0.2]
    with torch.no_grad():
        model.module.encoder_weight.copy_(torch.tensor(w))
        model.module.encoder_bias.copy_(torch.tensor(c))
    model.item_factors = np.array(Q, dtype=np.float32)
    model.item_bias = np.array(B, dtype=np.float32)
    rows = sp.csr_matrix(np.array([[3.0, 0.0, 5.0]], dtype=np.float32))  # ratings: binarized
    s = 1 / math.sqrt(2)
    p = [math.tanh(s * (w[0][d] + w[2][d]) + c[d]) for d in range(2)]
    np.testing.assert_allclose(model.user_vectors([7], rows)[0], p, rtol=1e-6)
    by_hand = [p[0] * Q[i][0] + p[1] * Q[i][1] + B[i] for i in range(3)]
    np.testing.assert_allclose(model.score([7], rows)[0], by_hand, rtol=1e-6)


def _cosine_by_hand(tau: float) -> list[list[float]]:
    """-E(u, i) = cos(p_u, q_i) / tau + b_i for the hand-made P, Q, B, in plain Python."""
    def cos(a, b):
        return sum(x * y for x, y in zip(a, b, strict=True)) / math.sqrt(sum(x * x for x in a) * sum(y * y for y in b))
    return [[cos(P[u], Q[i]) / tau + B[i] for i in range(3)] for u in range(2)]


def test_cosine_energy_by_hand():
    # u0 = (1, 2), q2 = (2, 2): cos = 6 / (sqrt(5) sqrt(8)) = 0.9487; / 0.5 + 0 = 1.8974
    expected = _cosine_by_hand(0.5)
    assert expected[0][2] == pytest.approx(1.8974, abs=1e-4)
    config = DotEBMConfig(dim=2, user_model="free", similarity="cosine", cosine_temperature=0.5)
    module = DotEBMModule(2, 3, config, torch.Generator().manual_seed(0))
    with torch.no_grad():
        module.item_vectors.copy_(torch.tensor(Q))
        module.item_bias.copy_(torch.tensor(B))
    users = torch.tensor(P)
    np.testing.assert_allclose(module.neg_energy_all(users).detach().numpy(), expected, rtol=1e-6)
    targets = torch.tensor([[1.0, 0.0, 1.0], [0.0, 1.0, 0.0]])
    per_user = [sum(-(expected[u][i] - math.log(sum(math.exp(x) for x in expected[u])))
                    for i in range(3) if targets[u, i]) for u in range(2)]
    assert float(module.exact_loss(users, targets).detach()) == pytest.approx(sum(per_user) / 2, rel=1e-6)
    # scaling a user or an item vector changes nothing: only directions enter the energy
    scaled = module.neg_energy_all(users * torch.tensor([[3.0], [0.1]]))
    np.testing.assert_allclose(scaled.detach().numpy(), expected, rtol=1e-6)


def test_cosine_model_serves_unit_items_and_users_scaled_by_one_over_tau():
    train = checkerboard().train
    model = DotEBM(dim=4, user_model="free", similarity="cosine", cosine_temperature=0.2, epochs=5,
                   lr=0.05, seed=0).fit(train, show_progress=False)
    np.testing.assert_allclose(np.linalg.norm(model.item_vectors(), axis=1), 1.0, rtol=1e-5)
    np.testing.assert_allclose(np.linalg.norm(model.user_vectors(np.arange(16)), axis=1), 5.0, rtol=1e-5)
    # the served scores are the module's cosine energies of the raw parameters
    with torch.no_grad():
        raw = model.module.neg_energy_all(model.module.user_vectors).numpy()
    np.testing.assert_allclose(model.score(np.arange(16)), raw, rtol=1e-5, atol=1e-5)


def test_cosine_history_encoder_by_hand():
    config = DotEBMConfig(dim=2, user_model="history", similarity="cosine", cosine_temperature=0.5)
    model = DotEBM(config)
    model.n_users, model.n_items = 0, 3
    model.module = DotEBMModule(0, 3, config, torch.Generator().manual_seed(0))
    w, c = [[0.5, -1.0], [2.0, 2.0], [0.25, 1.0]], [0.1, -0.2]
    with torch.no_grad():
        model.module.encoder_weight.copy_(torch.tensor(w))
        model.module.encoder_bias.copy_(torch.tensor(c))
    model.item_factors, model.item_bias = np.array(Q, dtype=np.float32), np.array(B, dtype=np.float32)
    rows = sp.csr_matrix(np.array([[1.0, 0.0, 1.0]], dtype=np.float32))
    s = 1 / math.sqrt(2)
    p = [math.tanh(s * (w[0][d] + w[2][d]) + c[d]) for d in range(2)]
    norm = math.sqrt(p[0] ** 2 + p[1] ** 2)
    np.testing.assert_allclose(model.user_vectors([7], rows)[0], [x / norm / 0.5 for x in p], rtol=1e-6)


def test_cosine_fold_in_recovers_the_trained_users():
    # free cosine vectors: fold-in optimises the direction from the user's mean item direction;
    # a converged model must give back (nearly) the trained distribution over items
    train = checkerboard().train
    users = np.arange(train.shape[0])
    model = DotEBM(dim=8, user_model="free", similarity="cosine", epochs=200, lr=0.05,
                   fold_in_epochs=300, seed=0).fit(train, show_progress=False)
    trained, folded = model.user_vectors(users), model.user_vectors(users, train)
    np.testing.assert_allclose(np.linalg.norm(folded, axis=1), 1 / model.config.cosine_temperature, rtol=1e-5)
    cosines = (trained * folded).sum(1) / (np.linalg.norm(trained, axis=1) * np.linalg.norm(folded, axis=1))
    assert cosines.min() > 0.95
    total_variation = 0.5 * np.abs(model.probabilities(users, train) - model.probabilities(users)).sum(1)
    assert total_variation.max() < 0.05


# ---------------------------------------------------------------------- losses
def _hand_module() -> tuple[DotEBMModule, torch.Tensor]:
    module = DotEBMModule(2, 3, DotEBMConfig(dim=2, user_model="free", similarity="dot"),
                          torch.Generator().manual_seed(0))
    with torch.no_grad():
        module.item_vectors.copy_(torch.tensor(Q))
        module.item_bias.copy_(torch.tensor(B))
    return module, torch.tensor(P)


def test_exact_loss_equals_brute_force_negative_log_softmax():
    module, users = _hand_module()
    targets = [[1.0, 0.0, 1.0], [0.0, 1.0, 0.0]]
    # sum over each user's items of -log softmax(-E)_i, averaged over the 2 users
    per_user = []
    for u in range(2):
        log_z = math.log(sum(math.exp(x) for x in NEG_ENERGY[u]))
        per_user.append(sum(-(NEG_ENERGY[u][i] - log_z) for i in range(3) if targets[u][i]))
    expected = sum(per_user) / 2
    # paper: log Z_0 = log(e^1.5 + e + e^6) = 6.0177, log Z_1 = log(e^-3 + e^-0.5 + e^-1) = 0.0239;
    # user 0: (6.0177 - 1.5) + (6.0177 - 6) = 4.5354, user 1: 0.0239 + 0.5 = 0.5239
    assert expected == pytest.approx((4.5354 + 0.5239) / 2, abs=1e-4)
    loss = module.exact_loss(users, torch.tensor(targets))
    assert float(loss.detach()) == pytest.approx(expected, rel=1e-6)


@pytest.mark.parametrize("similarity", ["dot", "cosine"])
def test_sampled_softmax_gradient_tends_to_the_exact_gradient(similarity):
    # a 25-item catalog with a strongly non-uniform proposal: without the logQ correction the
    # sampled gradient would converge to the gradient of a popularity-tilted softmax instead
    gen = torch.Generator().manual_seed(0)
    n_users, n_items, dim = 6, 25, 4
    config = DotEBMConfig(dim=dim, user_model="free", similarity=similarity, cosine_temperature=0.2)
    module = DotEBMModule(n_users, n_items, config, gen)
    with torch.no_grad():
        module.item_vectors.mul_(3.0)
        module.item_bias.copy_(torch.randn(n_items, generator=gen))
    users = torch.randn(n_users, dim, generator=gen, requires_grad=True)
    targets = (torch.rand(n_users, n_items, generator=gen) < 0.2).float()
    targets[:, 0] = 1.0  # every user has a positive
    popularity = torch.arange(1, n_items + 1, dtype=torch.float32) ** 2
    log_q = torch.log(popularity / popularity.sum())
    params = [module.item_vectors, module.item_bias, users]

    def flat_grad(loss: torch.Tensor) -> torch.Tensor:
        return torch.cat([g.reshape(-1) for g in torch.autograd.grad(loss, params)])

    exact = flat_grad(module.exact_loss(users, targets))
    pairs = (*torch.nonzero(targets, as_tuple=True), targets[targets != 0])

    def mean_relative_error(m: int) -> float:
        errors = []
        for draw in range(10):
            sampled = module.sampled_loss(users, pairs, log_q, m, torch.Generator().manual_seed(draw))
            errors.append(float((flat_grad(sampled) - exact).norm() / exact.norm()))
        return float(np.mean(errors))

    # the cosine gradients are smaller (normalisation removes the radial part), so the same
    # relative error needs more samples: measured 0.106 at m=4096 and 0.043 at m=16384
    m = 4096 if similarity == "dot" else 16384
    few, many = mean_relative_error(8), mean_relative_error(m)
    assert many < 0.08, f"relative gradient error {many:.3f} at m={m}"
    assert many < few / 8, f"error barely shrinks with m: {few:.3f} at m=8, {many:.3f} at m={m}"


# ---------------------------------------------------------------------- training
@pytest.mark.parametrize("user_model", ["history", "free"])
def test_training_decreases_the_training_nll(user_model):
    train = checkerboard().train
    users = np.arange(train.shape[0])

    def nll(model: DotEBM) -> float:
        """Exact NLL of every training interaction, from the model's probabilities."""
        log_p = np.log(model.probabilities(users, temperature=1.0))
        return float(-(log_p * train.toarray()).sum())

    options = dict(dim=8, user_model=user_model, epochs=30, lr=0.05, batch_size=64, seed=0)
    one_epoch = DotEBM(**{**options, "epochs": 1}).fit(train, show_progress=False)
    trained = DotEBM(**options).fit(train, show_progress=False)
    uniform = train.nnz * math.log(train.shape[1])
    # ideal: each user spreads its mass over its 7 training items: 16 * 7 * log 7 = 218
    assert nll(trained) < 0.8 * uniform  # 310.5 -> < 248.4
    assert nll(trained) < nll(one_epoch) - 50
    history = [epoch["train_nll"] for epoch in trained.history.epochs]
    assert len(history) == 30
    assert np.mean(history[-5:]) < np.mean(history[:5]) - 2


@pytest.mark.parametrize("loss", ["exact", "sampled"])
@pytest.mark.parametrize("user_model", ["history", "free"])
def test_absurd_learning_rate_raises_model_fit_error_naming_the_epoch(user_model, loss):
    train = checkerboard().train
    completed = []
    model = DotEBM(dim=8, user_model=user_model, loss=loss, n_negatives=16, epochs=20, lr=1e6,
                   batch_size=64, seed=0)
    with pytest.raises(ModelFitError, match=r"^epoch \d+: .*lr") as error:
        model.fit(train, callback=lambda epoch, metrics: completed.append(epoch), show_progress=False)
    epoch = int(re.match(r"epoch (\d+)", str(error.value)).group(1))
    # the named epoch is the first one that was not reported as completed
    assert completed == list(range(1, epoch))
    assert epoch < 20


def test_sane_learning_rates_do_not_trip_divergence_detection():
    train = checkerboard().train
    for lr in (1e-3, 0.1, 0.3):
        model = DotEBM(dim=8, user_model="free", epochs=15, lr=lr, seed=0).fit(train, show_progress=False)
        assert len(model.history.epochs) == 15


@pytest.mark.parametrize("user_model", ["history", "free"])
def test_early_stopping_restores_the_best_epoch(user_model):
    train, valid = _blocks()
    model = DotEBM(dim=16, user_model=user_model, epochs=60, lr=0.05, l2=0.0, patience=3,
                   batch_size=16, seed=0).fit(train, validation=valid, show_progress=False)
    history = model.history
    curve = [epoch["val_ndcg@10"] for epoch in history.epochs]
    assert history.stopped_early
    assert history.best_epoch < len(curve) < 60
    assert len(curve) - history.best_epoch == 3  # stopped after `patience` epochs without progress
    assert int(np.argmax(curve)) + 1 == history.best_epoch  # argmax: the first best epoch
    assert history.best_value == pytest.approx(max(curve), abs=1e-15)
    assert curve[-1] < history.best_value  # the last epoch is worse, so restoring matters
    validate = ranking_validator(lambda users: model.recommend(users, train, k=10)[0], valid, k=10)
    assert validate()["val_ndcg@10"] == pytest.approx(history.best_value, abs=1e-12)


def test_without_validation_every_epoch_runs():
    model = DotEBM(dim=4, epochs=5, lr=0.05, seed=0).fit(checkerboard().train, show_progress=False)
    assert len(model.history.epochs) == 5 and model.history.best_epoch == 5
    assert not model.history.stopped_early


def test_validation_must_match_the_training_shape():
    train = checkerboard().train
    with pytest.raises(ValueError, match="rows"):
        DotEBM(dim=4, epochs=2).fit(train, validation=train[:3], show_progress=False)


def test_fit_rejects_an_empty_matrix():
    with pytest.raises(ValueError, match="no interactions"):
        DotEBM(dim=4, epochs=2).fit(sp.csr_matrix((4, 5), dtype=np.float32), show_progress=False)


def test_free_fold_in_reproduces_the_trained_user_vectors():
    # a converged free model: the per-user objective is strictly convex in p_u, so folding a
    # user's training row in (items fixed) must land on the vector training gave that user,
    # provided fold-in weighs the L2 term exactly as the training batches did
    train = checkerboard().train
    users = np.arange(train.shape[0])
    model = DotEBM(dim=8, user_model="free", similarity="dot", epochs=300, lr=0.05, l2=1e-2,
                   batch_size=64, fold_in_epochs=300, seed=0).fit(train, show_progress=False)
    trained, folded = model.user_vectors(users), model.user_vectors(users, train)
    np.testing.assert_allclose(np.linalg.norm(folded, axis=1), np.linalg.norm(trained, axis=1), rtol=0.02)
    np.testing.assert_allclose(folded, trained, atol=0.03)
    total_variation = 0.5 * np.abs(model.probabilities(users, train) - model.probabilities(users)).sum(1)
    assert total_variation.max() < 0.01


# ---------------------------------------------------------------------- config
@pytest.mark.parametrize(
    ("field", "value"),
    [
        ("dim", 0), ("dim", 2.5), ("user_model", "item"), ("similarity", "l2"),
        ("cosine_temperature", 0.0), ("cosine_temperature", math.inf), ("loss", "bpr"), ("n_negatives", 0),
        ("proposal_alpha", math.nan), ("epochs", 0), ("epochs", True), ("batch_size", 0),
        ("lr", 0.0), ("lr", -1e-3), ("lr", math.inf), ("lr", math.nan), ("l2", -1.0),
        ("dropout", 1.0), ("dropout", -0.1), ("temperature", 0.0), ("patience", 0),
        ("fold_in_epochs", 0), ("fold_in_lr", 0.0), ("fold_in_lr", math.inf), ("seed", -1),
        ("seed", "0"),
    ],
)
def test_invalid_config_values_raise_value_error_naming_the_field(field, value):
    with pytest.raises(ValueError, match=rf"^{field} must"):
        DotEBMConfig(**{field: value})
    with pytest.raises(ValueError, match=rf"^{field} must"):
        DotEBM(**{field: value})


def test_config_round_trips_through_a_dict_and_rejects_unknown_keys():
    config = DotEBMConfig(dim=7, lr=0.01, user_model="free")
    assert DotEBMConfig.from_dict(config.to_dict()) == config
    with pytest.raises(ValueError, match="bogus"):
        DotEBMConfig.from_dict({"bogus": 1})
    with pytest.raises(ValueError, match="either a config or keyword options"):
        DotEBM(config, dim=3)


def test_load_refuses_another_models_directory(tmp_path):
    from recsys_ebm.io import save_model_dir

    save_model_dir(tmp_path / "other", "crbm", {}, {"w": np.zeros(2, dtype=np.float32)})
    with pytest.raises(ValueError, match="crbm"):
        DotEBM.load(tmp_path / "other")


def test_a_model_saved_before_the_cosine_energy_loads_as_a_dot_product_model(tmp_path):
    import json

    train = checkerboard().train
    model = DotEBM(dim=4, user_model="free", similarity="dot", l2=1e-3, epochs=5, lr=0.05,
                   seed=0).fit(train, show_progress=False)
    model.save(tmp_path / "m")
    config_file = tmp_path / "m" / "config.json"
    document = json.loads(config_file.read_text())
    for key in ("similarity", "cosine_temperature"):  # what an older version wrote
        del document["config"][key]
    config_file.write_text(json.dumps(document))
    (tmp_path / "m" / "manifest.json").unlink()  # nor did it write a manifest
    loaded = DotEBM.load(tmp_path / "m")
    assert loaded.config.similarity == "dot"
    users = np.arange(4)
    np.testing.assert_allclose(loaded.user_vectors(users, train[users]),
                               model.user_vectors(users, train[users]), rtol=1e-5, atol=1e-6)


def test_cosine_fold_in_of_long_histories_recovers_the_trained_direction():
    # long histories (half the catalog): a start vector as long as the plain sum of ~100 unit
    # vectors would barely turn in the fold-in epochs; the unit-length start does
    rng = np.random.default_rng(0)
    dense = (rng.random((40, 200)) < np.where(np.arange(40)[:, None] % 2 == np.arange(200) % 2, 0.9, 0.1))
    train = sp.csr_matrix(dense.astype(np.float32))
    model = DotEBM(dim=8, user_model="free", epochs=150, lr=0.05, seed=0).fit(train, show_progress=False)
    users = np.arange(40)
    trained, folded = model.user_vectors(users), model.user_vectors(users, train)
    cosines = (trained * folded).sum(1) / (np.linalg.norm(trained, axis=1) * np.linalg.norm(folded, axis=1))
    # measured: min cosine 0.977, max total variation 0.036; the unnormalised start gave 0.647 / 0.217
    assert cosines.min() > 0.95
    total_variation = 0.5 * np.abs(model.probabilities(users, train) - model.probabilities(users)).sum(1)
    assert total_variation.max() < 0.08


def test_batch_pairs_are_the_nonzeros_of_the_dense_rows_in_the_same_order():
    from recsys_ebm.models.dot_ebm import batch_pairs

    rng = np.random.default_rng(3)
    weighted = sp.random(40, 30, density=0.2, format="csr", random_state=4, dtype=np.float32)
    weighted.data = rng.integers(1, 6, weighted.nnz).astype(np.float32)  # weights, not only ones
    weighted = sp.csr_matrix(sp.diags((np.arange(40) != 5).astype(np.float32)) @ weighted)  # user 5: none
    weighted.sort_indices()
    # any order, a repeated user (as a worker's last step wraps around), the empty one
    rows = np.concatenate([rng.permutation(40)[:17], [3, 3, 5]])
    got_rows, got_cols, got_weights = batch_pairs(weighted, rows)
    dense = torch.from_numpy(weighted[rows].toarray())
    want_rows, want_cols = torch.nonzero(dense, as_tuple=True)
    assert torch.equal(got_rows, want_rows) and torch.equal(got_cols, want_cols)
    assert torch.equal(got_weights, dense[want_rows, want_cols]) and len(got_rows) == weighted[rows].nnz
    assert set(got_weights.tolist()) > {1.0} and (got_rows == len(rows) - 1).sum() == 0
