"""Pareto-front budget search with Optuna (issue: not built yet; the package exists so the layout is stable)."""
