"""The one exception the data code raises for bad input: catch ``DatasetError`` and print it.

Every message is a single line that names the file (and line, for text formats) and says what to
do, so an entry script can print ``str(e)`` and exit non-zero without a traceback.
"""


class DatasetError(ValueError):
    """A dataset, label file or download is missing, malformed or fails verification."""
