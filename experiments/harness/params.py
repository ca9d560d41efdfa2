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
                               "expected": preset.expected_params, "source": preset.source}
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


def params_report(tolerance: float = 0.02) -> tuple[str, bool]:
    """The table as text and whether every preset is within ``tolerance`` of its expected size."""
    rows = preset_rows()
    lines = [f"{'bridge':<16} {'preset':<22} {'counts':<10} {'built':>14} {'expected':>14} {'diff':>7}  source"]
    ok = True
    for r in rows:
        if r["built"] is None:
            ok = False
            lines.append(f"{r['bridge']:<16} {r['preset']:<22} {r['count']:<10} {'ERROR':>14} "
                         f"{r['expected']:>14,} {'':>7}  {r['error']}")
            continue
        flag = "" if r["rel_error"] <= tolerance else "  <-- off"
        ok &= r["rel_error"] <= tolerance
        lines.append(f"{r['bridge']:<16} {r['preset']:<22} {r['count']:<10} {r['built']:>14,} {r['expected']:>14,} "
                     f"{100 * r['rel_error']:>6.2f}%  {r['source']}{flag}")
    lines.append(f"{len(rows)} paper presets; tolerance {100 * tolerance:.1f}%: {'all within' if ok else 'NOT all within'}")
    return "\n".join(lines), ok
