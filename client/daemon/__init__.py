"""The hospital's long-running daemon and its inbox watcher."""
