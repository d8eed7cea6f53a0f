"""gptlab's error convention: bad input or a failed external step raises :class:`GptlabError`.

Bad input is anything a user can fix: a params value, a file or folder (missing, malformed, of
the wrong shape), a model config, a LoRA target, a prompt style, an HTTP request. A failed
external step is a download, a judge server, a subprocess, a missing optional package. The
message is the whole story, in one line: it names the thing at fault (file, record,
parameter, URL) and the fix. The command line (``gptlab ...``, ``python -m stages.X``) prints
it as ``gptlab: error: <message>`` with exit code 2 and no traceback; the server answers it
with HTTP 400. Any other exception (``ValueError``, ``TypeError``, ``AssertionError``...) is a
bug in gptlab, and keeps its traceback.

Library code converts the exceptions of third-party calls it expects to fail on bad input
(``json.JSONDecodeError``, ``OSError``, a parser's ``ValueError``) into GptlabError at the
place that knows the file or key to name; :func:`gptlab.io.read_json` does it for JSON files.
The one exception to the rule is pydantic's: the server's request validators raise
``ValueError`` as pydantic requires, and :mod:`gptlab.serve.errors` turns them into HTTP 400.

Subclasses exist only where a caller catches the subclass itself:

- :class:`ParamsError`: a params section's checks raise it (``"field=value is impossible..."``);
  the params loader catches any GptlabError raised while building a section (its own and
  GPTConfig's) and raises a ParamsError prefixed with the file and dotted key, and tries each
  member of a union type by catching ParamsError.
"""


class GptlabError(Exception):
    """Bad input or a failed external step, with a one-line message fit to show a user as is."""


class ParamsError(GptlabError):
    """A params.yaml value is unknown, of the wrong type, or impossible; the message names the key."""
