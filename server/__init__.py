"""The coordinator side: central training, aggregation, checkpoints, server-side evaluation."""
