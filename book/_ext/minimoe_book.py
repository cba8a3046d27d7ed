"""Sphinx extension of the course's website (loaded by book/_config.yml).

- Every lesson page opens with a note: which notebook it is (a download link to it), and how to
  run it locally (`make lab`), where the explorers' controls work.
- No page embeds the notebooks' saved widget state (see `_drop_widget_state`).
- The pages load plotly.js and MathJax from the site itself, never from a CDN: plotly.min.js
  comes from the installed plotly package (the version that drew the figures), MathJax 2 from the
  jupyter-server-mathjax package; both are copied into _static once.
"""

from __future__ import annotations

import shutil
from pathlib import Path

from docutils import nodes
from sphinx import addnodes

LESSONS = "notebooks/"


def _drop_widget_state(app, doctree) -> None:
    """MyST-NB embeds a notebook's saved widget state in its page (for a widget manager loaded
    from a CDN); the explorers are snapshots here, and plotly's FigureWidget state alone carries
    plotly.js (megabytes per page), so the state is left out."""
    metadata = getattr(app.env, "nb_metadata", {}).get(app.env.docname, {})
    metadata.get("js_files", {}).pop("ipywidgets_state", None)


def _lesson_note(app, doctree) -> None:
    docname = app.env.docname
    if not docname.startswith(LESSONS):
        return
    sections = [n for n in doctree.children if isinstance(n, nodes.section)]
    if not sections:
        return
    source = f"{docname}.ipynb"
    download = addnodes.download_reference(
        "", "", reftarget="/" + source, refdoc=docname, refexplicit=True, refdomain=""
    )
    download += nodes.literal(text=source)
    para = nodes.paragraph()
    para += nodes.Text("This page is the lesson notebook ")
    para += download
    para += nodes.Text(
        ", with the outputs it gave when the site was built. To run it yourself, clone the course "
        "and run "
    )
    para += nodes.literal(text="make lab")
    para += nodes.Text(
        ": JupyterLab opens your own copy (in workspace/), where the explorers' controls work."
    )
    note = nodes.note()
    note += para
    section = sections[0]
    title_at = next((i for i, n in enumerate(section.children) if isinstance(n, nodes.title)), -1)
    section.insert(title_at + 1, note)


def _no_thebe(app, pagename, templatename, context, doctree) -> None:
    """Jupyter Book loads sphinx-thebe (live code from a remote Binder) even with its launch
    buttons off, and its inline script twice: a console error, and a URL on unpkg.com. The site
    runs nothing live, so its scripts are left out of every page."""
    context["script_files"] = [
        js for js in context.get("script_files", [])
        if "thebe" not in str(js).lower() + str(getattr(js, "attributes", {})).lower()
    ]  # fmt: skip


def _add_plotly(app) -> None:
    app.add_js_file("plotly.min.js", priority=200)


def _copy_assets(app, exception) -> None:
    if exception is not None or app.builder.format != "html":
        return
    import jupyter_server_mathjax
    import plotly

    static = Path(app.outdir) / "_static"
    plotly_js = Path(plotly.__file__).parent / "package_data" / "plotly.min.js"
    target = static / "plotly.min.js"
    if not target.exists() or target.stat().st_size != plotly_js.stat().st_size:
        shutil.copyfile(plotly_js, target)
    mathjax = Path(jupyter_server_mathjax.__file__).parent / "static"
    if not (static / "mathjax" / "MathJax.js").exists():
        shutil.copytree(mathjax, static / "mathjax", dirs_exist_ok=True)


def setup(app):
    # before Sphinx's own collectors (priority 500), so they register the download link's file
    app.connect("doctree-read", _lesson_note, priority=400)
    app.connect("doctree-read", _drop_widget_state)
    app.connect("builder-inited", _add_plotly)
    app.connect("html-page-context", _no_thebe)
    app.connect("build-finished", _copy_assets)
    return {"parallel_read_safe": True, "parallel_write_safe": True}
