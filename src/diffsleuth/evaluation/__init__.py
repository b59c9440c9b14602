"""Evaluation: metrics, scoring runs, robustness sweeps, shortcut audits and reports."""
