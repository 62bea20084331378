"""MSRN in the browser: a local Gradio app to try a trained model on your images.

    python app.py --resume CKPT [--thresholds thresholds.json] [--port N] [--host H] [--share]

Drop or upload images: each label's probability as bars, the labels at or above their threshold
(per-class thresholds from ``--thresholds``, else one slider), and per shown label its attention
at the three levels (attention_sheet.py). The model, the transform and the batching are
predict.py's, so the probabilities are those of ``predict.py --out`` for the same file. The API
endpoint ``/predict`` takes one image and returns the ``gr.Label`` payload of every class's
probability. The server listens on 127.0.0.1 (``--host`` to change it) and makes no public link
unless ``--share`` is given. A file that is not an image is a message in the page; a checkpoint
that cannot be used stops the start with one ``error:`` line (exit code 2).
"""
import os
import sys

import torch

import checkpoint as ckpt
import cli
import distributed
import metrics
import predict
from attention_sheet import draw_sheet
from dataset_base import open_rgb
from engine import AMP_DTYPES
from run import build_trained_model, checked_amp, checked_thresholds
from util import eval_transform

MAX_ROWS = 12   # labels drawn per attention sheet, the most probable first
APP_CSS = '#status p { margin: 0 }'


def get_app_parser():
    """app.py's flags."""
    parser = cli.ArgumentParser(description='MSRN in the browser: a local app that labels your images and shows '
                                            'where each label looked.')
    cli.add_threshold_arguments(parser, "the slider's starting threshold", 'the slider')
    parser.add_argument('--port', default=None, type=int, metavar='N',
                        help="the server's port (default: 7860, or the next free one)")
    parser.add_argument('--host', default='127.0.0.1', metavar='H',
                        help='the address to listen on (default: 127.0.0.1, this machine only; 0.0.0.0: every '
                             'network interface)')
    parser.add_argument('--share', action='store_true',
                        help="also make a public link through Gradio's share servers (default: none)")
    cli.add_amp_arguments(cli.add_trained_model_arguments(parser))
    return parser


class Predictor:
    """predict.py's path from image files to probabilities, for the app: ``__call__(paths)`` ->
    (results, skipped); results: [(index, probabilities (C,) float32 CPU tensor, features)],
    skipped: [(index, why)] of the files that are not readable images."""

    def __init__(self, model, words, classes, image_size, device, amp=False, amp_dtype=torch.float16,
                 batch_size=16):
        self.model, self.words, self.classes, self.device = model, words.to(device), classes, device
        self.amp, self.amp_dtype, self.batch_size = amp, amp_dtype, batch_size
        self.transform = eval_transform(image_size, model.image_normalization_mean, model.image_normalization_std)

    def __call__(self, paths):
        files = predict.ImageFiles(paths, self.transform)
        batches = [predict.collate([files[i] for i in range(start, min(start + self.batch_size, len(paths)))])
                   for start in range(0, len(paths), self.batch_size)]
        skipped = []
        results = list(predict.predictions(self.model, self.words, batches, self.device, self.amp, self.amp_dtype,
                                           paths, skipped))
        why = dict(skipped)
        return results, [(i, why[path]) for i, path in enumerate(paths) if path in why]

    def sheet(self, path, probabilities, features, thresholds):
        """The attention sheet of one image: the labels at or above their threshold (at most MAX_ROWS),
        or the most probable one, marked as not predicted."""
        rows, maps = predict.attention_rows(self.model, self.words, features, probabilities, self.classes, thresholds,
                                            MAX_ROWS)
        return draw_sheet(open_rgb(path), rows, maps)


def probabilities_payload(classes, probabilities):
    """{class name: probability} of one image, as gr.Label shows (and the API returns) them."""
    return {name: float(p) for name, p in zip(classes, probabilities.tolist())}


def labels_text(classes, probabilities, thresholds, per_class):
    rule = 'its class threshold' if per_class else f'the threshold {thresholds[0]:.2f}'
    shown = [f'**{classes[k]}** {float(probabilities[k]):.3f}' for k in probabilities.argsort(descending=True).tolist()
             if probabilities[k] >= thresholds[k]]
    if not shown:
        best = int(probabilities.argmax())
        return f'No label reaches {rule} (best: {classes[best]} {float(probabilities[best]):.3f}).'
    return f'Labels at or above {rule}: ' + ', '.join(shown)


def build_app(predictor, *, title, thresholds=None, threshold=0.5):
    """The Gradio Blocks of the app. ``thresholds``: per-class probabilities (C,), or None for one
    slider starting at ``threshold``."""
    import gradio as gr

    classes, per_class = predictor.classes, thresholds is not None

    def thresholds_for(slider):
        return [float(t) for t in thresholds] if per_class else [float(slider)] * len(classes)

    def analyse(files, slider):
        """Uploaded files -> (state, image choice, status, labels, bars, sheet)."""
        paths = [f if isinstance(f, str) else f.name for f in files or []]
        if not paths:
            return [], gr.update(choices=[], value=None), '', '', None, None
        results, skipped = predictor(paths)
        names = [os.path.basename(p) for p in paths]
        lines = [f'{len(results)} of {len(paths)} files read.'] + \
            [f"- **{names[i]}** is not an image that can be read: {why.replace(paths[i], names[i])}"
             for i, why in skipped]
        state = [{'name': names[i], 'path': paths[i], 'probabilities': p, 'features': f} for i, p, f in results]
        choices = [f"{n + 1}: {item['name']}" for n, item in enumerate(state)]
        shown = show(choices[0] if choices else None, slider, state)
        return (state, gr.update(choices=choices, value=choices[0] if choices else None), '\n'.join(lines),
                *shown)

    def show(choice, slider, state):
        """(labels, bars, sheet) of the chosen image."""
        if not state or not choice:
            return '', None, None
        item = state[int(choice.split(':', 1)[0]) - 1]
        limits = thresholds_for(slider)
        sheet = predictor.sheet(item['path'], item['probabilities'], item['features'], limits)
        return (labels_text(classes, item['probabilities'], limits, per_class),
                probabilities_payload(classes, item['probabilities']), sheet)

    def api_predict(path):
        """One image file -> {class name: probability}; a file that is not an image: an error message."""
        if not path:
            raise gr.Error('no image given')
        results, skipped = predictor([path])
        if skipped:
            raise gr.Error(f'not an image that can be read: {skipped[0][1]}')
        return probabilities_payload(classes, results[0][1])

    with gr.Blocks(title=title, analytics_enabled=False) as demo:
        gr.Markdown(f'# {title}\n{len(classes)} classes. Drop or upload images; pick one to see its labels, '
                    'the probability of every class and where each shown label looked (attention at the three '
                    'levels of the network, blue lowest to red highest weight of each map).')
        state = gr.State([])
        with gr.Row():
            with gr.Column(scale=1):
                files = gr.File(file_count='multiple', label='Drop or upload images', elem_id='files')
                if per_class:
                    gr.Markdown('Per-class thresholds from the `--thresholds` file.')
                slider = gr.Slider(0, 1, value=threshold, step=0.01, label='threshold (probability)',
                                   visible=not per_class, elem_id='threshold')
                choice = gr.Dropdown(choices=[], label='the image shown', interactive=True, elem_id='choice')
                status = gr.Markdown(elem_id='status')
            with gr.Column(scale=2):
                labels = gr.Markdown(elem_id='labels')
                bars = gr.Label(num_top_classes=len(classes), label='probability of each class', elem_id='bars')
        gr.Markdown('### Where each shown label looked')
        sheet = gr.Image(show_label=False, type='pil', format='png', interactive=False, elem_id='sheet')
        api_image = gr.File(type='filepath', visible=False)   # the file as sent: no conversion before predict's
        api_label = gr.Label(visible=False)

        files.change(analyse, [files, slider], [state, choice, status, labels, bars, sheet], api_visibility='private')
        choice.input(show, [choice, slider, state], [labels, bars, sheet], api_visibility='private')
        slider.release(show, [choice, slider, state], [labels, bars, sheet], api_visibility='private')
        api_image.change(api_predict, api_image, api_label, api_name='predict')
    return demo


def serve(args, given, recipe):
    checked_thresholds(args, given, 'where the slider starts')
    device = distributed.init_distributed_mode(args.device)  # one process: just picks the device
    model, words, classes = build_trained_model(args, given, ckpt.read_checkpoint(args.resume), recipe)
    thresholds = metrics.read_thresholds(args.thresholds, classes)['thresholds'] if args.thresholds else None
    amp = checked_amp(args, given, device)
    predictor = Predictor(model.to(device), words, classes, args.image_size, device, amp, AMP_DTYPES[args.amp_dtype])
    title = f'MSRN: {os.path.basename(args.resume)}'
    demo = build_app(predictor, title=title, thresholds=thresholds, threshold=args.threshold)
    print(f'=> {title}: {len(classes)} classes, on {device}; Ctrl-C stops the server', flush=True)
    demo.launch(server_name=args.host, server_port=args.port, share=args.share, show_error=True, css=APP_CSS,
                footer_links=['api'])


def main(argv=None):
    return cli.entry(get_app_parser(), serve, argv)


if __name__ == '__main__':
    sys.exit(main())
