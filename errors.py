"""The one exception the data code raises for bad input: catch ``DatasetError`` and print ``e.line``.

Every message is a single line that names the file (and line, for text formats) and says what to
do, so an entry script can print it and exit non-zero without a traceback.
"""
import re


class DatasetError(ValueError):
    """A dataset, label file or download is missing, malformed or fails verification."""

    @property
    def line(self):
        """The one-line message, also after a DataLoader worker re-raised this error: PyTorch then
        builds a new one whose message holds the worker's traceback, ending with our line."""
        last = str(self).strip().splitlines()[-1]
        return re.sub(r'^[\w.]+Error: ', '', last) if '\n' in str(self).strip() else last
