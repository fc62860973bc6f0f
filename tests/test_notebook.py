"""The exploration notebook (notebooks/explore.ipynb): it runs top to bottom on a trained run.

Executed with nbclient on the session's shared Fashion-MNIST run (`fashion_run`:
zfnet_tiny, one checkpoint), its parameters set through the environment
variables its first cell reads. The committed copy is checked for the outputs
of a real run.
"""

import os

import nbformat
from nbclient import NotebookClient

from conftest import REPO
from fashion_run import STEPS as FASHION_RUN_STEPS
from zf_jax import arch as arch_lib

NOTEBOOK = os.path.join(REPO, "notebooks", "explore.ipynb")
# One PNG per figure: predictions, rectification modes, Fig. 7, Fig. 2 (two layers),
# layer-1 filters, top 9 at two checkpoints.
FIGURES = 7


def _outputs(nb, kind: str) -> list:
  return [o for c in nb.cells if c.cell_type == "code" for o in c.get("outputs", [])
          if o.output_type == kind]


def _pngs(nb) -> list:
  return [o for c in nb.cells if c.cell_type == "code" for o in c.get("outputs", [])
          if "image/png" in o.get("data", {})]


def _text(nb) -> str:
  return "".join(o.get("text", "") for o in _outputs(nb, "stream"))


def _files(folder) -> dict[str, tuple[int, int]]:
  return {os.path.relpath(os.path.join(d, f), folder): (os.stat(os.path.join(d, f)).st_size,
                                                        os.stat(os.path.join(d, f)).st_mtime_ns)
          for d, _, names in os.walk(folder) for f in names}


def test_notebook_runs_on_a_trained_run_and_leaves_it_untouched(fashion_run, monkeypatch):
  workdir, _ = fashion_run
  before = _files(workdir)
  for name, value in {"ZF_JAX_RUN": workdir, "ZF_JAX_IMAGES": "4", "ZF_JAX_MAX_EXAMPLES": "256",
                      "JAX_PLATFORMS": "cpu", "TF_CPP_MIN_LOG_LEVEL": "2"}.items():
    monkeypatch.setenv(name, value)  # The kernel inherits them (and conftest's XLA_FLAGS).
  nb = nbformat.read(NOTEBOOK, as_version=4)
  NotebookClient(nb, timeout=300, kernel_name="python3",
                 resources={"metadata": {"path": os.path.dirname(NOTEBOOK)}}).execute()

  assert not _outputs(nb, "error")
  assert len(_pngs(nb)) == FIGURES
  text = _text(nb)
  last = FASHION_RUN_STEPS
  assert f"at step {last} of {os.path.abspath(workdir)}; checkpoints [{last}]" in text
  assert f"compared below: step 0 and step {last}" in text  # One checkpoint: the initialisation.
  # The switches summary has a line for every pooled layer of the run's arch, with its window.
  arch = arch_lib.get("zfnet_tiny")
  summary = {line.split()[0]: line for line in text.splitlines() if line[:1].isdigit()}
  for c in arch.convs:
    assert ("windows, stride" in summary[str(c.layer)]) == (c.pool is not None), summary
  assert text.count("Switches(") == sum(c.pool is not None for c in arch.convs)  # treescope
  assert _files(workdir) == before  # The report's figure functions wrote elsewhere.


def test_committed_notebook_holds_the_outputs_of_a_run():
  nb = nbformat.read(NOTEBOOK, as_version=4)
  code = [c for c in nb.cells if c.cell_type == "code"]
  assert all(c.execution_count for c in code), "run it top to bottom before committing"
  assert not _outputs(nb, "error")
  assert len(_pngs(nb)) == FIGURES
  assert os.path.getsize(NOTEBOOK) < 3_000_000
