"""Fine-tuning the backbone with triplets, training the classification head, and evaluating.

`trainer.train` runs a triplet fine-tuning run into a run folder (see `runfiles`); `classifier.train`
trains the `classifier` head on frozen embeddings; `evaluation` computes verification and
identification metrics. The command modules `facerec.cli.train` and `facerec.cli.evaluate` drive them.
"""
