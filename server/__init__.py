"""The coordinator side: central training, the federated round as plain code (`federation/`),
server-side evaluation, the coordinator's kit, and the Flower ServerApp that translates the round."""
