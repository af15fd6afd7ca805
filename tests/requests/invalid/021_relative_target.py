"""A request target that is neither origin-form nor absolute-form."""

status = 400
