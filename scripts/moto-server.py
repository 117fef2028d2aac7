"""moto's server, with DynamoDB requests applied one at a time.

DynamoDB applies each request atomically: a conditional write or a
transaction is checked and written as one step. moto's server handles
requests on threads and its DynamoDB backend does not lock, so two
conditional writes from the same version can both pass their check under
load -- a race the real service cannot have. The store conformance suite
races writers on purpose, so this wrapper serializes DynamoDB requests;
SQS and the rest stay concurrent (long polls must not block DynamoDB).

usage: python moto-server.py HOST PORT
"""

import os
import sys
import threading

from werkzeug.serving import run_simple
from moto.moto_server.werkzeug_app import (
    DomainDispatcherApplication,
    MotoRequestHandler,
    create_backend_app,
)

host, port = sys.argv[1], int(sys.argv[2])
os.environ.setdefault("MOTO_PORT", str(port))
app = DomainDispatcherApplication(create_backend_app)
dynamodb = threading.Lock()


def serialized(environ, start_response):
    if environ.get("HTTP_X_AMZ_TARGET", "").startswith("DynamoDB"):
        with dynamodb:
            # Produce the whole response inside the lock.
            return list(app(environ, start_response))
    return app(environ, start_response)


run_simple(host, port, serialized, threaded=True, request_handler=MotoRequestHandler)
