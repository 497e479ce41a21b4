"""SOFS (arXiv 2407.21351) for sofs-bench: model, loss, checkpoint mapping, inference, training.

The Method is :class:`methods.sofs.inference.SOFS` (registered as "sofs" and ablation variants).
"""
