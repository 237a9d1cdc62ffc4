"""isoFLOP analysis: collect results.json files, fit loss against model size per budget and method, draw the
paper's figures and write its tables. Entry point: ``python -m peerlab.analysis <sweep dirs> --out <dir>``."""
