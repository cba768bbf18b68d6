#!/usr/bin/env python
"""The CIFAR-10 study of issue 13, resumable in commands of at most 10 minutes of H200 time.

    python scripts/cifar10_guidance_study.py --list               # the plan and what is done
    python scripts/cifar10_guidance_study.py --budget-s 540       # run the next units that fit, then the report
    python scripts/cifar10_guidance_study.py --report-only        # docs/results/cifar10_guidance.md from the JSONs
    python scripts/cifar10_guidance_study.py --tiny               # the whole pipeline on the CPU (a check)

Metrics JSONs: docs/results/cifar10_guidance/ (commit them); weights and samples: ~/.cache/diffguide-studies.
"""

from diffguide.studies.cifar10.cli import make_command

if __name__ == "__main__":
    make_command("cifar10_guidance")()
