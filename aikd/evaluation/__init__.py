"""Evaluation of face image quality: EDC curves, normalised pAUC and their uncertainty.

Import what you need from its module; this package file loads nothing, so that training
can use the metric without the report's code (and DVC re-runs only what a change touches):

* ``edc``: ``edc_curve``, ``pauc``, ``pauc_bootstrap``, ``random_quality_pauc`` (a leaf);
* ``cells``: the rows of one benchmark x detector cell (``evaluate_cell``, ...; a leaf);
* ``columns``: quality-method columns and the names of context rows and reference detector;
* ``benchmarks``: verification pairs and their similarities;
* ``tables``, ``summary``, ``plots``, ``report``: the written report;
* ``settings``: the ``evaluate`` params section; ``stage``: the pairs and evaluate stages.
"""
