"""Two secure-scheme headers that disagree."""

status = 400
