"""The project served by Django Channels: ``config.channels_asgi:application``.

HTTP goes to Django's own ASGI handler, WebSocket ``/ws/echo/`` to a consumer behind
the Origin check; no channel layer is configured (none is needed without groups).
"""

import os

from django.core.asgi import get_asgi_application

os.environ.setdefault("DJANGO_SETTINGS_MODULE", "config.settings")

# Django must be set up before the consumers (and their models) are imported.
django_asgi_app = get_asgi_application()

from channels.routing import ProtocolTypeRouter, URLRouter  # noqa: E402
from channels.security.websocket import AllowedHostsOriginValidator  # noqa: E402
from django.urls import path  # noqa: E402

from config.consumers import EchoConsumer  # noqa: E402

application = ProtocolTypeRouter(
    {
        "http": django_asgi_app,
        "websocket": AllowedHostsOriginValidator(
            URLRouter([path("ws/echo/", EchoConsumer.as_asgi())])
        ),
    }
)
