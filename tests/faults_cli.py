"""Fault cases of the command line (`unilearn.cli`): conflicting or impossible options, bad recipes, checkpoints of the
wrong kind, runs that would overwrite another. Each case is `(name, input, outcome)`: `input(tmp_path)` runs it, the
outcome is `('error', fragment of the one-line message)` or `'handled'` (then `input` asserts what handling means).
Errors are what `unilearn CMD ...` prints: `main` exits with the message, here raised again as an exception."""
import subprocess, sys
from pathlib import Path

from unilearn.cli import main

BIN = Path(sys.executable).parent


class CLIExit(Exception): "The one-line message `unilearn` exited with."


def cli(*argv):
    "Run `unilearn *argv` in this process; its exit message becomes a `CLIExit`."
    try: main([str(a) for a in argv])
    except SystemExit as e:
        if e.code not in (None, 0): raise CLIExit(str(e.code)) from None


def finetune(tmp, *extra): return cli('finetune', '--dfew', tmp / 'DFEW', '--out', tmp / 'run', *extra)


def recipe(tmp, text:str) -> Path:
    p = tmp / 'recipe.toml'
    p.write_text(text)
    return p


def mae_checkpoint(tmp) -> Path:
    from unilearn.mae import create_mae
    from unilearn.interop import save_checkpoint
    mae = create_mae(dict(embed_dim=16, depth=1, num_heads=1), img_size=16, all_frames=2, patch_size=8, decoder_dim=16, decoder_depth=1)
    return save_checkpoint(mae, tmp / 'mae.safetensors', input=dict(img_size=16, frames=2))


def finished_run(tmp):
    (tmp / 'run' / 'fold_1').mkdir(parents=True)
    (tmp / 'run' / 'fold_1' / 'best.safetensors').write_bytes(b'')  # only its presence matters
    return finetune(tmp)


def help_without_arguments(tmp):
    for cmd in ([str(BIN / 'unilearn')], [sys.executable, '-m', 'unilearn.cli']):
        r = subprocess.run(cmd, capture_output=True, text=True, timeout=120)
        assert r.returncode == 0 and r.stdout.startswith('usage: unilearn {'), (cmd, r.stdout, r.stderr)


CASES = [
    ('two video datasets at once', lambda t: cli('finetune', '--dfew', t, '--mafw', t), ('error', '--dfew and --mafw')),
    ('--fold 6', lambda t: finetune(t, '--fold', '6'), ('error', '--fold 6: DFEW has folds 1 to 5')),
    ('--fold x', lambda t: finetune(t, '--fold', 'x'), ('error', '--fold x')),
    ('--fold all on FERV39K', lambda t: cli('finetune', '--ferv39k', t, '--fold', 'all'), ('error', '--fold all: FERV39K has one')),
    ('--fold on images only', lambda t: cli('finetune', '--affectnet', t, '--fold', '2'), ('error', '--fold 2')),
    ('no dataset', lambda t: cli('finetune', '--out', t), ('error', 'give a video dataset')),
    ('--moae 3,x', lambda t: finetune(t, '--moae', '3,x'), ('error', '--moae 3,x')),
    ('--moae ""', lambda t: finetune(t, '--moae', ''), ('error', '--moae is empty')),
    ('--kind unknown', lambda t: finetune(t, '--kind', 'resnet'), ('error', '--kind resnet')),
    ('--epochs 0', lambda t: finetune(t, '--epochs', '0'), ('error', '--epochs 0')),
    ('pretrain --epochs 0', lambda t: cli('pretrain', '--videos', t, '--epochs', '0'), ('error', '--epochs 0')),
    ('--precision fp16 on the CPU', lambda t: finetune(t, '--precision', 'fp16', '--device', 'cpu'), ('error', '--precision fp16 needs a CUDA')),
    ('--precision fp8', lambda t: finetune(t, '--precision', 'fp8', '--device', 'cpu'), ('error', '--precision fp8')),
    ('--device nonsense', lambda t: finetune(t, '--device', 'gpu0'), ('error', '--device gpu0')),
    ('--resume without --checkpoint_dir', lambda t: finetune(t, '--resume'), ('error', '--resume needs --checkpoint_dir')),
    ('pretrain --resume with no checkpoint', lambda t: cli('pretrain', '--videos', t, '--resume', '--checkpoint_dir', t / 'ck'),
     ('error', '--resume: no epoch_*.pth checkpoint')),
    ('a second run into a finished run folder', finished_run, ('error', 'holds a finished run')),
    ('evaluate an MAE checkpoint', lambda t: cli('evaluate', mae_checkpoint(t), '--dfew', t), ('error', 'is an MAE pre-training checkpoint')),
    ('evaluate --views 0', lambda t: cli('evaluate', t, '--dfew', t, '--views', '0'), ('error', '--views 0')),
    ('evaluate --fold all of one checkpoint', lambda t: cli('evaluate', mae_checkpoint(t), '--dfew', t, '--fold', 'all'),
     ('error', '--fold all needs MODEL to be')),
    ('evaluate a missing checkpoint', lambda t: cli('evaluate', t / 'none.safetensors', '--dfew', t), ('error', 'no such checkpoint file')),
    ('pool an empty folder', lambda t: cli('pool', t), ('error', 'no predictions.csv')),
    ('pool --which middle', lambda t: cli('pool', t, '--which', 'middle'), ('error', '--which middle')),
    ('a recipe that does not exist', lambda t: finetune(t, '--recipe', 'table9_nothing'), ('error', '--recipe table9_nothing: no such recipe')),
    ('a recipe key that does not exist', lambda t: finetune(t, '--recipe', recipe(t, '[finetune]\nepochz = 3\n')), ('error', "unknown key 'epochz'")),
    ('a recipe value of the wrong type', lambda t: finetune(t, '--recipe', recipe(t, '[finetune]\nepochs = "100"\n')),
     ('error', "key 'epochs' must be int")),
    ('a recipe that is not TOML', lambda t: finetune(t, '--recipe', recipe(t, '[finetune\n')), ('error', 'not valid TOML')),
    ('a recipe of another command', lambda t: finetune(t, '--recipe', 'pretrain'), ('error', 'has no [finetune] section')),
    ('a recipe run on other datasets', lambda t: cli('finetune', '--recipe', 'table3_6_vit', '--ferv39k', t, '--affectnet', t),
     ('error', 'runs `unilearn finetune` on --ferv39k PATH')),
    ('an unknown command', lambda t: cli('fintune'), ('error', "unknown command 'fintune'")),
    ('no arguments print the help', help_without_arguments, 'handled'),
]
