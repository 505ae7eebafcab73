"""Run logging: ``log.json`` lines and tensorboard scalars from rank 0, and a running
average of step metrics for the progress display."""
import json
import os
from collections import defaultdict

from distributed import all_reduce_mean, all_reduce_sum, is_main_process


class RunLogger:
    """Rank-0 sink for epoch summaries (``<output_dir>/log.json``, one JSON object per line)
    and per-step scalars (tensorboard under ``log_dir``; none when ``log_dir`` is empty).

    ``resume=(epoch, update)`` for a resumed run: the records of ``epoch`` and later are
    dropped from ``log.json``, and tensorboard hides the events of update ``update`` and later
    (``SummaryWriter(purge_step=)``), so the redone steps appear once."""

    def __init__(self, output_dir, log_dir=None, resume=None):
        self.main = is_main_process()
        self.output_dir = output_dir
        self.writer = None
        if self.main and output_dir:
            os.makedirs(output_dir, exist_ok=True)
            if resume is not None:
                self._drop_records_from(resume[0])
        if self.main and log_dir:
            from torch.utils.tensorboard import SummaryWriter
            os.makedirs(log_dir, exist_ok=True)
            self.writer = SummaryWriter(log_dir=log_dir,
                                        purge_step=None if resume is None else resume[1])

    def _drop_records_from(self, epoch):
        path = os.path.join(self.output_dir, "log.json")
        if not os.path.isfile(path):
            return
        with open(path) as f:
            lines = [line for line in f if line.strip()]
        kept = [line for line in lines if json.loads(line).get("epoch", -1) < epoch]
        if len(kept) < len(lines):
            with open(path + ".tmp", "w") as f:
                f.writelines(kept)
            os.replace(path + ".tmp", path)

    def scalars(self, values, step, prefix):
        if self.writer is not None:
            for k, v in values.items():
                self.writer.add_scalar(f"{prefix}/{k}", v, step)

    def write_args(self, args):
        """``<output_dir>/args.json``: every flag and derived value of the run, a plain dict
        (never a pickled Namespace)."""
        if self.main and self.output_dir:
            with open(os.path.join(self.output_dir, "args.json"), "w") as f:
                json.dump(vars(args), f, indent=2)

    def log_json(self, record):
        if self.main and self.output_dir:
            with open(os.path.join(self.output_dir, "log.json"), "a") as f:
                f.write(json.dumps(record) + "\n")

    def close(self):
        if self.writer is not None:
            self.writer.flush()
            self.writer.close()


class Averager:
    """Running means of named scalars (sample-weighted)."""

    def __init__(self):
        self.sum, self.count = defaultdict(float), defaultdict(float)

    def update(self, values, n=1):
        for k, v in values.items():
            self.sum[k] += float(v) * n
            self.count[k] += n

    def means(self):
        return {k: self.sum[k] / self.count[k] for k in self.sum if self.count[k]}


def epoch_summary(avg, skipped, seen, device="cpu"):
    """An epoch's metrics over all processes: the means of ``avg`` (an :class:`Averager`)
    averaged across ranks, plus the summed counts of skipped (corrupted) videos and of clips
    trained on."""
    stats = all_reduce_mean(avg.means(), device)
    stats["skipped_videos"] = int(all_reduce_sum(skipped, device))
    stats["clips"] = int(all_reduce_sum(seen, device))
    return stats
