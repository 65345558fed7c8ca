"""`ganpipe` command line: thin wrappers around the stage functions.

User errors print one line on stderr and exit 2; anything else keeps its traceback.
Hyperparameters live in params.yaml only (use `dvc exp run -S key=value` to vary them).
"""

from __future__ import annotations

import argparse
import os
import sys
from pathlib import Path

from ganpipe.core.errors import GanpipeError
from ganpipe.core.paths import layout
from ganpipe.core.redact import redact


def _params(args):
    from ganpipe.core.params import load_params

    return load_params(args.params or args.layout.params_path)


def cmd_prepare(args) -> None:
    from ganpipe.data.prepare import prepare, summary

    m = prepare(_params(args).data, args.layout.prepared_dir)
    print("prepared " + "\n".join(summary(m)))


def cmd_data_show(args) -> None:
    from ganpipe.data.prepare import contact_sheet, read_manifest, summary

    print("\n".join(summary(read_manifest(args.layout.prepared_dir))))
    print(f"contact sheet: {contact_sheet(args.layout.prepared_dir, args.out, args.per_class, args.seed)}")


def cmd_ref_stats(args) -> None:
    from ganpipe.core.device import resolve_device
    from ganpipe.evaluation.features import build_extractor
    from ganpipe.evaluation.refstats import compute_ref_stats

    p = _params(args).eval
    ref = compute_ref_stats(
        build_extractor(p, resolve_device()),
        p.num_real,
        p.batch_size,
        args.layout.prepared_dir,
        args.layout.ref_stats_path,
    )
    print(
        f"reference statistics: {ref.key['num_real']} images, {ref.key['extractor']} "
        f"(weights {ref.key['weights_sha256'][:12]}){' from the cache' if ref.from_cache else ''}"
    )


def cmd_train(args) -> None:
    from ganpipe.training.loop import train
    from ganpipe.training.snapshots import RESUME_ENV

    resume = args.resume or os.environ.get(RESUME_ENV) == "1"
    info = train(
        _params(args),
        args.layout.prepared_dir,
        args.layout.models_dir,
        args.layout.root,
        resume=resume,
        force=args.force,
    )
    if "mlflow_run_id" not in info:
        return  # a torchrun worker other than rank 0
    resumed = f" (resumed at {info['resumed_from_kimg']:g} kimg)" if info["resumed_from_kimg"] else ""
    print(
        f"trained {info['kimg']:g} kimg{resumed} on {info['device']} in {info['seconds']:.0f}s "
        f"({info['images_per_second']:.0f} img/s); best snapshot at {info['best_kimg']:g} kimg "
        f"(quick KID {info['best_quick_kid']:.4g}); MLflow run {info['mlflow_run_id']}"
    )


def _print_result(r: dict) -> None:
    from ganpipe.evaluation.evaluate import scores_of

    print("  ".join(f"{k}={v:.6g}" for k, v in scores_of(r).items()) + f"  (protocol {r['fingerprint']})")
    for name, why in r.get("unavailable", {}).items():
        print(f"{name}: unavailable ({why})")


def cmd_evaluate(args) -> None:
    from ganpipe.evaluation import evaluate as ev
    from ganpipe.registry.scoring import evaluate_model

    lay, p = args.layout, _params(args).eval
    if args.model is None:
        r = ev.evaluate(p, lay.checkpoint_path, lay.ref_stats_path, lay.run_info_path, lay.metrics_path, lay.root)
    else:
        r = evaluate_model(p, args.model, lay.ref_stats_path, args.out, lay.root, args.allow_foreign_model)
    _print_result(r)


def cmd_compare(args) -> None:
    from ganpipe.core import tracking
    from ganpipe.evaluation.compare import compare
    from ganpipe.registry.refs import Scope
    from ganpipe.registry.scoring import load_result

    tracking.configure(args.layout.root)
    scope = Scope.of(_params(args), args.allow_foreign_model)
    rows = compare(load_result(args.a, scope), load_result(args.b, scope))
    print(f"{'metric':<14}{'a':>12}{'b':>12}{'b - a':>12}  better")
    for r in rows:
        arrow = "higher" if r["higher_is_better"] else "lower"
        print(f"{r['metric']:<14}{r['a']:>12.6g}{r['b']:>12.6g}{r['diff']:>12.4g}  {r['better']} ({arrow} is better)")


def cmd_register(args) -> None:
    from ganpipe.registry.register import register

    p = _params(args)
    r = register(p.registry, p.eval, args.layout)
    state = f"now {r['alias']}" if r["promoted"] else f"{r['alias']} stays v{r['champion']}"
    print(f"registered {r['model_name']} v{r['version']}: {state} ({r['reason']})")
    for c in r["checks"]:
        print(f"  [{'pass' if c['passed'] else 'FAIL'}] {c['name']}: {c['detail']}")


def _registry(args):
    from mlflow.tracking import MlflowClient

    from ganpipe.core import tracking

    tracking.configure(args.layout.root)
    return MlflowClient(), _params(args).registry


def _print_move(e: dict) -> None:
    print(
        f"{e['at']}  {e['alias']}: {'v' + e['from'] if e['from'] else '-'} -> v{e['to']}  by {e['by']} "
        f"via {e['via']}: {e['reason']}"
    )


def cmd_history(args) -> None:
    from ganpipe.registry.aliases import history

    client, reg = _registry(args)
    moves = history(client, reg.model_name)  # also: a clear error when the model does not exist
    aliases: dict[str, list[str]] = {}
    for alias, version in client.get_registered_model(reg.model_name).aliases.items():
        aliases.setdefault(str(version), []).append(alias)
    for v in sorted(client.search_model_versions(f"name='{reg.model_name}'"), key=lambda v: int(v.version)):
        t = v.tags
        print(
            f"v{v.version}  {t.get('gate.decision', '?'):<9} {reg.primary_metric}={t.get('metric.' + reg.primary_metric, '?')}"
            f"  aliases={','.join(aliases.get(str(v.version), [])) or '-'}  run={t.get('mlflow_run_id', '?')[:8]}"
            f"  {t.get('gate.reason', '')}"
        )
    print()
    for e in moves:
        _print_move(e)


def cmd_promote(args) -> None:
    from ganpipe.registry.aliases import promote

    client, reg = _registry(args)
    _print_move(promote(client, reg.model_name, reg.alias, str(args.version), args.reason))


def cmd_rollback(args) -> None:
    from ganpipe.registry.aliases import rollback

    client, reg = _registry(args)
    _print_move(rollback(client, reg.model_name, reg.alias, args.reason))


def _heartbeats(args):
    """Flow runs started here beat at the cadence the server's watchdog expects. A params.yaml that does
    not load is left to the flow, which fails on it and sends the failure notice."""
    from contextlib import nullcontext

    from ganpipe.core.errors import ConfigError
    from ganpipe.orchestration.watchdog import heartbeats

    try:
        return heartbeats(_params(args).schedule)
    except ConfigError:
        return nullcontext()


def cmd_run(args) -> None:
    from ganpipe.orchestration.pipeline import training_pipeline

    with _heartbeats(args):
        r = training_pipeline(project_dir=str(args.layout.root), force=args.force)
    if r["skipped"]:
        print(
            f"skipped: {r['reason']}; champion: models:/{r['model_name']}@{r['alias']} = v{r['champion']} "
            "(`ganpipe run --force` retrains anyway)"
        )
        return
    print(
        f"champion: models:/{r['model_name']}@{r['alias']} = v{r['champion']}; "
        f"this run registered v{r['version']} ({'promoted' if r['promoted'] else 'not promoted'})"
    )


def cmd_sweep(args) -> None:
    from ganpipe.orchestration.sweep_flow import sweep

    with _heartbeats(args):
        out = sweep(project_dir=str(args.layout.root))
    w, reg = out["winner"], out["registration"]
    state = "it is the new champion" if reg["promoted"] else f"champion stays v{reg['champion']}"
    print(f"sweep: best {w['name']} {w['overrides']}; registered v{reg['version']}: {state}")


def cmd_generate(args) -> None:
    from ganpipe.serving import generate as gen

    if args.replay:
        print(
            f"replayed {args.replay} into {gen.replay(args.replay, args.out, args.layout.root, args.allow_foreign_model)}"
        )
        return
    model = args.model or _champion_uri(args)
    if args.interpolate or args.walk:
        seeds = args.interpolate or list(range(args.seed, args.seed + args.walk))
        out = gen.animate(
            model,
            seeds,
            args.frames,
            args.out,
            args.fps,
            args.psi,
            args.layout.root,
            args.class_,
            args.allow_foreign_model,
        )
        print(f"wrote an animation through seeds {seeds} from {model} to {out}")
        return
    files = gen.generate(
        model, args.n, args.seed, args.out, args.psi, args.class_, args.layout.root, args.allow_foreign_model
    )
    where = files[0] if len(files) == 1 else f"{len(files)} files in {Path(args.out)}"
    print(
        f"wrote {args.n} images (seeds {args.seed}..{args.seed + args.n - 1}, psi {args.psi:g}) from {model} to {where}"
    )


def _champion_uri(args) -> str:
    reg = _params(args).registry
    return f"models:/{reg.model_name}@{reg.alias}"


def cmd_serve(args) -> None:
    from ganpipe.serving.server import serve

    serve(_params(args).serve, args.model or _champion_uri(args), args.port, args.layout.root, args.allow_foreign_model)


def cmd_server(args) -> None:
    from ganpipe.orchestration.schedule import server_command

    cmd = server_command(args.port)
    print(
        f"Prefect server on http://127.0.0.1:{args.port}; in another shell: "
        f"export PREFECT_API_URL=http://127.0.0.1:{args.port}/api",
        flush=True,
    )
    os.execvp(cmd[0], cmd)


def cmd_schedule(args) -> None:
    from ganpipe.orchestration.schedule import serve_nightly

    sp = _params(args).schedule
    if args.print:  # prefect.yaml reads the schedule from params.yaml through this
        print(getattr(sp, args.print))
        return
    serve_nightly(sp, args.layout.root)


def cmd_watchdog(args) -> None:
    from ganpipe.orchestration.notify import configured
    from ganpipe.orchestration.schedule import api_url
    from ganpipe.orchestration.watchdog import AUTOMATION, ensure_automation

    sp = _params(args).schedule
    url = api_url()
    hook = configured(sp.webhook_url)
    automation_id = ensure_automation(sp, hook)
    print(
        f"automation '{AUTOMATION}' ({automation_id}) on {redact(url)}: ganpipe flow runs silent for "
        f"{sp.crashed_after_s} s are marked Crashed{' and reported to the failure webhook' if hook else ''}; "
        f"runs send heartbeats every {sp.heartbeat_s} s"
    )


def cmd_ui(args) -> None:
    from ganpipe.core.tracking import tracking_uri

    cmd = [
        "mlflow",
        "ui",
        "--backend-store-uri",
        tracking_uri(args.layout.root),
        "--host",
        "127.0.0.1",
        "--port",
        str(args.port),
    ]
    print(" ".join(cmd), flush=True)
    os.execvp(cmd[0], cmd)


FOREIGN_HELP = (
    "also load a model outside this project's scope (another registered model name, a run of another "
    "experiment): ganpipe reads only weights and config, never stored code, but loads them on your word"
)


def _foreign(parser) -> None:
    parser.add_argument("--allow-foreign-model", action="store_true", help=FOREIGN_HELP)


def build_parser() -> argparse.ArgumentParser:
    ap = argparse.ArgumentParser(prog="ganpipe", description=__doc__.splitlines()[0])
    ap.add_argument("-C", "--project-dir", default=".", help="project directory (default: .)")
    ap.add_argument("--params", default=None, help="params file (default: <project>/params.yaml)")
    sub = ap.add_subparsers(dest="command", required=True, metavar="COMMAND")
    stages = [
        ("prepare", cmd_prepare, "prepare the dataset into data/prepared"),
        ("ref-stats", cmd_ref_stats, "features and statistics of the real reference set"),
        ("register", cmd_register, "register the generator and apply the promotion rule"),
    ]
    for name, fn, help_ in stages:
        sub.add_parser(name, help=help_).set_defaults(fn=fn)
    t = sub.add_parser(
        "train",
        help="train the GAN (tracked in MLflow); torchrun --nproc_per_node N -m ganpipe train for several processes",
    )
    t.add_argument(
        "--resume",
        action="store_true",
        help="continue from the newest snapshot in models.partial/ and its MLflow run "
        "(also when $GANPIPE_TRAIN_RESUME=1)",
    )
    t.add_argument("--force", action="store_true", help="with --resume: resume even though params changed")
    t.set_defaults(fn=cmd_train)
    r = sub.add_parser("run", help="run the whole pipeline through the Prefect flow (skips when nothing changed)")
    r.add_argument("--force", action="store_true", help="train, evaluate and register even if nothing changed")
    r.set_defaults(fn=cmd_run)
    sub.add_parser(
        "sweep", help="train the candidates of sweep: (dvc exp run each), register the best through the gate"
    ).set_defaults(fn=cmd_sweep)
    d = sub.add_parser("data", help="look at the prepared dataset").add_subparsers(
        dest="data_command", required=True, metavar="ACTION"
    )
    show = d.add_parser("show", help="print the manifest summary and write a contact sheet of samples per class")
    show.add_argument("--out", default="data-sheet.png", help="contact sheet PNG (default: data-sheet.png)")
    show.add_argument("--per-class", type=int, default=8, help="samples per class (a row each)")
    show.add_argument("--seed", type=int, default=0)
    show.set_defaults(fn=cmd_data_show)
    e = sub.add_parser("evaluate", help="score the EMA generator (or --model) under the current protocol")
    e.add_argument(
        "--model",
        default=None,
        help="score this model instead of the pipeline's: models:/NAME@ALIAS, models:/NAME/VERSION, "
        "runs:/ID/generator or a checkpoint path (writes nothing unless --out)",
    )
    e.add_argument("--out", default=None, help="with --model: write the result JSON here")
    _foreign(e)
    e.set_defaults(fn=cmd_evaluate)
    c = sub.add_parser("compare", help="compare two results; refuses different protocols")
    c.add_argument("a", help="metrics JSON, models:/NAME/VERSION (or @ALIAS) or runs:/RUN_ID")
    c.add_argument("b", help="the same kinds as A")
    _foreign(c)
    c.set_defaults(fn=cmd_compare)
    sub.add_parser("history", help="registered versions, gate decisions and every alias move").set_defaults(
        fn=cmd_history
    )
    pr = sub.add_parser("promote", help="manual override: move the champion alias to a version")
    pr.add_argument("--version", required=True, type=int)
    pr.add_argument("--reason", required=True, help="why (recorded in the history)")
    pr.set_defaults(fn=cmd_promote)
    rb = sub.add_parser("rollback", help="move the champion alias back to the previous version")
    rb.add_argument("--reason", default="rollback", help="why (recorded in the history)")
    rb.set_defaults(fn=cmd_rollback)
    g = sub.add_parser("generate", help="write a grid of generated images")
    g.add_argument(
        "--model",
        default=None,
        help="models:/NAME@ALIAS, models:/NAME/VERSION or a checkpoint path "
        "(default: the registry's champion, from params.yaml)",
    )
    g.add_argument("-n", type=int, default=64, help="number of images")
    g.add_argument("--seed", type=int, default=0, help="image i uses latent seed SEED+i")
    g.add_argument(
        "--out",
        default="samples.png",
        help="a PNG (one grid), a directory ending in / (one PNG per image), or .gif/.mp4 for animations",
    )
    g.add_argument("--psi", type=float, default=1.0, help="truncation: 1 = none, smaller = less variety")
    g.add_argument("--class", dest="class_", type=int, default=None, help="class, for conditional models")
    g.add_argument(
        "--interpolate",
        type=int,
        nargs=2,
        metavar=("SEED_A", "SEED_B"),
        help="animate from one seed's latent to another's",
    )
    g.add_argument("--walk", type=int, default=0, metavar="K", help="animate a loop through seeds SEED..SEED+K-1")
    g.add_argument("--frames", type=int, default=24, help="frames per step of an animation")
    g.add_argument("--fps", type=int, default=12)
    g.add_argument("--replay", default=None, metavar="PNG", help="regenerate a PNG from its provenance")
    _foreign(g)
    g.set_defaults(fn=cmd_generate)
    s = sub.add_parser("serve", help="serve the champion over HTTP (MLflow scoring protocol, base64 PNGs)")
    s.add_argument("--model", default=None, help="models:/NAME/VERSION or @ALIAS (default: the champion)")
    s.add_argument("--port", type=int, default=5001)
    _foreign(s)
    s.set_defaults(fn=cmd_serve)
    sv = sub.add_parser("server", help="start a local Prefect server (SQLite) on 127.0.0.1")
    sv.add_argument("--port", type=int, default=4200)
    sv.set_defaults(fn=cmd_server)
    sc = sub.add_parser(
        "schedule", help="serve the nightly deployment (schedule.cron) to the Prefect server at PREFECT_API_URL"
    )
    sc.add_argument(
        "--print",
        choices=["deployment", "cron", "timezone", "heartbeat_s"],
        default=None,
        help="print this schedule.* value and exit (prefect.yaml's build steps use it)",
    )
    sc.set_defaults(fn=cmd_schedule)
    wd = sub.add_parser(
        "watchdog",
        help="create or update the Prefect automation that marks ganpipe flow runs "
        "silent for schedule.crashed_after_s Crashed (`schedule` does this itself)",
    )
    wd.set_defaults(fn=cmd_watchdog)
    u = sub.add_parser("ui", help="start the MLflow UI on 127.0.0.1")
    u.add_argument("--port", type=int, default=5000)
    u.set_defaults(fn=cmd_ui)
    return ap


def main(argv: list[str] | None = None) -> int:
    from ganpipe.core.tracking import quiet_telemetry

    args = build_parser().parse_args(argv)
    args.layout = layout(args.project_dir)
    if args.command == "generate" and (args.n < 1 or not 0 < args.psi <= 2 or args.frames < 2 or args.walk < 0):
        print("ganpipe: error: need -n >= 1, 0 < --psi <= 2, --frames >= 2, --walk >= 0", file=sys.stderr)
        return 2
    quiet_telemetry()
    os.environ["MLFLOW_ALLOW_PICKLE_DESERIALIZATION"] = "false"  # nothing ganpipe loads is a pickle
    try:
        args.fn(args)
    except GanpipeError as exc:
        print(f"ganpipe: error: {redact(str(exc))}", file=sys.stderr)
        return 2
    except KeyboardInterrupt:
        print("ganpipe: interrupted", file=sys.stderr)
        return 130
    return 0
