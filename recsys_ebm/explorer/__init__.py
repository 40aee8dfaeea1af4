"""The temperature explorer: a local web page showing a saved model's lists turn exploratory
as the temperature rises (``recsys-ebm explore``).

``core`` computes what the page shows (the served list, entropy, coverage, energies), ``app``
is the FastAPI app and its server on 127.0.0.1; ``static/`` holds the page itself.
"""

from recsys_ebm.explorer.app import LOCAL_HOST, bind, check_host, create_app, serve
from recsys_ebm.explorer.core import Explorer

__all__ = ["LOCAL_HOST", "Explorer", "bind", "check_host", "create_app", "serve"]
