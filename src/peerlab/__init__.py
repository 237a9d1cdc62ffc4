"""peerlab: reproduce and extend "Mixture of A Million Experts" (PEER) with isoFLOP comparisons."""

__version__ = "0.1.0"
