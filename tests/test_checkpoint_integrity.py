"""Checkpoint integrity: damaged bytes are caught by the archive's CRC-32s, resume names what is wrong."""

from __future__ import annotations

import os
import pickle
import struct
import zipfile
from pathlib import Path

import pytest
import torch

from vivat import checkpoint as C
from vivat.errors import VivatError, WeightsError


def state(step: int) -> dict:
    return {
        "format": C.CHECKPOINT_FORMAT,
        "version": C.CHECKPOINT_VERSION,
        "step": step,
        "model": {"w": torch.full((256,), float(step)), "b": torch.arange(8.0)},
        "ema": {"w": torch.zeros(256)},
        "discriminator": {},
        "opt_vae": {},
        "opt_disc": {},
        "scaler": {},
        "rng": C.capture_rng_state(),
    }


def flip_bits(path: Path, entry_suffix: str = "/data/0", offset: int = 17, mask: int = 0x5A) -> str:
    """XOR ``mask`` into one byte of the stored entry ending in ``entry_suffix``; returns the entry's name."""
    with zipfile.ZipFile(path) as archive:
        info = next(i for i in archive.infolist() if i.filename.endswith(entry_suffix))
    raw = bytearray(path.read_bytes())
    name_len, extra_len = struct.unpack("<HH", raw[info.header_offset + 26 : info.header_offset + 30])
    start = info.header_offset + 30 + name_len + extra_len
    assert info.compress_type == zipfile.ZIP_STORED and offset < info.file_size
    raw[start + offset] ^= mask
    path.write_bytes(bytes(raw))
    return info.filename


def test_flipped_bits_in_a_tensor_are_refused(tmp_path):
    path = C.save_checkpoint(state(3), tmp_path, 3)
    assert C.checkpoint_problem(path) is None
    entry = flip_bits(path)
    # torch.load alone would hand back the changed weight without a word
    loaded = torch.load(path, weights_only=True)
    assert not torch.equal(loaded["model"]["w"], torch.full((256,), 3.0))
    problem = C.checkpoint_problem(path)
    assert problem is not None and entry in problem and "CRC-32" in problem
    with pytest.raises(C.CheckpointError, match="CRC-32") as err:
        C.load_checkpoint(path)
    assert str(path) in str(err.value)
    assert isinstance(err.value, WeightsError) and isinstance(err.value, VivatError)
    assert isinstance(err.value, RuntimeError)  # callers that caught the old CheckpointError still do


def test_flipped_bits_in_the_pickled_structure_are_refused(tmp_path):
    path = C.save_checkpoint(state(3), tmp_path, 3)
    flip_bits(path, "data.pkl", offset=40, mask=0x01)
    with pytest.raises(C.CheckpointError, match="data.pkl.*CRC-32"):
        C.load_checkpoint(path)


@pytest.mark.parametrize("kind", ["random", "empty", "truncated", "pickle_with_code"])
def test_unreadable_files_say_what_is_wrong_without_unsafe_advice(tmp_path, kind):
    path = tmp_path / "ckpt-0000001.pt"
    if kind == "random":
        path.write_bytes(os.urandom(4096))
    elif kind == "empty":
        path.write_bytes(b"")
    elif kind == "truncated":
        C.save_checkpoint(state(1), tmp_path, 1)
        path.write_bytes(path.read_bytes()[:300])
    else:  # a zip archive torch can read, holding an object that weights_only refuses
        torch.save({"format": C.CHECKPOINT_FORMAT, "obj": pickle.PickleError("x")}, path)
    with pytest.raises(C.CheckpointError) as err:
        C.load_checkpoint(path)
    msg = str(err.value)
    assert str(path) in msg and "\n" not in msg
    assert "weights_only=False" not in msg and "trust" not in msg
    expected = {
        "random": "is not a checkpoint",
        "empty": "is empty",
        "truncated": "corrupt or truncated",
        "pickle_with_code": "objects other than tensors",
    }[kind]
    assert expected in msg


def test_resume_refuses_a_damaged_latest_and_offers_the_previous(tmp_path):
    for step in (1, 2, 3):
        C.save_checkpoint(state(step), tmp_path, step, keep=0)
    flip_bits(tmp_path / "ckpt-0000003.pt")
    with pytest.raises(C.CheckpointError) as err:
        C.resume_checkpoint(tmp_path)
    msg = str(err.value)
    assert "ckpt-0000003.pt" in msg and "CRC-32" in msg
    assert f"previous checkpoint {tmp_path / 'ckpt-0000002.pt'} is intact" in msg and "--resume-intact" in msg

    path, loaded, notes = C.resume_checkpoint(tmp_path, intact=True)
    assert path.name == "ckpt-0000002.pt" and loaded["step"] == 2
    assert len(notes) == 1 and "ckpt-0000003.pt" in notes[0] and "passed over" in notes[0]

    # the previous one damaged as well: the offer skips it
    flip_bits(tmp_path / "ckpt-0000002.pt")
    with pytest.raises(C.CheckpointError, match="previous checkpoint .*ckpt-0000001.pt is intact"):
        C.resume_checkpoint(tmp_path)
    path, _, notes = C.resume_checkpoint(tmp_path, intact=True)
    assert path.name == "ckpt-0000001.pt" and len(notes) == 2

    flip_bits(tmp_path / "ckpt-0000001.pt")
    with pytest.raises(C.CheckpointError, match="No older intact checkpoint"):
        C.resume_checkpoint(tmp_path)
    with pytest.raises(C.CheckpointError, match="no intact checkpoint in"):
        C.resume_checkpoint(tmp_path, intact=True)


def test_latest_naming_a_missing_file_is_an_error(tmp_path):
    C.save_checkpoint(state(1), tmp_path, 1, keep=0)
    C.save_checkpoint(state(2), tmp_path, 2, keep=0)
    (tmp_path / "ckpt-0000002.pt").unlink()
    with pytest.raises(C.CheckpointError, match="latest names 'ckpt-0000002.pt', which does not exist"):
        C.latest_checkpoint(tmp_path)
    with pytest.raises(C.CheckpointError, match="previous checkpoint .*ckpt-0000001.pt is intact"):
        C.resume_checkpoint(tmp_path)
    path, loaded, notes = C.resume_checkpoint(tmp_path, intact=True)
    assert path.name == "ckpt-0000001.pt" and loaded["step"] == 1
    assert "does not exist" in notes[0]


def test_nothing_to_resume(tmp_path):
    with pytest.raises(FileNotFoundError, match="no checkpoint") as err:
        C.resume_checkpoint(tmp_path / "none")
    assert isinstance(err.value, VivatError)


def test_checkpoints_are_written_readable_by_others(tmp_path):
    if os.name != "posix":
        pytest.skip("POSIX permissions")
    old = os.umask(0o022)
    try:
        path = C.save_checkpoint(state(1), tmp_path, 1)
    finally:
        os.umask(old)
    assert path.stat().st_mode & 0o777 == 0o644
    assert (tmp_path / "latest").stat().st_mode & 0o777 == 0o644
