"""The demo's separation rule: spread of bridge means against 3x the largest seed std, and above-chance check."""

import pandas as pd

from experiments.analysis.separation import separation, separation_markdown


def _runs(scores: dict[tuple[str, str], list[float]], chance: float = 0.25) -> pd.DataFrame:
    rows = []
    for (bridge, task), values in scores.items():
        for seed, value in enumerate(values):
            rows.append({"bridge": bridge, "task": task, "seed": seed, "exact_match": value, "chance": chance,
                         "status": "finished", "run_dir": f"{bridge}-{task}-{seed}"})
    return pd.DataFrame(rows)


def test_a_task_separates_only_when_the_spread_beats_three_stds():
    df = _runs({
        ("a", "wide"): [0.9, 0.92, 0.91], ("b", "wide"): [0.5, 0.52, 0.51],
        ("a", "noisy"): [0.9, 0.5, 0.7], ("b", "noisy"): [0.6, 0.62, 0.61],
    })
    sep = separation(df).set_index("task")
    assert bool(sep.loc["wide", "separates"]) and sep.loc["wide", "best"] == "a" and sep.loc["wide", "worst"] == "b"
    assert abs(sep.loc["wide", "spread"] - 0.40) < 1e-9
    assert not bool(sep.loc["noisy", "separates"])  # spread 0.09 < 3 x std 0.2
    assert sep.loc["wide", "n"] == 3


def test_a_bridges_swept_variants_are_compared_not_pooled():
    df = _runs({("a", "t"): [0.9, 0.9], ("b", "t"): [0.5, 0.5]})
    df["cfg.bridge.num_tokens"] = [16, 16, 4, 4]
    df.loc[df["bridge"] == "b", "bridge"] = "a"  # one bridge, two token counts: two entries, not one mean of 0.7
    sep = separation(df).set_index("task")
    assert sep.loc["t", "best"] == "a bridge.num_tokens=16" and sep.loc["t", "worst"] == "a bridge.num_tokens=4"
    assert abs(sep.loc["t", "spread"] - 0.4) < 1e-9 and bool(sep.loc["t", "separates"])


def test_a_bridge_at_chance_is_flagged_and_the_markdown_says_so():
    df = _runs({("a", "t"): [0.9, 0.9], ("b", "t"): [0.2, 0.2]}, chance=0.25)
    sep = separation(df)
    assert not bool(sep.loc[0, "all_above_chance"])
    text = separation_markdown(sep)
    assert "| t | a | b | 0.700 | 0.000 | yes | no | 2 |" in text


def test_a_sweep_over_null_and_a_value_is_never_pooled():
    """`bridge.max_num_frames=null,4`: the unset arm is a variant of its own (pandas 3 keeps NaN through astype)."""
    from experiments.analysis.tables import summarize, varying_config_keys

    df = _runs({("flamingo", "video_motion"): [0.48, 0.43, 0.43, 1.0, 1.0, 1.0]})
    df["cfg.bridge.max_num_frames"] = [None, None, None, 4.0, 4.0, 4.0]
    assert varying_config_keys(df) == ["cfg.bridge.max_num_frames"]
    table = summarize(df)
    assert len(table) == 2 and sorted(table["seeds"]) == [3, 3]
    from experiments.analysis.tables import to_markdown

    assert "| null |" in to_markdown(table) and "| 4.0 |" in to_markdown(table)
