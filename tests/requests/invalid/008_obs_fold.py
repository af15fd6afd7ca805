"""An obs-fold continuation line."""

status = 400
