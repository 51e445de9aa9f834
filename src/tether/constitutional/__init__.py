"""Constitutional AI: principles, critique-revision SFT data (SL-CAI) and AI preference labels (RLAIF).

Entry point: `tether.constitutional.run.run_cai(CAIConfig) -> Path`.
"""
