"""`textft templates`, `textft models ...` and a model's training runs: `train`,
`watch`, `cancel`, `status`, `evaluate` and `plot`."""

from __future__ import annotations

import argparse
import sys
from typing import Any

from ..client import Client
from ..v1 import common_pb2
from .args import CONFIG_SECTIONS, TASK_CHOICES, apply_set, dataset_version_name, model_version_name, parse_json_object
from .output import format_time, list_all, print_json, show, state_name, table, task_name, to_dict
from .runs import follow, print_version


def cmd_templates(client: Client, args: argparse.Namespace) -> int:
    templates = client.list_templates(args.task or common_pb2.TASK_UNSPECIFIED)
    if args.json:
        print_json({"templates": [to_dict(t) for t in templates]})
        return 0
    rows = []
    for t in templates:
        base = t.model_config.fields.get("pretrained_model_name_or_path")
        rows.append(
            (t.name.removeprefix("templates/"), task_name(t.task), base.string_value if base else "", t.description)
        )
    table(("NAME", "TASK", "BASE MODEL", "DESCRIPTION"), rows)
    return 0


def cmd_models_create(client: Client, args: argparse.Namespace) -> int:
    model = client.create_model(args.id, task=args.task, description=args.description)
    if args.json:
        print_json(model)
    else:
        print(f"created {model.name} ({task_name(model.task)})")
    return 0


def cmd_models_list(client: Client, args: argparse.Namespace) -> int:
    list_all(
        lambda token: client.list_models(page_size=1000, page_token=token),
        "models",
        args.json,
        ("NAME", "TASK", "LATEST READY VERSION", "CREATED", "DESCRIPTION"),
        lambda m: (m.name, task_name(m.task), m.latest_ready_version, format_time(m, "create_time"), m.description),
    )
    return 0


def cmd_models_get(client: Client, args: argparse.Namespace) -> int:
    if "/versions/" in args.name:
        version = client.get_model_version(model_version_name(args.name))
        if args.json:
            print_json(version)
        else:
            print_version(version)
        return 0
    model = client.get_model(args.name)
    if args.json:
        print_json(model)
        return 0
    show(
        model.name,
        [
            ("task", task_name(model.task)),
            ("description", model.description),
            ("latest ready version", model.latest_ready_version or "(none)"),
            ("created", format_time(model, "create_time")),
        ],
    )
    return 0


def cmd_models_versions(client: Client, args: argparse.Namespace) -> int:
    def headline(v: Any) -> str:
        m = v.evaluation.metrics
        for key in ("accuracy", "macro_f1", "exact_match", "loss"):
            if key in m:
                return f"{key} {m[key]:.4g}"
        return v.failure.reason

    list_all(
        lambda token: client.list_model_versions(args.model, page_size=1000, page_token=token),
        "model_versions",
        args.json,
        ("NAME", "STATE", "PROGRESS", "DATASET VERSION", "TEMPLATE", "RESULT", "CREATED"),
        lambda v: (
            v.name,
            state_name(v.state),
            f"{v.progress.percent_completed:.0f}%",
            v.dataset_version,
            v.template.removeprefix("templates/"),
            headline(v),
            format_time(v, "create_time"),
        ),
    )
    return 0


def cmd_train(client: Client, args: argparse.Namespace) -> int:
    configs: dict[str, dict[str, Any]] = {}
    for section in CONFIG_SECTIONS:
        text = getattr(args, section)
        if text is not None:
            configs[section] = parse_json_object(text, "--" + section.replace("_", "-"))
    for assignment in args.set or []:
        apply_set(configs, assignment)
    version = client.train(
        args.model,
        dataset_version_name(args.dataset_version),
        args.template,
        model_config=configs.get("model_config"),
        peft_config=configs.get("peft_config"),
        tokenizer_config=configs.get("tokenizer_config"),
        trainer_config=configs.get("trainer_config"),
        invalid_data_tolerance_percent=args.tolerance,
        description=args.description,
    )
    if args.no_wait:
        if args.json:
            print_json(version)
        else:
            print(f"created {version.name} ({state_name(version.state)})")
            print(f"follow it with: textft watch {version.name}")
        return 0
    sys.stderr.write(f"training {version.name}\n")
    return follow(client, version.name, args.json, stream_events=False)


def cmd_watch(client: Client, args: argparse.Namespace) -> int:
    return follow(client, model_version_name(args.version), args.json, stream_events=args.json)


def cmd_cancel(client: Client, args: argparse.Namespace) -> int:
    version = client.cancel(model_version_name(args.version))
    if args.json:
        print_json(version)
    else:
        print(f"{version.name}: {state_name(version.state)}")
    return 0


def cmd_status(client: Client, args: argparse.Namespace) -> int:
    version = client.get_model_version(model_version_name(args.version))
    if args.json:
        print_json(version)
    else:
        print_version(version)
    return 0


def cmd_evaluate(client: Client, args: argparse.Namespace) -> int:
    evaluation = client.evaluate(model_version_name(args.version), args.dataset_version)
    if args.json:
        print_json(evaluation)
        return 0
    print(f"{args.dataset_version}: {evaluation.example_count} examples, {evaluation.skipped_row_count} skipped")
    for key, value in sorted(evaluation.metrics.items()):
        print(f"  {key:<14} {value:.4f}")
    for label, auc in sorted(evaluation.roc_auc_per_label.items()):
        print(f"  roc_auc[{label}] {auc:.4f}")
    return 0


def cmd_plot(client: Client, args: argparse.Namespace) -> int:
    from ..plots import PlotsUnavailable, save_run_plots

    try:
        paths = save_run_plots(client, model_version_name(args.version), args.out, wait=args.wait)
    except (PlotsUnavailable, ValueError) as err:
        sys.stderr.write(f"error: {err}\n")
        return 1
    if args.json:
        print_json({"files": [str(p) for p in paths]})
    else:
        for path in paths:
            print(f"saved {path}")
    return 0


def register(sub: argparse._SubParsersAction[argparse.ArgumentParser]) -> None:
    """Adds `templates`, `models` (with its subcommands) and the training-run commands."""
    p = sub.add_parser("templates", help="list training templates")
    p.add_argument("--task", choices=TASK_CHOICES)
    p.set_defaults(func=cmd_templates)

    # models
    models = sub.add_parser("models", help="models and their versions (training runs)")
    msub = models.add_subparsers(dest="subcommand", metavar="SUBCOMMAND", required=True)
    p = msub.add_parser("create", help="create a model")
    p.add_argument("id")
    p.add_argument("--task", choices=TASK_CHOICES, required=True)
    p.add_argument("--description", default="")
    p.set_defaults(func=cmd_models_create)
    p = msub.add_parser("list", help="list models")
    p.set_defaults(func=cmd_models_list)
    p = msub.add_parser("get", help="show a model (or a model version)")
    p.add_argument("name")
    p.set_defaults(func=cmd_models_get)
    p = msub.add_parser("versions", help="list the versions (training runs) of a model")
    p.add_argument("model")
    p.set_defaults(func=cmd_models_versions)

    # training
    p = sub.add_parser("train", help="start a training run and follow it")
    p.add_argument("model", help="model id or models/{id}")
    p.add_argument("dataset_version", help="datasets/{id}/versions/{version}")
    p.add_argument("--template", required=True, help="template name (see `textft templates`)")
    for section in CONFIG_SECTIONS:
        p.add_argument("--" + section.replace("_", "-"), dest=section, metavar="JSON", help=f"{section} overrides")
    p.add_argument(
        "--set",
        action="append",
        metavar="SECTION.KEY=VALUE",
        help="one override, e.g. trainer_config.num_train_epochs=3 (value parsed as JSON when it can be)",
    )
    p.add_argument("--tolerance", type=float, default=0.0, metavar="PCT", help="invalid rows tolerated, 0-100 (%%)")
    p.add_argument("--description", default="")
    p.add_argument("--no-wait", action="store_true", help="return once the run is queued")
    p.set_defaults(func=cmd_train)

    for name, func, what in (
        ("watch", cmd_watch, "follow a training run to its end"),
        ("cancel", cmd_cancel, "cancel a training run"),
        ("status", cmd_status, "show a training run"),
    ):
        p = sub.add_parser(name, help=what)
        p.add_argument("version", help="models/{model}/versions/{version}")
        p.set_defaults(func=func)

    p = sub.add_parser("evaluate", help="evaluate a READY run on any dataset version of its task")
    p.add_argument("version", help="models/{model}/versions/{version}")
    p.add_argument("dataset_version", help="datasets/{dataset}/versions/{version}")
    p.set_defaults(func=cmd_evaluate)


def register_plot(sub: argparse._SubParsersAction[argparse.ArgumentParser]) -> None:
    """Adds `plot`: apart from register() so that `textft --help` lists it after `predict`, as it always has."""
    p = sub.add_parser("plot", help="save a run's training loss and ROC curves as PNG (needs textft[plots])")
    p.add_argument("version", help="models/{model}/versions/{version}")
    p.add_argument("--out", default=".", help="directory for the PNG files (default: here)")
    p.add_argument("--wait", action="store_true", help="wait for a run still going instead of refusing")
    p.set_defaults(func=cmd_plot)
