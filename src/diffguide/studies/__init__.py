"""Testbed studies on the exact Gaussian mixture (:mod:`diffguide.toy`): machinery shared by the study scripts.

- :mod:`.sweep` — block-batched sampling: many (configuration, seed) blocks in one sampler call;
- :mod:`.metrics` — per-run sample metrics (a diverged sample is a failure in every metric) and seed summaries;
- :mod:`.verdict` — the verdict rule: one-sided paired t-tests over seeds, aggregated per claim;
- :mod:`.report` — environment, protocol, claims table and number formatting shared by the reports;
- :mod:`.plots` — figures;
- :mod:`.guidance_grid`, :mod:`.guidance_claims`, :mod:`.guidance_report`, :mod:`.guidance_study` — the
  regularized-guidance study (``scripts/toy_guidance_study.py``);
- :mod:`.calibration_study`, :mod:`.calibration_report` — the Smooth-ECE calibration study
  (``scripts/toy_calibration_study.py``).
"""
