"""Every method by name. Adding a method = one new module in methods/ + one line here.

Variants are entries with fixed options (ablations, resolution policies).
"""
from methods.base import register

register("panet", "methods.panet:PANet", "training-free PANet: masked-average fg/bg prototypes, cosine x 20")
register("patchcore", "methods.patchcore:PatchCore", "few-shot PatchCore: memory bank of defect-free support patches, 1-NN distance")
register("seggpt", "methods.seggpt:SegGPT", "SegGPT in-context painting (transformers SegGptForImageSegmentation), k-shot feature ensemble, channel-max score")

# Outside packages add methods by naming modules that call methods.base.register(...).
import importlib as _importlib
import os as _os

for _module in filter(None, _os.environ.get("SOFS_BENCH_PLUGINS", "").split(",")):
    _importlib.import_module(_module.strip())
