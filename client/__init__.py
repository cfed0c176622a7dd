"""The hospital side, one folder per concern: `round/` (the three messages a site answers: query,
local training, local evaluation, records), `queue/`, `annotations/` (exchange formats), `review/`
(the web app), `daemon/`; `site_config.py` and the Flower glue (`flower_app.py`, `app_gate.py`)."""
