"""Output: the header, the tables, the load line, the overhead line, JSON and the plot."""

from __future__ import annotations

import json

from ._config import format_size


def _ms(x: float) -> str:
    return f"{x:.3f}" if x < 10 else f"{x:.2f}" if x < 100 else f"{x:.1f}"


def print_header(info: dict, cfg, setup):
    v = lambda x: x if x is not None else "not installed"  # noqa: E731
    print(f"adamfast {info['adamfast']} | numpy {info['numpy']} | numba {v(info['numba'])} | "
          f"torch {v(info['torch'])} | python {info['python']}")
    print(f"CPU: {info['cpu']} | {info['cores']} cores | {info['threads']} threads")
    cy = info["cython_openmp"]
    cy_txt = "not built" if cy is None else ("yes" if cy else "no (serial)")
    print(f"numba threading layer: {info['numba_threading_layer']} | Cython OpenMP: {cy_txt}")
    if info.get("cython_build"):
        print(f"Cython build: {info['cython_build']}")
    cut = info.get("parallel_min") or {}
    if cut:
        parts = ", ".join(f"{k} from {format_size(n)}" for k, n in cut.items() if n)
        print(f"parallel kernels: {parts} params (serial below; roofline-pool and "
              f"roofline-openmp share the cython cut-off, roofline-prange has none)")
    rts = info.get("openmp_runtimes")
    if rts is not None:
        short = [p[p.index("site-packages/"):] if "site-packages/" in p else p for p in rts]
        print(f"OpenMP runtimes loaded: {', '.join(short) if short else 'none'}")
    print(f"cache: {info['cache_mode']}")
    if info.get("after_torch"):
        print(f"after torch: {info['after_torch']}")
    cls = f"adamfast.{setup.name}" if setup is not None else "each adamfast optimizer"
    if cfg.layout == "staggered":
        print(f"layout: staggered (p, g and state from one adamfast.zeros_buffers call, as "
              f"{cls} allocates its own; --layout separate for one np array each)")
    else:
        print(f"layout: separate (one np allocation per array for the NumPy, torch and user-array "
              f"rows, as a user's own arrays; {cls} copies them into its own staggered "
              f"buffers; the rooflines stay on staggered buffers: the machine's ceiling)")
    where = f"{cfg.arrays} array(s)" + (f" in {cfg.groups} param groups" if cfg.groups > 1 else "")
    if setup is None:
        print(f"family: every algorithm with its class defaults (changes noted below), "
              f"{cfg.dtype.name}, {where}")
        return
    bpp = info["bytes_per_param"]
    rb = setup.roofline_bytes(cfg.dtype.itemsize)
    if rb == bpp:
        roof = f"the same {bpp // cfg.dtype.itemsize} accesses"
    else:
        roof = (f"one pass of {rb} B/param; and roofline-passes, the step's own passes "
                f"({setup.describe_passes(cfg.dtype.itemsize)}) with trivial arithmetic, "
                f"which it is judged against")
    print(f"{setup.describe()}, {cfg.dtype.name}, {where}, kind {setup.kind}, {bpp} B/param moved "
          f"(roofline: {setup.roofline_kind}, {roof})")
    print(ROOFLINES_LINE)
    print(f"adamfast rows: {cls}(...).step() over one flat buffer, one kernel call per step")
    if cfg.layout == "separate":
        from ._rows import USER_ARRAYS, functional_name

        fn = functional_name(setup)
        print(f"'{fn}-<backend>{USER_ARRAYS}' rows: adamfast.{fn}(p, g, <state>, step=t, ...) "
              f"called directly on the separately allocated arrays, one call per array")


ROOFLINES_LINE = (
    "rooflines on three threadings, % roof judged against the fastest (marked *): "
    "roofline-pool (cython family_kernel on adamfast's pool, as the adamfast rows), "
    "roofline-openmp (the same kernel on an OpenMP team), roofline-prange (a plain numba "
    "prange loop with the same traffic, outside adamfast's drivers)")


def after_torch_title(after, threads: int) -> str:
    return f"AFTER TORCH: {after.describe(threads)}"


def print_notes(notes):
    for note in notes:
        print(note)


def _where(cfg) -> str:
    """How the params are laid out, for a size header: "1 array", "200 arrays in 8 groups"."""
    where = f"{cfg.arrays} arrays" if cfg.arrays > 1 else "1 array"
    return where + (f" in {cfg.groups} groups" if cfg.groups > 1 else "")


def print_table(rows: list[dict], roof: dict, n: int, rounds: int, cfg, mode: str | None = None):
    """One size's table; ``mode`` (the after-torch description) heads it when given."""
    print()
    if mode:
        print(mode)
    where = _where(cfg)
    print(f"size {format_size(n)} ({n:,} params, {where}), {rounds} rounds; "
          f"times are medians, spread is p25-p75")
    base = roof.get("baseline")
    short = {"numpy-textbook": "textbook", "adamfast-numpy": "numpy ref",
             "torch-fused": "torch fused", "torch-foreach": "torch foreach",
             "timm-foreach": "timm foreach"}.get(base, base)
    width = max([17] + [len(r["impl"]) + 1 for r in rows])
    speed = f"vs {short} (p25-p75)" if base else "speed-up"
    sw = max(22, len(speed))
    cols = ("implementation", "ms/step", "p25-p75 ms", "Mparam/s", "GB/s", "% roof", speed,
            "first ms")
    widths = (width, 9, 17, 9, 7, 7, sw, 9)
    fmt = f"{{:<{width}}} {{:>9}} {{:>17}} {{:>9}} {{:>7}} {{:>7}} {{:>{sw}}} {{:>9}}"
    print(fmt.format(*cols))
    print("-" * (sum(widths) + len(widths) - 1))
    for r in rows:
        spread = f"{_ms(r['p25_ms'])}-{_ms(r['p75_ms'])}"
        pct = f"{r['pct_roofline']:.0f}%" if r["pct_roofline"] is not None else "-"
        if "speedup" in r:
            sp = f"{r['speedup']:.2f}x ({r['speedup_p25']:.2f}-{r['speedup_p75']:.2f})"
        else:
            sp = "-"
        first = f"{r['first_call_ms']:.1f}" if r["first_call_ms"] is not None else "-"
        name = r["impl"] + ("*" if r["impl"] == roof["impl"] else "")
        print(fmt.format(name, _ms(r["median_ms"]), spread, f"{r['mparams_per_s']:.0f}",
                         f"{r['gb_per_s']:.1f}", pct, sp, first))
    if roof["impl"]:
        ran = roof.get("rooflines") or [roof["impl"]]
        layer = f"; roofline-prange on numba's {roof['prange_layer']!r} layer" if roof.get(
            "prange_layer") else ""
        rb = roof.get("roofline_bytes_per_param", roof["bytes_per_param"])
        one = roof.get("one_pass_bytes_per_param", rb)
        if roof["impl"] == "roofline-passes":
            ones = [n for n in ran if n != "roofline-passes"]
            print(f"* roofline = {roof['gb_per_s']:.1f} GB/s (roofline-passes: the step's own "
                  f"passes, {rb} B/param, trivial arithmetic; {', '.join(ones)} make one pass "
                  f"of {one} B/param, a mix of streams the memory system may run faster{layer})"
                  f"; % roof = row GB/s / roofline GB/s")
        else:
            moved = (f"{rb} B/param; the step moves {roof['bytes_per_param']} in several passes"
                     if rb != roof["bytes_per_param"] else f"{rb} B/param")
            print(f"* roofline = {roof['gb_per_s']:.1f} GB/s ({roof['impl']}, the fastest of "
                  f"{', '.join(ran)}{layer}; {moved}); % roof = row GB/s / roofline GB/s")
    if base and base != "numpy-textbook":
        print(f"speed-up = {base} time / row time, paired within each round")


def print_groups(ratios: dict, cfg):
    """The cost of param groups: G groups vs 1 group over the same arrays, same run."""
    if not ratios:
        return
    parts = [f"{b} {r[1]:.3f}x ({r[0]:.3f}-{r[2]:.3f})" for b, r in ratios.items()]
    print(f"{cfg.groups} groups / 1 group over the same {cfg.arrays} arrays (paired time ratio, "
          f"target <= 1.10x): " + " | ".join(parts))


def print_load(load: dict | None, cfg):
    if load is None:
        return
    line = (f"machine during this size ({load['seconds']:.1f} s): other processes "
            f"{load['other_pct']:.0f}% of CPU, steal {load['steal_pct']:.0f}%")
    if load["seconds"] < 1:
        line += " (too short a window to judge)"  # /proc/stat counts in 10 ms ticks
    elif load["other_pct"] + load["steal_pct"] > 10:
        hit = "multi-threaded rows most" if cfg.threads > 1 else "memory bandwidth is shared"
        line += f" -- busy: numbers unreliable ({hit}), rerun when idle"
    print(line)


def print_overhead(overhead: dict[str, float], cfg):
    parts = [f"{k} {v:.1f}" for k, v in overhead.items()]
    print()
    print(f"per-call overhead, n=16 {cfg.dtype.name}, hot cache, us/call (median of 7 repeats):")
    print("  " + " | ".join(parts))


def print_small_sizes(small: dict, cfg):
    """``small``: {"sizes": [n, ...], label: [us per size], ...}."""
    table = {k: v for k, v in small.items() if k != "sizes"}
    if not table:
        return
    sizes = small["sizes"]
    width = max(len(k) for k in table) + 2
    print()
    print(f"per-call cost at small sizes, {cfg.dtype.name}, hot cache, {cfg.threads} "
          f"thread(s), us/call (median of 7 repeats); ns/param in brackets:")
    cells = {label: [f"{u:.1f} ({u * 1e3 / n:.2f})" for u, n in zip(us, sizes)]
             for label, us in table.items()}
    # Each column as wide as its widest cell, two spaces apart: never run together.
    col = max(len(c) for row in cells.values() for c in row) + 2
    print("  " + "params".ljust(width) + "".join(f"{format_size(n):>{col}}" for n in sizes))
    for label, row in cells.items():
        print("  " + label.ljust(width) + "".join(f"{c:>{col}}" for c in row))


def _x(v: float) -> str:
    """A ratio in three or four significant digits: the columns stay narrow."""
    return f"{v:.2f}" if v < 10 else f"{v:.1f}" if v < 100 else f"{v:.0f}"


def _ratio(r: dict, prefix: str) -> str:
    if r.get(f"{prefix}ratio") is None:
        return "-"
    return (f"{_x(r[prefix + 'ratio'])}x ({_x(r[prefix + 'ratio_p25'])}-"
            f"{_x(r[prefix + 'ratio_p75'])})")


FAMILY_BACKENDS = ("cython", "numba")


def print_family(rows: list[dict], n: int, rounds: int, cfg, mode: str | None = None):
    print()
    if mode:
        print(mode)
    where = _where(cfg)
    print(f"size {format_size(n)} ({n:,} params, {where}), {rounds} rounds per algorithm; "
          f"medians")
    cols = ["algorithm", "B/param"]
    for b in FAMILY_BACKENDS:
        cols += [f"{b} ms", "roof"]
    cols += ["torch", "ms", "x torch (p25-p75)", "timm", "ms", "x timm (p25-p75)"]
    fmt = ("{:<10} {:>7}" + " {:>9} {:>5}" * len(FAMILY_BACKENDS)
           + "  {:<13} {:>7} {:>18}  {:<12} {:>7} {:>18}")
    head = fmt.format(*cols)
    print(head)
    print("-" * len(head))
    for r in rows:
        cells = [r["algorithm"], r["bytes_per_param"]]
        for b in FAMILY_BACKENDS:
            got = r.get("backends", {}).get(b)
            mark = "*" if got is not None and r["backend"] == b else ""
            cells += [_ms(got["ms"]) + mark if got else "-",
                      f"{got['pct_roofline']:.0f}%" if got and got["pct_roofline"] is not None
                      else "-"]
        for kind, prefix in (("torch", ""), ("timm", "timm_")):
            ms = r.get(f"{kind}_ms")
            cells += [r.get(f"{kind}_impl") or "-", _ms(ms) if ms is not None else "-",
                      _ratio(r, prefix)]
        print(fmt.format(*cells))
    print("* the fastest backend, which the x columns divide; roof: the backend vs the fastest "
          "same-run roofline{N} (N state buffers; on adamfast's pool, an OpenMP team and numba "
          "prange), in GB/s over each one's own B/param; x torch, x timm: paired ratio "
          "peer time / adamfast time within each round")
    for r in rows:
        if r.get("roofline_impl") == "roofline-passes":
            print(f"{r['algorithm']} moves {r['bytes_per_param']} B/param in several passes; its "
                  f"roof is roofline-passes, the same passes with trivial arithmetic (numba "
                  f"prange)")
        elif r.get("roofline_bytes_per_param") not in (None, r["bytes_per_param"]):
            print(f"{r['algorithm']} moves {r['bytes_per_param']} B/param in several passes; "
                  f"its roofline is the one-pass roofline{{N}}'s bandwidth "
                  f"({r['roofline_bytes_per_param']} B/param a call) over those "
                  f"{r['bytes_per_param']} B")


def print_peer_ratios(ratios: dict):
    """Each compiled adamfast row against every torch and timm row, same rounds."""
    if not ratios:
        return
    width = max(len(k) for k in ratios) + 2
    print("x torch / x timm: peer time / row time, paired within each round (p25-p75)")
    for row, peers in ratios.items():
        parts = [f"{_x(r['median'])}x {peer} ({_x(r['p25'])}-{_x(r['p75'])})"
                 for peer, r in peers.items()]
        print("  " + row.ljust(width) + "   ".join(parts))


def write_json(path: str, report: dict):
    with open(path, "w") as f:
        json.dump(report, f, indent=1)
    print(f"wrote {path}")


def write_plot(path: str, results: dict[int, list[dict]], title: str):
    import matplotlib

    matplotlib.use("Agg")  # no display needed
    import matplotlib.pyplot as plt

    sizes = sorted(results)
    names = []
    for n in sizes:
        for r in results[n]:
            if r["impl"] not in names:
                names.append(r["impl"])
    fig, ax = plt.subplots(figsize=(8, 5))
    for name in names:
        pts = [(n, r["mparams_per_s"]) for n in sizes for r in results[n] if r["impl"] == name]
        style = "--" if name.startswith("roofline") else "-"
        ax.plot([p[0] for p in pts], [p[1] for p in pts], style, marker="o", label=name)
    ax.set_xscale("log", base=2)
    # Log y too: NumPy rows and the roofline differ by ~30x.
    ax.set_yscale("log")
    ax.set_xticks(sizes, [format_size(n) for n in sizes])
    ax.minorticks_off()
    ax.set_xlabel("parameters")
    ax.set_ylabel("throughput (Mparam/s)")
    ax.set_title(title)
    ax.grid(True, which="both", alpha=0.3)
    ax.legend(fontsize="small")
    fig.tight_layout()
    fig.savefig(path, dpi=120)
    plt.close(fig)
    print(f"wrote {path}")
