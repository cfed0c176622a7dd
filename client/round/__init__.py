"""The site's side of a federated round as plain code: the handlers of the three messages (query,
train, evaluate), what each does, who annotates, and the records the site keeps of what it sent."""
