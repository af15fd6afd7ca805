"""An unknown transfer coding is not implemented."""

status = 501
