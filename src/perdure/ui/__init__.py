"""`perdure ui`: a local web dashboard of a storage's executions (`pip install 'perdure[ui]'`).

Server-rendered pages (Starlette and Jinja2, one small script and one stylesheet shipped in this
package: no CDN, no front-end build): the executions with counts, filters, search and an hourly
chart; each execution with its head, conversation, step timeline, failed attempts, usage and
savings, updated live from `perdure.watch` through server-sent events; and the operator's actions
(resume, approve or deny each pending call, resolve an interrupted call, cancel, fork, delete,
cleanup), each a POST with a CSRF token, hidden and refused in read-only mode.

Modules, importing only in this direction: `_queries` (every read of the storage) and `_security`
(token, CSRF, headers) <- `_view` (the execution page's data) and `_actions` (every action, through
`perdure.operations` when it exists) <- `_app` (routes and templates). `create_app(storage, ...)` is
the ASGI application; `perdure ui` serves it with uvicorn.
"""

from ._app import create_app

__all__ = ["create_app"]
