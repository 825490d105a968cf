"""The benchmark scripts run end to end at tiny sizes and print a table and a consistent ratio.

Both scripts run in this process (`runpy`, as `__main__`), so jax, torch and transformers are
imported once for the two of them.
"""

import re
import runpy
import sys
from pathlib import Path

BENCHMARKS = Path(__file__).resolve().parents[1] / "benchmarks"
NUMBER = r"\d+(?:\.\d+)?"
SECONDS_STEP = 1e-3  # the tables print seconds with 3 decimals


def run_script(name: str, args: list[str], monkeypatch, capsys) -> str:
    monkeypatch.syspath_prepend(str(BENCHMARKS))
    monkeypatch.setattr(sys, "argv", [name, *args])
    runpy.run_path(str(BENCHMARKS / name), run_name="__main__")
    return capsys.readouterr().out


def table_row(output: str, label: str) -> list[float]:
    """The numbers of the table row that starts with `label`."""
    rows = [line for line in output.splitlines() if line.startswith(label)]
    assert len(rows) == 1, f"expected one row {label!r} in:\n{output}"
    return [float(value) for value in re.findall(NUMBER, rows[0][len(label):])]


def assert_quotient(printed: float, step: float, numerator: float, seconds: float, numerator_step: float = 0.0):
    """printed (rounded to `step`) is numerator / seconds, both read back rounded (seconds to
    SECONDS_STEP, numerator to numerator_step)."""
    low = (numerator - numerator_step / 2) / (seconds + SECONDS_STEP / 2)
    high = (numerator + numerator_step / 2) / max(seconds - SECONDS_STEP / 2, SECONDS_STEP / 4)
    assert low - step / 2 <= printed <= high + step / 2, (printed, numerator, seconds)


def speed_up(output: str) -> float:
    match = re.search(rf"^speed-up: ({NUMBER})x", output, re.MULTILINE)
    assert match, f"no ratio line in:\n{output}"
    return float(match.group(1))


def test_rollout_benchmark_prints_rollouts_per_second_and_the_ratio(monkeypatch, capsys):
    prompts, group = 1, 2
    output = run_script("rollout.py", ["--prompts", str(prompts), "--group", str(group), "--view", "112x84",
                                       "--original", "224x168", "--crop", "56x56", "--free-tokens", "2",
                                       "--repeats", "1"], monkeypatch, capsys)
    header = next(line for line in output.splitlines() if line.startswith("implementation"))
    assert header.split()[1:] == ["seconds", "rollouts/s", "tokens", "tokens/s"]
    ours = table_row(output, "pixel_jax engine")
    host = table_row(output, "host loop")
    for seconds, rollouts_per_s, tokens, tokens_per_s in (ours, host):
        assert_quotient(rollouts_per_s, 0.01, prompts * group, seconds)
        assert_quotient(tokens_per_s, 1, tokens, seconds)
    assert ours[2] == host[2] > 0  # both sides wrote the same number of response tokens
    assert_quotient(speed_up(output), 0.01, host[0], ours[0], numerator_step=SECONDS_STEP)


def test_sampler_benchmark_prints_tokens_per_second_and_the_ratio(monkeypatch, capsys):
    batch, new_tokens = 2, 32  # enough steps that the decode time stands out of the prompt's
    output = run_script("sampler.py", ["--batch", str(batch), "--prompt-len", "8", "--new-tokens", str(new_tokens),
                                       "--repeats", "3"], monkeypatch, capsys)
    header = next(line for line in output.splitlines() if line.startswith("implementation"))
    assert header.split()[1:] == ["seconds", "tokens/s"]
    ours = table_row(output, "pixel_jax sampler")
    reference = table_row(output, "transformers generate")
    for seconds, tokens_per_s in (ours, reference):
        assert_quotient(tokens_per_s, 1, batch * new_tokens, seconds)
    assert_quotient(speed_up(output), 0.01, reference[0], ours[0], numerator_step=SECONDS_STEP)
    # the decode step's bytes / its time, against the memory read rate
    line = re.search(rf"^decode step: ({NUMBER}) ms, reading ({NUMBER}) MB of weights \+ ({NUMBER}) MB of KV cache = "
                     rf"({NUMBER}) GB/s; .*: ({NUMBER}) GB/s \(the step reaches ({NUMBER})x of it\)$", output, re.MULTILINE)
    assert line, f"no memory line in:\n{output}"
    step_ms, weights_mb, cache_mb, achieved, rate, share = map(float, line.groups())
    megabytes = weights_mb + cache_mb  # MB/ms = GB/s; every number is read back rounded
    assert (megabytes - 0.1) / (step_ms + 0.005) - 0.05 <= achieved <= (megabytes + 0.1) / (step_ms - 0.005) + 0.05
    assert (achieved - 0.05) / (rate + 0.05) - 0.005 <= share <= (achieved + 0.05) / (rate - 0.05) + 0.005
    d, kv, mlp, vocab = 256, 64, 1024, 4096  # the benchmark's model: 4 layers, 8 heads and 2 kv heads of 32
    layer = d * d + d + 2 * (d * kv + kv) + d * d + 3 * d * mlp + 2 * d  # q, k, v (with biases), o, MLP, 2 norms
    assert weights_mb == round((4 * layer + d + d * vocab) * 4 / 1e6, 1)  # + final norm, LM head (not the embedding)
    assert cache_mb == round(4 * 2 * batch * kv * (8 + new_tokens) * 4 / 1e6, 1)
