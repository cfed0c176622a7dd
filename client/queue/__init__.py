"""The correction queue: SQLite in the site workspace, filled by selection (plan, prepare,
commit), emptied by pathologists' corrections, read by local training."""
