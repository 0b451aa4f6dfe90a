"""Every notebook in nbs/ is a test (run by nbdev's own runner, `slow` cells skipped), and the
notebooks must be in sync with the exported modules, clean, and the source of README.md."""
import filecmp, json, os, shutil, subprocess, sys
from pathlib import Path

import pytest
from nbdev.test import test_nb as run_notebook

from conftest import ROOT, NBS, SPLITS

BIN = Path(sys.executable).parent
NOTEBOOKS = sorted(p for p in NBS.glob('*.ipynb') if not p.name.startswith(('_', '.')))

@pytest.mark.parametrize('nb', NOTEBOOKS, ids=[p.stem for p in NOTEBOOKS])
def test_notebook_runs(nb, monkeypatch):
    # notebooks check the datasets' real split files where UNILEARN_SPLITS names them
    if SPLITS.exists(): monkeypatch.setenv('UNILEARN_SPLITS', str(SPLITS))
    ok, secs = run_notebook(nb, skip_flags=['slow'], showerr=True)
    assert ok, f"{nb.name} failed (see the traceback above)"

def test_modules_in_sync_with_notebooks(tmp_path):
    "nbdev_export on a copy of the project must reproduce unilearn/ exactly."
    for f in ('settings.ini', 'setup.py', 'README.md'): shutil.copy(ROOT / f, tmp_path / f)
    shutil.copytree(NBS, tmp_path / 'nbs')
    shutil.copytree(ROOT / 'unilearn', tmp_path / 'unilearn', ignore=shutil.ignore_patterns('__pycache__'))
    for p in (tmp_path / 'unilearn').rglob('*.py'): p.unlink()   # export must recreate every module from scratch
    env = {k: v for k, v in os.environ.items() if k != 'IN_TEST'}  # nbdev_export does nothing when IN_TEST is set
    subprocess.run([str(BIN / 'nbdev_export')], cwd=tmp_path, check=True, env=env)
    ours = sorted(p.relative_to(ROOT / 'unilearn') for p in (ROOT / 'unilearn').rglob('*.py'))
    theirs = sorted(p.relative_to(tmp_path / 'unilearn') for p in (tmp_path / 'unilearn').rglob('*.py'))
    assert ours == theirs, f"modules differ from what the notebooks export: {set(ours) ^ set(theirs)}"
    stale = [str(p) for p in ours if (ROOT / 'unilearn' / p).read_text() != (tmp_path / 'unilearn' / p).read_text()]
    assert not stale, f"run nbdev_export: these modules are out of sync with their notebooks: {stale}"

@pytest.mark.parametrize('nb', NOTEBOOKS, ids=[p.stem for p in NOTEBOOKS])
def test_notebook_is_clean(nb):
    "nbdev_clean must leave each notebook unchanged."
    cleaned = subprocess.run([str(BIN / 'nbdev_clean'), '--fname', str(nb), '--disp'], cwd=ROOT,
                             capture_output=True, text=True, check=True).stdout
    assert cleaned.strip() == nb.read_text().strip(), f"run nbdev_clean: {nb.name} is not clean"

def readme_from_index() -> str:
    "README.md as generated from nbs/index.ipynb (quarto is not available, so nbconvert renders it)."
    return subprocess.run([str(BIN / 'jupyter'), 'nbconvert', '--to', 'markdown', '--stdout', str(NBS / 'index.ipynb')],
                          cwd=ROOT, capture_output=True, text=True, check=True).stdout

def test_readme_in_sync_with_index():
    assert (ROOT / 'README.md').read_text() == readme_from_index(), "run `make export` (README.md is generated from nbs/index.ipynb)"

def test_readme_starts_with_the_two_commands():
    lines = [l for l in (ROOT / 'README.md').read_text().splitlines() if l.strip()]
    assert lines[1:5] == ['```bash', 'make demo', 'make test', '```'], lines[:6]

def test_jupyter_save_leaves_notebook_clean(tmp_path, monkeypatch):
    "`make lab` runs nbdev's pre-save hook: a notebook saved through Jupyter's contents manager is written clean."
    from jupyter_server.services.contents.filemanager import FileContentsManager
    nb = json.loads((NBS / 'index.ipynb').read_text())
    nb['metadata'] = {'kernelspec': {'name': 'python3', 'display_name': 'Python 3'}, 'language_info': {'name': 'python'}}
    nb['cells'][0]['metadata'] = {'collapsed': False}
    (tmp_path / 'settings.ini').write_text((ROOT / 'settings.ini').read_text())
    monkeypatch.chdir(tmp_path)   # Jupyter passes paths relative to its root; nbdev finds settings.ini from there
    cm = FileContentsManager(root_dir=str(tmp_path), pre_save_hook='nbdev.clean.clean_jupyter')
    shutil.copy(NBS / 'index.ipynb', tmp_path / 'saved.ipynb')   # JupyterLab saves over the notebook it opened
    cm.save({'type': 'notebook', 'format': 'json', 'content': nb}, 'saved.ipynb')
    saved = (tmp_path / 'saved.ipynb').read_text()
    cleaned = subprocess.run([str(BIN / 'nbdev_clean'), '--fname', 'saved.ipynb', '--disp'], cwd=tmp_path,
                             capture_output=True, text=True, check=True).stdout
    assert 'language_info' not in saved and '"collapsed"' not in saved, saved[:300]
    assert cleaned.strip() == saved.strip()
