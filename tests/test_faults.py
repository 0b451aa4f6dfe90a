"""Bad input and faults as one table: every `tests/faults_*.py` module defines `CASES`, a list of
`(name, input, outcome)`; `input(tmp_path)` runs the case, `outcome` is `('error', fragment)` (a one-line message
holding `fragment`) or `'handled'` (the case asserts what handling means). One parametrized test runs them all."""
import importlib.util
from pathlib import Path

import pytest

HERE = Path(__file__).parent


def fault_tables() -> dict:
    "Module name -> its CASES, for every tests/faults_*.py."
    out = {}
    for f in sorted(HERE.glob('faults_*.py')):
        spec = importlib.util.spec_from_file_location(f.stem, f)
        mod = importlib.util.module_from_spec(spec)
        spec.loader.exec_module(mod)
        out[f.stem] = list(mod.CASES)
    return out


def counts(tables:dict) -> dict:
    "Cases, expected clear errors, handled, and silent outcomes (neither: must be 0) over all tables."
    outs = [c[2] for cases in tables.values() for c in cases]
    err = sum(isinstance(o, tuple) and o[0] == 'error' for o in outs)
    handled = sum(o == 'handled' for o in outs)
    return dict(cases=len(outs), errors=err, handled=handled, silent=len(outs) - err - handled)


TABLES = fault_tables()
CASES = [(m, *c) for m, cases in TABLES.items() for c in cases]


def test_every_case_has_an_outcome():
    assert counts(TABLES)['silent'] == 0
    names = [(m, n) for m, n, *_ in CASES]
    assert len(names) == len(set(names)), 'case names are unique within a table'


@pytest.mark.parametrize('table,name,run,outcome', CASES, ids=[f'{m[len("faults_"):]}: {n}' for m, n, *_ in CASES])
def test_fault(table, name, run, outcome, tmp_path):
    if outcome == 'handled':
        run(tmp_path)
        return
    kind, fragment = outcome
    assert kind == 'error', f'unknown outcome {outcome!r}'
    with pytest.raises(Exception) as e: run(tmp_path)
    msg = str(e.value)
    assert fragment in msg, f'expected {fragment!r} in the message, got: {msg}'
    assert '\n' not in msg.strip(), f'the message is not one line: {msg!r}'


SCRIPT = '''
import sys, torch
sys.path.insert(0, {tests!r})
from pathlib import Path
from fastai.callback.core import Callback
from faults_train import tiny
from unilearn.joint import fit_joint

class Steps(Callback):
    order = 99
    def after_batch(self):
        if self.training: print('step', self.epoch, self.iter, flush=True)

out = Path(sys.argv[1])
learn = tiny(out, resume='last' if sys.argv[2] == 'resume' else None, cbs=[Steps()])
fit_joint(learn, epochs=4, warmup_epochs=1)
torch.save(learn.model.state_dict(), out / 'final.pt')
'''


@pytest.mark.parametrize('sig', ['SIGINT', 'SIGKILL'])
def test_killed_finetune_subprocess_resumes_exactly(sig, tmp_path):
    "A real fine-tuning process stopped at a random step (Ctrl-C or kill -9), then resumed, ends with the weights of a straight run."
    import os, random, signal, subprocess, sys, torch
    from faults_train import tiny
    from unilearn.joint import fit_joint
    script = tmp_path / 'run.py'
    script.write_text(SCRIPT.format(tests=str(HERE)))
    k = random.randrange(1, 4 * 9 - 2)  # 4 epochs of 9 training steps
    env = {**os.environ, 'PYTHONWARNINGS': 'ignore'}
    p = subprocess.Popen([sys.executable, str(script), str(tmp_path), 'new'], stdout=subprocess.PIPE, text=True, env=env)
    for n, line in enumerate(p.stdout, 1):
        if n == k: p.send_signal(getattr(signal, sig)); break
    p.communicate(timeout=300)
    assert p.returncode != 0, f'the run ended before the {sig} at step {k}'
    r = subprocess.run([sys.executable, str(script), str(tmp_path), 'resume'], capture_output=True, text=True, env=env, timeout=300)
    assert r.returncode == 0, r.stderr[-2000:]
    straight = tiny(tmp_path / 'straight', epochs=4).model.state_dict()
    resumed = torch.load(tmp_path / 'final.pt', weights_only=True)
    assert all(torch.equal(straight[k_], resumed[k_]) for k_ in straight), f'weights differ after {sig} at step {k}'
    assert not list((tmp_path / 'run').glob('.*.tmp')) and not (tmp_path / 'run' / 'run.lock').exists()
