"""Red teaming: attack suites and transforms, refusal and harm classifiers, run, report and findings export.

Entry point: `tether.redteam.run.run_redteam(RedteamConfig) -> Path`.
"""
