"""Single-process training, no Ray: `python -m dpnp_ray epochs=3 method=pgd_at dataset=digits`.

Every argument is a config field as key=value (values parsed as JSON where they parse:
numbers, true/false, null, [lists]); prints each epoch and the test evaluation, then exports
the selected model (weights, config, metrics, provenance) to a model directory.

    --config FILE   start from a config file (YAML: config fields, or a `config:` mapping of them,
                    as in a study's best/<trial_id>.yaml); key=value arguments override it
    --out DIR       the model directory (default: results/models/<method>-<dataset>-s<seed>-<time>)

--help lists the fields with their defaults and, for fields with a fixed set, the allowed values.
Exit status: 0 when the model was exported, 2 for bad input, 1 when the training loss became
non-finite (one line naming the epoch and step).
"""

from __future__ import annotations

import argparse
import sys
import time

from .config import ConfigError, ExperimentConfig, choices_help, fields_help, parse_assignments


def main(argv: list[str] | None = None) -> int:
    arguments = sys.argv[1:] if argv is None else argv
    if arguments and arguments[0] in ("-h", "--help"):
        print(__doc__)
        print("fields, with their defaults (auto: derived from other fields, e.g. the data set):")
        print(fields_help())
        print("\nallowed values:")
        print(choices_help())
        return 0
    parser = argparse.ArgumentParser(prog="python -m dpnp_ray", add_help=False)
    parser.add_argument("--config")
    parser.add_argument("--out")
    parser.add_argument("assignments", nargs="*")
    options = parser.parse_intermixed_args(arguments)
    from .study.study_file import config_from_file

    try:
        values = config_from_file(options.config) if options.config else {}
        cfg = ExperimentConfig.from_dict({**values, **parse_assignments(options.assignments)})
    except (ConfigError, KeyError) as exc:
        print(f"error: {exc}", file=sys.stderr)
        return 2
    from .experiment import run_experiment
    from .model_export import export_model
    from .training_loop import NonFiniteLossError

    try:
        result = run_experiment(cfg)
    except NonFiniteLossError as exc:  # the run diverged: one line and exit 1, as a study's failed trial
        print(f"error: {exc}; no model was exported (a smaller lr, loss weight or grad_clip_norm may help)",
              file=sys.stderr)
        return 1
    cfg = result.config
    out = options.out or f"results/models/{cfg.method}-{cfg.dataset}-s{cfg.seed}-{time.strftime('%Y%m%d-%H%M%S')}"
    trial = {"study": "single", "trial_id": out.rstrip("/").rsplit("/", 1)[-1], "variant": cfg.method, "seed": cfg.seed}
    export_model(out, result.train.net, cfg, result.train.info, metrics=result.summary, trial=trial)
    print(f"model: {out}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
