"""The review web app: what it does (`service.py`), its HTTP glue (`server.py`) and its page (`static/`)."""
