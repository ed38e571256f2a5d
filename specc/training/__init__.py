"""Stage 5: training. The train and data blocks resolved into one plan, and the runner
that instantiates it."""
