"""Feed-forward mixers: plain PyTorch modules that map (batch, time, d_model) -> (batch, time, d_model).

Every mixer derives from :class:`peerlab.mixers.base.Mixer`; the ``layer`` config group picks one by ``_target_``.
:data:`REGISTRY` lists the mixers a *saved* config (a checkpoint's hyper_parameters) may name: a file someone
hands you rebuilds only these classes (:mod:`peerlab.saved_settings`). A new mixer adds itself here.
"""

from peerlab.mixers.base import Mixer
from peerlab.mixers.ffw import FeedForward
from peerlab.mixers.memory_plus import MemoryPlus
from peerlab.mixers.moe import MoE
from peerlab.mixers.moe_fine import MoEFine
from peerlab.mixers.peer import PEER
from peerlab.mixers.pkm import PKM

REGISTRY: dict[str, type[Mixer]] = {f"{cls.__module__}.{cls.__qualname__}": cls
                                    for cls in (FeedForward, MoE, MoEFine, PKM, MemoryPlus, PEER)}

__all__ = ["Mixer", "FeedForward", "MoE", "MoEFine", "PKM", "MemoryPlus", "PEER", "REGISTRY"]
