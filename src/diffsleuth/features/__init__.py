"""Forensic features (LaRE, DNF, DIRE): pure tensor functions plus batched, cached extractors."""
