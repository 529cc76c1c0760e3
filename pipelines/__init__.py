"""Dagster definitions for the pipeline (assets, checks, schedules, sensors) live here.

Kept apart from ``byol_core`` so that the BYOL library never imports Dagster.
"""
