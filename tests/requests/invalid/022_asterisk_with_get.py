"""The asterisk-form is only allowed with OPTIONS."""

status = 400
