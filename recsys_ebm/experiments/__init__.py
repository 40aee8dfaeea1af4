"""Orchestration: dataset -> split -> fit -> evaluate, tuning, reports and jobs."""
