"""digits-noise20/40 of docs/results.md round 4 with lr_peak 0.2 (random SGD's best
validation accuracy at its best epoch on both noisy tasks), as tasks of one's own."""

from docl.worker.tasks import TaskData, get_task


def _lr02(noise: float) -> TaskData:
    d = get_task("digits", validation=0.15, noise=noise)
    d.defaults = {**d.defaults, "lr_peak": 0.2}
    return d


def noise20() -> TaskData:
    return _lr02(0.2)


def noise40() -> TaskData:
    return _lr02(0.4)
