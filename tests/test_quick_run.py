"""tools/quick_run.py: the newcomer's first command."""
import json

import pytest

from tools import quick_run


def read_log(out):
    with open(out / 'checkpoint' / 'log.jsonl') as f:
        return [json.loads(line) for line in f]


def test_quick_run_writes_a_checkpoint_metrics_and_curves(tmp_path):
    assert quick_run.main(['--out', str(tmp_path), '--epochs', '1', '--train-images', '16',
                           '--test-images', '8', '--image-size', '64']) == 0
    for name in ('checkpoint.pth.tar', 'model_best.pth.tar', 'eval_epoch001.json', 'log.jsonl', 'curves.png'):
        assert (tmp_path / 'checkpoint' / name).is_file(), name
    assert [record['epoch'] for record in read_log(tmp_path)] == [1]


@pytest.mark.long
def test_quick_run_learns_far_above_chance(tmp_path):
    """The README's figure: the default quick run ends near mAP 87 (chance is about 10; machines differ)."""
    assert quick_run.main(['--out', str(tmp_path)]) == 0
    log = read_log(tmp_path)
    assert len(log) == 12
    assert log[-1]['best_mAP'] >= 75
