"""What every API call passes through: the token check, and errors as one-line JSON.

Every error the API gives is ``{"error": "..."}`` with a 4xx status (503 when all
sessions are in use): a UserError from deep down is 400, a name in the URL that
does not exist (NotFound) is 404, aiohttp's own refusals (413 for an upload over
the limit, 404 for an unknown route, 405) get a sentence that says what to do.
With --token set, everything but the page itself needs ``Authorization: Bearer
TOKEN`` or ``?token=TOKEN`` (EventSource and WebSocket cannot send headers).
"""
import secrets
from typing import Optional

from aiohttp import web

from lipsync.core.errors import UserError
from lipsync.serve.engine import SessionLimitReached

PUBLIC_PATHS = ("/", "/favicon.ico")          # the page loads without the token; it then sends it
PUBLIC_PREFIX = "/static/"


class NotFound(Exception):
    """Something named in the URL does not exist (the server answers 404 with this message)."""


def error_response(status: int, message: str) -> web.Response:
    return web.json_response({"error": message}, status=status)


def _http_error_message(request: web.Request, error: web.HTTPException, max_upload_mb: float) -> str:
    if error.status == 413:
        return (f"the upload is larger than {max_upload_mb:g} MB — send a shorter file "
                "or start the server with a larger --max_upload_mb")
    if error.status == 404:
        return f"no such route: {request.method} {request.path} — see GET /health and the API in the README"
    if error.status == 405:
        return f"{request.method} is not allowed on {request.path}"
    return error.reason or str(error)


def json_errors(max_upload_mb: float):
    @web.middleware
    async def answer_errors_as_json(request: web.Request, handler):
        try:
            return await handler(request)
        except web.HTTPException as error:
            if error.status < 400:
                raise
            return error_response(error.status, _http_error_message(request, error, max_upload_mb))
        except UserError as error:
            return error_response(400, str(error))
        except NotFound as error:
            return error_response(404, str(error))
        except SessionLimitReached as error:
            return error_response(503, str(error))
    return answer_errors_as_json


def token_check(token: Optional[str]):
    @web.middleware
    async def check(request: web.Request, handler):
        if token is None or request.path in PUBLIC_PATHS or request.path.startswith(PUBLIC_PREFIX):
            return await handler(request)
        given = request.query.get("token", "")
        header = request.headers.get("Authorization", "")
        if header.startswith("Bearer "):
            given = header[len("Bearer "):]
        if not secrets.compare_digest(given.encode(), token.encode()):
            return error_response(401, "this server needs its token — send 'Authorization: Bearer TOKEN' "
                                       "or ?token=TOKEN (the one given with --token)")
        return await handler(request)
    return check
