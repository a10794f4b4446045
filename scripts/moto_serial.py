"""moto's S3 server handling one request at a time, on 127.0.0.1.

Usage: python moto_serial.py PORT

The tests use it instead of `moto_server`, whose threads check an S3
conditional PUT (`If-Match`, `If-None-Match`) and then store the object
without a lock spanning both: two concurrent PUTs conditional on the same
version can both succeed there, which real S3 never allows. Served one
request at a time, every conditional PUT is atomic, as on S3.
"""

import os
import sys

from werkzeug.serving import run_simple
from moto.moto_server.werkzeug_app import (
    DomainDispatcherApplication,
    MotoRequestHandler,
    create_backend_app,
)

port = int(sys.argv[1])
os.environ.setdefault("MOTO_PORT", str(port))
app = DomainDispatcherApplication(create_backend_app)
run_simple(
    "127.0.0.1",
    port,
    app,
    threaded=False,
    use_reloader=False,
    request_handler=MotoRequestHandler,
)
