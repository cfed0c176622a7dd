"""The coordinator's side of a federated run, without Flower: settings, the sites interface,
the round, update checks, aggregation, and the signed checkpoints it keeps and resumes from."""
