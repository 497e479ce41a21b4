"""Every method by name. Adding a method = one new module in methods/ + one line here.

Variants are entries with fixed options (ablations, resolution policies).
"""
from methods.base import register

register("panet", "methods.panet:PANet", "training-free PANet: masked-average fg/bg prototypes, cosine x 20")
register("patchcore", "methods.patchcore:PatchCore", "few-shot PatchCore: memory bank of defect-free support patches, 1-NN distance")
