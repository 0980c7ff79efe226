"""/api/v1/describe: a prompt for an image, written by a worker's image-to-text model.

The route stays light: the model runs on a worker (farm/services/describe.py);
this process only sends a task and waits, bounded, for the answer.
"""

from __future__ import annotations

import logging

from flask import Blueprint, Flask, current_app, g, jsonify

from farm.api import schemas
from farm.api.contract import declare
from farm.api.errors import ApiError, error_response
from farm.api.security import farm_context
from farm.services import describe as describe_service

logger = logging.getLogger(__name__)
bp = Blueprint("describe", __name__)

# Seconds a client should wait before asking again when no worker offers describe.
UNAVAILABLE_RETRY_AFTER_S = 30
_SENDER = "farm.describe_sender"


def celery_sender(settings) -> describe_service.Sender:
    """Describe requests as Celery tasks on the shared describe queue, expiring with the API's wait."""
    from farm.workers.celery_app import DESCRIBE_QUEUE, create_celery
    from farm.workers.tasks import DESCRIBE_TASK

    app = create_celery(settings)

    def send(request_id: str, object_key: str, expires_s: float) -> None:
        app.send_task(DESCRIBE_TASK, args=[request_id, object_key], queue=DESCRIBE_QUEUE, routing_key=DESCRIBE_QUEUE,
                      expires=expires_s)

    return send


def set_sender(app: Flask, sender: describe_service.Sender) -> None:
    """Hand describe requests to ``sender`` instead of Celery (tests running a worker in-process)."""
    app.extensions[_SENDER] = sender


def _sender() -> describe_service.Sender:
    sender = current_app.extensions.get(_SENDER)
    if sender is None:
        sender = current_app.extensions[_SENDER] = celery_sender(farm_context().settings)
    return sender


@bp.post("/describe")
@declare("Describe an image (an upload or an output): a prompt written by a worker's image-to-text model",
         {200: schemas.DescribeView}, body=schemas.DescribeRequest, errors=(504,))
def describe(body: schemas.DescribeRequest):
    try:
        answer = describe_service.describe(farm_context(), g.user, upload=body.upload, output=body.output, send=_sender())
    except describe_service.DescribeUnavailableError as exc:
        response, status = error_response(503, str(exc))
        response.headers["Retry-After"] = str(UNAVAILABLE_RETRY_AFTER_S)
        return response, status
    except describe_service.DescribeTimeoutError as exc:
        return error_response(504, str(exc))
    return jsonify(answer)


def describe_output_for_page(output_id: str) -> str:
    """The dashboard's Describe button: the prompt for an output of the signed-in user, or an ApiError (its error page)."""
    try:
        return describe_service.describe(farm_context(), g.dashboard_user, upload=None, output=output_id,
                                         send=_sender())["prompt"]
    except describe_service.DescribeUnavailableError as exc:
        raise ApiError(503, str(exc)) from None
    except describe_service.DescribeTimeoutError as exc:
        raise ApiError(504, str(exc)) from None
