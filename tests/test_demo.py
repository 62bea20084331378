"""The demo scripts end to end: flags, the official README commands, bad input, predict.py."""
import json
import os
import re
import shlex

import numpy as np
import pytest
import torch

import cli
import demo_apparel_gcn
import demo_coco_gcn
import demo_nuswide_gcn
import demo_voc2007_gcn
import label_files
from tests.helpers import REPO, assert_one_line_error, official_checkpoint, run_main, run_script

DEMOS = {'voc': demo_voc2007_gcn, 'coco': demo_coco_gcn, 'nuswide': demo_nuswide_gcn, 'apparel': demo_apparel_gcn}
OFFICIAL_FLAGS = ['--image-size', '-i', '-j', '--workers', '--epochs', '--epoch_step', '--start-epoch', '-graph_file',
                  '-word_file', '-b', '--batch-size', '--lr', '--learning-rate', '--momentum', '--weight-decay',
                  '--wd', '--print-freq', '-p', '--resume', '-e', '--evaluate', '--pretrained', '-pm',
                  '--pretrain_model', '--pool_ratio', '-po', '--backbone', '-bb']
OUR_FLAGS = ['--device', '--seed', '--save-dir', '--clip-grad-norm', '--no-download', '--skip-corrupt',
             '--no-tensorboard']
# The official README's commands (its NUS-WIDE one ran the COCO script; fixed), as in our README.
README_COMMANDS = {
    'voc': 'python3 demo_voc2007_gcn.py data/voc --image-size 448 --batch-size 32 -e '
           '--resume checkpoint/voc/voc_checkpoint.pth.tar',
    'coco': 'python3 demo_coco_gcn.py data/coco --image-size 448 --batch-size 32 -e '
            '--resume checkpoint/coco/coco_checkpoint.pth.tar',
    'nuswide': 'python3 demo_nuswide_gcn.py data/nuswide --image-size 448 --batch-size 32 -e '
               '--resume checkpoint/nuswide/nuswide_checkpoint.pth.tar',
    'apparel': 'python3 demo_apparel_gcn.py data/apparel --image-size 448 --batch-size 32 -e '
               '--resume checkpoint/apparel/apparel_checkpoint.pth.tar',
}
POOL_RATIOS = {'voc': 0.2, 'coco': 0.05, 'nuswide': 0.05, 'apparel': 0.2}
OFFICIAL_IMAGE_SIZES = {'voc': 224, 'coco': 448, 'nuswide': 224, 'apparel': 224}


def parse(name, argv):
    return cli.get_args_parser(DEMOS[name].DATASET).parse_args(argv)


@pytest.mark.parametrize('name', DEMOS)
def test_help_lists_every_flag_and_the_official_defaults(name, capsys):
    with pytest.raises(SystemExit) as exit_info:
        parse(name, ['--help'])
    assert exit_info.value.code == 0
    text = capsys.readouterr().out
    for flag in OFFICIAL_FLAGS + OUR_FLAGS:
        assert re.search(rf'(^|[\s,\[]){re.escape(flag)}([\s,\]]|$)', text, re.M), flag
    args = parse(name, ['somewhere'])
    official_workers = 24 if name == 'coco' else 4
    assert (args.image_size, args.workers, args.epochs, args.epoch_step, args.start_epoch, args.batch_size) == \
        (OFFICIAL_IMAGE_SIZES[name], min(official_workers, os.cpu_count()), 200, [30], 0, 16)
    assert (args.lr, args.momentum, args.weight_decay, args.print_freq, args.resume, args.evaluate) == \
        (0.1, 0.9, 1e-4, 0, '', False)
    assert (args.pretrained, args.backbone, args.pool_ratio) == (1, 'resnet101', POOL_RATIOS[name])


@pytest.mark.parametrize('name', DEMOS)
def test_default_paths_resolve_against_the_repo(name):
    args = parse(name, ['somewhere'])
    for path in (args.graph_file, args.word_file, args.save_dir):
        assert os.path.isabs(path) and path.startswith(REPO + os.sep)
    assert args.graph_file == os.path.join(REPO, 'data', name, f'{name}_adj.pkl')


@pytest.mark.parametrize('name', DEMOS)
def test_official_readme_commands_parse(name):
    argv = shlex.split(README_COMMANDS[name])
    assert argv[1] == f'{DEMOS[name].__name__}.py'
    args = parse(name, argv[2:])
    assert (args.data, args.image_size, args.batch_size, args.evaluate) == (f'data/{name}', 448, 32, True)
    assert args.resume == f'checkpoint/{name}/{name}_checkpoint.pth.tar'


def test_readme_shows_the_commands_the_tests_check():
    readme = open(os.path.join(REPO, 'README.md')).read()
    for command in README_COMMANDS.values():
        assert command in readme


def test_official_voc_command_runs_as_written_from_another_folder(tmp_path, monkeypatch, synthetic):
    """The README's VOC evaluation command, verbatim (ResNet-101, 448 px), on a tiny synthetic VOC.

    The official graph/word files are "already downloaded" into a stand-in data folder, and the
    repository's default folders point to a temporary copy of the repo layout.
    """
    info = synthetic('voc', n_trainval=4, n_test=5, image_size=80)
    data_dir = tmp_path / 'repo_data'
    (data_dir / 'voc').mkdir(parents=True)
    for kind, path in (('graph', info['graph_file']), ('word', info['word_file'])):
        os.symlink(path, data_dir / 'voc' / os.path.basename(label_files.default_file('voc', kind)))
    monkeypatch.setattr(label_files, 'DATA_DIR', str(data_dir))
    monkeypatch.setattr(cli, 'REPO_DIR', str(tmp_path / 'repo'))
    work = tmp_path / 'work'
    (work / 'data').mkdir(parents=True)
    os.symlink(info['root'], work / 'data' / 'voc')
    graph = label_files.load_adjacency(info['graph_file'], 20)
    official_checkpoint(str(work / 'checkpoint' / 'voc' / 'voc_checkpoint.pth.tar'), 20, 0.2, 'resnet101', graph)
    monkeypatch.chdir(work)

    assert demo_voc2007_gcn.main(demo_voc2007_gcn.DATASET, shlex.split(README_COMMANDS['voc'])[2:]) == 0
    # the eval JSON goes beside the checkpoint evaluated
    result = json.loads((work / 'checkpoint' / 'voc' / 'eval_voc_checkpoint.json').read_text())
    assert result['num_samples'] == 5 and result['epoch'] == 20
    assert 0 <= result['mAP'] <= 100 and len(result['per_class_ap']) == 20


@pytest.mark.parametrize('name,official', [('coco', False), ('nuswide', False), ('apparel', False), ('apparel', True)],
                         ids=['coco', 'nuswide', 'apparel', 'apparel-official-layout'])
def test_other_readme_commands_evaluate_a_checkpoint(name, official, tmp_path, synthetic):
    """The other README commands, with a ResNet-18 checkpoint so that they stay fast; Apparel in
    both layouts (the official one: one image folder and --image-label)."""
    info = synthetic(name, layout='official') if official else synthetic(name)
    num_classes = len(label_files.load_word_vectors(info['word_file']))
    graph = label_files.load_adjacency(info['graph_file'], num_classes)
    checkpoint = tmp_path / f'{name}_checkpoint.pth.tar'
    official_checkpoint(str(checkpoint), num_classes, POOL_RATIOS[name], 'resnet18', graph)
    argv = shlex.split(README_COMMANDS[name])[2:]
    argv[0], argv[-1] = info['root'], str(checkpoint)
    argv += ['--backbone', 'resnet18', '-graph_file', info['graph_file'], '-word_file', info['word_file'],
             '--image-size', '64', '-j', '0', '--save-dir', str(tmp_path / 'out')]
    if official:
        assert sorted(os.listdir(info['root'])) == ['apparel', 'apparel_adj.pkl', 'apparel_glove_word2vec.pkl',
                                                    'image_label.pkl']
        argv += ['--image-label', info['image_label']]
    assert DEMOS[name].main(DEMOS[name].DATASET, argv) == 0
    result = json.loads((tmp_path / 'out' / f'eval_{name}_checkpoint.json').read_text())
    assert len(result['per_class_ap']) == num_classes
    if name == 'apparel':  # the official split: half of the 24 folders x 4 images
        assert result['num_samples'] == 48


# ---------------------------------------------------------------------------------------------
# Bad input through the scripts: one line on stderr, exit code 2, no traceback

def test_missing_dataset_root(tmp_path):
    """In a process of its own, as users run it (the other cases run main in this process)."""
    result = run_script('demo_voc2007_gcn.py', tmp_path / 'nowhere', '--no-download', '-graph_file',
                        tmp_path / 'g.pkl', '-word_file', tmp_path / 'w.pkl')
    assert_one_line_error(result, r'^error: .*nowhere')


def test_wrong_word_vectors(tmp_path, synthetic):
    info = synthetic('voc')
    bad = tmp_path / 'words.npy'
    np.save(bad, np.zeros((19, 300), np.float32))
    result = run_main('demo_voc2007_gcn.py', info['root'], '-word_file', bad, '-graph_file', info['graph_file'])
    assert_one_line_error(result, r'words.npy: 19 word vectors but the dataset has 20 classes')


def test_wrong_pool_ratio_for_a_checkpoint_says_what_to_set(tmp_path, synthetic):
    info = synthetic('voc')
    graph = label_files.load_adjacency(info['graph_file'], 20)
    official_checkpoint(str(tmp_path / 'ckpt.pth.tar'), 20, 0.2, 'resnet18', graph)
    result = run_main('demo_voc2007_gcn.py', info['root'], '-word_file', info['word_file'], '-graph_file',
                        info['graph_file'], '--backbone', 'resnet18', '-e', '--resume', tmp_path / 'ckpt.pth.tar',
                        '--pool_ratio', '0.05')
    assert_one_line_error(result, r'checkpoint has 4 label groups, the model 1: set --pool_ratio')


def test_cuda_requested_without_cuda(synthetic):
    if torch.cuda.is_available():
        pytest.skip('CUDA is available here')
    info = synthetic('voc')
    result = run_main('demo_voc2007_gcn.py', info['root'], '--device', 'cuda')
    assert_one_line_error(result, r'CUDA is not available')


# ---------------------------------------------------------------------------------------------
# Bad dataset input through a demo script (the loaders' own tests cover every case per dataset)

def voc_copy(synthetic, tmp_path):
    import shutil
    info = synthetic('voc')
    root = tmp_path / 'voc'
    shutil.copytree(info['root'], root)
    return info, root, root / 'VOCdevkit' / 'VOC2007'


def run_voc(info, root, *extra):
    return run_main('demo_voc2007_gcn.py', root, '-graph_file', info['graph_file'], '-word_file', info['word_file'],
                      '--backbone', 'resnet18', '--pretrained', '0', '--image-size', '64', '-j', '0', '-e', *extra)


def test_malformed_annotation_line_is_named(synthetic, tmp_path):
    info, root, voc_dir = voc_copy(synthetic, tmp_path)
    label_file = voc_dir / 'ImageSets' / 'Main' / 'dog_test.txt'
    lines = label_file.read_text().splitlines()
    lines[2] = lines[2].split()[0] + ' maybe'
    label_file.write_text('\n'.join(lines) + '\n')
    assert_one_line_error(run_voc(info, root), r'dog_test.txt:3: expected .*maybe')


def test_listed_image_that_is_absent(synthetic, tmp_path):
    info, root, voc_dir = voc_copy(synthetic, tmp_path)
    missing = sorted((voc_dir / 'JPEGImages').iterdir())[-1]
    missing.unlink()
    assert_one_line_error(run_voc(info, root), rf'{missing.name}: image listed in .* not found')


def test_corrupt_jpeg_stops_or_is_skipped_with_a_count(synthetic, tmp_path):
    info, root, voc_dir = voc_copy(synthetic, tmp_path)
    broken = sorted((voc_dir / 'JPEGImages').iterdir())[-1]
    broken.write_bytes(broken.read_bytes()[:200])   # truncated
    assert_one_line_error(run_voc(info, root), rf'{broken.name}: cannot read image .*--skip-corrupt')
    skipped = run_voc(info, root, '--skip-corrupt', '--save-dir', tmp_path / 'out')
    assert skipped.returncode == 0, skipped.stderr
    assert re.search(rf'skipped 1 of \d+ unreadable images .*{broken.name}', skipped.stdout)


def test_empty_split(synthetic, tmp_path):
    info, root, voc_dir = voc_copy(synthetic, tmp_path)
    for label_file in (voc_dir / 'ImageSets' / 'Main').glob('*_test.txt'):
        label_file.write_text('')
    assert_one_line_error(run_voc(info, root), r'no images in VOC 2007 test')


def test_adjacency_of_the_wrong_shape(synthetic, tmp_path):
    info = synthetic('voc')
    bad = tmp_path / 'graph.npz'
    np.savez(bad, adj=np.zeros((19, 19)), nums=np.ones(19))
    result = run_main('demo_voc2007_gcn.py', info['root'], '-graph_file', bad, '-word_file', info['word_file'],
                        '--backbone', 'resnet18', '--pretrained', '0')
    assert_one_line_error(result, r'graph.npz: graph has 19 classes but the dataset has 20')


def test_default_file_download_with_a_bad_checksum(synthetic, tmp_path, monkeypatch, http_server, capsys):
    """A missing default graph file is fetched; bytes that fail the pinned sha256 are deleted."""
    info = synthetic('voc')
    data_dir = tmp_path / 'repo_data'
    monkeypatch.setattr(label_files, 'DATA_DIR', str(data_dir))
    monkeypatch.setattr(label_files, 'BASE_URL', http_server.url(''))
    http_server.files['/voc/voc_adj.pkl'] = b'not the official graph'
    code = demo_voc2007_gcn.main(demo_voc2007_gcn.DATASET, [info['root'], '-word_file', info['word_file'],
                                                            '--backbone', 'resnet18', '--pretrained', '0'])
    assert code == 2
    assert re.search(r'^error: .*voc_adj.pkl.*(sha256|checksum)', capsys.readouterr().err, re.M)
    assert not data_dir.exists() or not any(p.is_file() for p in data_dir.rglob('*'))
