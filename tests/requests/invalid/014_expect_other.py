"""An expectation other than 100-continue."""

status = 417
