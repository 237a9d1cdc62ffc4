"""Feed-forward mixers: plain PyTorch modules that map (batch, time, d_model) -> (batch, time, d_model).

Every mixer derives from :class:`peerlab.mixers.base.Mixer`; the ``layer`` config group picks one by ``_target_``.
"""

from peerlab.mixers.base import Mixer
from peerlab.mixers.ffw import FeedForward

__all__ = ["Mixer", "FeedForward"]
