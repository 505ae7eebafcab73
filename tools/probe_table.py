"""Frozen-feature probes of several encoders on one labelled split, as one small table.

    python tools/probe_table.py --out_dir probes/ \
        --encoder random pretrain_videomae_tiny_patch16_224 '' \
        --encoder teacher pretrain_videomae_small_patch16_224 teacher/checkpoint-19.pth \
        --probes knn linear -- --data_set UCF101 --data_path split/ --data_root split/ ...

Every ``(encoder, probe)`` pair runs ``run_frozen_eval.main`` in this process (one start-up
for all) with the flags after ``--`` plus ``--probe``, ``--model``, ``--finetune``,
``--output_dir <out_dir>/<encoder>/<probe>`` and one ``--feature_cache`` for all, so the
linear probe reuses the k-NN's features. Prints the table (Top-1, and the mean probability
of the true class: the probe's confidence, which still differs where Top-1 saturates) and
writes it to ``<out_dir>/probe_table.md``.
"""
import argparse
import os
import sys

sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.abspath(__file__))))

import run_frozen_eval  # noqa: E402


def run_all(encoders, probes, out_dir, flags):
    """``{(encoder name, probe): probe_summary}`` of every pair (see the module docstring)."""
    parser = run_frozen_eval.get_args_parser()
    results = {}
    for name, model, path in encoders:
        for probe in probes:
            argv = [*flags, "--probe", probe, "--model", model, "--finetune", path,
                    "--output_dir", os.path.join(out_dir, name, probe),
                    "--feature_cache", os.path.join(out_dir, "feature_cache")]
            print(f"== {probe} probe of {name} ({path or 'random initialisation'}) ==",
                  flush=True)
            results[name, probe] = run_frozen_eval.main(parser.parse_args(argv))
    return results


def table(results, encoders, probes):
    """Markdown table: one row per encoder, Top-1 / true-class probability per probe."""
    s = next(iter(results.values()))
    head = "| encoder | " + " | ".join(f"{p} Top-1 | {p} p(true)" for p in probes) + " |"
    lines = [f"{s['num_videos']} test videos x {s['views_per_video']} views, "
             f"{s['num_train_videos']} training videos, {s['protocol']['data_set']} protocol "
             f"{s['protocol']['num_frames']}x{s['protocol']['sampling_rate']} frames at "
             f"{s['protocol']['input_size']} px", "", head,
             "|---|" + "---|---|" * len(probes)]
    for name, *_ in encoders:
        cells = [f"{results[name, p]['top1']:.1f} | {results[name, p]['true_class_prob']:.3f}"
                 for p in probes]
        lines.append(f"| {name} | " + " | ".join(cells) + " |")
    return "\n".join(lines)


def main(argv=None):
    argv = sys.argv[1:] if argv is None else argv
    own, flags = (argv[:argv.index("--")], argv[argv.index("--") + 1:]) if "--" in argv \
        else (argv, [])
    p = argparse.ArgumentParser(description=__doc__,
                                formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--encoder", nargs=3, action="append", required=True,
                   metavar=("NAME", "MODEL", "CHECKPOINT"),
                   help="a row: its name, --model, --finetune ('' = random)")
    p.add_argument("--probes", nargs="+", default=["knn", "linear"], choices=["knn", "linear"])
    p.add_argument("--out_dir", required=True)
    args = p.parse_args(own)
    results = run_all(args.encoder, args.probes, args.out_dir, flags)
    text = table(results, args.encoder, args.probes)
    os.makedirs(args.out_dir, exist_ok=True)
    with open(os.path.join(args.out_dir, "probe_table.md"), "w") as f:
        f.write(text + "\n")
    print(text)


if __name__ == "__main__":
    main()
