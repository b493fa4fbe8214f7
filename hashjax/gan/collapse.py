"""A warning for the GAN run that a discriminator has won outright.

When D(x) → 1 and D(G(z)) → 0 the generator's gradient vanishes (or, with the non-saturating
loss, G's loss climbs without its samples improving) and training rarely recovers: DCGAN
users' most frequent question. `CollapseWatch` reads the logged metrics rows and says so once,
naming the step and the checkpoint to resume from with a different setting.
"""

from __future__ import annotations

from typing import Any, Callable

D_REAL_MIN = 0.98  # mean D(x) above this ...
D_FAKE_MAX = 0.02  # ... and mean D(G(z)) below this: D wins outright at that logged step


class CollapseWatch:
  """Counts consecutive logged rows in which D wins outright; after `window` of them, with
  G's loss higher at the last than at the first, `update` returns one warning (once per
  run). window = 0 switches it off."""

  def __init__(self, window: int):
    self.window = window
    self.streak: list[dict[str, Any]] = []
    self.warned = False

  def update(self, row: dict[str, Any], last_good: Callable[[], str | None]) -> str | None:
    """The warning (one line) when this metrics row completes a collapse, else None.

    row: a metrics.jsonl row with step, d_real, d_fake and g_loss. last_good() → the newest
    complete checkpoint's path (called only when warning).
    """
    if not self.window or self.warned:
      return None
    if row.get('d_real', 0.0) > D_REAL_MIN and row.get('d_fake', 1.0) < D_FAKE_MAX:
      self.streak.append(row)
    else:
      self.streak = []
    if len(self.streak) < self.window:
      return None
    first, last = self.streak[0], self.streak[-1]
    if last['g_loss'] <= first['g_loss']:
      return None
    self.warned = True
    checkpoint = last_good()
    where = (f'resume from {checkpoint}' if checkpoint else
             'start again (no checkpoint was saved before it)')
    return (f'step {last["step"]}: the discriminator has won outright for {len(self.streak)} '
            f'logged steps since step {first["step"]} (D(x) = {last["d_real"]:.3f}, '
            f'D(G(z)) = {last["d_fake"]:.4f}, g_loss {first["g_loss"]:.2f} → '
            f'{last["g_loss"]:.2f}); the generator is unlikely to recover: {where} with a '
            'different setting, e.g. --config.label_smoothing=0.1 or a lower learning_rate')
