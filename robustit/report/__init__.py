"""``robustit report``: tables, plots and one HTML page from bench results (never imports torch).

Modules: ``aggregate`` (group cells over seeds: mean, sample std, n), ``variants`` (method and
attack names, which table a group feeds), ``paper`` + ``paper_figures.json`` (the paper's own
numbers), ``layouts`` (which tables exist, in the paper's layouts), ``tables`` (Markdown / CSV /
LaTeX), ``plots`` (radar and activation PNGs; the Figure 9 drawing itself is ``activation_plot``,
shared with `robustit activations`), ``html`` (the self-contained page), ``runinfo``
(the run's configuration) and ``build`` (``build_report``). See docs/report.md.
"""


def build_report(results_dirs, out_dir, activation_jsons=()):
    """Write the report; see :func:`robustit.report.build.build_report` (imported lazily)."""
    from .build import build_report as _build

    return _build(results_dirs, out_dir, activation_jsons)
