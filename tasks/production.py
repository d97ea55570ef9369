"""The production command: promote the model the gate passed, roll back, show what runs and where it came from.

    deploy/production.json   {"current": <entry> | null, "previous": [<entry> | null, ...]}

An entry names a BentoML model and the Bento that serves it, with the evidence it was promoted on
(tasks/model/registry.py reads and writes the file). The file is small and versioned with the code
(commit it after a promotion), so `git log` of it is the deployment history. `previous` is a stack,
newest first: promote pushes, rollback pops, so a rollback restores the file exactly as it was
before the promotion.

    python -m tasks.production               # show: production and each predecessor, with lineage
    python -m tasks.production show --json   # the same as JSON: the pointer, each entry with "lineage"
    python -m tasks.production promote       # the challenger the gate passed (reports/gate/decision.json)
    python -m tasks.production rollback      # back to the previous production model
    python -m tasks.production bento         # the production Bento's tag: bentoml serve $(...)
    python -m tasks.production serve         # serve production on ops.host:ops.service_port, following
                                             # every promotion and rollback (--host, --port to override)

Promotion also exports the model's Bento to deploy/store/ and records that folder with `dvc add`
(deploy/store.dvc), so after `git pull` and `dvc pull` another machine imports production from there
into its own BentoML store when it first needs it (tasks/model/registry.py).

`show` reads each entry's lineage (data and split hashes, git commit, params hash, trigger; see
tasks/model/lineage.py) from the model's metadata in the BentoML store ($BENTOML_HOME, else
~/bentoml), so it answers "what data and code made the model we serve, and the ones before it".
"""
from __future__ import annotations

import argparse
import contextlib
import json
import os
import sys
from datetime import datetime, timezone
from pathlib import Path

from pydantic import BaseModel, ConfigDict, Field

from tasks.common.config import UserError, load_params
from tasks.common.paths import DECISION_JSON, PACKAGE_JSON, POINTER, STORE_ARCHIVES
from tasks.model.lineage import PARAMS_YAML, format_lineage
from tasks.model.registry import (
    FOLLOW_ENV,
    archive_bento,
    check_in_store,
    model_metadata,
    read_pointer,
    store_home,
    write_pointer,
)
from tasks.monitoring.live_accuracy import load_answers, model_accuracy, unjoined_notice


def promote(workdir: Path = Path("."), force: bool = False) -> dict:
    """Point production at the packaged challenger, if the gate passed exactly that model."""
    decision, package = _read_json(workdir / DECISION_JSON), _read_json(workdir / PACKAGE_JSON)
    pointer = read_pointer(workdir / POINTER)
    judged = decision["challenger"]["weights_sha256"]
    if judged != package["metadata"]["weights_sha256"]:
        raise UserError("the packaged model is not the one the gate judged; run dvc repro (gate, package) first")
    champion = decision["champion"]["model"] if decision["champion"] else None
    if champion != (pointer["current"] or {}).get("model"):
        raise UserError(f"production has changed since the gate ran (it compared with {champion}); "
                        "run dvc repro gate again")
    if decision["verdict"] == "already in production":
        return pointer["current"]
    if not decision["passed"] and not force:
        raise UserError(f"the gate refused this challenger: {'; '.join(decision['reasons'])}. "
                        "Promote only what passes (or pass --force to overrule the gate)")
    home = package.get("bentoml_home")
    check_in_store(package["model_tag"], home, workdir / STORE_ARCHIVES)
    archive_bento(package["model_tag"], package["bento_tag"], home, workdir / STORE_ARCHIVES)
    track_archives(workdir)
    entry = {
        "model": package["model_tag"], "bento": package["bento_tag"], "weights_sha256": judged,
        "promoted_at": datetime.now(timezone.utc).isoformat(timespec="seconds"),
        "gate": "forced" if not decision["passed"] else "passed",
        "test_accuracy": decision["challenger_accuracy"], "champion": champion,
        "p_value": decision["p_value"], "reasons": decision["reasons"],
        "test_images": decision["test_images"], "left_out": decision.get("left_out"),
    }
    write_pointer(workdir / POINTER, {"current": entry, "previous": [pointer["current"], *pointer["previous"]]})
    return entry


def rollback(workdir: Path = Path(".")) -> dict | None:
    """Point production back at the model before the current one (None: no production model)."""
    pointer = read_pointer(workdir / POINTER)
    if not pointer["previous"]:
        raise UserError(f"nothing to roll back to: {POINTER} records no earlier production model")
    back, *rest = pointer["previous"]
    if back is not None:
        check_in_store(back["model"], archives=workdir / STORE_ARCHIVES)
    write_pointer(workdir / POINTER, {"current": back, "previous": rest})
    return back


def show(workdir: Path = Path("."), home: str | Path | None = None) -> dict:
    """The pointer, each entry with "in_store", the "lineage" its model was saved with (None if unknown) and
    its "live" accuracy on the reviewed served images (audit and least sure apart; None without params.yaml)."""
    pointer = read_pointer(workdir / POINTER)
    answers = None
    if (workdir / PARAMS_YAML).is_file():
        answers, unjoined = load_answers(workdir, load_params(workdir / PARAMS_YAML))
        notice = unjoined_notice(unjoined)
        if notice:
            print(f"production: {notice}", file=sys.stderr)

    def with_lineage(entry: dict | None) -> dict | None:
        if entry is None:
            return None
        with contextlib.suppress(UserError):  # not to be had here: shown as not in the store
            check_in_store(entry["model"], home, workdir / STORE_ARCHIVES)
        metadata = model_metadata(entry["model"], home)
        saved = metadata or {}
        live = None if answers is None else {kind: model_accuracy(answers, entry["model"], kind)
                                             for kind in ("audit", "uncertain")}
        return {**entry, "in_store": metadata is not None, "live": live,
                "lineage": saved.get("lineage"), "metrics": saved.get("metrics"), "runtime": saved.get("runtime")}

    return {"current": with_lineage(pointer["current"]), "previous": [with_lineage(e) for e in pointer["previous"]]}


def describe(shown: dict, home: str | Path | None = None) -> str:
    """`show`'s result as readable blocks: production first, then its predecessors, newest first."""
    entries = [("production", shown["current"])]
    entries += [(f"previous {i}", entry) for i, entry in enumerate(shown["previous"], 1)]
    blocks = []
    for title, entry in entries:
        if entry is None:
            blocks.append(f"{title}: none (no production model)")
            continue
        accuracy = entry.get("test_accuracy", (entry.get("metrics") or {}).get("accuracy"))
        lines = [
            f"{title}: {entry['model']}",
            f"  bento:         {entry.get('bento', '?')}",
            f"  promoted_at:   {entry.get('promoted_at', '?')}",
            f"  gate:          {entry.get('gate', '?')}",
            f"  test accuracy: {f'{accuracy:.4f}' if isinstance(accuracy, (int, float)) else '?'}"
            + graded_on(entry),
            *live_lines(entry.get("live")),
        ]
        if entry["in_store"]:
            lines += [f"  runtime:       {describe_runtime(entry.get('runtime'))}",
                      "  lineage:", *format_lineage(entry["lineage"])]
        else:
            lines.append(f"  lineage:       unknown: the model is not in the BentoML store under {store_home(home)}")
        blocks.append("\n".join(lines))
    return "\n\n".join(blocks)


def live_lines(live: dict | None) -> list[str]:
    """Accuracy on reviewed live traffic: the audit sample (the live figure) and the least sure, apart."""
    if live is None:
        return []
    lines = []
    for kind, title in (("audit", "live accuracy: "), ("uncertain", "least sure:    ")):
        figures = live[kind]
        if figures["images"] == 0:
            lines.append(f"  {title}no reviewed {kind} images yet")
            continue
        lines.append(f"  {title}{figures['accuracy']:.4f} (95% {figures['low']:.3f}-{figures['high']:.3f}) on "
                     f"{figures['images']} reviewed {'audit-sample' if kind == 'audit' else 'least-sure'} images"
                     + (" (biased low by design: not live accuracy)" if kind == "uncertain" else ""))
    return lines


def graded_on(entry: dict) -> str:
    """' on 250 test images (20 left out: 20 the champion trained on)', as the gate that passed it judged."""
    left_out = entry.get("left_out")
    if not left_out:
        return ""
    kept = f" on {entry['test_images']} test images"
    return kept + (f" ({left_out['images']} left out: {left_out['why']})" if left_out["images"] else "")


def describe_runtime(runtime: dict | None) -> str:
    """'onnx-int8 (test accuracy 0.9814, PyTorch 0.9777; 24682 images/s in batches, PyTorch 1413)'."""
    if not runtime:
        return "torch (packaged before runtimes were measured)"
    ours, torch = runtime["figures"], runtime["pytorch"]
    if runtime["name"] == "torch":
        return f"torch ({runtime['reason']})"
    return (f"{runtime['name']} (test accuracy {ours['accuracy']:.4f}, PyTorch {torch['accuracy']:.4f}; "
            f"{ours['batch_img_s']:.0f} images/s in batches, PyTorch {torch['batch_img_s']:.0f})")


def track_archives(workdir: Path) -> None:
    """`dvc add deploy/store`: DVC versions the archives and `dvc push` takes them to the remote."""
    if not (workdir / ".dvc").is_dir():
        raise UserError(f"{workdir.resolve()} is not a DVC project; promote from the project's root")
    from dvc.repo import Repo  # only promotion needs DVC here

    with contextlib.chdir(workdir), Repo(".") as repo:  # DVC resolves paths against the working directory
        repo.add(str(STORE_ARCHIVES))


def production_bento(workdir: Path = Path(".")) -> str:
    """The Bento of the production model; UserError when there is none yet."""
    entry = read_pointer(workdir / POINTER)["current"]
    if entry is None:
        raise UserError("no production model yet; run the pipeline, then python -m tasks.production promote")
    return entry["bento"]


def serve_command(host: str, port: int, workdir: Path = Path(".")) -> tuple[list[str], dict[str, str]]:
    """`bentoml serve` of the production Bento, following the pointer (service/service.py), and its environment.

    The Bento's code and first model are those production had when the service started; later models
    come from the local BentoML store as promotion and rollback name them. Another Bento (new service
    code) needs a restart.
    """
    bento = production_bento(workdir)
    check_in_store(read_pointer(workdir / POINTER)["current"]["model"], archives=workdir / STORE_ARCHIVES)
    name, _, version = bento.partition(":")
    if not (store_home() / "bentos" / name / version / "bento.yaml").is_file():
        raise UserError(f"Bento {bento} is not in the BentoML store under {store_home()}; "
                        "run dvc pull (it brings deploy/store), or rebuild it with dvc repro package")
    cmd = [sys.executable, "-m", "bentoml", "serve", bento, "--host", host, "--port", str(port)]
    return cmd, {**os.environ, FOLLOW_ENV: str((workdir / POINTER).resolve())}


def _read_json(path: Path) -> dict:
    if not path.is_file():
        raise UserError(f"{path} not found; run the pipeline first (dvc repro)")
    return json.loads(path.read_text())


class ServeAddress(BaseModel):
    model_config = ConfigDict(extra="ignore", frozen=True)
    host: str
    service_port: int = Field(ge=1, le=65535)


class ServeAt(BaseModel):
    """The two `ops` keys `serve` reads; flows/settings.py validates the ops section whole."""

    ops: ServeAddress


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(prog="python -m tasks.production", description=__doc__.splitlines()[0])
    parser.add_argument("--json", action="store_true", help="with no command: show, as JSON")
    commands = parser.add_subparsers(dest="command", metavar="COMMAND", title="commands (default: show)")
    shown = commands.add_parser("show", help="production and each predecessor, with lineage")
    shown.add_argument("--json", action="store_true", default=argparse.SUPPRESS,
                       help="as JSON: the pointer, each entry with its lineage")
    promoted = commands.add_parser("promote", help="the challenger the gate passed (reports/gate/decision.json)")
    promoted.add_argument("--force", action="store_true", help="promote it even though the gate refused it")
    commands.add_parser("rollback", help="back to the previous production model")
    commands.add_parser("bento", help="the production Bento's tag: bentoml serve $(python -m tasks.production bento)")
    served = commands.add_parser("serve", help="serve production, following every promotion and rollback")
    served.add_argument("--host", help="default: ops.host of params.yaml")
    served.add_argument("--port", type=int, help="default: ops.service_port of params.yaml")
    args = parser.parse_args(argv)
    try:
        if args.command == "promote":
            entry = promote(force=args.force)
            print(f"production: {entry['model']} (a service started with `make serve` switches to it). For other "
                  f"machines: git commit {POINTER} {STORE_ARCHIVES}.dvc, then dvc push")
        elif args.command == "rollback":
            entry = rollback()
            print(f"production: {entry['model'] if entry else 'none (no production model)'}")
        elif args.command == "bento":
            print(production_bento())
        elif args.command == "serve":
            ops = load_params(model=ServeAt).ops
            host = ops.host if args.host is None else args.host
            port = ops.service_port if args.port is None else args.port
            cmd, env = serve_command(host, port)
            print(f"serving production ({production_bento()}) on http://{host}:{port}, following {POINTER}", flush=True)
            os.execve(cmd[0], cmd, env)  # bentoml serve in this process: Ctrl-C and SIGTERM reach it directly
        else:  # show, also with no command
            shown = show()
            print(json.dumps(shown, indent=2) if args.json else describe(shown))
    except UserError as err:
        print(f"production: error: {err}", file=sys.stderr)
        sys.exit(2)


if __name__ == "__main__":
    main()
