"""The `ganpipe` commands: one thin function per command over the stage and registry functions.

`ganpipe.cli` parses the arguments and calls these; each imports what it needs when it runs, so that
`ganpipe --help` and a command's error path stay fast.
"""

from __future__ import annotations

import os
from contextlib import contextmanager
from pathlib import Path

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


def cmd_cache(args) -> None:
    from ganpipe.core import housekeeping as hk
    from ganpipe.core.cache import cache_dir

    root = cache_dir()
    max_size = hk.parse_size(args.max_size) if getattr(args, "max_size", None) is not None else None
    items = hk.inventory(root)
    protected, why = hk.protected_names(args.layout.ref_stats_path, items)
    if args.cache_command != "prune":
        print(f"{root}\n" + "\n".join(hk.table(items, protected)) + f"\n{why}")
        return
    doomed = hk.plan_prune(items, protected, args.keep_last, max_size)
    print("\n".join(hk.prune(items, doomed, root, args.dry_run)) + f"\n{why}")


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
    from ganpipe.training.distributed import torchrun_command
    from ganpipe.training.loop import train
    from ganpipe.training.snapshots import FRESH_ENV, RESUME_ENV

    if (launcher := torchrun_command(args.argv)) is not None:  # $GANPIPE_TORCHRUN: one of several processes
        print("ganpipe train: under torchrun: " + " ".join(launcher[3:]), flush=True)
        os.execv(launcher[0], launcher)

    resume = args.resume or os.environ.get(RESUME_ENV) == "1"
    fresh = args.fresh or os.environ.get(FRESH_ENV) == "1"
    if resume and fresh:
        from ganpipe.core.errors import ConfigError

        raise ConfigError(
            "--resume and --fresh contradict each other (check $GANPIPE_TRAIN_RESUME / $GANPIPE_TRAIN_FRESH)"
        )
    info = train(
        _params(args),
        args.layout.prepared_dir,
        args.layout.models_dir,
        args.layout.root,
        resume=resume,
        force=args.force,
        fresh=fresh,
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


@contextmanager
def _flow_context(args, flow_module: str):
    """Where a flow started from the command line runs: a warm server for its stage processes
    (`ganpipe.warmstart`), the Prefect API (PREFECT_API_URL, else a temporary server that outlives the
    flow's cleanup; `flow_module` is imported while it starts), SIGTERM handled like Ctrl-C, heartbeats."""
    import importlib

    from ganpipe.core.processes import interrupts_raise
    from ganpipe.orchestration.tempserver import prefect_api
    from ganpipe.warmstart import warm_server

    # the warm server imports the stages while Prefect's server starts; the stage processes fork from it
    with (
        warm_server(),
        prefect_api(lambda: importlib.import_module(flow_module)),
        interrupts_raise(),
        _heartbeats(args),
    ):
        yield


def cmd_run(args) -> None:
    import time

    t0 = time.time()
    with _flow_context(args, "ganpipe.orchestration.pipeline"):
        from ganpipe.orchestration.pipeline import training_pipeline
        from ganpipe.orchestration.report import stage_times

        r = training_pipeline(project_dir=str(args.layout.root), force=args.force)
    # before the flow's first stage: Prefect's (temporary) server and the flow run's set-up
    seconds = {"prefect start": r["flow_started_at"] - t0, **r["stage_seconds"]}
    print(stage_times(seconds))
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
    with _flow_context(args, "ganpipe.orchestration.sweep_flow"):
        from ganpipe.orchestration.sweep_flow import sweep

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
    from ganpipe.orchestration.schedule import LEASE_STORAGE_ENV, server_command

    cmd = server_command(args.port)
    # leases on disk (PREFECT_HOME/concurrency_leases): a restarted server still knows who holds a
    # training slot, and its repossessor frees the slot of a holder that died (slots.py)
    os.environ.setdefault(LEASE_STORAGE_ENV, "prefect.server.concurrency.lease_storage.filesystem")
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
    """`mlflow ui` on the project's store, sized for one person on this machine: one server worker (MLflow's
    default is 4, each importing its server app) and no job runner (MLflow 3 starts seven huey consumers for
    its GenAI jobs, which ganpipe never submits; MLFLOW_SERVER_ENABLE_JOB_EXECUTION=true brings them back).
    On 2 cores: healthy in 11 s instead of 24, 11 s of CPU instead of 41."""
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
        "--workers",
        str(args.workers),
    ]
    os.environ.setdefault("MLFLOW_SERVER_ENABLE_JOB_EXECUTION", "false")
    print(" ".join(cmd), flush=True)
    os.execvp(cmd[0], cmd)


def cmd_studio(args) -> None:
    from ganpipe.studio.app import serve

    serve(args.layout.root, args.host, args.port, args.allow_changes, args.mlflow_ui, args.prefect_ui)
