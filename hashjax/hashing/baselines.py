"""Shallow hashing baselines on feature vectors: LSH and ITQ (numpy, pure functions).

* LSH — sign random projections (Charikar, STOC 2002): b = sign(W^T (x − μ)), W ~ N(0, 1).
* ITQ — iterative quantization (Gong & Lazebnik, CVPR 2011): PCA to K dimensions, then an
  orthogonal rotation R minimising the quantization loss ‖B − V R‖²_F by alternating
  B = sign(V R) and the orthogonal Procrustes solution for R.

Fit on training features [N, D] (e.g. raw pixels); encode any features to ±1 int8 codes [N, K]
with sign(0) = +1, the convention of `hashjax.retrieval.codes.sign_codes`.
"""

from __future__ import annotations

from typing import NamedTuple

import numpy as np

from hashjax.runtime.errors import BaselineError


def _sign(x) -> np.ndarray:
  return np.where(x >= 0, 1, -1).astype(np.int8)


def _check_features(x_NxD, what: str = 'features') -> np.ndarray:
  x = np.asarray(x_NxD, np.float64)
  if x.ndim != 2 or not np.all(np.isfinite(x)):
    raise BaselineError(f'{what} must be a finite 2-D array [N, D], got shape {x.shape}')
  return x


class LSHModel(NamedTuple):
  mean_D: np.ndarray  # subtracted before projecting
  projection_DxK: np.ndarray  # Gaussian N(0, 1)


def lsh_fit(dim: int, bits: int, *, seed: int = 0, mean_D=None) -> LSHModel:
  """Draws K Gaussian hyperplanes through `mean_D` (zeros by default).

  Args:
    dim: feature dimension D. bits: code length K. seed: the projection (deterministic).
    mean_D: centre of the data (e.g. the training mean); float [D] or None.
  """
  if bits < 1 or dim < 1:
    raise BaselineError(f'need dim ≥ 1 and bits ≥ 1, got dim={dim}, bits={bits}')
  rng = np.random.default_rng([seed, 0x15A])
  mean = np.zeros(dim) if mean_D is None else np.asarray(mean_D, np.float64)
  if mean.shape != (dim,):
    raise BaselineError(f'mean_D must have shape ({dim},), got {mean.shape}')
  return LSHModel(mean, rng.standard_normal((dim, bits)))


def lsh_encode(model: LSHModel, x_NxD) -> np.ndarray:
  """±1 int8 codes [N, K] = sign((x − μ) W)."""
  x = _check_features(x_NxD)
  if x.shape[1] != len(model.mean_D):
    raise BaselineError(f'features have {x.shape[1]} dimensions, the model {len(model.mean_D)}')
  return _sign((x - model.mean_D) @ model.projection_DxK)


class ITQModel(NamedTuple):
  mean_D: np.ndarray
  pca_DxK: np.ndarray  # top-K principal directions (columns)
  rotation_KxK: np.ndarray  # orthogonal
  quantization_errors: np.ndarray  # ‖B − V R‖²_F / N before each update, [iterations + 1]


def quantization_error(v_NxK: np.ndarray, rotation_KxK: np.ndarray) -> float:
  """ITQ's objective ‖sign(V R) − V R‖²_F / N (squared units of the PCA projection)."""
  projected = v_NxK @ rotation_KxK
  return float(np.sum((_sign(projected) - projected) ** 2) / len(v_NxK))


def itq_fit(x_NxD, bits: int, *, iterations: int = 50, seed: int = 0) -> ITQModel:
  """Iterative quantization (Gong & Lazebnik 2011, Sec. 3.2).

  Centres the data, projects on the top-`bits` principal components (V = (X − μ) W), starts
  from a random orthogonal R and alternates B = sign(V R) and R = Ω̂ Ω^T from the SVD
  B^T V = Ω Σ Ω̂^T, each step lowering ‖B − V R‖²_F.

  Args:
    x_NxD: training features. bits: code length K ≤ D. iterations: alternations (paper: 50).
    seed: the initial rotation.
  """
  x = _check_features(x_NxD)
  n, d = x.shape
  if not 1 <= bits <= min(n, d):
    raise BaselineError(f'ITQ needs 1 ≤ bits ≤ min(N, D) = {min(n, d)}, got {bits}')
  mean = x.mean(0)
  centred = x - mean
  # Principal directions from the SVD of the centred data (no D×D covariance needed).
  _, _, vt = np.linalg.svd(centred, full_matrices=False)
  pca = vt[:bits].T
  v = centred @ pca
  rng = np.random.default_rng([seed, 0x17A])
  rotation, _ = np.linalg.qr(rng.standard_normal((bits, bits)))
  errors = [quantization_error(v, rotation)]
  for _ in range(iterations):
    b = _sign(v @ rotation).astype(np.float64)
    omega, _, omega_hat_t = np.linalg.svd(b.T @ v)
    rotation = omega_hat_t.T @ omega.T
    errors.append(quantization_error(v, rotation))
  return ITQModel(mean, pca, rotation, np.asarray(errors))


def itq_encode(model: ITQModel, x_NxD) -> np.ndarray:
  """±1 int8 codes [N, K] = sign((x − μ) W R)."""
  x = _check_features(x_NxD)
  if x.shape[1] != len(model.mean_D):
    raise BaselineError(f'features have {x.shape[1]} dimensions, the model {len(model.mean_D)}')
  return _sign((x - model.mean_D) @ model.pca_DxK @ model.rotation_KxK)
