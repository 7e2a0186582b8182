"""Metric maths shared by the stages that train with it and eval that reports it (below both): image metrics (masked
L1, SSIM, PSNR: :mod:`.image`) and mesh-motion metrics (LVE, FDD, FFE: :mod:`.motion`)."""
