"""The one exception type gptlab raises for bad input: its message is the whole story.

Every message names the thing at fault (file, record, parameter, URL) and the fix, so the
command line can print it as a single line without a traceback.
"""


class GptlabError(Exception):
    """Bad input or a failed external step, with a message fit to show a user as is."""


class ParamsError(GptlabError):
    """A params.yaml value is unknown, of the wrong type, or impossible."""
