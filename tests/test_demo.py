"""The demo path end to end through the installed console script, on the tiny preset: benchmark -> MAE pre-training ->
joint fine-tuning with MoAE -> multi-view evaluation -> report.html + metrics.json; `--help` of every subcommand, and the
dispatcher's light start (no torch before a command runs)."""
import importlib.util, json, subprocess, sys
from pathlib import Path

import pytest

BIN = Path(sys.executable).parent
COMMANDS = ('demo', 'ablate', 'pretrain', 'finetune', 'evaluate', 'pool', 'analyze', 'recipes', 'predict')

@pytest.mark.parametrize('cmd', COMMANDS)
def test_help_lists_every_option(cmd):
    import inspect
    from unilearn import cli
    if not importlib.util.find_spec(cli.COMMANDS[cmd].split(':')[0]): pytest.skip(f"{cli.COMMANDS[cmd]} is not in this build")
    r = subprocess.run([str(BIN / 'unilearn'), cmd, '--help'], capture_output=True, text=True)
    assert r.returncode == 0, r.stderr
    for name, p in inspect.signature(cli.command(cmd)).parameters.items():
        positional = p.default is inspect.Parameter.empty or 'opt=False' in str(p.annotation)
        flag = name if positional else f'--{name}'
        assert flag in r.stdout, f"`unilearn {cmd} --help` does not mention {flag}"

def test_unknown_command_fails_with_a_sentence():
    r = subprocess.run([str(BIN / 'unilearn'), 'nope'], capture_output=True, text=True)
    assert r.returncode != 0 and 'unknown command' in r.stderr

@pytest.mark.parametrize('cmd', [[str(BIN / 'unilearn')], [sys.executable, '-m', 'unilearn.cli']])
def test_no_arguments_print_the_help(cmd):
    r = subprocess.run(cmd, capture_output=True, text=True, timeout=60)
    assert r.returncode == 0 and r.stdout.startswith('usage: unilearn {') and 'finetune' in r.stdout, r.stdout + r.stderr

def test_the_dispatcher_imports_no_torch():
    "`unilearn --help` answers fast because unilearn.cli loads torch, timm and fastai only inside the commands."
    code = "import sys, unilearn.cli; print(sorted(m for m in ('torch', 'timm', 'fastai', 'pandas') if m in sys.modules))"
    r = subprocess.run([sys.executable, '-c', code], capture_output=True, text=True, timeout=60)
    assert r.stdout.strip() == '[]', r.stdout + r.stderr

@pytest.fixture(scope='module')
def tiny_demo(tmp_path_factory):
    base = tmp_path_factory.mktemp('demo')
    r = subprocess.run([str(BIN / 'unilearn'), 'demo', '--preset', 'tiny', '--out', str(base / 'out'), '--data_dir', str(base / 'data'),
                        '--quiet', '--threads', '2'], capture_output=True, text=True, timeout=900)
    assert r.returncode == 0, r.stdout[-3000:] + r.stderr[-3000:]
    return base, r.stdout

def test_demo_writes_report_and_metrics(tiny_demo):
    base, stdout = tiny_demo
    out = base / 'out'
    for f in ('report.html', 'metrics.json', 'predictions.csv', 'predictions.json', 'features.npz', 'model.safetensors'):
        assert (out / f).is_file(), f
    html = (out / 'report.html').read_text()
    for title in ('training curves', 'MAE reconstructions', 'expert gates', 'per-class recall', 'confusion'):
        assert title in html, title
    assert html.count('<script') >= 7                       # the figures are there, with plotly.js inline
    assert 'MAE pre-training' in stdout and 'joint fine-tuning' in stdout   # progress was visible
    assert f"unilearn predict VIDEO_OR_IMAGE --model {out / 'model.safetensors'}" in stdout  # the demo hands over its model

def test_metrics_structure_and_above_chance(tiny_demo):
    m = json.loads((tiny_demo[0] / 'out' / 'metrics.json').read_text())
    for head, n in (('video', 28), ('image', 140)):
        s = m[head]
        assert set(s) >= {'uar', 'war', 'recall', 'n'}
        assert s['n'] == n and len(s['recall']) == 7
        assert 0 <= s['uar'] <= 1 and 0 <= s['war'] <= 1
        for k in ('uar', 'war'):   # 95% bootstrap interval over the test items, around the figure
            lo, hi = s[f'{k}_ci']
            assert 0 <= lo <= s[k] <= hi <= 1 and hi > lo, (head, k, s)
    assert m['chance_uar'] == pytest.approx(1 / 7)
    assert set(m['timings']['wall']) == {'benchmark', 'MAE pre-training (images + clips)', 'joint fine-tuning with MoAE',
                                         'multi-view evaluation', 'report'}
    assert m['params']['train'] > m['params']['test'] > 0      # MoAE: experts not chosen at test time
    # above chance on average over the two heads. The tiny budget (100 training clips, 504 images, 10 pre-training + 25
    # fine-tuning epochs) measured on the development machine: video / image UAR 0.267 / 0.214 with 2 threads; with one
    # thread and seeds 0, 1, 2: 0.219 / 0.228, 0.214 / 0.205, 0.248 / 0.254. With 2 pre-training epochs the same check
    # sat at chance, so this is the pre-training at work, not luck.
    uar = {k: m[k]['uar'] for k in ('video', 'image')}
    assert (uar['video'] + uar['image']) / 2 > 1 / 7 + .02, uar
