"""The coordinator's side of a federated run, without Flower: settings, the sites interface, the round, aggregation, update checks, and the signed checkpoints it keeps and resumes from."""
