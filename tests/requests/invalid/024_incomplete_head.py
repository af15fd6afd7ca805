"""The client half-closes before the head is complete: no response."""

status = 'closed'
