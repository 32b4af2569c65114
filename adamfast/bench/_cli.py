"""The command line: the parser, and every check made before any work starts.

A mistake in the arguments must cost seconds, not the minutes of a run:
sizes, thread counts, row names, the algorithm and the output paths are all
checked here, each failing with an argparse usage error (exit status 2).
"""

from __future__ import annotations

import argparse
import os

import numpy as np

from ..algorithms import ALGORITHMS
from ._config import (AFTER_TORCH_MIN, AFTER_TORCH_SIZE, DEFAULT_ALGORITHM, DEFAULT_SIZE, Config,
                      SizeError, format_size, lookup_algorithm, make_setup)


def _size(text: str) -> int:
    from ._config import parse_size

    try:
        return parse_size(text)
    except SizeError as exc:
        raise argparse.ArgumentTypeError(str(exc)) from None


def _positive_int(text: str) -> int:
    try:
        value = int(text)
    except ValueError:
        raise argparse.ArgumentTypeError(f"not a whole number: {text!r}") from None
    if value < 1:
        raise argparse.ArgumentTypeError(f"must be >= 1, got {value}")
    return value


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="python -m adamfast",
        description="adamfast command line. "
                    "Run 'python -m adamfast bench --help' for the benchmark.",
    )
    sub = parser.add_subparsers(dest="command", metavar="COMMAND")
    b = sub.add_parser(
        "bench",
        help="time one optimizer step per implementation",
        description=(
            "Time one optimizer step per implementation (roofline, NumPy textbook and in-place "
            "for Adam/AdamW, every adamfast backend, torch fused/foreach, timm foreach/loop "
            "where timm has the algorithm), interleaved over "
            "shuffled rounds, cold cache by default. Prints median ms/step, spread, throughput, "
            "% of a roofline with the algorithm's exact traffic measured in the same run (on "
            "adamfast's pool, an OpenMP team and numba prange; judged against the fastest), a "
            "paired speed-up over a NumPy baseline, and first-call time; then one table of the "
            "step right after a torch op, as in a training loop. --family prints one row per "
            "algorithm instead."
        ),
    )
    b.add_argument("--algorithm", metavar="NAME", default=None,
                   help=f"which optimizer (case-insensitive registry name: "
                        f"{', '.join(ALGORITHMS)}; default {DEFAULT_ALGORITHM})")
    b.add_argument("--family", action="store_true",
                   help="one table, one row per registered algorithm: the cython and numba "
                        "backends, each %% of its own roofline, and torch's and timm's fastest "
                        "CPU implementations (paired ratios)")
    b.add_argument("--sizes", nargs="+", type=_size, default=[DEFAULT_SIZE], metavar="N",
                   help="parameter counts, suffixes K/M/G are powers of 2 (default: 16M)")
    b.add_argument("--dtype", choices=("float32", "float64"), default="float32")
    b.add_argument("--threads", type=_positive_int, default=None,
                   help="threads for adamfast, the rooflines and torch (default: all cores)")
    b.add_argument("--arrays", type=_positive_int, default=1,
                   help="split each size into N arrays of mixed sizes (adamfast over one flat "
                        "buffer, torch over N tensors, NumPy loops per array); default 1")
    b.add_argument("--groups", type=_positive_int, default=1, metavar="G",
                   help="spread the arrays over G param groups with equal hyperparameters "
                        "(adamfast and torch); G > 1 adds 1-group rows for the paired cost of "
                        "groups, e.g. --arrays 200 --groups 8; default 1")
    b.add_argument("--repeat", type=_positive_int, default=None, metavar="R",
                   help="timed rounds per size (default: 21 for sizes >= 1M, 51 below)")
    b.add_argument("--amsgrad", action="store_true",
                   help="AMSGrad variant of Adam/AdamW (one more state buffer)")
    b.add_argument("--adamw", action="store_true", help="shorthand for --algorithm AdamW")
    b.add_argument("--impl", nargs="+", default=None, metavar="NAME",
                   help="only rows whose name contains one of these (comma lists allowed); "
                        "the rooflines and the baseline row always run as references")
    b.add_argument("--hot", action="store_true", help="hot cache: do not flush between steps")
    b.add_argument("--layout", choices=("staggered", "separate"), default="staggered",
                   help="buffer placement: 'staggered' (default) takes p, g and state from one "
                        "adamfast.zeros_buffers call, as the adamfast optimizers do; 'separate' "
                        "allocates each with NumPy on its own, as a user's own arrays, "
                        "showing what that costs")
    after = b.add_mutually_exclusive_group()
    after.add_argument("--after-torch", action="store_true",
                       help="run every table after torch: before each timed step (after the "
                            "flush, outside the timer) one torch op on torch's threads, as a "
                            "backward pass runs right before the optimizer step; the speed-up "
                            "column is then against torch's fastest row. Without it, the run "
                            "adds one after-torch table at the largest size (rooflines, the "
                            "default backend's adamfast rows, torch's fastest)")
    after.add_argument("--no-after-torch", action="store_true",
                       help="no after-torch table (only the cold-cache tables)")
    b.add_argument("--after-torch-size", type=_size, default=AFTER_TORCH_SIZE, metavar="N",
                   help=f"float32 elements of the after-torch op, torch.add(a, b, out=c) "
                        f"(at least {format_size(AFTER_TORCH_MIN)}, so that torch runs it on "
                        f"all its threads; default {format_size(AFTER_TORCH_SIZE)})")
    b.add_argument("--no-overhead", action="store_true", help="skip the per-call overhead line")
    b.add_argument("--json", metavar="PATH", help="write all results (with raw times) as JSON")
    b.add_argument("--plot", metavar="PATH", help="write a PNG of throughput vs size (matplotlib)")
    b.add_argument("--quiet", action="store_true", help="no progress line on stderr")
    b.add_argument("--seed", type=int, default=0, help="seed for data and round order")
    b.add_argument("--torch", action="store_true",
                   help="adamfast.torch.AdamW opt.step() against torch.optim fused and foreach: "
                        "200 mixed tensors (16M), one 64M tensor and one torch-allocated 16M "
                        "tensor, at 1 thread and all cores (or --threads), with the roofline "
                        "and per-call overhead (takes --threads, --repeat, --seed only)")
    b.add_argument("--guarded", action="store_true",
                   help="the fused guarded AdamW step (grad_scale, max_grad_norm=1.0, "
                        "skip_nonfinite, and with ema_decay=0.999), NumPy API and "
                        "adamfast.torch, against torch's pipeline (unscale, clip_grad_norm_, "
                        "AdamW fused; + _foreach_lerp_ for the EMA) and adamfast's own "
                        "unguarded step, at 1 and 2 threads (or --threads); takes --sizes, "
                        "--dtype, --threads, --repeat, --seed, --json, --quiet only")
    b.add_argument("--overhead", action="store_true",
                   help="the per-call table: hot adam_step and Adam.step() calls at 16 float32 "
                        "params against their targets, median and quartiles over interleaved "
                        "rounds, and adamfast.torch's step at 1 and 200 tensors (its cost per "
                        "tensor); takes --repeat (rounds, default 15) and --seed only")
    b.add_argument("--busy-core", action="store_true",
                   help="adamfast.Adam at 1 thread against all cores (or --threads, >= 2), "
                        "interleaved, while another process spins on one core; per compiled "
                        "backend at 64K, 1M and 16M (or --sizes); takes --sizes, --threads, "
                        "--repeat, --seed, --json, --quiet only")
    parser.bench = b  # cross-argument errors are reported with the bench usage line
    return parser


# The options of the special modes (--torch, --guarded): any other option given is an error.
_DESTS = {"algorithm": "--algorithm", "family": "--family", "sizes": "--sizes",
          "dtype": "--dtype", "threads": "--threads", "arrays": "--arrays",
          "groups": "--groups", "repeat": "--repeat", "amsgrad": "--amsgrad",
          "adamw": "--adamw", "impl": "--impl", "hot": "--hot", "layout": "--layout",
          "no_overhead": "--no-overhead", "json": "--json", "plot": "--plot",
          "quiet": "--quiet", "seed": "--seed", "torch": "--torch", "guarded": "--guarded",
          "after_torch": "--after-torch", "no_after_torch": "--no-after-torch",
          "after_torch_size": "--after-torch-size", "busy_core": "--busy-core",
          "overhead": "--overhead"}
_MODES = {"torch": ("threads", "repeat", "seed"),
          "guarded": ("sizes", "dtype", "threads", "repeat", "seed", "json", "quiet"),
          "busy_core": ("sizes", "threads", "repeat", "seed", "json", "quiet"),
          "overhead": ("repeat", "seed")}


def check_mode(parser, args, mode):
    """Every check of --torch / --guarded, before any work: options that do not apply
    are refused (never silently ignored), and the rest validated."""
    defaults = {dest: parser.get_default(dest) for dest in _DESTS}
    allowed = set(_MODES[mode]) | {mode}
    for dest, flag in _DESTS.items():
        if dest not in allowed and getattr(args, dest) != defaults[dest]:
            parser.error(f"{flag} does not apply to {_DESTS[mode]} (it takes "
                         f"{', '.join(_DESTS[d] for d in _MODES[mode])} only)")
    if args.seed < 0:
        parser.error(f"--seed must be >= 0 (numpy's generators take no negative seed), got "
                     f"{args.seed}")
    if mode == "guarded":
        _check_output(parser, "--json", args.json)
        avail = _available_bytes()
        from ._guarded import memory_need

        need = memory_need(max(args.sizes), args.dtype)
        if avail is not None and need > avail:
            parser.error(f"--sizes {max(args.sizes)} needs about {need / 2**30:.1f} GiB for "
                         f"{args.dtype} in --guarded and only {avail / 2**30:.1f} GiB is "
                         f"available; use a smaller size")
    if mode == "busy_core":
        _check_output(parser, "--json", args.json)
        if args.threads is not None and args.threads < 2:
            parser.error(f"--threads {args.threads}: --busy-core compares 1 thread with more; "
                         f"give 2 or more")
    from ._machine import try_import

    if mode not in ("busy_core", "overhead") and try_import("torch") is None:
        parser.error(f"{_DESTS[mode]} needs torch: pip install torch")
    import adamfast

    if args.threads is not None:
        before = adamfast.get_num_threads()
        try:
            adamfast.set_num_threads(args.threads)
        except ValueError as exc:
            parser.error(f"--threads {args.threads}: {exc}")
        adamfast.set_num_threads(before)


def _check_output(parser, flag: str, path: str | None):
    """Fail now if ``path`` cannot be written, instead of after the run."""
    if path is None:
        return
    if os.path.isdir(path):
        parser.error(f"{flag} {path!r} is a directory; give a file name")
    folder = os.path.dirname(os.path.abspath(path))
    if not os.path.isdir(folder):
        parser.error(f"{flag} {path!r}: directory {folder!r} does not exist")
    if not os.access(folder, os.W_OK | os.X_OK) or (
            os.path.exists(path) and not os.access(path, os.W_OK)):
        parser.error(f"{flag} {path!r} is not writable")


def _available_bytes() -> int | None:
    try:
        with open("/proc/meminfo") as f:
            for line in f:
                if line.startswith("MemAvailable:"):
                    return int(line.split()[1]) * 1024
    except (OSError, ValueError, IndexError):
        pass
    return None


def _check_memory(parser, args, setups):
    """Refuse a size that cannot fit, instead of a MemoryError (or the OOM killer) mid-run.

    A rough upper bound of what one size holds at once: the shared p, g and
    Adam state, the roofline's set, one optimizer per adamfast row (each owns
    p, g and its state), torch's and timm's state per mode, and NumPy's
    temporaries.
    """
    avail = _available_bytes()
    if avail is None:
        return
    n = max(args.sizes)
    nstate = max(s.nstate for s in setups)
    optimizers = (2 if args.family else 3) + (0 if args.family or args.groups == 1 else 2)
    from ._timm import timm_class_name

    # torch's modes, and as many of timm's, whose Lamb also gets its own grads
    timm = any(timm_class_name(s) is not None for s in setups)
    modes = (1 if args.family else 2) * (2 if timm else 1)
    user = nstate if args.layout == "separate" and not args.family else 0  # user arrays' state
    count = (2 + nstate) * (2 + optimizers) + modes * nstate + user + 6 + timm
    need = count * n * np.dtype(args.dtype).itemsize + 3 * 4 * args.after_torch_size
    if need > avail:
        parser.error(f"--sizes {n} needs about {need / 2**30:.1f} GiB for {args.dtype} and only "
                     f"{avail / 2**30:.1f} GiB is available; use a smaller size")


def config_from_args(parser, args) -> Config:
    """Every check, then the :class:`Config`.  Errors exit through ``parser.error``."""
    from ._machine import core_count, try_import
    from ._rows import possible_names

    if args.family:
        for flag, given in (("--algorithm", args.algorithm), ("--adamw", args.adamw),
                            ("--amsgrad", args.amsgrad), ("--impl", args.impl),
                            ("--plot", args.plot)):
            if given:
                parser.error(f"{flag} does not apply to --family (it runs every algorithm "
                             f"with default hyperparameters, in one table)")
    name = args.algorithm or DEFAULT_ALGORITHM
    if args.adamw:
        if args.algorithm and args.algorithm.strip().lower() not in ("adam", "adamw"):
            parser.error(f"--adamw conflicts with --algorithm {args.algorithm}")
        name = "AdamW"
    try:
        spec = lookup_algorithm(name)
    except KeyError as exc:
        parser.error(f"--algorithm: {exc.args[0]}")
    setup = None
    if not args.family:
        try:
            setup = make_setup(spec.name, amsgrad=args.amsgrad)
        except ValueError as exc:
            parser.error(str(exc))

    if args.seed < 0:
        parser.error(f"--seed must be >= 0 (numpy's generators take no negative seed), got "
                     f"{args.seed}")
    if args.family:
        from adamfast.algorithms import ALGORITHMS

        _check_memory(parser, args, [make_setup(name) for name in ALGORITHMS])
    else:
        _check_memory(parser, args, [setup])
    smallest = min(args.sizes)
    if args.arrays > smallest:
        parser.error(f"--arrays {args.arrays} is more than the smallest size ({smallest})")
    if args.groups > args.arrays:
        parser.error(f"--groups {args.groups} needs at least as many arrays; add "
                     f"--arrays {args.groups} or more")

    impl = None
    if args.impl:
        impl = [tok.strip() for item in args.impl for tok in item.split(",") if tok.strip()]
        valid = possible_names(setup, args.groups, args.layout)
        unknown = [tok for tok in impl if not any(tok in name for name in valid)]
        if unknown or not impl:
            parser.error(f"--impl: no {setup.name} row matches {unknown or args.impl}; rows "
                         f"are: {', '.join(valid)} (a name's part selects every row "
                         f"containing it)")

    after_torch = _after_torch_mode(parser, args)

    _check_output(parser, "--json", args.json)
    _check_output(parser, "--plot", args.plot)
    if args.plot and try_import("matplotlib") is None:
        parser.error("--plot needs matplotlib: pip install matplotlib (or adamfast[plot])")

    threads = args.threads if args.threads is not None else core_count()
    # torch first (see _run.run): checking the thread count loads the
    # backends, and the cython extension brings the system OpenMP runtime.
    if try_import("torch") is None and after_torch != "off":
        if args.after_torch:
            parser.error("--after-torch needs torch: pip install torch")
        after_torch = "off"  # the run notes it
    from ._peers import torch_default_threads

    torch_default_threads()  # torch's own count, before anything sets it
    import adamfast

    try:
        adamfast.set_num_threads(threads)
    except ValueError as exc:
        parser.error(f"--threads {threads}: {exc}")

    return Config(sizes=args.sizes, dtype=np.dtype(args.dtype), threads=threads,
                  arrays=args.arrays, groups=args.groups, repeat=args.repeat,
                  algorithm=spec.name, amsgrad=args.amsgrad, family=args.family, impl=impl,
                  hot=args.hot, quiet=args.quiet, seed=args.seed, layout=args.layout,
                  overhead=not args.no_overhead, json_path=args.json, plot_path=args.plot,
                  setup=setup, after_torch=after_torch, after_torch_size=args.after_torch_size,
                  torch_threads=args.threads)


def _after_torch_mode(parser, args) -> str:
    """"all" (--after-torch), "extra" (the default: one more table) or "off"."""
    if args.family and args.no_after_torch:
        parser.error("--no-after-torch does not apply to --family (it adds no after-torch "
                     "table; --after-torch runs its rounds after torch)")
    mode = "all" if args.after_torch else (
        "off" if args.no_after_torch or args.family else "extra")
    if args.after_torch_size != AFTER_TORCH_SIZE:
        if mode == "off":
            why = "--no-after-torch" if args.no_after_torch else "--family without --after-torch"
            parser.error(f"--after-torch-size does not apply with {why}: no torch op runs")
        if args.after_torch_size < AFTER_TORCH_MIN:
            parser.error(f"--after-torch-size must be at least {format_size(AFTER_TORCH_MIN)} "
                         f"(torch runs smaller element-wise ops on one thread, with no OpenMP "
                         f"region), got {args.after_torch_size}")
    return mode
