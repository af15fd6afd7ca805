"""A Django Channels WebSocket consumer for tests/test_asgi_frameworks.py."""

from channels.generic.websocket import WebsocketConsumer


class EchoConsumer(WebsocketConsumer):
    """Accepts with ``chat`` when the client offers it (refuses other offers), echoes
    text and binary messages, and closes with 4001 when told ``close``."""

    def connect(self):
        offered = self.scope["subprotocols"]
        if not offered:
            self.accept()
        elif "chat" in offered:
            self.accept(subprotocol="chat")
        else:
            self.close()

    def receive(self, text_data=None, bytes_data=None):
        if text_data == "close":
            self.close(code=4001, reason="asked to")
        elif text_data is not None:
            self.send(text_data=f"echo: {text_data}")
        else:
            self.send(bytes_data=bytes_data[::-1])
