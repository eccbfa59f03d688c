"""Transfer baselines: Seeking, LaTen, and the SFT / output-KL / hidden-distillation controls."""
