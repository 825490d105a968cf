"""The notebooks of notebooks/ execute top to bottom without an error, as a user runs them.

Each runs in a fresh python3 kernel (nbclient) started in the notebooks/ folder, as Jupyter
starts it. The kernel sees one CPU device, like a CPU Colab runtime: the 8 fake devices that
tests/conftest.py sets for the test process are taken out of its environment. The notebooks are
stored without outputs: a stored output would hide whether the code still produces it.
"""

import os
import pathlib
import re

import nbclient
import nbformat
import pytest

NOTEBOOKS = pathlib.Path(__file__).resolve().parents[1] / "notebooks"
NOTEBOOK_NAMES = ("quickstart.ipynb", "curiosity_reward.ipynb", "toy_training.ipynb")
CELL_TIMEOUT_S = 600


def kernel_env() -> dict[str, str]:
    """This process's environment without the fake device count of tests/conftest.py."""
    env = dict(os.environ)
    flags = [flag for flag in env.pop("XLA_FLAGS", "").split()
             if not flag.startswith("--xla_force_host_platform_device_count")]
    if flags:
        env["XLA_FLAGS"] = " ".join(flags)
    env["JAX_PLATFORMS"] = "cpu"
    return env


def execute(name: str) -> nbformat.NotebookNode:
    """Runs notebooks/<name> in a new kernel; raises CellExecutionError on the first failing cell."""
    notebook = nbformat.read(NOTEBOOKS / name, as_version=4)
    client = nbclient.NotebookClient(notebook, kernel_name="python3", timeout=CELL_TIMEOUT_S,
                                     resources={"metadata": {"path": str(NOTEBOOKS)}})
    client.execute(env=kernel_env())
    return notebook


def outputs_of(notebook: nbformat.NotebookNode, kind: str) -> list:
    """Every output of type `kind` ("display_data", "stream", ...) of the executed code cells."""
    return [output for cell in notebook.cells if cell.cell_type == "code"
            for output in cell.outputs if output.output_type == kind]


def images_shown(notebook: nbformat.NotebookNode) -> int:
    return sum("image/png" in output.data for output in outputs_of(notebook, "display_data"))


def printed(notebook: nbformat.NotebookNode) -> str:
    return "".join(output.text for output in outputs_of(notebook, "stream") if output.name == "stdout")


@pytest.mark.parametrize("name", NOTEBOOK_NAMES)
def test_notebook_is_stored_without_outputs_and_starts_with_the_colab_install(name):
    notebook = nbformat.read(NOTEBOOKS / name, as_version=4)
    nbformat.validate(notebook)
    code = [cell for cell in notebook.cells if cell.cell_type == "code"]
    assert all(not cell.outputs and cell.execution_count is None for cell in code)
    assert '"google.colab" in sys.modules' in code[0].source
    assert 'pip install -q -e ".[dev]"' in code[0].source


@pytest.mark.slow
def test_quickstart_shows_the_zoom_of_a_rollout():
    notebook = execute("quickstart.ipynb")
    text = printed(notebook)
    assert images_shown(notebook) == 2  # the question's view and original; the zoom and its crop
    assert "crop_image(box=" in text and "→ image 2, region" in text  # the replayed call succeeded
    assert "'reward': 1.0" in text  # the script's answer is right


def test_curiosity_reward_plots_both_variants():
    notebook = execute("curiosity_reward.ipynb")
    text = printed(notebook)
    assert images_shown(notebook) == 3  # bonus against RaPR, penalty against n_vo, α by dual ascent
    # one operating response in a group of 8, H = 0.3: 0.5·(0.3 − 1/8) and (0.3 − 1/8)/2·0.25·8
    assert "paper: RaPR 0.125 → 0.0875" in text
    assert "official_code: RaPR 0.125 → 0.1750" in text
    assert "penalty: [ 0.    0.   -0.05 -0.1  -0.15 -0.2  -0.25 -0.3 ]" in text  # 0.05·min(1 − n_vo, 0)


@pytest.mark.slow
def test_toy_training_runs_sft_then_grpo_steps_and_plots_them():
    notebook = execute("toy_training.ipynb")
    text = printed(notebook)
    sft_losses = [float(loss) for loss in re.findall(r"step \d+: loss ([\d.]+) on", text)]
    assert len(sft_losses) == 5 and sft_losses[-1] < sft_losses[0]  # five SFT steps of descent
    assert len(re.findall(r"step \d+: r [\d.]+ +bonus", text)) == 3  # three GRPO steps
    assert images_shown(notebook) == 3  # SFT loss, GRPO metrics, a sampled rollout
