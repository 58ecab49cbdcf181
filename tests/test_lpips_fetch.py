"""Fetching LPIPS weights the standard way: into torch.hub's cache, hash-checked, once, or not at all.

Every download here reads a local ``file://`` URL (no network). The trunks written below hold
random values under made-up hashes: they test the plumbing of fetching, never LPIPS itself.
"""

from __future__ import annotations

import hashlib
import warnings
from pathlib import Path

import pytest
import torch

from vivat import metrics as M
from vivat.errors import WeightsError

pytest.importorskip("lpips")


def fake_alex_trunk(folder: Path, name_hash: str | None = None) -> tuple[Path, str]:
    """A random AlexNet trunk file named as torchvision names its files (``alexnet-owt-<sha256[:8]>.pth``)."""
    import torchvision

    folder.mkdir(parents=True, exist_ok=True)
    sd = {k: v for k, v in torchvision.models.alexnet(weights=None).state_dict().items() if k.startswith("features.")}
    tmp = folder / "trunk.pth"
    torch.save(sd, tmp)
    digest = hashlib.sha256(tmp.read_bytes()).hexdigest()
    path = folder / f"alexnet-owt-{name_hash or digest[:8]}.pth"
    tmp.rename(path)
    return path, digest


@pytest.fixture
def online(tmp_path, monkeypatch):
    """An empty TORCH_HOME with downloads allowed and no failure remembered from other tests."""
    monkeypatch.setenv("TORCH_HOME", str(tmp_path / "torch_home"))
    monkeypatch.delenv(M.NO_DOWNLOAD_ENV, raising=False)
    monkeypatch.setattr(M, "_fetch_failures", {})
    return tmp_path


def serve(monkeypatch, path: Path) -> list[str]:
    """Make torchvision's AlexNet URL point at ``path``; returns the list of URLs fetched."""
    monkeypatch.setattr(M, "_trunk_url", lambda net: path.as_uri())
    fetched: list[str] = []
    real = M.download_file

    def counting(url, dst, sha256, timeout=M.DOWNLOAD_TIMEOUT_S):
        fetched.append(url)
        return real(url, dst, sha256, timeout)

    monkeypatch.setattr(M, "download_file", counting)
    return fetched


def test_missing_trunk_is_fetched_into_the_hub_cache_and_used(online, monkeypatch):
    src, digest = fake_alex_trunk(online / "server")
    fetched = serve(monkeypatch, src)
    cached = Path(torch.hub.get_dir()) / "checkpoints" / src.name
    assert M.lpips_trunk_path("alex") == cached and not cached.exists()

    ok, why = M.lpips_status("alex")
    assert (ok, why) == (True, "ok")
    assert fetched == [src.as_uri()]
    assert hashlib.sha256(cached.read_bytes()).hexdigest() == digest
    assert not list(cached.parent.glob("*.partial"))
    model = M.load_lpips("alex", require=True)  # read from the cache, nothing fetched again
    assert fetched == [src.as_uri()] and model.vivat_trunk_file == str(cached)
    assert torch.equal(
        model.net.slice1.state_dict()["0.weight"],
        torch.load(src, map_location="cpu", weights_only=True)["features.0.weight"],
    )


def test_hash_mismatch_is_refused_and_leaves_nothing(online, monkeypatch):
    src, _ = fake_alex_trunk(online / "server", name_hash="0badf00d")
    fetched = serve(monkeypatch, src)
    ok, why = M.lpips_status("alex")
    assert not ok and "SHA-256" in why and "0badf00d" in why
    cache = Path(torch.hub.get_dir()) / "checkpoints"
    assert not (cache / src.name).exists() and not list(cache.glob("*"))
    with pytest.warns(RuntimeWarning, match="SHA-256") as rec:
        assert M.load_lpips("alex") is None
    assert len([w for w in rec if issubclass(w.category, RuntimeWarning)]) == 1
    assert len(fetched) == 1  # a refused download is not retried in the same process


def test_download_file_checks_the_full_digest_too(tmp_path):
    src = tmp_path / "blob.bin"
    src.write_bytes(b"vivat" * 1000)
    digest = hashlib.sha256(src.read_bytes()).hexdigest()
    dst = M.download_file(src.as_uri(), tmp_path / "out" / "blob.bin", digest)
    assert dst.read_bytes() == src.read_bytes()
    with pytest.raises(WeightsError, match="SHA-256"):
        M.download_file(src.as_uri(), tmp_path / "out" / "other.bin", "f" * 64)
    assert not (tmp_path / "out" / "other.bin").exists()


def test_offline_gives_one_clear_message_and_tries_once(online, monkeypatch):
    gone = online / "server" / "alexnet-owt-7be5be79.pth"  # no such file: like no network
    fetched = serve(monkeypatch, gone)
    with pytest.warns(RuntimeWarning) as rec:
        assert M.load_lpips("alex") is None
    msgs = [str(w.message) for w in rec if issubclass(w.category, RuntimeWarning)]
    assert len(msgs) == 1
    assert "could not be downloaded" in msgs[0] and "alexnet-owt-7be5be79.pth" in msgs[0]
    assert "copy torchvision's" in msgs[0]  # says what to do offline
    ok, why = M.lpips_status("alex")
    assert not ok and "could not be downloaded" in why
    assert len(fetched) == 1


@pytest.mark.parametrize("how", ["env", "argument"])
def test_no_download_keeps_strictly_offline(online, monkeypatch, how):
    src, _ = fake_alex_trunk(online / "server")
    fetched = serve(monkeypatch, src)
    if how == "env":
        monkeypatch.setenv(M.NO_DOWNLOAD_ENV, "1")
        ok, why = M.lpips_status("alex")
    else:
        ok, why = M.lpips_status("alex", download=False)
    assert not ok and "downloads are off" in why and fetched == []
    assert M.downloads_allowed() is (how == "argument")


def test_missing_linear_layers_are_fetched_hash_pinned(online, monkeypatch):
    shipped = M._shipped_linear_path("alex")
    assert shipped is not None and shipped.is_file()
    assert hashlib.sha256(shipped.read_bytes()).hexdigest() == M._LINEAR_SHA256["alex"]  # the pin is right
    src, _ = fake_alex_trunk(Path(torch.hub.get_dir()) / "checkpoints")  # the trunk is cached already
    monkeypatch.setattr(M, "_trunk_url", lambda net: src.as_uri())
    # an installation without the package's weight files
    monkeypatch.setattr(M, "_shipped_linear_path", lambda net, version="0.1": online / "pkg" / f"{net}.pth")
    monkeypatch.setattr(M, "LPIPS_LINEAR_URL", shipped.parent.as_uri() + "/{net}.pth")
    ok, why = M.lpips_status("alex")
    assert (ok, why) == (True, "ok")
    assert M.lpips_linear_path("alex") == Path(torch.hub.get_dir()) / "checkpoints" / "lpips-v0.1-alex.pth"
    model = M.load_lpips("alex", require=True)
    for k, v in torch.load(shipped, map_location="cpu", weights_only=True).items():
        assert torch.equal(model.state_dict()[k], v)

    # a tampered copy is refused against the pinned hash
    monkeypatch.setattr(M, "_fetch_failures", {})
    (Path(torch.hub.get_dir()) / "checkpoints" / "lpips-v0.1-alex.pth").unlink()
    bad = online / "bad"
    bad.mkdir()
    (bad / "alex.pth").write_bytes(shipped.read_bytes() + b"\0")
    monkeypatch.setattr(M, "LPIPS_LINEAR_URL", bad.as_uri() + "/{net}.pth")
    ok, why = M.lpips_status("alex")
    assert not ok and "SHA-256" in why


def test_training_loss_goes_on_without_the_perceptual_term_when_offline(online, monkeypatch):
    from vivat.config import VAEConfig
    from vivat.losses import VAELoss

    monkeypatch.setattr(M, "_trunk_url", lambda net: (online / "nowhere" / "vgg16-397923af.pth").as_uri())
    with pytest.warns(RuntimeWarning, match="could not be downloaded") as rec:
        loss = VAELoss(VAEConfig.from_preset("vivat-tiny").loss)
    assert len([w for w in rec if issubclass(w.category, RuntimeWarning)]) == 1
    assert loss.lpips is None and loss.perceptual_weight == 0.0


def test_cli_no_download_flag_sets_the_environment(monkeypatch, tmp_path, capsys):
    from vivat.cli import main

    monkeypatch.setenv(M.NO_DOWNLOAD_ENV, "0")
    with warnings.catch_warnings(), pytest.raises(SystemExit):
        warnings.simplefilter("ignore")
        main(["eval", "--model", str(tmp_path / "none"), "--data", str(tmp_path), "--no-download"])
    # no such model folder (a usage error); the flag was applied before anything ran
    assert not M.downloads_allowed()
