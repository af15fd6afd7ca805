"""The authority-form is only allowed with CONNECT."""

status = 400
