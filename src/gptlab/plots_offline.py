"""An HTML template for ``dvc plots show`` that renders with no network.

DVC's default page loads vega, vega-lite and vega-embed from a CDN, so offline it is blank.
:func:`write_template` writes a page with the three libraries inlined, bundled by
``vl-convert-python`` (which carries them), and keeps DVC's ``{plot_divs}`` placeholder. ``make``
writes it to ``.dvc/plots/offline.html``, which ``.dvc/config`` names as ``plots.html_template``.

Run ``python -m gptlab.plots_offline [PATH]`` to (re)write it.
"""

from __future__ import annotations

import sys
from pathlib import Path

from gptlab.io import write_text

DEFAULT_PATH = ".dvc/plots/offline.html"

PAGE = """<!DOCTYPE html>
<html>
<head>
    {refresh_tag}
    <meta charset="utf-8">
    <title>gptlab plots</title>
    <script type="text/javascript">
// vega, vega-lite and vega-embed, bundled by vl-convert-python {version} (BSD-3-Clause)
BUNDLE
    </script>
    <style>
        body { font-family: sans-serif; }
        table { border-spacing: 15px; }
    </style>
</head>
<body>
    {plot_divs}
</body>
</html>
"""


def template_html() -> str:
    """Return the page: DVC's placeholders ``{refresh_tag}`` and ``{plot_divs}``, the libraries inline."""
    import vl_convert  # vl-convert (a large native library): only when the offline page is built

    bundle = vl_convert.javascript_bundle()
    version = getattr(vl_convert, "__version__", "")
    return PAGE.replace("{version}", version).replace("BUNDLE", bundle.replace("</script", "<\\/script"))


def write_template(path: str | Path = DEFAULT_PATH) -> Path:
    """Write the offline template to ``path`` (atomically); return the path."""
    path = Path(path)
    write_text(path, template_html())
    return path


if __name__ == "__main__":
    print(f"plots: wrote {write_template(sys.argv[1] if len(sys.argv) > 1 else DEFAULT_PATH)}")
