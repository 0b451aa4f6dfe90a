"""The command line beyond its notebook: recipe files (listed, printed, checked, and overridden by the flags typed), and a
fine-tuning run under `torchrun` with two processes that writes one set of outputs."""
import inspect, json, os, subprocess, sys
from pathlib import Path

import pytest
from fastcore.script import anno_parser

from unilearn import cli

BIN = Path(sys.executable).parent


def test_recipes_are_listed_and_printed():
    r = subprocess.run([str(BIN / 'unilearn'), 'recipes'], capture_output=True, text=True, timeout=120)
    assert r.returncode == 0, r.stderr
    names = [l.split()[0] for l in r.stdout.splitlines()[:-2] if l.strip()]
    assert names == sorted(p.stem for p in cli.recipe_dir().glob('*.toml')) and len(names) >= 25
    r = subprocess.run([str(BIN / 'unilearn'), 'recipes', 'finetune_mafw'], capture_output=True, text=True, timeout=120)
    assert r.returncode == 0 and 'mafw_uar = 43.72' in r.stdout
    assert r.stdout.rstrip().endswith('run: unilearn finetune --recipe finetune_mafw --mafw PATH --affectnet PATH')


def test_every_experiment_of_the_paper_has_a_valid_recipe():
    names = cli.list_recipes()
    for n in ['pretrain', 'finetune_dfew', 'finetune_ferv39k', 'finetune_mafw', 'table2_1_no_pretraining', 'table2_2_image_only',
              'table2_3_video_only', 'table3_6_vit', 'table3_7_vit_mtl', 'table3_9_vit_moe', 'table4_sfer_only', 'table4_dfer_only',
              'table4_joint_sfer_epoch', 'table5_baseline_videomae', 'table5_moae_early', 'fig3a_experts_2', 'fig3b_sfer_25']:
        assert n in names, n
    for n in names:
        r = cli.load_recipe(n)                           # keys and types checked against the commands' options
        assert r['title'] and all(isinstance(v, float) for v in r['published'].values()), n
        assert set(r['inputs']) == {k for k in r if k in cli.RECIPE_COMMANDS}, n
    assert cli.load_recipe('finetune_ferv39k')['finetune']['stride'] == 1       # FERV39K's published stride
    assert cli.load_recipe('table3_6_vit')['inputs']['finetune'] == ['ferv39k']  # the DFER-only ViT baseline: clips alone


def test_flags_typed_beat_the_recipe(tmp_path):
    "A flag typed on the command line wins even when its value equals the default; the recipe fills the rest."
    recipe = tmp_path / 'r.toml'
    recipe.write_text('[finetune]\nepochs = 3\nwarmup = 1\nkind = "vit_mtl"\n')
    argv = ['--dfew', 'x', '--recipe', str(recipe), '--epochs', '100']
    p = anno_parser(cli.finetune)
    given = cli._given(p, argv)
    assert given == {'dfew', 'recipe', 'epochs'}
    defaults = {k: q.default for k, q in inspect.signature(cli.finetune).parameters.items()}
    cli._GIVEN = given
    try: v = cli.resolve_args(cli.finetune, dict(defaults, dfew='x', recipe=str(recipe), epochs=100))
    finally: cli._GIVEN = None
    assert (v['epochs'], v['warmup'], v['kind'], v['recipe']) == (100, 1, 'vit_mtl', str(recipe))


@pytest.fixture(scope='module')
def bench(tmp_path_factory):
    from unilearn.synth import ensure_benchmark
    return ensure_benchmark(tmp_path_factory.mktemp('bench') / 'data', 'tiny', seed=0, log=lambda *a: None)


def test_finetune_under_torchrun_writes_one_run(bench, tmp_path):
    "Two processes (gloo on the CPU) train one model: one set of checkpoints and predictions, one line per epoch, its recipe recorded."
    recipe = tmp_path / 'tiny.toml'
    recipe.write_text('title = "tiny"\n[finetune]\nembed_dim = 32\ndepth = 2\nheads = 2\nimg_size = 32\nframes = 4\nstride = 2\npatch = 8\n'
                      'epochs = 2\nwarmup = 0\nvideo_bs = 4\nworkers = 0\nprecision = "fp32"\nmixup = 0.0\ncutmix = 0.0\n')
    out = tmp_path / 'run'
    cmd = [str(BIN / 'torchrun'), '--nproc_per_node', '2', '-m', 'unilearn.cli', 'finetune', '--recipe', str(recipe),
           '--dfew', str(bench / 'DFEW'), '--fold', '3', '--out', str(out), '--device', 'cpu', '--checkpoint_dir', str(tmp_path / 'ck')]
    r = subprocess.run(cmd, capture_output=True, text=True, timeout=600, env={**os.environ, 'OMP_NUM_THREADS': '1'})
    assert r.returncode == 0, r.stdout[-3000:] + r.stderr[-3000:]
    run = out / 'fold_3'
    assert {'best.safetensors', 'last.safetensors', 'predictions.csv', 'config.json'} <= {p.name for p in run.iterdir()}
    assert sorted(p.name for p in (tmp_path / 'ck' / 'fold_3').glob('epoch_*.pth')) == ['epoch_0001.pth', 'epoch_0002.pth']
    cfg = json.loads((run / 'config.json').read_text())
    assert cfg['world_size'] == 2 and cfg['recipe'] == str(recipe) and cfg['embed_dim'] == 32 and cfg['fold'] == '3'
    assert r.stdout.count('epoch 1/2 ') == 1 and r.stdout.count('epoch 2/2 ') == 1   # rank 0 speaks for the run
