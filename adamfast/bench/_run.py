"""The two runs: one algorithm's table per size, and ``--family`` (one row per algorithm)."""

from __future__ import annotations

import dataclasses
import sys

import numpy as np

from adamfast.algorithms._spec import NSLOT

from . import _report
from ._config import format_size, make_setup
from ._machine import CpuMonitor, core_count, header_info, try_import
from ._peers import AfterTorch, deepspeed_impls, torch_default_threads, torch_impls, torch_threads
from ._rows import (USER_ARRAYS, Notes, Workload, adamfast_impls, backends, check_finite,
                    functional_name, load_backend, numpy_impls, roofline_impls, user_array_impls)
from ._timing import (CacheFlusher, Impl, Progress, fastest, judged_roofline, measure, paired,
                      summarize)
from ._timm import timm_impls


def _warm_numba(cfg, notes):
    """Run numba's roofline0 once at its parallel size, so the header can name
    the threading layer numba picked (known only after a parallel launch)."""
    if not backends(notes, ("numba",)):
        return
    from adamfast import _engine
    from adamfast._memory import zeros_buffers

    b = load_backend("numba", notes)
    n = int(getattr(b.module, "PARALLEL_MIN", 1 << 19))
    p, g = zeros_buffers(n, np.float32, 2)
    try:
        b.kernel(b.kind_id("roofline0"), p, g, (), np.zeros((1, NSLOT)),
                 _engine.single_chunks(n), max(2, cfg.threads) if core_count() > 1 else 1)
    except Exception as exc:  # a diagnostic must not stop the run
        notes.add(f"numba warm-up failed ({type(exc).__name__}: {exc})")
    _start_numba_layer()


def _start_numba_layer():
    """Start numba's threading layer now, and give torch back its thread count.

    The layer starts on numba's first parallel call (the prange roofline), and
    its start sets the thread count of the OpenMP runtime torch shares to
    numba's: torch's rows of a ``--threads 1`` run then ran on every core.
    """
    import numba

    torch = try_import("torch")
    before = None if torch is None else torch.get_num_threads()
    numba.get_num_threads()  # launches the layer
    if torch is not None and torch.get_num_threads() != before:
        torch.set_num_threads(before)


def run(cfg) -> dict:
    # Import torch before anything loads the system OpenMP runtime (Numba's
    # "omp" threading layer does, when its first parallel kernel loads).
    # Imported afterwards, torch binds to that libgomp instead of its bundled
    # one, and here its foreach path became ~10x slower (4 ms instead of
    # 0.3 ms per step at 8K params).  Importing torch first is also what a
    # training script does, so this is torch's realistic case.
    try_import("torch")
    torch_default_threads()  # read before anything here sets torch's thread count
    import adamfast

    adamfast.set_num_threads(cfg.threads)  # checked by the CLI already
    notes = Notes()
    _warm_numba(cfg, notes)
    flush = CacheFlusher(enabled=not cfg.hot)
    progress = Progress(enabled=not cfg.quiet)
    after = None
    if cfg.after_torch != "off":
        if try_import("torch") is None:
            notes.add("torch not installed: no after-torch table")
        else:
            after = AfterTorch(flush, cfg.after_torch_size)
    if cfg.family:
        return run_family(cfg, flush, progress, notes, after)
    return run_algorithm(cfg, flush, progress, notes, after)


def _after_torch_run(after, cfg, impls, rounds, progress, label, seed, first_call=True):
    """Time ``impls`` with the torch op before each step, torch at its after-torch
    thread count; (failure notes, torch's thread count, the machine load)."""
    monitor = CpuMonitor()
    with torch_threads(cfg.torch_threads) as threads:
        failed = measure(impls, rounds, after, progress, label, seed=seed, first_call=first_call)
    return failed, threads, monitor.stop()


def _torch_count(cfg) -> int:
    return cfg.torch_threads if cfg.torch_threads is not None else torch_default_threads()


def _torch_baseline(impls, default):
    """The after-torch tables' speed-up column: torch's fastest row (fused first), else
    timm's (foreach first) for an algorithm torch lacks."""
    return next((i.name for kind in ("torch", "timm") for i in impls if i.kind == kind),
                default)


def peer_ratios(impls) -> dict:
    """{adamfast row: {peer row: (p25, median, p75)}}: the paired ratio peer time / row
    time (> 1: adamfast faster) against every torch and timm row, for every compiled
    adamfast row."""
    peers = [i for i in impls if i.kind in ("torch", "timm")]
    return {i.name: {p.name: paired(p, i) for p in peers} for i in impls
            if peers and i.kind == "adamfast" and i.backend != "numpy"}


def after_torch_rows(impls, best: str, setup) -> list[Impl]:
    """The extra after-torch table's rows, as fresh copies of the cold table's: every
    roofline, the default backend's adamfast rows and torch's fastest row."""
    mine = {f"adamfast-{best}", f"adamfast-{best}-1group",
            f"{functional_name(setup)}-{best}{USER_ARRAYS}"}
    torch_row = _torch_baseline(impls, None)
    timm_row = next((i.name for i in impls if i.kind == "timm"), None)
    return [dataclasses.replace(i, times_ns=[], first_call_ns=None) for i in impls
            if i.kind == "roofline" or i.name in mine or i.name in (torch_row, timm_row)]


def passes_roofline_impls(wl, cfg, setup, notes) -> list[Impl]:
    """``roofline-passes`` for a step of several passes (see _passes.py); numba runs it."""
    if len(setup.passes) < 2:
        return []
    try:
        from ._passes import passes_roofline_impls as impls
    except ImportError as exc:
        notes.add(f"roofline-passes skipped ({exc}): {setup.name} is judged against the "
                  f"one-pass rooflines")
        return []
    return impls(wl, cfg, setup, notes)


def _roofline_info(impls) -> dict:
    """Which roofline rows ran, and numba's threading layer under roofline-prange
    (known only after its first parallel call)."""
    names = [i.name for i in impls if i.kind == "roofline"]
    layer = None
    if "roofline-prange" in names:
        try:
            import numba

            layer = numba.threading_layer()
        except (ImportError, ValueError):
            layer = None
    return dict(rooflines=names, prange_layer=layer)


def _after_table(tables, n, rows, roof, threads, after):
    tables[n] = dict(rows=rows, roofline=roof, torch_threads=threads,
                     torch_op=dict(op="torch.add", params=after.size, dtype="float32"))


def _groups_ratios(impls) -> dict:
    """time(G groups) / time(1 group) per backend, paired within rounds."""
    by_name = {i.name: i for i in impls}
    out = {}
    for i in impls:
        one = by_name.get(f"{i.name}-1group")
        if one is not None:
            out[i.backend] = paired(i, one)
    return out


def run_algorithm(cfg, flush, progress, notes, after=None) -> dict:
    import adamfast

    setup = cfg.setup
    info = header_info(cfg, flush, setup, after)
    _report.print_header(info, cfg, setup)
    for note in setup.notes:
        notes.add(note)
    results, roofs, groups, after_tables, peers = {}, {}, {}, {}, {}
    printed = 0
    bpp = setup.bytes_per_param(cfg.dtype.itemsize)
    roof_bpp = setup.roofline_bytes(cfg.dtype.itemsize)
    every = after is not None and cfg.after_torch == "all"
    # The extra after-torch table: at the largest size, over the rows its cold
    # table built (so it costs no memory and no construction).
    extra_at = (cfg.sizes.index(max(cfg.sizes))
                if after is not None and cfg.after_torch == "extra" else None)
    best = adamfast.available_backends()[0]
    for size_idx, n in enumerate(cfg.sizes):
        wl = Workload(n, cfg, setup)
        # Rows --impl rejects are not even built (each optimizer owns a copy
        # of the parameters); the rooflines and the baseline always run,
        # since other columns need them.
        keep = lambda name: (not cfg.impl or name == setup.baseline  # noqa: E731
                             or any(tok in name for tok in cfg.impl))
        impls = (roofline_impls(wl, cfg, setup, notes)
                 + passes_roofline_impls(wl, cfg, setup, notes)
                 + numpy_impls(wl, setup, keep)
                 + adamfast_impls(wl, cfg, setup, notes, keep=keep)
                 + user_array_impls(wl, cfg, setup, notes, keep=keep)
                 + torch_impls(wl, cfg, setup, notes, keep=keep)
                 + timm_impls(wl, cfg, setup, notes, keep=keep)
                 + deepspeed_impls(wl, cfg, setup, notes, keep=keep))
        _report.print_notes(notes[printed:])
        printed = len(notes)
        rounds = cfg.rounds_for(n)
        label = f"size {format_size(n)}"
        if every:
            failed, threads, load = _after_torch_run(after, cfg, impls, rounds, progress,
                                                     f"after torch {label}", cfg.seed + size_idx)
        else:
            monitor = CpuMonitor()
            failed = measure(impls, rounds, flush, progress, label, seed=cfg.seed + size_idx)
            load = monitor.stop()
        for note in failed:
            notes.add(note)
        _report.print_notes(notes[printed:])
        printed = len(notes)
        rows, roof = summarize(impls, n, bpp,
                               _torch_baseline(impls, setup.baseline) if every
                               else setup.baseline, roof_bpp)
        roof.update(machine_load=load, kind=setup.roofline_kind, **_roofline_info(impls))
        results[n], roofs[n] = rows, roof
        if every:
            _after_table(after_tables, n, rows, roof, threads, after)
            _report.print_table(rows, roof, n, rounds, cfg,
                                mode=_report.after_torch_title(after, threads))
        else:
            _report.print_table(rows, roof, n, rounds, cfg)
        peers[n] = {row: {p: dict(p25=r[0], median=r[1], p75=r[2]) for p, r in d.items()}
                    for row, d in peer_ratios(impls).items()}
        _report.print_peer_ratios(peers[n])
        ratios = _groups_ratios(impls)
        groups[n] = {b: dict(p25=r[0], median=r[1], p75=r[2]) for b, r in ratios.items()}
        _report.print_groups(ratios, cfg)
        _report.print_load(load, cfg)
        if size_idx == extra_at:
            sub = after_torch_rows(impls, best, setup)
            failed, threads, load = _after_torch_run(after, cfg, sub, rounds, progress,
                                                     f"after torch {label}",
                                                     cfg.seed + 1000 + size_idx,
                                                     first_call=False)
            for note in failed:
                notes.add(note)
            _report.print_notes(notes[printed:])
            printed = len(notes)
            rows, roof = summarize(sub, n, bpp, _torch_baseline(sub, None), roof_bpp)
            roof.update(machine_load=load, kind=setup.roofline_kind, **_roofline_info(sub))
            _after_table(after_tables, n, rows, roof, threads, after)
            _report.print_table(rows, roof, n, rounds, cfg,
                                mode=_report.after_torch_title(after, threads))
            _report.print_load(load, cfg)
        warning = check_finite(wl)
        if warning:
            print(warning)
        sys.stdout.flush()
        del wl, impls  # free this size's buffers before the next one

    ovh, small = {}, {}
    if cfg.overhead:
        from ._overhead import SMALL_SIZES, measure_overhead, measure_small_sizes

        progress.show("per-call overhead")
        ovh = measure_overhead(cfg, setup)
        progress.show("per-call cost at small sizes")
        small = {"sizes": list(SMALL_SIZES), **measure_small_sizes(cfg, setup)}
        progress.clear()
        _report.print_overhead(ovh, cfg)
        _report.print_small_sizes(small, cfg)

    _report.print_notes(notes[printed:])
    report = dict(meta=info, config=_config_dict(cfg), notes=list(notes),
                  results={str(n): rows for n, rows in results.items()},
                  roofline={str(n): r for n, r in roofs.items()}, overhead_us=ovh,
                  small_sizes_us=small,
                  after_torch={str(n): t for n, t in after_tables.items()},
                  peer_ratios={str(n): p for n, p in peers.items()})
    if cfg.groups > 1:
        report["groups_vs_one_group"] = {str(n): g for n, g in groups.items()}
    if cfg.json_path:
        _report.write_json(cfg.json_path, report)
    if cfg.plot_path:
        _report.write_plot(cfg.plot_path, results,
                           f"adamfast: {setup.name} step throughput ({cfg.dtype.name}, "
                           f"{cfg.threads} threads, {cfg.layout} layout)")
    return report


def _family_row(setup, impls, itemsize) -> dict:
    """One algorithm's family row: each compiled backend against the fastest roofline
    (GB/s over each one's own bytes), and torch's and timm's fastest rows against the
    fastest backend (paired)."""
    med = lambda i: float(np.median(i.times_ns)) / 1e6  # noqa: E731
    bpp = setup.bytes_per_param(itemsize)
    best = fastest(impls, "adamfast")
    roof, roof_bpp = judged_roofline(impls, setup.roofline_bytes(itemsize))
    pct = lambda i: 100 * (bpp / med(i)) / (roof_bpp / med(roof)) if roof else None  # noqa: E731
    row = dict(algorithm=setup.name, kind=setup.kind, bytes_per_param=bpp,
               roofline_bytes_per_param=roof_bpp,
               backends={i.backend: dict(ms=med(i), pct_roofline=pct(i))
                         for i in impls if i.kind == "adamfast"},
               backend=best.backend if best else None, adamfast_ms=med(best) if best else None,
               roofline_impl=roof.name if roof else None, roofline_ms=med(roof) if roof else None,
               pct_roofline=pct(best) if best else None)
    for kind, prefix in (("torch", ""), ("timm", "timm_")):
        peer = fastest(impls, kind)
        row[f"{kind}_impl"] = peer.name if peer else None
        row[f"{kind}_ms"] = med(peer) if peer else None
        if best and peer:
            r25, r50, r75 = paired(peer, best)
            row.update({f"{prefix}ratio": r50, f"{prefix}ratio_p25": r25,
                        f"{prefix}ratio_p75": r75})
    return row


def run_family(cfg, flush, progress, notes, after=None) -> dict:
    from adamfast.algorithms import ALGORITHMS

    every = after is not None and cfg.after_torch == "all"
    info = header_info(cfg, flush, None, after if every else None)
    _report.print_header(info, cfg, None)
    setups = [make_setup(name) for name in ALGORITHMS]
    for s in setups:
        for note in s.notes:
            notes.add(note)
    notes.add("each algorithm is timed in its own interleaved rounds: its roofline{N}, the "
              "numba and cython backends (the numpy backend is not timed here), torch's "
              "fastest CPU implementation (fused where it exists, else foreach) and timm's "
              "(foreach where it exists, else its per-tensor loop)")
    results, raw = {}, {}
    printed = 0
    for size_idx, n in enumerate(cfg.sizes):
        rounds = cfg.rounds_for(n)
        monitor = CpuMonitor()
        fam, raw[n] = [], {}
        for k, setup in enumerate(setups):
            wl = Workload(n, cfg, setup, numpy_rows=False)
            impls = (roofline_impls(wl, cfg, setup, notes)
                     + passes_roofline_impls(wl, cfg, setup, notes)
                     + adamfast_impls(wl, cfg, setup, notes, wanted=("numba", "cython"),
                                      one_group_rows=False)
                     + torch_impls(wl, cfg, setup, notes, fastest_only=True)
                     + timm_impls(wl, cfg, setup, notes, fastest_only=True))
            label = f"{setup.name} size {format_size(n)}"
            seed = cfg.seed + 100 * size_idx + k
            if every:
                failed = _after_torch_run(after, cfg, impls, rounds, progress,
                                          f"after torch {label}", seed)[0]
            else:
                failed = measure(impls, rounds, flush, progress, label, seed=seed)
            for note in failed:
                notes.add(note)
            fam.append(_family_row(setup, impls, cfg.dtype.itemsize))
            raw[n][setup.name] = summarize(impls, n, setup.bytes_per_param(cfg.dtype.itemsize),
                                           None, setup.roofline_bytes(cfg.dtype.itemsize))[0]
            warning = check_finite(wl)
            if warning:
                notes.add(f"{setup.name}: {warning}")
            del wl, impls
        load = monitor.stop()
        _report.print_notes(notes[printed:])
        printed = len(notes)
        results[n] = fam
        _report.print_family(fam, n, rounds, cfg,
                             mode=_report.after_torch_title(after, _torch_count(cfg))
                             if every else None)
        _report.print_load(load, cfg)
        sys.stdout.flush()
    report = dict(meta=info, config=_config_dict(cfg), notes=list(notes),
                  family={str(n): rows for n, rows in results.items()},
                  results={str(n): r for n, r in raw.items()})
    if cfg.json_path:
        _report.write_json(cfg.json_path, report)
    return report


def _config_dict(cfg) -> dict:
    return dict(sizes=cfg.sizes, dtype=cfg.dtype.name, threads=cfg.threads, arrays=cfg.arrays,
                groups=cfg.groups, repeat={str(n): cfg.rounds_for(n) for n in cfg.sizes},
                algorithm=None if cfg.family else cfg.setup.name, family=cfg.family,
                amsgrad=cfg.amsgrad, impl=cfg.impl, hot=cfg.hot, seed=cfg.seed,
                layout=cfg.layout, after_torch=cfg.after_torch,
                after_torch_size=cfg.after_torch_size, torch_threads=cfg.torch_threads)
