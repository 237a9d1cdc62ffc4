"""peerlab: reproduce and extend "Mixture of A Million Experts" (PEER) with isoFLOP comparisons.

``peerlab.load(path)`` gives the model and tokenizer of a checkpoint::

    import peerlab
    from peerlab.generate import Sampling, complete

    model, tokenizer = peerlab.load("runs/peer_small-tiny-3e11-s0/checkpoints/last.ckpt")
    print(complete(model, tokenizer, "The history of", Sampling(max_new_tokens=40, temperature=0.8, seed=1)))
"""

from __future__ import annotations

__version__ = "0.1.0"


def load(path):
    """``(model, tokenizer)`` of a peerlab checkpoint: the transformer (``peerlab.model.Transformer``, in eval mode,
    on the CPU) and its ``tokenizers.Tokenizer``. The file is read as data, never as code: its pickle is scanned and
    refused if it names anything beyond tensors and plain values, and its saved settings are checked before the model
    is rebuilt from them (``peerlab.saved_settings``). Any mistake is a ``ConfigError`` with one line."""
    from peerlab.evaluate import load_checkpoint

    module, tokenizer = load_checkpoint(path)
    return module.model.eval(), tokenizer
