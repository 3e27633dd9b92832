"""The autoencoders train on data without subnormal numbers (trainables.tasks.autoencoder.training_data).

The Curves replica's Gaussian pen leaves pixels between 1e-45 and 1.2e-38; on CPUs that penalise
subnormal operands they made every op reading a minibatch several times slower. The flush must
touch nothing else, and float32 and float64 runs must train on the same cases.
"""

import numpy as np
import torch

from trainables.config import parse_config
from trainables.data.curves_replica import make_curves
from trainables.tasks import TASKS

TINY = np.finfo(np.float32).tiny


def _subnormal(x: np.ndarray) -> np.ndarray:
    return (x != 0) & (np.abs(x) < TINY)


def test_curves_replica_has_subnormal_pixels_and_the_workload_trains_on_none():
    cfg = parse_config({"task": "curves", "dataset": "replica", "train_cases": 300})
    raw = make_curves(300, seed=0)
    assert _subnormal(raw).mean() > 0.01  # what the flush is for: the replica does have them

    data32 = TASKS["curves"].build(cfg, torch.device("cpu"), torch.float32).data.numpy()
    data64 = TASKS["curves"].build(cfg, torch.device("cpu"), torch.float64).data.numpy()
    assert not _subnormal(data32).any()
    # Only the subnormal pixels changed, to exact zeros; every other value is the replica's.
    np.testing.assert_array_equal(data32, np.where(_subnormal(raw), np.float32(0), raw))
    # float64 runs see the same cases (float32's subnormals would be normal numbers there).
    np.testing.assert_array_equal(data64, data32.astype(np.float64))
