"""Rendering of what vivat's commands report: HTML pages, markdown tables and figures.

The modules here consume typed results computed elsewhere (``vivat.evaluate``, ``vivat.diagnose``,
``vivat.ablate``, ``vivat.demo``) and only turn them into files; they compute no scores.
"""
