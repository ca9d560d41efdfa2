"""``bridgelab params``: every paper preset of every bridge, built on the meta device, against its published size.

A preset (``bridges.presets``) states the bridge config, the encoder/LM facts it is built against and the trainable
parameter count the paper or reference code reports. Building on the meta device costs no memory, so even 7B-scale
settings size in a second.
"""

from __future__ import annotations

from typing import Any

import torch


def preset_rows() -> list[dict[str, Any]]:
    """One record per paper preset: bridge, preset, counted group, built size, expected size, relative error."""
    import bridges  # noqa: F401  (registers the built-in bridges and their presets)
    from bridges.base import BRIDGES
    from bridges.presets import paper_presets

    rows = []
    for preset in sorted(paper_presets(), key=lambda p: (p.bridge, p.name)):
        row: dict[str, Any] = {"bridge": preset.bridge, "preset": preset.name, "count": preset.count,
                               "expected": preset.expected_params, "source": preset.source,
                               "reported": preset.extra.get("reported")}
        try:
            with torch.device("meta"):
                bridge = BRIDGES.build({"name": preset.bridge, **preset.overrides}, preset.io)
            if preset.count == "bridge":
                params = list(bridge.parameters())
            else:
                groups = bridge.param_groups()
                if preset.count not in groups:
                    raise KeyError(f"bridge has no parameter group '{preset.count}' (groups: {sorted(groups)})")
                params = groups[preset.count]
            row["built"] = sum(p.numel() for p in params)
            row["rel_error"] = abs(row["built"] - preset.expected_params) / preset.expected_params
        except Exception as err:  # noqa: BLE001 - report every preset, then fail at the end
            row["built"] = None
            row["rel_error"] = None
            row["error"] = f"{type(err).__name__}: {err}"
        rows.append(row)
    return rows


def params_report(tolerance: float = 0.01, rows: list[dict[str, Any]] | None = None) -> tuple[str, bool]:
    """The table as text and whether every preset is within ``tolerance`` of its expected size (``rows``: from
    :func:`preset_rows`, built when not given)."""
    rows = preset_rows() if rows is None else rows
    ok = all(r["built"] is not None and r["rel_error"] <= tolerance for r in rows)
    cells = [("bridge", "preset", "counts", "built", "expected", "diff", "paper", "source")]
    for r in rows:
        paper = "" if r["reported"] is None else f"{r['reported']:,}"
        if r["built"] is None:
            cells.append((r["bridge"], r["preset"], r["count"], "ERROR", f"{r['expected']:,}", "", paper, r["error"]))
            continue
        flag = "" if r["rel_error"] <= tolerance else "  <-- off"
        cells.append((r["bridge"], r["preset"], r["count"], f"{r['built']:,}", f"{r['expected']:,}",
                      f"{100 * r['rel_error']:.2f}%", paper, f"{r['source']}{flag}"))
    widths = [max(len(row[i]) for row in cells) for i in range(7)]
    right = (False, False, False, True, True, True, True)
    lines = [
        "  ".join(c.rjust(w) if r else c.ljust(w) for c, w, r in zip(row[:7], widths, right)) + "  " + row[7]
        for row in cells
    ]
    verdict = "all within" if ok else "NOT all within"
    lines.append(f"{len(rows)} paper presets built on the meta device; tolerance {100 * tolerance:.1f}%: {verdict}")
    if any(r["reported"] is not None for r in rows):
        lines.append("'expected' is derived from the hyper-parameters; 'paper' is the figure the paper reports where "
                     "the two disagree (see each source for what is recalled).")
    return "\n".join(lines), ok
