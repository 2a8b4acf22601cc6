"""The HTTP gateway: image classification jobs over HTTP, for tenants with API keys.

    imgqueue serve [--host H] [--port P]  # or: uvicorn --factory services.gateway.app:create_app

`services.gateway.app.create_app(settings)` makes the ASGI app. It submits and reads through the
producer's Client (the contract is written once, in `producer`) and never imports the worker
or torch. Several gateways share only Redis. docs/http.md describes the API.
"""
