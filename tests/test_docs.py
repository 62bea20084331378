"""The documentation: every relative link and #anchor resolves, the README stays short and maps the code."""
import glob
import os
import re

import pytest

REPO = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
README_MAX_BYTES = 12 * 1024
FENCE = re.compile(r'^\s*(```|~~~)')
CODE_SPAN = re.compile(r'(`+)(.+?)\1')
LINK = re.compile(r'\[[^\]]*\]\(\s*<?([^)\s>]+)>?(?:\s+"[^"]*")?\s*\)')
HEADING = re.compile(r'^(#{1,6})\s+(.*?)\s*#*\s*$')


def doc_files():
    """The Markdown files readers follow links in: the README, docs/ and the folders' READMEs."""
    names = ['README.md', *glob.glob('docs/*.md', root_dir=REPO), *glob.glob('*/README.md', root_dir=REPO)]
    return sorted(os.path.join(REPO, name) for name in names)


def prose_lines(text):
    """The lines outside fenced code blocks, each with its code spans blanked (they hold no links)."""
    inside = False
    for line in text.splitlines():
        if FENCE.match(line):
            inside = not inside
        elif not inside:
            yield CODE_SPAN.sub(lambda m: 'x' * len(m.group(2)), line)


def slug(heading):
    """GitHub's anchor for a heading: its text without markup, lower case, punctuation other than
    '-' and '_' dropped, each space a '-'."""
    text = CODE_SPAN.sub(lambda m: m.group(2), heading)
    text = re.sub(r'\[([^\]]*)\]\([^)]*\)', r'\1', text)       # a link counts by its text
    text = re.sub(r'(\*+|(?<!\w)_+|_+(?!\w))', '', text)        # emphasis markers, not snake_case
    return re.sub(r'[^\w\- ]', '', text.lower()).replace(' ', '-')


def anchors(text):
    """Every heading anchor of a Markdown text; a repeated slug gets -1, -2, ... as on GitHub."""
    seen, found = {}, set()
    inside = False
    for line in text.splitlines():
        if FENCE.match(line):
            inside = not inside
            continue
        match = None if inside else HEADING.match(line)
        if match:
            base = slug(match.group(2))
            count = seen.get(base, 0)
            seen[base] = count + 1
            found.add(base if count == 0 else f'{base}-{count}')
    return found


def links(text):
    """The link targets of a Markdown text, outside code."""
    return [target for line in prose_lines(text) for target in LINK.findall(line)]


def broken_links(path):
    """'target: why' for each relative link of the file at path that leads nowhere."""
    with open(path, encoding='utf-8') as f:
        text = f.read()
    problems = []
    for target in links(text):
        if re.match(r'[a-z][a-z0-9+.-]*:', target, re.I):   # http:, https:, mailto: ...
            continue
        file_part, _, anchor = target.partition('#')
        linked = os.path.normpath(os.path.join(os.path.dirname(path), file_part)) if file_part else path
        if not os.path.exists(linked):
            problems.append(f'{target}: no such file')
        elif anchor and linked.endswith('.md'):
            with open(linked, encoding='utf-8') as f:
                if anchor not in anchors(f.read()):
                    problems.append(f'{target}: no heading with this anchor')
    return problems


# ---------------------------------------------------------------------------------------------
# The checker itself

def test_slug_follows_githubs_rules():
    assert slug('Files under `data/`') == 'files-under-data'
    assert slug('predict.py: the model on your own images') == 'predictpy-the-model-on-your-own-images'
    assert slug('Checkpoints, resume and evaluation') == 'checkpoints-resume-and-evaluation'
    assert slug('The `snake_case` flag -e, **bold** and [a link](x.md)') == 'the-snake_case-flag--e-bold-and-a-link'
    assert slug('Café 2014') == 'café-2014'


def test_repeated_headings_get_numbered_anchors_and_code_is_skipped():
    text = '# Notes\n\n## Setup\n\n```\n# Setup\n```\n\n## Setup\n\n### Setup\n'
    assert anchors(text) == {'notes', 'setup', 'setup-1', 'setup-2'}
    assert links('see [a](a.md) and `[b](b.md)`\n```\n[c](c.md)\n```\n[`d.py`](d.py "title")') == ['a.md', 'd.py']


def test_broken_links_and_anchors_are_reported(tmp_path):
    (tmp_path / 'docs').mkdir()
    (tmp_path / 'docs' / 'page.md').write_text('# Page\n\n## Two words\n')
    (tmp_path / 'code.py').write_text('')
    (tmp_path / 'README.md').write_text(
        '# Title\n\n## Intro\n\n[ok](docs/page.md#two-words) [ok](#intro) [ok](code.py) [ok](docs) '
        '[ok](https://example.org/x.md#nowhere)\n'
        '[bad](docs/missing.md) [bad](docs/page.md#two_words) [bad](#outro) [bad](code.py.md)\n')
    assert broken_links(str(tmp_path / 'README.md')) == [
        'docs/missing.md: no such file', 'docs/page.md#two_words: no heading with this anchor',
        '#outro: no heading with this anchor', 'code.py.md: no such file']


# ---------------------------------------------------------------------------------------------
# The repository's documentation

def test_the_docs_are_where_the_checks_look():
    names = {os.path.relpath(path, REPO) for path in doc_files()}
    assert {'README.md', 'docs/model.md', 'docs/datasets.md', 'docs/training.md', 'docs/evaluation.md',
            'docs/metrics.md', 'docs/differences.md', 'docs/testing.md'} <= names


@pytest.mark.parametrize('path', doc_files(), ids=lambda path: os.path.relpath(path, REPO))
def test_every_relative_link_and_anchor_resolves(path):
    assert broken_links(path) == []


def test_readme_is_short():
    size = os.path.getsize(os.path.join(REPO, 'README.md'))
    assert size <= README_MAX_BYTES, f'README.md is {size} bytes; move detail to docs/ (limit {README_MAX_BYTES})'


def test_readme_links_every_docs_page_and_maps_every_module():
    with open(os.path.join(REPO, 'README.md'), encoding='utf-8') as f:
        readme = f.read()
    targets = set(links(readme))
    for page in glob.glob('docs/*.md', root_dir=REPO):
        assert page in targets, f'README does not link {page}'
    code_map = readme.split('## Code map')[1].split('\n## ')[0]
    for name in [*glob.glob('*.py', root_dir=REPO), 'tests/', 'bench/', 'tools/', 'docs/']:
        assert f'`{name}`' in code_map, f'the README code map does not name {name}'


def test_docs_never_send_readers_outside_the_repository():
    for path in doc_files():
        text = open(path, encoding='utf-8').read()
        assert '../shared' not in text, path
        for target in links(text):
            if not re.match(r'[a-z][a-z0-9+.-]*:', target, re.I):
                linked = os.path.normpath(os.path.join(os.path.dirname(path), target.partition('#')[0]))
                assert linked == REPO or linked.startswith(REPO + os.sep), f'{path}: {target}'


def test_every_script_the_docs_run_exists():
    """``python[3] X.py`` and ``bash X.sh`` in the docs, code blocks included, name files of the repository."""
    for path in doc_files():
        text = open(path, encoding='utf-8').read()
        for script in re.findall(r'(?:python3?|bash)\s+([\w./-]+\.(?:py|sh))\b', text):
            assert os.path.isfile(os.path.join(REPO, script)), f'{os.path.relpath(path, REPO)}: {script}'
