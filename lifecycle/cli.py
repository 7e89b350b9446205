"""The `lifecycle` command.

    lifecycle run --profile quickstart [--until STAGE]... [--from STAGE] [--source PATH]... [--set a.b=c]...
    lifecycle config --profile quickstart          # print the resolved configuration
    lifecycle stages                                # the stage graph: inputs, gates, what each produces
    lifecycle search "parse a JSON string" [--mode dense|fts|hybrid] [--filter-source NAME] [--title-prefix P]
    lifecycle ask "How do I parse JSON?" [--model HF_DIR|NAME/VERSION|NAME@ALIAS]   # @champion, else @candidate
    lifecycle lineage [NAME/VERSION|NAME@ALIAS]     # what a registered model was built from (JSON)
    lifecycle eval-retrieval [--squad FILE] [--fit [--save-profile NAME]]   # recall@k / MRR of each search mode;
                                                    # --fit: fusion and title boost fitted on those questions
    lifecycle bench pretrain --layers 4 --heads 4 --dim 128 --context 128 --batch 16 --steps 30 --vocab-size 2048
    lifecycle ui [mlflow|prefect] | deploy | worker # dashboards over the state dir; deployments (ops/cli.py)
    lifecycle annotate | annotators add NAME | preferences status|resume   # people's votes (preferences/cli.py)
    lifecycle eval-reward --pairs FILE [--model REF]   # a reward model's accuracy on your pairs (align/cli.py)
    lifecycle models | promote VERSION --reason TEXT | rollback   # the registry and @champion (evaluate/cli.py)
    lifecycle serve [--host 127.0.0.1] [--port 8000]   # OpenAI-shaped API + chat page over @champion (serve/cli.py)
    lifecycle monitor                               # served questions: drift, feedback, events (monitor/cli.py)

User errors (bad config, bad input, failed validation, a full or read-only disk) print a message and exit with
status 2, no traceback.
"""

from __future__ import annotations

import argparse
import gc
import json
import logging
import sys
from pathlib import Path

import yaml

from lifecycle.errors import LifecycleError

log = logging.getLogger("lifecycle")


def _config_args(p: argparse.ArgumentParser, with_sources: bool = True) -> None:
    p.add_argument("--profile", help="overlay conf/profiles/NAME.yaml (e.g. quickstart)")
    p.add_argument("--set", dest="overrides", action="append", default=[], metavar="KEY=VALUE",
                   help="override one value, e.g. --set tokenize.vocab_size=1024 (repeatable)")
    if with_sources:
        p.add_argument("--source", dest="sources", action="append", default=[], metavar="PATH_OR_GLOB",
                       help="replace the configured sources for this run (repeatable; 'python-docs' for the stdlib "
                            "docs)")
    else:
        p.set_defaults(sources=[])
    p.add_argument("--conf", help="configuration folder (default: ./conf)")
    p.add_argument("--state-dir", help="where runs, artifacts and caches live (default: LIFECYCLE_HOME or .lifecycle)")


def build_parser() -> argparse.ArgumentParser:
    from tasks import stage_names

    parser = argparse.ArgumentParser(prog="lifecycle", description=__doc__.split("\n")[0])
    sub = parser.add_subparsers(dest="command", required=True)
    run = sub.add_parser("run", help="run the pipeline as one Prefect flow run tracked in MLflow")
    _config_args(run)
    run.add_argument("--until", choices=stage_names(), action="append",
                     help="run this stage and what it needs, then stop (repeat it for several stages)")
    run.add_argument("--from", dest="from_stage", choices=stage_names(),
                     help="reuse cached outputs of earlier stages; recompute this stage and its dependants")
    show = sub.add_parser("config", help="print the resolved configuration as YAML")
    _config_args(show)
    stages = sub.add_parser("stages", help="print the stage graph: what each stage reads, waits for and produces")
    stages.add_argument("--mermaid", action="store_true", help="as a Mermaid flowchart (docs/ARCHITECTURE.md)")
    lineage = sub.add_parser("lineage", help="what a registered model version was built from, as JSON")
    _config_args(lineage, with_sources=False)
    lineage.add_argument("model", nargs="?", help="NAME/VERSION or NAME@ALIAS (default: the chat model "
                                                  "@champion, else @candidate)")
    _rag_parsers(sub)
    from lifecycle.align import cli as align_cli
    from lifecycle.evaluate import cli as evaluate_cli
    from lifecycle.monitor import cli as monitor_cli
    from lifecycle.preferences import cli as preferences_cli
    from lifecycle.ops import cli as ops_cli
    from lifecycle.serve import cli as serve_cli

    ops_cli.add_parsers(sub, _config_args)
    preferences_cli.add_parsers(sub, _config_args)
    serve_cli.add_parsers(sub, _config_args)
    align_cli.add_parsers(sub, _config_args)
    evaluate_cli.add_parsers(sub, _config_args)
    monitor_cli.add_parsers(sub, _config_args)
    bench = sub.add_parser("bench", help="reproducible measurements, one JSON line (results: docs/BENCHMARKS.md)")
    bench_sub = bench.add_subparsers(dest="bench", required=True)
    from lifecycle.bench import add_pretrain_args

    add_pretrain_args(bench_sub.add_parser("pretrain", help="pretraining tokens/s, step time and MFU vs a "
                                                            "minimal reference loop, on random tokens"))
    return parser


def _rag_parsers(sub: argparse._SubParsersAction) -> None:
    search = sub.add_parser("search", help="search the RAG index built by the rag_index stage")
    ask = sub.add_parser("ask", help="answer a question with the policy model, conditioned on retrieved chunks")
    for p, what in ((search, "query"), (ask, "question")):
        _config_args(p, with_sources=False)
        p.add_argument(what)
        p.add_argument("-k", "--top-k", type=int, help="chunks to retrieve (default: serve.search/answer.top_k)")
        p.add_argument("--filter-source", metavar="NAME", help="only chunks from this ingest source")
        p.add_argument("--title-prefix", help="only chunks whose title starts with this (e.g. json.)")
        p.add_argument("--path-prefix", help="only chunks whose path starts with this")
        p.add_argument("--json", action="store_true", help="print JSON")
    search.add_argument("--mode", choices=["dense", "fts", "hybrid"], help="default: serve.search.mode")
    search.add_argument("--exact", action="store_true", help="dense: exact search instead of the ANN index")
    ask.add_argument("--model", help="a Hugging Face model folder or a registry reference NAME/VERSION or "
                                     "NAME@ALIAS (default: the chat model @champion, else @candidate)")
    ask.add_argument("--show-prompt", action="store_true", help="print the prompt the model saw")
    ev = sub.add_parser("eval-retrieval", help="recall@k and MRR of dense, full-text and hybrid retrieval")
    _config_args(ev, with_sources=False)
    ev.add_argument("--squad", metavar="FILE", help="SQuAD-format JSON: index its passages (in a separate table) "
                                                   "and ask its questions; default: python-docs questions on the index")
    ev.add_argument("--max-questions", type=int, help="evaluate at most this many questions")
    ev.add_argument("--fit", action="store_true", help="first fit hybrid fusion and the title boost on these "
                    "questions (the grid: rag_index.evaluate.fit); prints the chosen serve.search values as YAML")
    ev.add_argument("--save-profile", metavar="NAME", help="with --fit: write the chosen values to "
                    "conf/profiles/NAME.yaml (extending --profile), for `--profile NAME` in search, ask and serve")


def load(args: argparse.Namespace):  # -> Config (imported lazily to keep `--help` fast)
    from lifecycle.config import find_conf_dir, load_config

    return load_config(find_conf_dir(args.conf), args.profile, args.overrides, args.sources)


def cmd_run(args: argparse.Namespace) -> int:
    from lifecycle.config import find_conf_dir
    from lifecycle.data.sources import check_sources
    from lifecycle.runtime import (configure_logging, no_heartbeats_on_temporary_api, prepare_environment,
                                   report_user_errors_once, resolve_state_dir, start_embedded_api)

    cfg = load(args)
    check_sources(cfg.ingest.sources)
    state_dir = resolve_state_dir(args.state_dir, cfg.run.state_dir)
    prepare_environment(state_dir)
    api = start_embedded_api()  # with no PREFECT_API_URL: comes up while the pipeline's modules load
    from flows.pipeline import pipeline  # imports prefect: after PREFECT_HOME is set
    from tasks.graph import GRAPH

    GRAPH.plan(args.until, args.from_stage)  # a bad --until/--from combination fails before the pipeline starts

    report_user_errors_once()
    configure_logging()
    if api:
        api.wait()
    gc.freeze()  # what the imports built lives as long as the process: keep it out of the collector's passes
    gc.enable()  # main() paused it for the imports
    with no_heartbeats_on_temporary_api():
        outputs = pipeline(profile=args.profile or "default", overrides=args.overrides, sources=args.sources,
                           until=args.until, from_stage=args.from_stage, state_dir=str(state_dir),
                           conf_dir=str(find_conf_dir(args.conf).resolve()))
    print(f"\nstate directory: {state_dir}")
    for stage, out in outputs.items():
        model = f"  -> {out['model']['name']}/{out['model']['version']}" if out.get("model") else ""
        print(f"  {stage:<11} {'cached ' if out['cached'] else 'computed'}  {out['path']}{model}")
    _print_outcome(outputs, state_dir)
    return 0


def _print_outcome(outputs: dict, state_dir: Path) -> None:
    """The gate's verdict with its reasons, then how to use the model and where to look."""
    if "promote" in outputs:
        decision = json.loads((Path(outputs["promote"]["path"]) / "decision.json").read_text())
        if decision["passed"]:
            print(f"\n{decision['candidate']} passed the gate: it is @champion.")
        else:
            print(f"\n{decision['candidate']} was REFUSED by the gate; @champion is unchanged "
                  f"({decision['champion'] or 'none yet'}). Failed rules:")
            for rule in decision["rules"]:
                if rule["passed"] is False:
                    print(f"  - {rule['rule']}: {rule['metric']} {rule['value']:.4f} {rule['op']} "
                          f"{rule['threshold']:.4f} ({rule['detail']})")
            print("  (promote it anyway with: lifecycle promote VERSION --reason TEXT)")
    where = f"--state-dir {state_dir}"
    print(f"Ask it:     lifecycle ask \"What does json.dumps do?\" {where}")
    print(f"Serve it:   lifecycle serve {where}   (OpenAI-shaped API + chat page)")
    print(f"Versions:   lifecycle models {where}")
    print(f"Dashboards: lifecycle ui {where}   (Prefect: the flow run and its task runs; MLflow: runs, the "
          "report card under the evaluate run, the registry)")


def cmd_config(args: argparse.Namespace) -> int:
    print(yaml.safe_dump(load(args).dump(), sort_keys=False), end="")
    return 0


def cmd_stages(args: argparse.Namespace) -> int:
    from tasks.graph import GRAPH

    if args.mermaid:
        print(GRAPH.mermaid())
        return 0
    for stage in GRAPH:
        reads = ", ".join(stage.inputs) or "-"
        extra = "".join(f"; {label} {', '.join(v)}" for label, v in (("after", stage.after), ("uses", stage.uses)) if v)
        print(f"{stage.name:<12} reads {reads}{extra}\n{'':<12} -> {stage.produces}")
    return 0


def cmd_lineage(args: argparse.Namespace) -> int:
    from lifecycle.rag.answer import resolve_policy
    from lifecycle.registry import lineage
    from lifecycle.runtime import resolve_state_dir

    cfg = load(args)
    _, _, ref = resolve_policy(args.model, cfg.run.models.chat, resolve_state_dir(args.state_dir, cfg.run.state_dir),
                               download=False)
    if ref is None:
        raise LifecycleError(f"--model {args.model}: a folder has no registry lineage; name a registered version")
    print(json.dumps(lineage(ref), indent=2))
    return 0


def _rag_setup(args: argparse.Namespace):  # -> (Config, state dir, where-clause)
    from lifecycle.rag.search import build_where
    from lifecycle.runtime import quiet_environment, resolve_state_dir

    cfg = load(args)
    quiet_environment()
    from transformers.utils import logging as hf_logging

    hf_logging.disable_progress_bar()  # "Loading weights" bars are noise next to a search result
    where = build_where(getattr(args, "filter_source", None), getattr(args, "title_prefix", None),
                        getattr(args, "path_prefix", None))
    return cfg, resolve_state_dir(args.state_dir, cfg.run.state_dir), where


def cmd_search(args: argparse.Namespace) -> int:
    from lifecycle.rag.search import format_hits, open_current

    cfg, state_dir, where = _rag_setup(args)
    hits = open_current(state_dir, cfg.serve.search).search(args.query, args.mode, args.top_k, where, args.exact)
    print(json.dumps([h.to_dict() for h in hits], indent=2) if args.json else format_hits(hits))
    return 0


def cmd_ask(args: argparse.Namespace) -> int:
    from lifecycle.model import load_causal_lm
    from lifecycle.rag.answer import answer_question, resolve_policy
    from lifecycle.rag.pairing import paired_index
    from lifecycle.rag.search import open_index, read_current

    cfg, state_dir, where = _rag_setup(args)
    path, label, ref = resolve_policy(args.model, cfg.run.models.chat, state_dir)
    index = (paired_index(state_dir, ref) if ref else None) or read_current(state_dir)  # the model's own index first
    retriever = open_index(index, cfg.serve.search)
    model, tokenizer = load_causal_lm(path, Path(state_dir) / "models")  # an adapter: its base fetched there
    answer_cfg = cfg.serve.answer.model_copy(update={"top_k": args.top_k or cfg.serve.answer.top_k})
    answer = answer_question(args.question, retriever, model, tokenizer, answer_cfg, where, label)
    if args.show_prompt:
        print(answer.prompt, file=sys.stderr)
    print(json.dumps(answer.to_dict(), indent=2) if args.json else answer.format())
    return 0


def cmd_eval_retrieval(args: argparse.Namespace) -> int:
    from lifecycle.config import find_conf_dir
    from lifecycle.rag.evaluate import run_eval_retrieval
    from lifecycle.rag.profile import fitted_yaml, save_profile

    if args.save_profile and not args.fit:
        raise LifecycleError("--save-profile needs --fit (it saves the fitted values)")
    cfg, state_dir, _ = _rag_setup(args)
    result = run_eval_retrieval(cfg, state_dir, Path(args.squad) if args.squad else None, args.max_questions, args.fit)
    print(json.dumps(result, indent=2))
    if args.fit:
        text = fitted_yaml(result["overlay"], result["fit"], args.profile)
        print(f"\nFitted serve.search (paste into conf/serve.yaml or a profile's serve: section):\n\n{text}",
              file=sys.stderr)
        if args.save_profile:
            path = save_profile(find_conf_dir(args.conf), args.save_profile, text)
            print(f"saved to {path}: use it with --profile {args.save_profile}", file=sys.stderr)
    return 0


def cmd_bench(args: argparse.Namespace) -> int:
    from lifecycle.bench.pretrain import bench_pretrain
    from lifecycle.config import find_conf_dir

    logging.basicConfig(level=logging.WARNING, format="%(name)s: %(message)s")
    print(json.dumps(bench_pretrain(args, find_conf_dir(args.conf))))
    return 0


def main(argv: list[str] | None = None) -> int:
    # Imports build no garbage worth collecting: the cyclic collector is paused until they are done (`run`
    # resumes it once the pipeline's modules are in; the other commands before they start), which saves about
    # 15 % of a command's start-up CPU (docs/BENCHMARKS.md, "Start-up cost").
    gc.disable()
    try:
        return _command(argv)
    finally:
        gc.freeze()  # the process ends next: no cyclic collections over every imported module at exit (~1 s)
        gc.enable()  # for a caller in the same process (a test), also after an error before `run` resumed it


def _command(argv: list[str] | None) -> int:
    args = build_parser().parse_args(argv)
    handlers = {"run": cmd_run, "config": cmd_config, "stages": cmd_stages, "lineage": cmd_lineage,
                "search": cmd_search, "ask": cmd_ask, "eval-retrieval": cmd_eval_retrieval, "bench": cmd_bench}
    from lifecycle.align.cli import HANDLERS as ALIGN
    from lifecycle.evaluate.cli import HANDLERS as REGISTRY
    from lifecycle.monitor.cli import HANDLERS as MONITOR
    from lifecycle.preferences.cli import HANDLERS as PREFERENCES
    from lifecycle.ops.cli import HANDLERS as OPS
    from lifecycle.serve.cli import HANDLERS as SERVE

    commands = PREFERENCES | ALIGN | REGISTRY | SERVE | OPS | MONITOR
    if args.command != "run":
        gc.freeze()
        gc.enable()
    try:
        if args.command in commands:
            return commands[args.command](args, load)
        return handlers[args.command](args)
    except LifecycleError as err:
        print(f"error: {err}", file=sys.stderr)
        return 2
    except Exception as err:
        from lifecycle.faults import storage_error

        problem = storage_error(err, None, getattr(args, "state_dir", None))  # a full or read-only disk: its path
        if problem is None:
            raise
        print(f"error: {problem}", file=sys.stderr)
        return 2
    except KeyboardInterrupt:
        print("interrupted", file=sys.stderr)
        return 130


if __name__ == "__main__":
    sys.exit(main())
