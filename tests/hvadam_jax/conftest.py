"""Settings every JAX test relies on, applied before jax is first imported.

* Two host devices (``--xla_force_host_platform_device_count=2``), so that sharding over a
  2-device CPU mesh can be tested in this process.
* ``--xla_cpu_use_fusion_emitters=false``: the CPU backend's newer fusion emitters may pick a
  different code path (and so a different rounding) for the same computation depending on how
  it is fused; the classic emitters keep a sharded and an unsharded run comparable.
* float64 enabled (``jax_enable_x64``): the reference comparisons run in float64; tests that
  want float32 ask for it explicitly.

Without jax installed (``pip install ".[jax]"``) the directory is skipped.
"""

from __future__ import annotations

import importlib.util
import os

if importlib.util.find_spec("jax") is None or importlib.util.find_spec("optax") is None:
    collect_ignore_glob = ["test_*.py"]
else:
    FLAGS = ("--xla_force_host_platform_device_count=2", "--xla_cpu_use_fusion_emitters=false")
    existing = os.environ.get("XLA_FLAGS", "")
    os.environ["XLA_FLAGS"] = " ".join([existing, *(f for f in FLAGS if f not in existing)]).strip()

    import jax

    jax.config.update("jax_enable_x64", True)
