"""Single-process training, no Ray: `python -m dpnp_ray epochs=3 method=pgd_at dataset=digits`.

Every argument is a config field as key=value (values parsed as JSON where they parse:
numbers, true/false, null, [lists]); prints each epoch and the test evaluation.
--help lists the fields and, for fields with a fixed set, the allowed values.
"""

from __future__ import annotations

import sys

from .config import ConfigError, ExperimentConfig, config_fields, field_choices, parse_assignments


def main(argv: list[str] | None = None) -> int:
    arguments = sys.argv[1:] if argv is None else argv
    if arguments and arguments[0] in ("-h", "--help"):
        print(__doc__)
        print("fields:", ", ".join(config_fields()))
        print("\nallowed values:")
        for name, values in field_choices().items():
            print(f"  {name}: {', '.join(values)}")
        return 0
    try:
        cfg = ExperimentConfig.from_dict(parse_assignments(arguments))
    except (ConfigError, KeyError) as exc:
        print(f"error: {exc}", file=sys.stderr)
        return 2
    from .experiment import run_experiment

    run_experiment(cfg)
    return 0


if __name__ == "__main__":
    sys.exit(main())
