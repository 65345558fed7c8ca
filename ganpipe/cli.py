"""`ganpipe` command line: the argument parser and the error boundary (commands: `ganpipe.commands`).

User errors print one line on stderr and exit 2; anything else keeps its traceback.
Hyperparameters live in params.yaml only (use `dvc exp run -S key=value` to vary them).
"""

from __future__ import annotations

import argparse
import sys

from ganpipe.commands import (
    cmd_cache,
    cmd_compare,
    cmd_data_show,
    cmd_evaluate,
    cmd_generate,
    cmd_history,
    cmd_prepare,
    cmd_promote,
    cmd_ref_stats,
    cmd_register,
    cmd_rollback,
    cmd_run,
    cmd_schedule,
    cmd_serve,
    cmd_server,
    cmd_studio,
    cmd_sweep,
    cmd_train,
    cmd_ui,
    cmd_watchdog,
)
from ganpipe.core.errors import GanpipeError
from ganpipe.core.paths import layout
from ganpipe.core.processes import exit_now
from ganpipe.core.redact import redact
from ganpipe.warmstart import COMMANDS, run_warm

FOREIGN_HELP = (
    "also load a model outside this project's scope (another registered model name, a run of another "
    "experiment): ganpipe reads only weights and config, never stored code, but loads them on your word"
)


def _foreign(parser) -> None:
    parser.add_argument("--allow-foreign-model", action="store_true", help=FOREIGN_HELP)


def build_parser() -> argparse.ArgumentParser:
    ap = argparse.ArgumentParser(
        prog="ganpipe",
        description="ganpipe: a GAN MLOps pipeline (DVC stages, Prefect flows, MLflow tracking and registry)",
    )
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
    t.add_argument(
        "--fresh",
        action="store_true",
        help="start over even where a training that died left a snapshot it could resume from "
        "(also when $GANPIPE_TRAIN_FRESH=1; `ganpipe run --force` sets it)",
    )
    t.set_defaults(fn=cmd_train)
    r = sub.add_parser("run", help="run the whole pipeline through the Prefect flow (skips when nothing changed)")
    r.add_argument(
        "--force", action="store_true", help="train (from scratch), evaluate and register even if nothing changed"
    )
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
    ca = sub.add_parser("cache", help="what the ganpipe cache holds (by kind, size, age); `cache prune` trims it")
    ca.set_defaults(fn=cmd_cache)
    cs = ca.add_subparsers(dest="cache_command", metavar="ACTION")
    cs.add_parser("show", help="files, size and age per kind (the default)")
    cp = cs.add_parser(
        "prune",
        help="delete least recently used cache entries; never the current data's reference statistics, "
        "the DVC remote, downloads or weights",
    )
    cp.add_argument("--keep-last", type=int, default=None, metavar="N", help="keep the N most recently used per kind")
    cp.add_argument(
        "--max-size", default=None, metavar="SIZE", help="delete until the entries total at most SIZE (500M, 2G)"
    )
    cp.add_argument("--dry-run", action="store_true", help="list what would be deleted, delete nothing")
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
    u.add_argument("--workers", type=int, default=1, help="server worker processes (default: 1; MLflow's own: 4)")
    u.set_defaults(fn=cmd_ui)
    st = sub.add_parser(
        "studio", help="a web page to generate from, compare, promote and roll back the registered generators"
    )
    st.add_argument("--host", default="127.0.0.1", help="address to listen on (default: 127.0.0.1, this machine only)")
    st.add_argument("--port", type=int, default=8765)
    st.add_argument(
        "--allow-changes", action="store_true", help="let the page promote and roll back (off: the page is read-only)"
    )
    st.add_argument("--mlflow-ui", default=None, metavar="URL", help="the MLflow UI to link runs to (`ganpipe ui`)")
    st.add_argument(
        "--prefect-ui",
        default=None,
        metavar="URL",
        help="the Prefect UI to link flow runs to (default: PREFECT_UI_URL)",
    )
    st.set_defaults(fn=cmd_studio)
    return ap


def main(argv: list[str] | None = None) -> int:
    from ganpipe.core.environment import quiet_telemetry, refuse_pickles

    args = build_parser().parse_args(argv)
    if argv is None and args.command in COMMANDS:  # a stage process: in a fork of the warm server, if any
        if (code := run_warm(sys.argv[1:])) is not None:
            return code
    args.argv = list(sys.argv[1:] if argv is None else argv)  # what to run again under a launcher
    args.layout = layout(args.project_dir)
    if args.command == "generate" and (args.n < 1 or not 0 < args.psi <= 2 or args.frames < 2 or args.walk < 0):
        print("ganpipe: error: need -n >= 1, 0 < --psi <= 2, --frames >= 2, --walk >= 0", file=sys.stderr)
        return 2
    quiet_telemetry()
    refuse_pickles()  # nothing ganpipe loads is a pickle
    code = _run(args)
    if argv is None:  # the `ganpipe` command itself (in-process callers get the code)
        exit_now(code)
    return code


def _run(args) -> int:
    try:
        args.fn(args)
    except GanpipeError as exc:
        print(f"ganpipe: error: {redact(str(exc))}", file=sys.stderr)
        return 2
    except KeyboardInterrupt:
        print("ganpipe: interrupted", file=sys.stderr)
        return 130
    return 0
