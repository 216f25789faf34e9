"""The admin console: an HTTP API (FastAPI, OpenAPI at /api/openapi.json) and server-rendered
pages (Jinja) over the same queue, bundle and delivery functions as the CLI. Closed by
default: loopback only unless configured, every page and call behind a signed-in user,
CSRF tokens on every action, an audit row per action."""
