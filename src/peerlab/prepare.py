"""Build the tokenizer and token cache once, before a sweep: ``python -m peerlab.prepare data=c4 data.path=...``.

Takes the same overrides as ``train.py`` (only ``data``, ``tokenizer`` and ``seed`` matter) and prints where the
cache is, its token counts and the tokenization throughput. Every later run with the same data and tokenizer finds
the cache, checks it, and starts training at once.
"""

from __future__ import annotations

import logging
import sys

from peerlab.config import CONFIGS


def main(argv: list[str]) -> int:
    from hydra import compose, initialize_config_dir

    from peerlab.builders import build_datamodule
    from peerlab.config import register_schema, validate
    from peerlab.console import quiet_third_party
    from peerlab.errors import USER_ERRORS

    if any(a in ("-h", "--help") for a in argv):
        print(__doc__.strip())
        return 0
    flags = [a for a in argv if a.startswith("-")]
    if flags:
        print(f"error: {flags[0]}: python -m peerlab.prepare takes train.py's key=value overrides only (see --help)",
              file=sys.stderr)
        return 2
    logging.basicConfig(level=logging.INFO, format="%(message)s")
    quiet_third_party()
    from peerlab.entry import preflight

    problem = preflight(argv, "python -m peerlab.prepare", CONFIGS, "train", check=validate, sweeps=False)
    if problem:
        print(f"error: {problem}", file=sys.stderr)
        return 2
    register_schema()
    try:
        with initialize_config_dir(config_dir=str(CONFIGS), version_base="1.3"):
            cfg = compose(config_name="train", overrides=argv)
        validate(cfg)
        dm = build_datamodule(cfg, progress=True)
        dm.prepare_data()
    except USER_ERRORS as exc:
        print(f"error: {exc}", file=sys.stderr)
        return 2
    except Exception as exc:  # Hydra's and OmegaConf's own (a bad value, an unknown key)
        from peerlab.entry import _one_line

        print(f"error: {_one_line(exc)}", file=sys.stderr)
        return 2
    print(f"token cache: {dm._entry}")
    for split, info in dm.manifest["splits"].items():
        rate = f", built at {info['tokens'] / info['seconds']:.0f} tokens/s" if info.get("seconds") else ""
        print(f"  {split}: {info['documents']} documents, {info['tokens']} tokens in {len(info['shards'])} shard(s){rate}")
    return 0


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
