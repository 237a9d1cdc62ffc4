"""Data: corpora, tokenizers, the tokenized memmap cache and the LightningDataModule that packs it."""
