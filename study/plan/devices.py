"""Which torch device a trial trains on: the one Ray assigned to it, not whatever is visible.

Ray counts GPUs only for trials that ask for them (``resources.gpus``), and it sets
CUDA_VISIBLE_DEVICES only for those: a trial that asked for no GPU still sees every GPU of its
node. Training on "cuda when present" would then put uncounted trials on cuda:0 next to the ones
Ray placed there. So the decision reads what Ray assigned (``ray.get_gpu_ids()``), and this module
keeps it a pure function of its inputs, testable without Ray or CUDA.
"""

from __future__ import annotations

from typing import Sequence


class DeviceError(RuntimeError):
    """The trial's resources and its training config's ``device`` cannot be reconciled."""


def trial_device(
    requested: str,
    assigned_gpu_ids: Sequence[int | str],
    cuda_available: bool,
    visible_devices: str | None = None,
) -> str:
    """The device a trial trains on: ``"cpu"`` or ``"cuda:N"``.

    Args:
        requested: the training config's ``device``: ``"auto"`` (follow the resources), ``"cpu"``
            (always the CPU, even with a GPU assigned) or ``"cuda"`` (a GPU must be assigned).
        assigned_gpu_ids: ``ray.get_gpu_ids()`` inside the trial: empty when the trial asked for
            no GPU; one id for ``gpus: 1`` and for a fraction of a GPU (trials with fractions
            share that device).
        cuda_available: ``torch.cuda.is_available()`` in the trial's process.
        visible_devices: CUDA_VISIBLE_DEVICES in the trial's process (None when unset). Ray sets
            it to the assigned ids, so the assigned GPU is then cuda:<its place in that list>,
            normally cuda:0; where it is unset (RAY_EXPERIMENTAL_NOSET_CUDA_VISIBLE_DEVICES) the
            id is the physical index.

    >>> trial_device("auto", [], cuda_available=True)
    'cpu'
    >>> trial_device("auto", ["3"], cuda_available=True, visible_devices="3")
    'cuda:0'
    """
    if requested not in ("auto", "cpu", "cuda"):
        raise DeviceError(f"device={requested!r} is not allowed: use 'auto', 'cpu' or 'cuda'")
    ids = list(dict.fromkeys(str(i).strip() for i in assigned_gpu_ids))
    if len(ids) > 1:
        raise DeviceError(
            f"this trial was assigned {len(ids)} GPUs ({', '.join(ids)}), but a trial trains its population "
            "on one device: multi-GPU populations are not supported yet; use resources.gpus <= 1 "
            "(fractions such as 0.25 share one GPU between trials)"
        )
    if requested == "cpu":
        return "cpu"
    if not ids:
        if requested == "cuda":
            raise DeviceError(
                "device='cuda' is not allowed for a trial without a GPU: Ray assigned it none; "
                "set resources.gpus (e.g. 1 or 0.25), or use device 'auto' or 'cpu'"
            )
        return "cpu"  # auto with gpus: 0: the CPU, even where CUDA is visible
    if not cuda_available:
        raise DeviceError(
            f"Ray assigned GPU {ids[0]} to this trial but CUDA is not available in its process "
            "(a CPU-only torch build, or no driver on the node); install a CUDA build of torch there, "
            "or use resources.gpus: 0"
        )
    visible = [v.strip() for v in visible_devices.split(",")] if visible_devices else []
    if visible:
        if ids[0] not in visible:
            raise DeviceError(
                f"Ray assigned GPU {ids[0]} but CUDA_VISIBLE_DEVICES={visible_devices!r} does not list it"
            )
        return f"cuda:{visible.index(ids[0])}"
    if not ids[0].isdigit():
        raise DeviceError(f"Ray assigned GPU {ids[0]!r}, which is not an index, and CUDA_VISIBLE_DEVICES is unset")
    return f"cuda:{ids[0]}"


def ray_trial_device(requested: str) -> str:
    """``trial_device`` with the inputs read inside a running Ray trial."""
    import os

    import ray
    import torch

    return trial_device(requested, ray.get_gpu_ids(), torch.cuda.is_available(), os.environ.get("CUDA_VISIBLE_DEVICES"))


def trial_gpus(requested: float | str, cluster_gpus: float) -> float:
    """The GPUs a trial asks Ray for: ``resources.gpus`` as given, or for ``"auto"`` one GPU where
    the Ray cluster has at least one (``ray.cluster_resources()["GPU"]``) and none elsewhere.

    >>> trial_gpus("auto", 0.0), trial_gpus("auto", 8.0), trial_gpus(0.25, 8.0)
    (0.0, 1.0, 0.25)
    """
    if requested == "auto":
        return 1.0 if cluster_gpus >= 1 else 0.0
    return float(requested)
