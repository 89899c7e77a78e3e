"""`hvdistill <verb>`: the one command-line entry point.

The only place that dispatches verbs to sharding/ and launch/, importing each verb's module
lazily so `hvdistill --help` is instant and a verb's heavy dependencies load only when used.
Every verb module exposes `main(argv: list[str] | None = None) -> int`.
"""

from __future__ import annotations

import importlib
import sys

# verb -> (module with main(argv), one-line help)
VERBS: dict[str, tuple[str, str]] = {
    "config": ("hvdistill.config.cli", "show the resolved config: config show CONFIG [key=value ...]"),
    "synth": ("hvdistill.synthetic.cli", "generate the synthetic world in nuScenes / SemanticKITTI format"),
    "inspect": ("hvdistill.data.sources.cli", "read a dataset through its source and print what it holds"),
    "shard": ("sharding.cli", "shard every data.sources entry with Ray; `shard verify DIR`"),
    "teacher": (
        "hvdistill.teacher.cli",
        "train the synthetic world's image teacher: teacher train CONFIG [k=v ...]",
    ),
    "demo": ("launch.demo", "the whole chain on the synthetic world: synth, shard, pretrain, sweep, report"),
    "pretrain": ("hvdistill.train.run", "pretrain the 3D backbone (DeepSpeed); --ray: on Ray Train workers"),
    "finetune": ("hvdistill.eval.run", "fine-tune or linearly probe the 3D backbone; mIoU per point"),
    "sweep": ("launch.sweep", "Ray Tune sweep: checkpoints x label fractions x seeds, table and plot"),
    "report": ("hvdistill.eval.report", "a sweep's mIoU table, plot and per-class IoU, from MLflow"),
    "study": ("launch.study", "the label-efficiency study: world, teacher, 3 pretrainings, sweeps, table"),
    "submit": ("launch.submit", "submit pretraining or a sweep to Ray as a job; submit status|logs|stop ID"),
}
# verb -> (flag, module): with the flag among its arguments the verb runs that module instead
FLAG_ROUTES: dict[str, tuple[str, str]] = {
    "pretrain": ("--ray", "launch.train"),  # `pretrain CONFIG ... --ray`: on Ray Train workers
}


def usage() -> str:
    width = max(len(v) for v in VERBS)
    lines = ["usage: hvdistill <verb> [args]", "", "verbs:"]
    lines += [f"  {verb:<{width}}  {text}" for verb, (_, text) in VERBS.items()]
    lines += ["", "`hvdistill <verb> --help` describes a verb's arguments."]
    return "\n".join(lines)


def main(argv: list[str] | None = None) -> int:
    argv = list(sys.argv[1:] if argv is None else argv)
    if not argv or argv[0] in ("-h", "--help", "help"):
        print(usage())
        return 0
    verb, rest = argv[0], argv[1:]
    flag, routed = FLAG_ROUTES.get(verb, ("", ""))
    if flag and flag in rest:
        return int(importlib.import_module(routed).main(rest) or 0)
    if verb not in VERBS:
        import difflib

        close = difflib.get_close_matches(verb, list(VERBS), n=1)
        hint = f" Did you mean '{close[0]}'?" if close else ""
        print(f"hvdistill: unknown verb '{verb}'.{hint}\n\n{usage()}", file=sys.stderr)
        return 2
    module = importlib.import_module(VERBS[verb][0])
    return int(module.main(rest) or 0)


if __name__ == "__main__":
    sys.exit(main())
