"""The evaluation report (report_page.py): its figures against metrics.py, its thumbnails and size,
and the page itself in a real browser (tests/browser.py)."""
import re

import numpy as np
import pytest
import torch

import custom
import label_files
import metrics
import report
import report_page
from dataset_base import open_rgb
from tests import browser as chromium
from tests.helpers import small_model
from util import eval_transform

SIZE = 64


@pytest.fixture(scope='module')
def evaluated(synthetic, tmp_path_factory):
    """A small model's evaluation of the synthetic custom val split (30 images, 6 classes), two
    targets made difficult, per-class thresholds, and its report written with attention maps."""
    info = synthetic('custom')
    val = custom.CustomClassification(info['root'], 'val')
    train = custom.CustomClassification(info['root'], 'train')
    model = small_model(len(val.classes)).eval()
    transform = eval_transform(SIZE, model.image_normalization_mean, model.image_normalization_std)
    with torch.no_grad():
        images = torch.stack([transform(open_rgb(path)) for path in val.paths])
        scores, _ = model(images, val.inp[None].expand(len(images), -1, -1))
    targets = val.targets.clone()
    targets[0, 0] = targets[1, 2] = 0   # difficult: left out everywhere
    thresholds = np.linspace(0.45, 0.55, len(val.classes))
    data = dict(evaluation=metrics.evaluate(scores, targets), scores=scores, targets=targets, classes=val.classes,
                image_paths=val.paths, graph=label_files.build_adjacency(train.targets.numpy()), thresholds=thresholds)
    path = tmp_path_factory.mktemp('report') / 'eval_model_best.html'
    run_info = {'dataset': 'synthetic custom', 'split': 'val', 'checkpoint': 'runs/x/model_best.pth.tar',
                'settings': {'backbone': 'resnet18', 'lr': 0.1, 'epoch_step': [30]}, 'loss': 0.25,
                'thresholds_source': 'from thresholds.json'}
    attention = report_page.ModelAttention(model, val.inp, SIZE, 'cpu', batch_size=4)
    report_page.write_report(path, run_info=run_info, attention=attention, progress=False, **data)
    return dict(data, path=path, model=model, words=val.inp, run_info=run_info,
                html=path.read_text(encoding='utf-8'))


def test_class_figures_agree_with_metrics(evaluated):
    e = evaluated
    table = report_page.class_table(e['scores'], e['targets'], e['thresholds'], e['evaluation']['ap'])
    f1 = metrics.per_class_f1(e['scores'], e['targets'], e['thresholds']).numpy()
    prob, targets = metrics.probabilities(e['scores']), e['targets'].numpy()
    for k, row in enumerate(table):
        counted = targets[:, k] != 0
        predicted, positive = (prob[:, k] >= e['thresholds'][k]) & counted, targets[:, k] == 1
        assert row['positives'] == positive.sum() and row['ap'] == e['evaluation']['ap'][k]
        assert row['false_positives'] == (predicted & (targets[:, k] == -1)).sum()
        assert row['false_negatives'] == (~predicted & positive).sum()
        assert row['recall'] == pytest.approx((predicted & positive).sum() / positive.sum())
        if predicted.any():
            assert row['precision'] == pytest.approx((predicted & positive).sum() / predicted.sum())
        assert row['f1'] == pytest.approx(f1[k])
        assert 2 * row['precision'] * row['recall'] / (row['precision'] + row['recall']) == pytest.approx(f1[k]) \
            if row['precision'] else True


def test_curves_give_the_ap_and_the_mean_is_interpolated(evaluated):
    e = evaluated
    curves = []
    for k, ap in enumerate(e['evaluation']['ap']):
        recall, precision = report_page.pr_curve(e['scores'][:, k].numpy(), e['targets'][:, k].numpy())
        at_positives = np.diff(recall, prepend=0) > 0
        assert precision[at_positives].mean() == pytest.approx(ap, abs=1e-12)   # AP: precision at each positive
        curves.append((recall, precision))
    grid, mean = report_page.mean_interpolated_precision(curves)
    assert mean[0] == pytest.approx(np.mean([p.max() for _, p in curves]))   # recall >= 0: the best precision
    assert (np.diff(mean) <= 1e-12).all() and len(report_page.pr_curve(np.zeros(3), -np.ones(3))[0]) == 0


def test_worst_images_are_the_most_confident_mistakes(evaluated):
    e = evaluated
    prob, targets = metrics.probabilities(e['scores']), e['targets'].numpy()
    worst = report_page.worst_images(e['scores'], e['targets'], e['thresholds'], per_class=2)
    for k, (fp, fn) in enumerate(worst):
        assert all(targets[i, k] == -1 and prob[i, k] >= e['thresholds'][k] for i in fp)
        assert all(targets[i, k] == 1 and prob[i, k] < e['thresholds'][k] for i in fn)
        others_fp = [i for i in range(len(prob)) if targets[i, k] == -1 and prob[i, k] >= e['thresholds'][k]]
        assert prob[fp, k].tolist() == sorted(prob[others_fp, k], reverse=True)[:2]
        assert 0 not in fp + fn or k != 0   # the difficult sample is never a mistake


def test_model_attention_is_the_models_maps_of_each_images_classes(evaluated):
    e = evaluated
    paths, labels = e['image_paths'][:2], [[0, 3], [5]]
    maps = report_page.ModelAttention(e['model'], e['words'], SIZE, 'cpu')(paths, labels)
    transform = eval_transform(SIZE, e['model'].image_normalization_mean, e['model'].image_normalization_std)
    with torch.no_grad():
        features = e['model'].features(torch.stack([transform(open_rgb(p)) for p in paths]))
        for i, classes in enumerate(labels):
            want = e['model'].attention_maps([f[i:i + 1] for f in features], e['words'], classes)
            for got, level in zip(maps[i], want):
                np.testing.assert_allclose(got, level[0].numpy(), atol=1e-6)
                np.testing.assert_allclose(got.sum((1, 2)), 1, atol=1e-5)


def test_the_page_is_self_contained_and_says_what_e_prints(evaluated):
    page, e = evaluated['html'], evaluated
    assert not re.findall(r'(?:src|href)="(?!data:|#)', page)   # nothing to fetch: data URLs and anchors only
    summary = report.format_summary(e['evaluation'], loss=0.25, label='val', class_names=e['classes'])
    assert report_page.html.escape(summary) in page and 'per-class thresholds' in page
    assert 'from thresholds.json' in page and 'epoch_step' in page and 'runs/x/model_best.pth.tar' in page
    shown = sum(min(3, row['false_positives']) + min(3, row['false_negatives'])
                for row in report_page.class_table(e['scores'], e['targets'], e['thresholds'], e['evaluation']['ap']))
    assert page.count('<img class="thumb"') == shown > 0
    assert page.count('data-captions="level 1 4x4') == shown   # every thumbnail carries its three levels


def test_never_overwrites_and_keeps_within_its_size(evaluated, tmp_path):
    e = {k: evaluated[k] for k in ('evaluation', 'scores', 'targets', 'classes', 'image_paths', 'graph')}
    with pytest.raises(FileExistsError):
        report_page.write_report(evaluated['path'], run_info={}, **e)
    report_page.write_report(tmp_path / 'plain.html', run_info={'split': 'val'}, progress=False, **e)
    plain = (tmp_path / 'plain.html').read_text(encoding='utf-8')
    assert 'No model was given' in plain and 'data-captions="' not in plain
    assert 'probability 0.5 for every class' in plain
    small = len(plain.encode()) - sum(map(len, re.findall(r'data:image/jpeg;base64,[^"]*', plain))) + 100_000
    report_page.write_report(tmp_path / 'small.html', run_info={}, progress=False, max_bytes=small, **e)
    assert (tmp_path / 'small.html').stat().st_size <= small


def test_the_report_in_a_browser(evaluated, browser):
    """Every class named, every image decoded, no console error, not blank; sorting by AP works;
    hovering a thumbnail shows its three levels."""
    with chromium.page(browser) as (tab, errors):
        tab.goto(evaluated['path'].as_uri())
        text = tab.inner_text('body')
        assert all(name in text for name in evaluated['classes'])
        decoded = 'Array.from(document.querySelectorAll("main img")).every(i => i.complete && i.naturalWidth > 0)'
        assert tab.evaluate(decoded)
        assert tab.evaluate('document.querySelectorAll("main img").length') >= 1
        assert not chromium.is_blank(chromium.screenshot(tab, 'report'))

        def column(n):
            return tab.eval_on_selector_all('#class-table tbody tr', f'rows => rows.map(r => r.cells[{n}].textContent)')
        ap = evaluated['evaluation']['ap']
        by_ap = [evaluated['classes'][k] for k in sorted(range(len(ap)), key=lambda k: -ap[k])]
        tab.click('#class-table th:has-text("AP")')
        assert column(0) == by_ap
        tab.click('#class-table th:has-text("AP")')
        assert column(0) == by_ap[::-1]
        tab.click('#class-table th:has-text("class")')
        assert column(0) == sorted(evaluated["classes"])

        tab.hover('img.thumb[data-captions]')
        assert tab.is_visible('#popup')
        assert tab.eval_on_selector_all('#popup .captions span', 'spans => spans.length') == 3
        assert errors == []


def test_e_report_through_the_demo_script_writes_the_page_beside_the_eval_json(custom_run, tmp_path, capsys):
    import demo_custom_gcn
    _, save, _ = custom_run
    argv = ['-e', '--resume', str(save / 'model_best.pth.tar'), '-j', '0', '--device', 'cpu', '--save-dir',
            str(tmp_path)]
    assert demo_custom_gcn.main(demo_custom_gcn.DATASET, argv) == 0
    assert sorted(p.name for p in tmp_path.iterdir()) == ['eval_model_best.json']   # -e alone: no page
    plain = capsys.readouterr().out
    assert demo_custom_gcn.main(demo_custom_gcn.DATASET, [*argv, '--report']) == 0
    out = capsys.readouterr().out
    page = tmp_path / 'eval_model_best-2.html'   # named after its eval JSON, which did not overwrite the first
    assert sorted(p.name for p in tmp_path.iterdir()) == ['eval_model_best-2.html', 'eval_model_best-2.json',
                                                          'eval_model_best.json']
    assert f'=> the report page: {page}' in out.splitlines()
    assert out.replace(f'=> the report page: {page}\n', '').split('git commit')[1].split('\n', 1)[1] == \
        plain.split('git commit')[1].split('\n', 1)[1].replace('evaluate=True', 'evaluate=True  report=True')
    html = page.read_text(encoding='utf-8')
    checkpoint = torch.load(save / 'model_best.pth.tar', weights_only=True)
    assert all(name in html for name in checkpoint['classes']) and str(save / 'model_best.pth.tar') in html
    assert demo_custom_gcn.main(demo_custom_gcn.DATASET, [custom_run[0]['root'], '--report']) == 2   # -e only
