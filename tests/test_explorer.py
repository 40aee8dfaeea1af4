"""`recsys-ebm explore`: the temperature explorer's numbers against known answers, its JSON API
over a real server on 127.0.0.1, and its page driven in a real headless Chromium.

The model is a real DotEBM trained for two epochs on MovieLens 100K by `recsys-ebm train`; the
server is the real `recsys-ebm explore` process, stopped at teardown even when a test fails.
"""

from __future__ import annotations

import io
import json
import math
import os
import subprocess
import sys
import urllib.error
import urllib.request
from contextlib import redirect_stdout
from pathlib import Path

import numpy as np
import pytest
import scipy.sparse as sp
from conftest import free_port, stop_process_group, wait_until_ready

from recsys_ebm.cli import main
from recsys_ebm.explorer import Explorer, bind, check_host
from recsys_ebm.explorer.core import (
    REPLICATES,
    VISITS,
    energy_histogram,
    expected_coverage,
    gibbs_entropy,
)

REPO_ROOT = Path(__file__).resolve().parents[1]
CHROMIUM = Path("/usr/bin/chromium")
#: flags for a sandbox-less container without network: nothing is fetched in the background
CHROMIUM_ARGS = ["--headless", "--no-sandbox", "--disable-gpu", "--disable-quic", "--no-first-run",
                 "--disable-background-networking", "--disable-component-update", "--disable-sync"]


# ------------------------------------------------------------------ the numbers, known answers
def test_entropy_matches_its_definition_and_rises_with_temperature():
    scores = np.log(np.array([1.0, 2.0, 3.0, 6.0]))  # p at T = 1: 1/12, 2/12, 3/12, 6/12
    p = np.array([1, 2, 3, 6]) / 12
    assert gibbs_entropy(scores, 1.0) == pytest.approx(-(p * np.log(p)).sum(), rel=1e-12)
    assert gibbs_entropy(np.zeros(7), 0.3) == pytest.approx(math.log(7))  # uniform
    assert gibbs_entropy(np.array([1.0, 3.0, 3.0, 0.0]), 0.0) == pytest.approx(math.log(2))  # ties
    assert gibbs_entropy(scores, 0.0) == 0.0
    rising = [gibbs_entropy(scores, t) for t in (0.0, 0.1, 0.5, 1.0, 2.0, 50.0)]
    assert all(a < b for a, b in zip(rising, rising[1:], strict=False))
    assert rising[-1] < math.log(4) and rising[-1] == pytest.approx(math.log(4), abs=1e-3)


def test_expected_coverage_is_k_at_zero_and_the_uniform_formula_at_high_temperature():
    n, k = 60, 5
    scores = np.zeros(n, np.float32)
    scores[:3] = -np.inf  # items the user already has never count
    exact = expected_coverage(scores.copy(), k, 0.0, seed=1)
    assert exact["mean"] == k and exact["stderr"] == 0.0
    # every list is a uniform k-subset of the 57 items: E distinct = n (1 - (1 - k/n)^V)
    uniform = expected_coverage(scores.copy(), k, 1.0, seed=1)
    eligible = n - 3
    expected = eligible * (1 - (1 - k / eligible) ** VISITS)
    assert uniform["replicates"] == REPLICATES and uniform["n_eligible"] == eligible
    assert abs(uniform["mean"] - expected) < 4 * uniform["stderr"] + 0.5
    assert expected_coverage(scores.copy(), k, 1.0, seed=1) == uniform  # seeded
    # a peaked distribution shows fewer distinct items over the same visits
    peaked = scores.copy()
    peaked[3:13] = 5.0
    assert expected_coverage(peaked, k, 1.0, seed=1)["mean"] < uniform["mean"] - 10


def test_energy_histogram_counts_every_item_and_its_mass_sums_to_one():
    energies = np.array([-2.0, -1.0, -1.0, 0.0, 3.0])
    hist = energy_histogram(energies, 1.0, np.array([-2.0]))
    assert sum(hist["counts"]) == 5 and len(hist["edges"]) == len(hist["counts"]) + 1
    assert sum(hist["mass"]) == pytest.approx(1.0)
    weights = np.exp(-energies) / np.exp(-energies).sum()
    assert hist["mass"][0] == pytest.approx(weights[0])  # the lowest energy's bin
    assert energy_histogram(energies, 0.0, np.array([]))["mass"][0] == 1.0  # all at the minimum


def test_only_127_0_0_1_is_served():
    assert check_host("127.0.0.1") == "127.0.0.1"
    for host in ("0.0.0.0", "localhost", "::", "192.168.1.2"):
        with pytest.raises(ValueError, match="127.0.0.1 only"):
            check_host(host)
    with pytest.raises(ValueError, match="1..65535"):
        bind("127.0.0.1", 70000)


# ------------------------------------------------------------------ a real model
@pytest.fixture(scope="module")
def model_dir(tmp_path_factory, movielens_dir) -> Path:
    out = tmp_path_factory.mktemp("explore") / "dpebm"
    with redirect_stdout(io.StringIO()):
        code = main(["train", "--data-dir", str(movielens_dir), "--model", "dpebm", "--set",
                     "epochs=2", "--set", "patience=1", "--no-mlflow", "--quiet", "--no-download",
                     "--output-dir", str(out)])
    assert code == 0
    return out


@pytest.fixture(scope="module")
def explorer(model_dir, movielens_dir) -> Explorer:
    return Explorer.from_saved(model_dir, data_dir=movielens_dir)


def _python_list(explorer: Explorer, *, user=None, history=None, k=10, temperature=0.0, seed=0):
    """What the model's own `recommend` serves, as raw item ids."""
    model = explorer.model
    options = {"k": k, "temperature": temperature, "rng": seed}
    if user is not None:
        ids, _ = model.recommend(explorer.user_map.to_index(np.array([int(user)])), **options)
    else:
        items = explorer.item_map.to_index(np.array([int(i) for i in history]))
        row = sp.csr_matrix((np.ones(len(items), np.float32), (np.zeros(len(items), int), items)),
                            shape=(1, model.n_items))
        ids, _ = model.recommend(np.array([0]), row, fold_in=True, **options)
    return [str(i) for i in explorer.item_map.to_raw(ids[0][ids[0] >= 0])]


def test_explore_serves_recommend_with_its_distribution(explorer):
    assert explorer.titles["50"] == "Star Wars (1977)"  # from the local ml-100k copy
    for temperature, seed in ((0.0, 0), (0.7, 5), (1.5, 3)):
        got = explorer.explore(user="196", k=8, temperature=temperature, seed=seed)
        assert [i["item_id"] for i in got["items"]] == _python_list(
            explorer, user="196", k=8, temperature=temperature, seed=seed)
    user = explorer.user_map.to_index(np.array([196]))[0]
    seen = explorer.model.seen_items[user].indices
    got = explorer.explore(user="196", k=8, temperature=1.5, seed=3)
    assert got["n_eligible"] == explorer.model.n_items - seen.size
    assert got["history"]["count"] == seen.size
    # p_T of each listed item, from the full score row (brute force)
    scores = explorer.model.score(np.array([user]))[0].astype(np.float64)
    scores[seen] = -np.inf
    p = np.exp(scores / 1.5 - np.logaddexp.reduce(scores / 1.5))
    listed = explorer.item_map.to_index(np.array([int(i["item_id"]) for i in got["items"]]))
    np.testing.assert_allclose([i["probability"] for i in got["items"]], p[listed], rtol=1e-4)
    assert got["entropy"] == pytest.approx(-(p[p > 0] * np.log(p[p > 0])).sum(), rel=1e-6)
    assert got["perplexity"] == pytest.approx(math.exp(got["entropy"]))
    curve = got["curve"]
    assert curve["entropy"][curve["temperature"].index(1.5)] == pytest.approx(got["entropy"])
    assert curve["entropy"][0] == 0.0 and all(
        a < b for a, b in zip(curve["entropy"], curve["entropy"][1:], strict=False))
    history = explorer.explore(history=["50", "172", "181"], k=6, temperature=0.9, seed=2)
    assert [i["item_id"] for i in history["items"]] == _python_list(
        explorer, history=["50", "172", "181"], k=6, temperature=0.9, seed=2)
    assert history["n_eligible"] == explorer.model.n_items - 3
    assert [i["title"] for i in history["history"]["items"]][0] == "Star Wars (1977)"


def _mix_list(explorer: Explorer, user: str, other: str, lam: float, *, k=10, temperature=0.0,
              seed=0):
    """What the model's own `recommend_mix` serves for the two users at ``lam``, raw ids."""
    members = explorer.user_map.to_index(np.array([int(user), int(other)]))
    ids, _ = explorer.model.recommend_mix(members, lam, k, temperature=temperature, rng=seed)
    return [str(i) for i in explorer.item_map.to_raw(ids[ids >= 0])]


def _listed(answer: dict) -> list[str]:
    return [i["item_id"] for i in answer["items"]]


def test_explore_mixes_two_users_like_recommend_mix(explorer):
    u, v = "196", "405"
    for temperature, seed in ((0.0, 0), (1.2, 4)):
        options = {"k": 8, "temperature": temperature, "seed": seed}
        alone_u, alone_v = explorer.explore(user=u, **options), explorer.explore(user=v, **options)
        assert _listed(alone_u) != _listed(alone_v)
        at_0 = explorer.explore(user=u, mix_with=v, lam=0.0, **options)
        assert _listed(at_0) == _listed(alone_u)  # λ = 0: u's own list, v takes no part
        assert at_0["n_eligible"] == alone_u["n_eligible"]
        np.testing.assert_allclose([i["probability"] for i in at_0["items"]],
                                   [i["probability"] for i in alone_u["items"]], rtol=1e-4)
        assert at_0["entropy"] == pytest.approx(alone_u["entropy"], rel=1e-6)
        assert _listed(explorer.explore(user=u, mix_with=v, lam=1.0, **options)) == _listed(alone_v)
        mid = explorer.explore(user=u, mix_with=v, lam=0.3, **options)
        assert _listed(mid) == _mix_list(explorer, u, v, 0.3, k=8, temperature=temperature, seed=seed)
        assert mid["mix"] == {"user": u, "with": v, "lam": 0.3}
    # p_T of the mixed energy E = 0.7 E_u + 0.3 E_v over the items neither has, brute force
    model = explorer.model
    members = explorer.user_map.to_index(np.array([int(u), int(v)]))
    scores = 0.7 * model.score(members[:1])[0].astype(np.float64) + 0.3 * model.score(members[1:])[0]
    seen = np.union1d(model.seen_items[members[0]].indices, model.seen_items[members[1]].indices)
    scores[seen] = -np.inf
    p = np.exp(scores / 1.2 - np.logaddexp.reduce(scores / 1.2))
    listed = explorer.item_map.to_index(np.array([int(i) for i in _listed(mid)]))
    np.testing.assert_allclose([i["probability"] for i in mid["items"]], p[listed], rtol=1e-4)
    assert mid["entropy"] == pytest.approx(-(p[p > 0] * np.log(p[p > 0])).sum(), rel=1e-5)
    assert mid["n_eligible"] == model.n_items - seen.size
    assert mid["history"]["count"] == seen.size
    with pytest.raises(ValueError, match="give mix_with"):
        explorer.explore(user=u, lam=0.5)
    with pytest.raises(ValueError, match="not a history"):
        explorer.explore(history=["50"], mix_with=v, lam=0.5)
    with pytest.raises(ValueError, match=r"\[0, 1\]"):
        explorer.explore(user=u, mix_with=v, lam=1.5)
    with pytest.raises(KeyError, match="99999"):
        explorer.explore(user=u, mix_with="99999", lam=0.5)


def test_explore_names_what_is_wrong(explorer):
    with pytest.raises(KeyError, match="99999"):
        explorer.explore(user="99999")
    with pytest.raises(ValueError, match="not both"):
        explorer.explore(user="196", history=["50"])
    with pytest.raises(ValueError, match="more than once"):
        explorer.explore(history=["50", "50"])
    with pytest.raises(ValueError, match="temperature"):
        explorer.explore(user="196", temperature=-1)


# ------------------------------------------------------------------ the real server
@pytest.fixture(scope="module")
def server(model_dir, movielens_dir, tmp_path_factory):
    """`recsys-ebm explore` on a free port of 127.0.0.1; stopped at teardown."""
    port = free_port()
    log_path = tmp_path_factory.mktemp("explore-server") / "explore.log"
    env = {**os.environ, "PYTHONPATH": os.pathsep.join([str(REPO_ROOT), os.environ.get("PYTHONPATH", "")]),
           "OMP_NUM_THREADS": "1"}
    cmd = [sys.executable, "-c", "import sys; from recsys_ebm.cli import main; sys.exit(main())",
           "explore", "--model-path", str(model_dir), "--data-dir", str(movielens_dir),
           "--port", str(port), "--quiet"]
    with open(log_path, "wb") as log:
        proc = subprocess.Popen(cmd, env=env, stdout=log, stderr=subprocess.STDOUT,
                                start_new_session=True)
    url = f"http://127.0.0.1:{port}"
    try:
        wait_until_ready(proc, f"{url}/api/info", log_path, "recsys-ebm explore", timeout=60)
        yield url
    finally:
        stop_process_group(proc)


def _call(url: str, path: str, body: dict | None = None, headers: dict | None = None):
    data = None if body is None else json.dumps(body).encode()
    request = urllib.request.Request(f"{url}{path}", data=data, headers={
        "Content-Type": "application/json", **(headers or {})})
    try:
        with urllib.request.urlopen(request, timeout=30) as response:
            return response.status, json.loads(response.read()), response.headers
    except urllib.error.HTTPError as exc:
        return exc.code, exc.read().decode(), exc.headers


def test_the_json_api_answers_like_recommend(server, explorer):
    status, info, headers = _call(server, "/api/info")
    assert status == 200 and info["model"] == "DotEBM" and info["has_titles"]
    assert "default-src 'self'" in headers["Content-Security-Policy"]
    assert len(_call(server, "/api/users")[1]["users"]) == 943
    status, got, _ = _call(server, "/api/recommend",
                           {"user": "196", "k": 7, "temperature": 1.5, "seed": 3})
    assert status == 200
    assert [i["item_id"] for i in got["items"]] == _python_list(
        explorer, user="196", k=7, temperature=1.5, seed=3)
    mix = {"user": "196", "mix_with": "405", "k": 7, "temperature": 1.5, "seed": 3}
    for lam, want in ((0.0, _python_list(explorer, user="196", k=7, temperature=1.5, seed=3)),
                      (1.0, _python_list(explorer, user="405", k=7, temperature=1.5, seed=3)),
                      (0.4, _mix_list(explorer, "196", "405", 0.4, k=7, temperature=1.5, seed=3))):
        status, got, _ = _call(server, "/api/recommend", {**mix, "lam": lam})
        assert status == 200 and _listed(got) == want, lam
    assert _call(server, "/api/recommend", {**mix, "lam": 1.5})[0] == 422
    status, error, _ = _call(server, "/api/recommend", {**mix, "mix_with": "196", "lam": 0.5})
    assert status == 400 and "twice" in json.loads(error)["detail"]
    status, error, _ = _call(server, "/api/recommend", {"user": "99999"})
    assert status == 400 and "99999" in json.loads(error)["detail"]
    assert _call(server, "/api/recommend", {"user": "196", "k": 0})[0] == 422
    # a page elsewhere cannot reach the app through a DNS name pointed at 127.0.0.1
    assert _call(server, "/api/info", headers={"Host": "attacker.example"})[0] == 400


def test_the_command_refuses_other_hosts(model_dir, caplog):
    assert main(["explore", "--model-path", str(model_dir), "--host", "0.0.0.0"]) == 2
    assert "--host '0.0.0.0': the explorer listens on 127.0.0.1 only" in caplog.text


# ------------------------------------------------------------------ the page, in Chromium
def _set_temperature(page, value: float) -> None:
    page.evaluate("(v) => { const t = document.getElementById('temperature'); t.value = v; "
                  "t.dispatchEvent(new Event('input')); }", str(value))


def _shown(page, key: str) -> dict:
    """The page's list and statistics once it has drawn the answer for ``key``."""
    page.wait_for_selector(f'#results[data-query="{key}"]', timeout=20_000)
    return {"items": page.eval_on_selector_all("#results tbody tr", "rows => rows.map(r => r.dataset.item)"),
            "entropy": float(page.get_attribute("#entropy", "data-value")),
            "coverage": float(page.get_attribute("#coverage", "data-value"))}


@pytest.mark.skipif(not CHROMIUM.is_file(), reason="Debian's chromium is not installed at "
                    "/usr/bin/chromium (apt-get install chromium; .ci/run installs it)")
def test_the_page_in_chromium_turns_exploratory_with_temperature(server, explorer, tmp_path):
    from playwright.sync_api import sync_playwright

    requested, problems = [], []
    with sync_playwright() as playwright:
        browser = playwright.chromium.launch_persistent_context(
            str(tmp_path / "profile"), executable_path=str(CHROMIUM), args=CHROMIUM_ARGS,
            headless=True, viewport={"width": 1440, "height": 900}, timeout=60_000)
        try:
            page = browser.new_page()
            page.on("request", lambda r: requested.append(r.url))
            page.on("console", lambda m: problems.append(m.text) if m.type == "error" else None)
            page.on("pageerror", lambda e: problems.append(str(e)))
            page.goto(server, timeout=30_000)
            page.fill("#user", "196")
            exact = _shown(page, "user:196|10|0|0")
            assert exact["items"] == _python_list(explorer, user="196", k=10)
            assert exact["coverage"] == 10
            page.screenshot(path=tmp_path / "explorer-t0.png", full_page=True)

            page.fill("#seed", "3")
            _set_temperature(page, 1.5)
            hot = _shown(page, "user:196|10|1.5|3")
            assert hot["items"] == _python_list(explorer, user="196", k=10, temperature=1.5, seed=3)
            assert hot["items"] != exact["items"] and hot["entropy"] > exact["entropy"]
            assert hot["coverage"] > 10
            page.screenshot(path=tmp_path / "explorer-t1.5.png", full_page=True)

            page.fill("#seed", "4")
            other = _shown(page, "user:196|10|1.5|4")
            assert other["items"] != hot["items"]  # ~1600 near-equal items: never the same 10
            page.fill("#seed", "3")
            assert _shown(page, "user:196|10|1.5|3")["items"] == hot["items"]  # reproducible
            _set_temperature(page, 0.5)
            assert exact["entropy"] < _shown(page, "user:196|10|0.5|3")["entropy"] < hot["entropy"]

            # a second user and the λ slider: the list is recommend_mix at that λ, seeded
            page.fill("#mix-with", "405")
            page.evaluate("(v) => { const l = document.getElementById('lam'); l.value = v; "
                          "l.dispatchEvent(new Event('input')); }", "0.3")
            mixed = _shown(page, "mix:196+405@0.3|10|0.5|3")
            assert mixed["items"] == _mix_list(explorer, "196", "405", 0.3, temperature=0.5, seed=3)
            assert "taste mix of 196 and 405" in page.inner_text("#list-note")
            page.fill("#mix-with", "")
            _shown(page, "user:196|10|0.5|3")

            page.check("input[name=mode][value=history]")
            for item in ("50 · Star Wars (1977)", "empire strikes back, the (1980)"):
                page.fill("#history-input", item)
                page.click("#history-add")
            typed = _shown(page, "history:50,172|10|0.5|3")  # 172: found by its title
            assert typed["items"] == _python_list(explorer, history=["50", "172"], temperature=0.5,
                                                  seed=3)
            assert "Star Wars (1977)" in page.inner_text("#history-chips")
            page.screenshot(path=tmp_path / "explorer-history.png", full_page=True)
            assert page.locator("#histogram rect").count() > 10  # the energy histogram is drawn
            assert page.locator("#curve polyline").count() == 1  # and the entropy curve
        finally:
            browser.close()
    assert not problems, problems
    assert requested and all(u.startswith(server) or u.startswith("data:") for u in requested), requested
    assert (tmp_path / "explorer-t1.5.png").stat().st_size > 10_000
