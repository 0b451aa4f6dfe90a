"How the package is laid out: one notebook per module, numbered in dependency order, no import cycle."
import ast, json, re, subprocess, sys
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
PKG, NBS = ROOT / 'unilearn', ROOT / 'nbs'


def notebook_of_module() -> dict:
    "module name -> the notebook that exports it (its `#| default_exp`)."
    out = {}
    for nb in sorted(NBS.glob('*.ipynb')):
        for c in json.loads(nb.read_text())['cells']:
            m = re.search(r'^#\|\s*default_exp\s+(\S+)', ''.join(c['source']), re.M)
            if m: out[m.group(1)] = nb.name; break
    return out


def top_level_imports(path: Path, modules) -> set:
    "The package modules `path` imports when it is imported (module-level statements only, not lazy imports)."
    deps = set()
    for n in ast.parse(path.read_text()).body:
        if isinstance(n, ast.ImportFrom):
            name = n.module or ''
            if n.level == 0 and not name.startswith('unilearn'): continue
            name = name.removeprefix('unilearn').lstrip('.')
            if name: deps.add(name.split('.')[0])
            else: deps |= {a.name for a in n.names if a.name in modules} | ({'__init__'} if n.level else set())
        elif isinstance(n, ast.Import):
            deps |= {a.name.split('.')[1] for a in n.names if a.name.startswith('unilearn.')}
    return deps & set(modules) - {path.stem}


def graph() -> dict:
    mods = notebook_of_module()
    return {m: top_level_imports(PKG / f'{m}.py', mods) for m in mods}


def test_every_module_has_one_notebook():
    mods = notebook_of_module()
    generated = {p.stem for p in PKG.glob('*.py')} - {'_modidx'}
    assert set(mods) == generated, set(mods) ^ generated
    assert len(set(mods.values())) == len(mods)


def test_no_import_cycle():
    g, state = graph(), {}
    def visit(m, path):
        assert state.get(m) != 'open', f"import cycle: {' -> '.join(path + [m])}"
        if state.get(m) == 'done': return
        state[m] = 'open'
        for d in sorted(g[m]): visit(d, path + [m])
        state[m] = 'done'
    for m in g: visit(m, [])


def test_notebooks_numbered_in_dependency_order():
    "A notebook's module imports only modules of notebooks that sort before it, so the notebooks read in order."
    nb, g = notebook_of_module(), graph()
    late = [f"{nb[m]} imports {d} from {nb[d]}" for m in g for d in g[m] if nb[d] >= nb[m]]
    assert not late, late


def test_graph_sees_relative_imports():
    "The checks above would pass vacuously if imports were not read: `moae` is built on `vit`."
    assert 'vit' in graph()['moae']


def test_moae_loads_no_checkpoint_code():
    "Checkpoint reading lives in `unilearn.interop` alone; importing the MoAE layer does not load it."
    code = "import sys, unilearn.moae; print(sorted(m for m in sys.modules if m.startswith('unilearn.')))"
    r = subprocess.run([sys.executable, '-c', code], capture_output=True, text=True, check=True, cwd=ROOT)
    loaded = eval(r.stdout)
    assert 'unilearn.moae' in loaded and 'unilearn.interop' not in loaded, loaded
