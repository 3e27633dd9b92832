"""Data layer: the RNN problems (sec. 4), the Curves replica and the original autoencoder files.

Expected values are recomputed here from first principles (raw uncentred values, closed forms),
not read back from the module under test. Fixture files are written in the original formats.
"""

from __future__ import annotations

import gzip
import hashlib
import http.server
import struct
import threading
from pathlib import Path

import numpy as np
import pytest
import scipy.io
import torch

from trainables.data import autoencoder_files as af
from trainables.data.curves_replica import DATASET_LABEL, make_curves
from trainables.data.rnn_problems import PROBLEMS

# ---------------------------------------------------------------- RNN problems: addition, mult.

# E[v_I + v_J] and E[v_I * v_J] for independent U[0,1] values.
TARGET_MEANS = {"addition": 1.0, "multiplication": 0.25}
COMBINE = {"addition": np.add, "multiplication": np.multiply}


def _f(x: float, length: int) -> int:
    return int(x * length / 100)


def _raw_marked_pair(batch):
    """Uncentred (values, markers): values had 0.5 subtracted; markers are integers minus a
    small constant, so rounding restores them."""
    values = batch.inputs[..., 0].astype(np.float64) + 0.5
    markers = np.rint(batch.inputs[..., 1]).astype(int)
    return values, markers


@pytest.mark.parametrize("name", ["addition", "multiplication"])
@pytest.mark.parametrize("length", [80, 200])
def test_marked_pair_markers_lengths_and_positions(name, length):
    problem = PROBLEMS[name]
    lengths = set()
    for index in range(30):
        batch = problem.sample((1, index), 64, length).numpy()
        steps = batch.length
        lengths.add(steps)
        assert _f(100, length) <= steps < _f(110, length)
        assert batch.inputs.shape == (steps, 64, 2) and batch.inputs.dtype == np.float32
        values, markers = _raw_marked_pair(batch)
        assert values.min() >= 0.0 and values.max() <= 1.0
        for b in range(64):
            plus = np.flatnonzero(markers[:, b] == 1)
            assert len(plus) == 2
            i, j = plus
            assert _f(1, length) <= i < _f(10, length)
            assert _f(10, length) <= j < _f(50, length)
            minus = set(np.flatnonzero(markers[:, b] == -1))
            assert minus == ({0, steps - 3} - {i})
            assert set(np.flatnonzero(markers[:, b] == 0)) == set(range(steps)) - {0, steps - 3, i, j}
    # Lengths are drawn per minibatch, from the whole range.
    assert len(lengths) > 1


@pytest.mark.parametrize("name", ["addition", "multiplication"])
def test_marked_pair_target_combines_the_two_marked_values(name):
    problem = PROBLEMS[name]
    batch = problem.sample(2, 200, 80).numpy()
    values, markers = _raw_marked_pair(batch)
    assert batch.targets.shape == (batch.length, 200, 1) and batch.targets.dtype == np.float32
    for b in range(200):
        i, j = np.flatnonzero(markers[:, b] == 1)
        expected = COMBINE[name](values[i, b], values[j, b])
        assert batch.targets[-1, b, 0] + TARGET_MEANS[name] == pytest.approx(expected, abs=1e-6)
    assert np.all(batch.targets[:-1] == 0)
    last_only = np.zeros((batch.length, 200), dtype=bool)
    last_only[-1] = True
    np.testing.assert_array_equal(batch.loss_mask, last_only)
    np.testing.assert_array_equal(batch.error_mask, last_only)


@pytest.mark.parametrize("name", ["addition", "multiplication", "xor"])
def test_marked_pair_inputs_and_targets_are_centred(name):
    problem = PROBLEMS[name]
    batches = [problem.sample((3, index), 100, 80).numpy() for index in range(60)]
    channel_means = np.mean([b.inputs.mean(axis=(0, 1)) for b in batches], axis=0)
    target_mean = np.mean([b.targets[-1].mean() for b in batches])
    np.testing.assert_allclose(channel_means, 0.0, atol=2e-3)
    assert abs(target_mean) < 0.02
    np.testing.assert_array_equal(problem.output_bias(), np.zeros(1))


def test_same_key_gives_same_batch():
    for problem in PROBLEMS.values():
        a = problem.sample((7, 1, 3), 5, problem.default_length).numpy()
        b = problem.sample((7, 1, 3), 5, problem.default_length).numpy()
        c = problem.sample((7, 1, 4), 5, problem.default_length).numpy()
        for field in ("inputs", "targets", "loss_mask", "error_mask"):
            np.testing.assert_array_equal(getattr(a, field), getattr(b, field))
        assert not np.array_equal(a.inputs, c.inputs)


def test_addition_zero_one_error_uses_the_004_tolerance():
    problem = PROBLEMS["addition"]
    batch = problem.sample(4, 50, 80).numpy()
    exact = batch.targets.copy()
    assert problem.zero_one_error(exact, batch) == 0.0
    assert problem.zero_one_error(exact + 0.05, batch) == 1.0
    assert problem.zero_one_error(torch.from_numpy(exact - 0.05), batch) == 1.0
    assert problem.zero_one_error(exact + 0.03, batch) == 0.0
    # Only the last step counts: garbage elsewhere does not change the error.
    noisy = exact.copy()
    noisy[:-1] = 5.0
    assert problem.zero_one_error(noisy, batch) == 0.0
    half = exact.copy()
    half[-1, :25] += 0.05
    assert problem.zero_one_error(half, batch) == 0.5


def test_xor_targets_are_xor_of_marked_bits():
    problem = PROBLEMS["xor"]
    batch = problem.sample(5, 100, 80).numpy()
    values, markers = _raw_marked_pair(batch)
    assert set(np.unique(values)) <= {0.0, 1.0}
    for b in range(100):
        i, j = np.flatnonzero(markers[:, b] == 1)
        assert batch.targets[-1, b, 0] + 0.5 == float(int(values[i, b]) ^ int(values[j, b]))


# ------------------------------------------------------------------- RNN problems: memorization

MEMORY = {"mem5": (5, 2), "mem20": (10, 5)}  # (symbols n, alphabet size)


@pytest.mark.parametrize("name", ["mem5", "mem20"])
def test_memorization_layout(name):
    problem = PROBLEMS[name]
    n, alphabet = MEMORY[name]
    length = problem.default_length
    assert (length, problem.n_in, problem.n_out) == ({"mem5": 200, "mem20": 80}[name], alphabet + 2, alphabet + 1)
    batch = problem.sample(6, 300, length).numpy()
    assert batch.inputs.shape == (length, 300, alphabet + 2)
    assert batch.targets.shape == (length, 300) and batch.targets.dtype == np.int64
    # Centring subtracts one constant per channel; each channel takes both 0 and 1 in a batch this
    # size, so subtracting the channel minimum restores the raw one-hot code.
    raw = batch.inputs - batch.inputs.min(axis=(0, 1))
    np.testing.assert_allclose(raw.sum(-1), 1.0, atol=1e-5)
    code = raw.argmax(-1)
    blank, trigger = alphabet, alphabet + 1
    symbols = code[:n]
    assert symbols.max() < alphabet
    assert np.all(code[n : length - n - 1] == blank)
    assert np.all(code[length - n - 1] == trigger)
    assert np.all(code[length - n :] == blank)
    np.testing.assert_array_equal(batch.targets[length - n :], symbols)
    assert np.all(batch.targets[: length - n] == blank)
    assert batch.loss_mask.all()
    expected_error_mask = np.zeros((length, 300), dtype=bool)
    expected_error_mask[length - n :] = True
    np.testing.assert_array_equal(batch.error_mask, expected_error_mask)


@pytest.mark.parametrize("name", ["mem5", "mem20"])
def test_memorization_inputs_are_centred(name):
    problem = PROBLEMS[name]
    batch = problem.sample(9, 2000, problem.default_length).numpy()
    np.testing.assert_allclose(batch.inputs.mean(axis=(0, 1)), 0.0, atol=2e-3)


@pytest.mark.parametrize("name,table5", [("mem5", 2.5), ("mem20", 8.0)])
def test_bias_only_error_matches_table5(name, table5):
    problem = PROBLEMS[name]
    n, alphabet = MEMORY[name]
    assert n * (1 - 1 / alphabet) == table5  # the closed form the table's bias row agrees with
    batch = problem.sample(10, 4000, problem.default_length).numpy()
    bias = problem.output_bias()
    outputs = np.broadcast_to(bias, batch.targets.shape + (problem.n_out,))
    assert problem.zero_one_error(outputs, batch) == pytest.approx(table5, abs=0.1)
    assert problem.zero_one_error(torch.from_numpy(outputs.copy()), batch) == pytest.approx(table5, abs=0.1)
    # Table 4's output bias: softmax(bias) is the average target distribution over all steps.
    softmax = np.exp(bias) / np.exp(bias).sum()
    frequency = np.bincount(batch.targets.ravel(), minlength=problem.n_out) / batch.targets.size
    np.testing.assert_allclose(softmax, frequency, atol=2e-3)


def test_memorization_perfect_outputs_score_zero():
    problem = PROBLEMS["mem20"]
    batch = problem.sample(11, 50, 80).numpy()
    outputs = np.eye(problem.n_out)[batch.targets] * 10.0
    assert problem.zero_one_error(outputs, batch) == 0.0
    outputs[-1, :, :] = 0.0  # one wrong symbol (argmax -> class 0) where the target is not 0
    wrong = float((batch.targets[-1] != 0).mean())
    assert problem.zero_one_error(outputs, batch) == pytest.approx(wrong)


def test_input_scales_follow_table4():
    assert {k: p.input_scale for k, p in PROBLEMS.items() if k != "xor"} == {
        "addition": 0.001, "multiplication": 0.001, "mem5": 0.1, "mem20": 0.1,
    }


# ----------------------------------------------------------------------------- Curves replica


def test_curves_replica_shape_range_and_determinism():
    assert "replica" in DATASET_LABEL and "digs3pts_1.mat" in DATASET_LABEL
    x = make_curves(500, seed=3)
    assert x.shape == (500, 784) and x.dtype == np.float32
    assert x.min() >= 0.0 and x.max() <= 1.0
    np.testing.assert_array_equal(x, make_curves(500, seed=3))
    assert not np.array_equal(x, make_curves(500, seed=4))
    # Every image has a visible stroke, and intensities are continuous, not binary.
    assert x.max(axis=1).min() > 0.3
    assert ((x > 0.05) & (x < 0.95)).mean() > 0.02
    # Strokes cover a small part of the image, as curves do.
    assert 0.01 < (x > 0.5).mean() < 0.3


def test_curves_replica_does_not_depend_on_chunking(monkeypatch):
    import trainables.data.curves_replica as cr

    full = make_curves(50, seed=1)
    monkeypatch.setattr(cr, "CHUNK", 7)
    np.testing.assert_array_equal(full, cr.make_curves(50, seed=1))
    assert make_curves(0, seed=1).shape == (0, 784)


# ----------------------------------------------------------------------------- original files


def _md5(path: Path) -> str:
    return hashlib.md5(path.read_bytes()).hexdigest()


@pytest.fixture
def curves_file(tmp_path):
    rng = np.random.default_rng(0)
    bdata, bdatatest = rng.random((20, 784)), rng.random((6, 784))
    path = tmp_path / "digs3pts_1.mat"
    scipy.io.savemat(path, {"bdata": bdata, "bdatatest": bdatatest})
    return path, bdata, bdatatest


def test_load_curves_reads_bdata_rows(curves_file):
    path, bdata, bdatatest = curves_file
    split = af.load_curves(path)
    assert split.train.dtype == np.float32 and split.train.shape == (20, 784)
    np.testing.assert_allclose(split.train, bdata, rtol=1e-6)
    np.testing.assert_allclose(split.test, bdatatest, rtol=1e-6)


def _mnist_digits(rng):
    return {f"{s}{d}": rng.integers(0, 256, size=(3 + d, 784), dtype=np.uint8)
            for s in ("train", "test") for d in range(10)}


def test_load_mnist_from_mat_concatenates_digits_and_scales(tmp_path):
    digits = _mnist_digits(np.random.default_rng(1))
    scipy.io.savemat(tmp_path / "mnist_all.mat", digits)
    for source in (tmp_path / "mnist_all.mat", tmp_path):
        split = af.load_mnist(source)
        expected = np.concatenate([digits[f"train{d}"] for d in range(10)]) / 255.0
        np.testing.assert_allclose(split.train, expected, rtol=1e-6)
        assert split.train.dtype == np.float32 and split.train.max() <= 1.0
        assert split.test.shape == (sum(3 + d for d in range(10)), 784)


def _write_idx(path: Path, array: np.ndarray) -> None:
    header = bytes([0, 0, 0x08, array.ndim]) + b"".join(struct.pack(">I", d) for d in array.shape)
    payload = header + array.astype(np.uint8).tobytes()
    if path.suffix == ".gz":
        with gzip.open(path, "wb") as f:
            f.write(payload)
    else:
        path.write_bytes(payload)


@pytest.mark.parametrize("suffix", ["", ".gz"])
def test_load_mnist_from_idx_files(tmp_path, suffix, monkeypatch):
    rng = np.random.default_rng(2)
    train = rng.integers(0, 256, size=(12, 28, 28), dtype=np.uint8)
    test = rng.integers(0, 256, size=(4, 28, 28), dtype=np.uint8)
    _write_idx(tmp_path / f"train-images-idx3-ubyte{suffix}", train)
    _write_idx(tmp_path / f"t10k-images-idx3-ubyte{suffix}", test)
    _write_idx(tmp_path / f"train-labels-idx1-ubyte{suffix}", rng.integers(0, 10, size=12))
    if suffix:
        # The fixtures are not the real files, so the published md5s must reject them ...
        with pytest.raises(af.ChecksumError, match="train-images-idx3-ubyte.gz"):
            af.load_mnist(tmp_path)
        # ... and accept them once the registry holds the fixtures' own digests.
        for stem in ("train-images-idx3-ubyte", "t10k-images-idx3-ubyte"):
            name = stem + ".gz"
            monkeypatch.setitem(af.KNOWN_FILES, name, af.KnownFile(name, "unused", md5=_md5(tmp_path / name)))
    split = af.load_mnist(tmp_path)
    np.testing.assert_allclose(split.train, train.reshape(12, 784) / 255.0, rtol=1e-6)
    np.testing.assert_allclose(split.test, test.reshape(4, 784) / 255.0, rtol=1e-6)
    labels = af.read_idx(tmp_path / f"train-labels-idx1-ubyte{suffix}")
    assert labels.shape == (12,)


def test_read_idx_rejects_truncated_file(tmp_path):
    path = tmp_path / "bad-idx"
    path.write_bytes(bytes([0, 0, 8, 2]) + struct.pack(">II", 3, 4) + b"\x00" * 5)
    with pytest.raises(ValueError, match="header says shape"):
        af.read_idx(path)


def test_load_faces_splits_columns(tmp_path):
    # The real file is 625 x 165600; a 2-row file keeps the column layout at a fraction of the
    # size. Row 0 holds each column's index, so the split is checked column by column.
    columns = 165_600
    data = np.vstack([np.arange(columns), -np.arange(columns) / 7.0]).astype(np.float32)
    scipy.io.savemat(tmp_path / "newfaces_rot_single.mat", {"newfaces_single": data})
    split = af.load_faces(tmp_path / "newfaces_rot_single.mat")
    assert split.train.shape == (103_500, 2) and split.test.shape == (41_400, 2)
    np.testing.assert_array_equal(split.train[:, 0], np.arange(103_500))
    np.testing.assert_array_equal(split.test[:, 0], np.arange(columns - 41_400, columns))
    np.testing.assert_array_equal(split.train[:, 1], data[1, :103_500])  # values kept as stored


def test_checksum_mismatch_names_file_and_both_digests(curves_file):
    path = curves_file[0]
    actual = hashlib.sha256(path.read_bytes()).hexdigest()
    wrong = "0" * 64
    with pytest.raises(af.ChecksumError) as err:
        af.load_curves(path, expected_checksum=wrong)
    message = str(err.value)
    assert "digs3pts_1.mat" in message and wrong in message and actual in message
    af.load_curves(path, expected_checksum=f"sha256:{actual}")
    af.load_curves(path, expected_checksum=_md5(path))
    assert af.KNOWN_FILES["digs3pts_1.mat"].md5 is None  # no published digest for the .mat files


@pytest.mark.parametrize("task,name", [("curves", "digs3pts_1.mat"), ("mnist", "mnist_all.mat"),
                                       ("faces", "newfaces_rot_single.mat")])
def test_missing_file_error_names_file_directory_and_url(tmp_path, task, name):
    for directory in (tmp_path, tmp_path / "not-created"):
        with pytest.raises(FileNotFoundError) as err:
            af.load_autoencoder_data(task, "original", data_dir=directory)
        assert isinstance(err.value, af.DataFileNotFoundError)
        message = str(err.value)
        assert name in message and str(directory) in message and af.KNOWN_FILES[name].url in message


def test_replica_exists_only_for_curves(tmp_path):
    x = af.load_autoencoder_data("curves", "replica", train_cases=30, seed=5)
    np.testing.assert_array_equal(x, make_curves(30, seed=5))
    with pytest.raises(af.NoReplicaError, match="mnist_all.mat"):
        af.load_autoencoder_data("mnist", "replica")
    with pytest.raises(af.NoReplicaError, match="newfaces_rot_single.mat"):
        af.load_autoencoder_data("faces", "replica")


def test_original_training_cases_are_a_seeded_subset(curves_file):
    path, bdata, _ = curves_file
    x = af.load_autoencoder_data("curves", "original", data_dir=path.parent, train_cases=7, seed=1)
    assert x.shape == (7, 784)
    rows = {tuple(np.round(r, 5)) for r in bdata.astype(np.float32)}
    assert all(tuple(np.round(r, 5)) in rows for r in x)
    np.testing.assert_array_equal(x, af.load_autoencoder_data("curves", "original", path.parent, 7, seed=1))
    full = af.load_autoencoder_data("curves", "original", path.parent, None, seed=0)
    np.testing.assert_allclose(np.sort(full, axis=0), np.sort(bdata, axis=0), rtol=1e-6)


# ------------------------------------------------------------------------------- downloading


class _FixtureHandler(http.server.BaseHTTPRequestHandler):
    files: dict[str, bytes] = {}

    def do_GET(self):  # noqa: N802 (http.server's naming)
        if self.path == "/truncated":
            # Promise more bytes than are sent, then hang up: a download cut off midway.
            self.send_response(200)
            self.send_header("Content-Length", "100000")
            self.end_headers()
            self.wfile.write(b"partial" * 10)
            self.wfile.flush()
            self.close_connection = True
            return
        body = self.files.get(self.path)
        if body is None:
            self.send_error(404)
            return
        self.send_response(200)
        self.send_header("Content-Length", str(len(body)))
        self.end_headers()
        self.wfile.write(body)

    def log_message(self, *args):
        pass


@pytest.fixture
def server(curves_file):
    _FixtureHandler.files = {"/digs3pts_1.mat": curves_file[0].read_bytes()}
    httpd = http.server.ThreadingHTTPServer(("127.0.0.1", 0), _FixtureHandler)
    thread = threading.Thread(target=httpd.serve_forever, args=(0.05,), daemon=True)
    thread.start()
    yield f"http://127.0.0.1:{httpd.server_address[1]}"
    httpd.shutdown()
    httpd.server_close()


def test_fetch_downloads_verifies_and_loads(server, curves_file, tmp_path):
    source = curves_file[0]
    target_dir = tmp_path / "downloads"
    digest = hashlib.sha256(source.read_bytes()).hexdigest()
    path = af.fetch("digs3pts_1.mat", target_dir, url=f"{server}/digs3pts_1.mat",
                    expected_checksum=f"sha256:{digest}", timeout=5)
    assert path == target_dir / "digs3pts_1.mat"
    assert path.read_bytes() == source.read_bytes()
    assert sorted(p.name for p in target_dir.iterdir()) == ["digs3pts_1.mat"]
    np.testing.assert_allclose(af.load_curves(path).train, curves_file[1], rtol=1e-6)
    # A file already present is verified, not downloaded again.
    assert af.fetch("digs3pts_1.mat", target_dir, url=f"{server}/missing", timeout=5) == path


@pytest.mark.parametrize("route,error", [("/digs3pts_1.mat", af.ChecksumError),
                                         ("/truncated", af.DownloadError),
                                         ("/missing", af.DownloadError)])
def test_failed_download_leaves_no_file(server, tmp_path, route, error):
    target_dir = tmp_path / "downloads"
    with pytest.raises(error) as err:
        af.fetch("digs3pts_1.mat", target_dir, url=f"{server}{route}",
                 expected_checksum="md5:" + "0" * 32, timeout=5)
    assert "digs3pts_1.mat" in str(err.value)
    assert list(target_dir.iterdir()) == []


def test_data_file_errors_survive_pickling_with_their_message():
    # Ray sends a failed trial's exception to the driver by pickling it: a class that cannot be
    # rebuilt from its pickle turns the real message into a TypeError about __init__'s arguments.
    import pickle

    from trainables.data.autoencoder_files import ChecksumError, DataFileNotFoundError

    for exc in (DataFileNotFoundError("digs3pts_1.mat", "/data"),
                ChecksumError("digs3pts_1.mat", "/data/digs3pts_1.mat", "sha256", "ab", "cd")):
        back = pickle.loads(pickle.dumps(exc))
        assert type(back) is type(exc) and str(back) == str(exc)
